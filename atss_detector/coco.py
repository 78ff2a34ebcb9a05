"""COCO-format detection data: an ``annotations.json`` and a folder of images.

Two directory layouts are recognised by :func:`find_split`:

* ``ROOT/<split>/annotations.json`` with images under ``ROOT/<split>/images/``
  (what :meth:`SyntheticShapes.export_coco` writes);
* the COCO 2017 layout, ``ROOT/annotations/instances_<split>.json`` with images
  under ``ROOT/<split>/`` (e.g. ``--train-split train2017 --val-split val2017``).

Crowd annotations (``iscrowd: 1``) never become training targets: they are
dropped, or with ``ignore_crowd=True`` (``train --ignore-crowd``) kept as the
item's ``ignore_boxes``, regions whose anchors take no loss. Evaluation reads
them from the json through pycocotools, which treats them as "ignore".

Bad files fail early and in one line that names the file and the entry:
:func:`load_annotations` (the json itself: unreadable, truncated, not COCO),
the entry checks of :class:`CocoDetection` (a ``bbox`` without 4 numbers, an
unknown ``category_id``, an annotation of an image that is not listed) and
:func:`check_split` (those, plus every listed image file: present and readable
as an image, from its header alone), which ``atss-detector train`` and ``eval``
run on their splits before the first step.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DataError, ImageError, first_line

if TYPE_CHECKING:  # pycocotools is imported where it is used
    from pycocotools.coco import COCO

__all__ = ["DataError", "CocoDetection", "check_split", "find_split", "load_annotations", "load_image"]


def find_split(root: str, split: str) -> Tuple[str, str]:
    """``(annotation_file, image_dir)`` of ``split`` under ``root`` (see the module docstring)."""
    candidates = [
        (os.path.join(root, split, "annotations.json"), os.path.join(root, split, "images")),
        (os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split)),
    ]
    for annotation_file, image_dir in candidates:
        if os.path.isfile(annotation_file):
            if not os.path.isdir(image_dir):
                raise FileNotFoundError(f"found {annotation_file} but no image folder {image_dir}")
            return annotation_file, image_dir
    (own_json, own_images), (coco_json, coco_images) = candidates
    raise FileNotFoundError(
        f"no annotations for split {split!r} under {root}: expected either {own_json} with the images in "
        f"{own_images}/, or the COCO 2017 layout {coco_json} with the images in {coco_images}/ "
        "(choose the split names with --train-split / --val-split)"
    )


def load_image(path: str) -> np.ndarray:
    """The pixels of an image file, uint8 ``[H, W, 3]`` RGB.

    Raises:
        ImageError: one line naming ``path`` and what is wrong (missing, not an image,
            truncated or corrupt: PIL finds most of these only when it decodes the pixels).
    """
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (PIL does not recognise its format)") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, zlib errors... for bad files
        reason = first_line(exc)
        raise ImageError(f"{path}: the image cannot be decoded: a truncated or corrupt file? ({reason})") from None


def load_annotations(annotation_file: str) -> Dict[str, Any]:
    """The COCO json of ``annotation_file``, with the three keys a detection file needs.

    Raises:
        DataError: the file cannot be read or parsed (a truncated file says so), or
            its top level is not an object with ``images``, ``annotations`` and
            ``categories`` lists.
    """
    try:
        with open(annotation_file, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"{annotation_file}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{annotation_file}: not valid JSON (not UTF-8 text: {exc.reason} at byte {exc.start})"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}: {exc.msg}"
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):  # the text stops mid-way
            where += "; the file ends early: truncated?"
        raise DataError(f"{annotation_file}: not valid JSON ({where})") from None
    if not isinstance(data, dict):
        raise DataError(
            f"{annotation_file}: not COCO format: the top level is a JSON {type(data).__name__}, expected an object "
            "with 'images', 'annotations' and 'categories'"
        )
    for key in ("images", "annotations", "categories"):
        if key not in data:
            found = ", ".join(repr(k) for k in list(data)[:8]) or "none"
            raise DataError(f"{annotation_file}: not COCO format: no {key!r} key (keys found: {found})")
        if not isinstance(data[key], list):
            raise DataError(
                f"{annotation_file}: not COCO format: {key!r} is a JSON {type(data[key]).__name__}, expected a list"
            )
    return data


def _entry(key: str, index: int, entry: Any) -> str:
    """How an entry is named in errors: ``annotations[3] (id 17)``."""
    ident = entry.get("id") if isinstance(entry, dict) else None
    return f"{key}[{index}]" + (f" (id {ident!r})" if ident is not None else "")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_entries(annotation_file: str, data: Dict[str, Any]) -> None:
    """Every category, image and annotation entry has what the loader reads, of the right kind."""
    for key, needed in (("categories", ("id", "name")), ("images", ("id", "file_name"))):
        seen = set()
        for i, entry in enumerate(data[key]):
            if not isinstance(entry, dict):
                raise DataError(f"{annotation_file}: {key}[{i}] is a JSON {type(entry).__name__}, expected an object")
            for field in needed:
                if field not in entry:
                    raise DataError(f"{annotation_file}: {_entry(key, i, entry)} has no {field!r}")
            if entry["id"] in seen:
                raise DataError(f"{annotation_file}: {_entry(key, i, entry)} repeats the id of an earlier entry")
            seen.add(entry["id"])
    category_ids = {c["id"] for c in data["categories"]}
    image_ids = {im["id"] for im in data["images"]}
    for i, ann in enumerate(data["annotations"]):
        name = _entry("annotations", i, ann)
        if not isinstance(ann, dict):
            raise DataError(f"{annotation_file}: {name} is a JSON {type(ann).__name__}, expected an object")
        for field in ("image_id", "bbox", "category_id"):
            if field not in ann:
                raise DataError(f"{annotation_file}: {name} has no {field!r}")
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise DataError(f"{annotation_file}: {name} has bbox {bbox!r}: expected 4 finite numbers x, y, w, h")
        if bbox[2] < 0 or bbox[3] < 0:
            raise DataError(f"{annotation_file}: {name} has bbox {bbox!r}: a negative width or height")
        if ann["category_id"] not in category_ids:
            known = sorted(category_ids)
            shown = ", ".join(map(str, known[:10])) + (", ..." if len(known) > 10 else "")
            raise DataError(
                f"{annotation_file}: {name} has unknown category_id {ann['category_id']!r} "
                f"(the categories' ids: {shown or 'none'})"
            )
        if ann["image_id"] not in image_ids:
            raise DataError(f"{annotation_file}: {name} is for image_id {ann['image_id']!r}, which 'images' lacks")


def check_split(annotation_file: str, image_dir: str, bad_images: Optional[List[str]] = None) -> int:
    """Checks a whole split before any training: the json (:func:`load_annotations`), every
    entry, and every listed image file (it exists and PIL reads its header; no pixels are
    decoded, so this costs well under a millisecond per image). Returns the number of images.

    A file cut short after a valid header passes: such files are found where their pixels are
    decoded (:func:`load_image`), and that error names them too.

    Args:
        bad_images: when given, the images that fail (missing, or no image header) are appended
            to it, one line each, instead of raising (``--skip-bad-images``).

    Raises:
        DataError: one line naming ``annotation_file`` and the first bad entry.
    """
    data = load_annotations(annotation_file)
    _check_entries(annotation_file, data)
    for i, info in enumerate(data["images"]):
        path = os.path.join(image_dir, info["file_name"])
        name = _entry("images", i, info)
        problem = None
        if not os.path.isfile(path):
            problem = f"{annotation_file}: {name} lists file_name {info['file_name']!r}, but {path} is missing"
        else:
            try:
                with Image.open(path) as im:  # reads the header only
                    width, height = im.size
                if width < 1 or height < 1:
                    problem = f"{annotation_file}: {name}: {path} has size {width} x {height}"
            except Exception as exc:  # PIL raises several kinds for unreadable files
                problem = f"{annotation_file}: {name}: {path} is not an image PIL can read ({first_line(exc)})"
        if problem is not None:
            if bad_images is None:
                raise ImageError(problem)
            bad_images.append(problem)
    return len(data["images"])


def _clipped(bbox: List[float], W: int, H: int) -> Optional[List[float]]:
    """A COCO ``[x, y, w, h]`` as ``[x1, y1, x2, y2]`` clipped to the image; None when empty."""
    x, y, w, h = bbox
    x1, y1 = min(max(x, 0.0), W), min(max(y, 0.0), H)
    x2, y2 = min(max(x + w, 0.0), W), min(max(y + h, 0.0), H)
    return [x1, y1, x2, y2] if x2 > x1 and y2 > y1 else None


class CocoDetection:
    """A COCO-format dataset with the item format of :mod:`atss_detector.data`.

    Args:
        annotation_file: COCO json with ``images``, ``annotations``, ``categories``.
        image_dir: folder the images' ``file_name`` entries are relative to.
        skip_empty: drop images without any non-crowd box (for training).
        ignore_crowd: also return the crowd boxes, as ``ignore_boxes``.

    Items: ``image`` uint8 ``Tensor[3, H, W]`` (RGB), ``boxes`` float32
    ``Tensor[N, 4]`` (``x1, y1, x2, y2`` pixels, clipped to the image, crowd and
    empty boxes removed), ``labels`` int64 ``Tensor[N]`` (contiguous class
    indices, categories sorted by id), ``image_id`` (the json's id); with
    ``ignore_crowd``, ``ignore_boxes`` float32 ``Tensor[M, 4]`` (the crowd boxes,
    clipped, empty ones removed).
    """

    def __init__(self, annotation_file: str, image_dir: str, *, skip_empty: bool = False, ignore_crowd: bool = False):
        data = load_annotations(annotation_file)
        _check_entries(annotation_file, data)
        self.annotation_file = annotation_file
        self.image_dir = image_dir
        self.ignore_crowd = ignore_crowd
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids: List[int] = [c["id"] for c in categories]
        self.classes: Tuple[str, ...] = tuple(c["name"] for c in categories)
        label_of = {cid: i for i, cid in enumerate(self.category_ids)}
        per_image: Dict[int, List[Tuple[List[float], int]]] = defaultdict(list)
        crowd: Dict[int, List[List[float]]] = defaultdict(list)
        for ann in data["annotations"]:
            if ann.get("iscrowd", 0):
                crowd[ann["image_id"]].append(ann["bbox"])
                continue
            per_image[ann["image_id"]].append((ann["bbox"], label_of[ann["category_id"]]))
        self._annotations = per_image
        self._crowd = crowd
        images = sorted(data["images"], key=lambda im: im["id"])
        if skip_empty:
            images = [im for im in images if any(w > 0 and h > 0 for (_, _, w, h), _ in per_image[im["id"]])]
        if not images:
            raise DataError(f"{annotation_file}: no usable images (none listed, or none with a box)")
        self.images: List[Dict[str, Any]] = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        info = self.images[index]
        path = os.path.join(self.image_dir, info["file_name"])
        image = load_image(path)
        H, W = image.shape[:2]
        boxes, labels = [], []
        for bbox, label in self._annotations[info["id"]]:
            box = _clipped(bbox, W, H)
            if box:
                boxes.append(box)
                labels.append(label)
        item = {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": info["id"],
        }
        if self.ignore_crowd:
            crowd = [box for box in (_clipped(bbox, W, H) for bbox in self._crowd[info["id"]]) if box]
            item["ignore_boxes"] = torch.tensor(crowd, dtype=torch.float32).reshape(-1, 4)
        return item

    def coco(self):
        """The ground truth as a ``pycocotools.coco.COCO`` object (crowd boxes included)."""
        return load_coco(self.annotation_file)


def coco_from_dict(data: Dict) -> "COCO":
    """A ``pycocotools.coco.COCO`` built from an in-memory COCO dict."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it indexes
        coco.createIndex()
    return coco


def load_coco(annotation_file: str) -> "COCO":
    """A ``pycocotools.coco.COCO`` read from ``annotation_file``, without its prints."""
    with open(annotation_file) as f:
        return coco_from_dict(json.load(f))
