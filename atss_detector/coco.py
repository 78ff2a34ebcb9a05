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
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image


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
        with open(annotation_file) as f:
            data = json.load(f)
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{annotation_file} is not COCO format: no {key!r} key")
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
            if ann["category_id"] not in label_of:
                raise ValueError(f"annotation {ann.get('id')} has unknown category_id {ann['category_id']}")
            per_image[ann["image_id"]].append((ann["bbox"], label_of[ann["category_id"]]))
        self._annotations = per_image
        self._crowd = crowd
        images = sorted(data["images"], key=lambda im: im["id"])
        if skip_empty:
            images = [im for im in images if any(w > 0 and h > 0 for (_, _, w, h), _ in per_image[im["id"]])]
        if not images:
            raise ValueError(f"{annotation_file} has no usable images")
        self.images: List[Dict[str, Any]] = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        info = self.images[index]
        path = os.path.join(self.image_dir, info["file_name"])
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
        H, W = image.shape[:2]
        boxes, labels = [], []
        for bbox, label in self._annotations[info["id"]]:
            box = _clipped(bbox, W, H)
            if box:
                boxes.append(box)
                labels.append(label)
        item = {
            "image": torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous(),
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
        from .evaluation import load_coco

        return load_coco(self.annotation_file)
