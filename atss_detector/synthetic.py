"""Built-in synthetic detection data: coloured shapes on noisy, textured backgrounds.

Every image is a pure function of ``(seed, split, index)``: nothing is downloaded
or cached, and every machine, data-loader worker and rank sees the same pixels.

What makes it a detection problem rather than a toy:

* object sizes log-uniform from a few pixels to 80% of the image, aspect ratios
  from 1:3 to 3:1, so every pyramid level and many anchor shapes are needed;
* crowded, overlapping objects (each keeps at least ``min_visible`` of its pixels,
  and its box is the whole shape's);
* smooth colour fields, stripes, distractor strokes and pixel noise behind them;
* images of different shapes (the shorter side is 75-100% of the longer), so
  batches are padded and anchor validity matters;
* six shape classes, filled and hollow.

The smallest objects are about as small as the finest stride (8 px at P3):
whether they get positive anchors at all, and how many, is decided by the
assignment, which is where ATSS's adaptive threshold shows.

By default each class also has its own band of hues (saturation and brightness
still vary): telling six outlines apart from random colours takes a randomly
initialised network far more images than a CPU demo can afford, and the
difficulty that matters for assignment is geometric. ``class_hues=False`` makes
shape the only cue.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

CLASSES: Tuple[str, ...] = ("rectangle", "ellipse", "triangle", "cross", "ring", "diamond")
SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SyntheticSpec:
    """How synthetic images are drawn."""

    image_size: int = 128  # longer side, px
    min_aspect: float = 0.75  # shorter side >= min_aspect * longer side
    min_object: float = 8.0  # smallest object side, px
    max_object: float = 0.8  # largest object side, as a fraction of the shorter image side
    max_ratio: float = 3.0  # object aspect ratios in [1 / max_ratio, max_ratio]
    mean_objects: float = 8.0  # Poisson mean of objects per image (at least 1)
    max_objects: int = 16
    num_classes: int = len(CLASSES)  # draw only the first num_classes of CLASSES
    class_hues: bool = True  # each class its own hue band (saturation, value vary); False: any colour
    min_visible: float = 0.6  # fraction of an object's pixels left visible by later objects
    max_strokes: int = 4  # distractor line strokes behind the objects
    noise: float = 8.0  # std of the pixel noise, in 0-255 units

    def __post_init__(self):
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16 px, got {self.image_size}")
        if not 0 < self.min_aspect <= 1:
            raise ValueError(f"min_aspect must be in (0, 1], got {self.min_aspect}")
        if not 2 <= self.min_object <= self.max_object * self.min_aspect * self.image_size:
            raise ValueError(f"min_object must be in [2, max_object * min_aspect * image_size], got {self.min_object}")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        if not 1 <= self.num_classes <= len(CLASSES):
            raise ValueError(f"num_classes must be in [1, {len(CLASSES)}], got {self.num_classes}")


def render(spec: SyntheticSpec, seed: int, split: str, index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws one image.

    Returns:
        ``image`` uint8 ``[H, W, 3]``, ``boxes`` float32 ``[N, 4]`` (``x1, y1, x2, y2``,
        tight around each shape's pixels), ``labels`` int64 ``[N]`` (indices into
        :data:`CLASSES`). ``N >= 1``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    long_side = spec.image_size
    short_side = int(round(long_side * rng.uniform(spec.min_aspect, 1.0)))
    H, W = (short_side, long_side) if rng.random() < 0.5 else (long_side, short_side)

    image = _background(rng, H, W)
    _draw_strokes(rng, image, rng.integers(0, spec.max_strokes + 1))

    owner = np.full((H, W), -1, dtype=np.int32)  # index of the object on top of each pixel
    area: List[int] = []  # pixels of each object
    visible: List[int] = []  # pixels of each object still on top
    boxes, labels = [], []
    num_objects = int(np.clip(rng.poisson(spec.mean_objects), 1, spec.max_objects))
    for _ in range(num_objects):
        placed = _place_object(rng, spec, H, W, owner, area, visible)
        if placed is None:
            continue
        label, mask, (top, left), lost = placed
        visible = [v - gone for v, gone in zip(visible, lost.tolist())]
        window = (slice(top, top + mask.shape[0]), slice(left, left + mask.shape[1]))
        owner[window][mask] = len(boxes)
        area.append(int(mask.sum()))
        visible.append(area[-1])
        _paint(rng, image[window], mask, label / spec.num_classes if spec.class_hues else None)
        ys, xs = np.nonzero(mask)
        boxes.append([left + xs.min(), top + ys.min(), left + xs.max() + 1, top + ys.max() + 1])
        labels.append(label)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(spec.noise)
    return (
        np.clip(image, 0, 255).astype(np.uint8),
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
    )


def _place_object(rng, spec: SyntheticSpec, H: int, W: int, owner: np.ndarray, area: List[int], visible: List[int]):
    """``(label, mask, (top, left), pixels hidden of each earlier object)`` for a new
    shape that leaves every earlier object at least ``min_visible`` of its area, or
    None after 20 tries. ``mask`` covers the image window at ``(top, left)``."""
    largest = spec.max_object * min(H, W)
    for _ in range(20):
        size = math.exp(rng.uniform(math.log(spec.min_object), math.log(largest)))
        ratio = math.exp(rng.uniform(-math.log(spec.max_ratio), math.log(spec.max_ratio)))
        w = min(max(size * math.sqrt(ratio), 2.0), W - 1.0)
        h = min(max(size / math.sqrt(ratio), 2.0), H - 1.0)
        x1, y1 = rng.uniform(0, W - w), rng.uniform(0, H - h)
        label = int(rng.integers(spec.num_classes))
        top, left = int(y1), int(x1)
        window = (min(H - top, int(h) + 2), min(W - left, int(w) + 2))
        mask = _shape_mask(rng, label, x1 - left, y1 - top, w, h, *window)
        if mask.sum() < 4:
            continue
        covered = owner[top : top + mask.shape[0], left : left + mask.shape[1]][mask]
        lost = np.bincount(covered[covered >= 0], minlength=len(visible))
        if all(v - gone >= spec.min_visible * a for v, gone, a in zip(visible, lost.tolist(), area)):
            return label, mask, (top, left), lost
    return None


def _shape_mask(rng, label: int, x1: float, y1: float, w: float, h: float, H: int, W: int) -> np.ndarray:
    """Boolean ``[H, W]`` mask of shape ``CLASSES[label]`` inscribed in the box ``(x1, y1, w, h)``."""
    x2, y2 = x1 + w, y1 + h
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    canvas = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(canvas)
    name = CLASSES[label]
    if name == "rectangle":
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=1)
    elif name == "ellipse":
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=1)
    elif name == "ring":
        thickness = max(1, int(round(min(w, h) * rng.uniform(0.12, 0.25))))
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], outline=1, width=thickness)
    elif name == "triangle":
        apex = x1 + w * rng.uniform(0.2, 0.8)
        if rng.random() < 0.5:
            draw.polygon([(apex, y1), (x2, y2), (x1, y2)], fill=1)
        else:
            draw.polygon([(apex, y2), (x2, y1), (x1, y1)], fill=1)
    elif name == "cross":
        t = rng.uniform(0.25, 0.4)
        draw.rectangle([x1, cy - h * t / 2, x2 - 1, cy + h * t / 2], fill=1)
        draw.rectangle([cx - w * t / 2, y1, cx + w * t / 2, y2 - 1], fill=1)
    elif name == "diamond":
        draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=1)
    else:  # pragma: no cover - CLASSES and this table are edited together
        raise AssertionError(name)
    return np.asarray(canvas, dtype=bool)


def _interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``[n_out, n_in]`` float32 weights of 1-D linear interpolation, corners aligned."""
    pos = np.linspace(0, n_in - 1, n_out, dtype=np.float32)
    lo = np.minimum(pos.astype(int), n_in - 2)
    frac = pos - lo
    weights = np.zeros((n_out, n_in), dtype=np.float32)
    weights[np.arange(n_out), lo] = 1 - frac
    weights[np.arange(n_out), lo + 1] = frac
    return weights


def _upsample(grid: np.ndarray, H: int, W: int) -> np.ndarray:
    """Bilinear resize of float32 ``[h, w, C]`` to ``[H, W, C]`` (corners aligned), as two matrix products."""
    h, w, C = grid.shape
    rows = _interpolation_matrix(H, h) @ grid.reshape(h, w * C)  # [H, w * C]
    return np.einsum("Wx,Hxc->HWc", _interpolation_matrix(W, w), rows.reshape(H, w, C), optimize=True)


def _background(rng, H: int, W: int) -> np.ndarray:
    """Float32 ``[H, W, 3]``: a base colour, two scales of smooth colour noise, maybe stripes."""
    image = np.broadcast_to(rng.uniform(30, 225, 3), (H, W, 3)).astype(np.float32)
    for cells, amplitude in ((rng.integers(2, 6), rng.uniform(20, 70)), (rng.integers(8, 20), rng.uniform(5, 25))):
        grid = rng.uniform(-amplitude, amplitude, (cells + 1, cells + 1, 3)).astype(np.float32)
        image += _upsample(grid, H, W)
    if rng.random() < 0.4:
        angle = rng.uniform(0, math.pi)
        step = 2 * math.pi / rng.uniform(4, 24)
        xs = np.arange(W, dtype=np.float32) * np.float32(step * math.cos(angle))
        ys = np.arange(H, dtype=np.float32) * np.float32(step * math.sin(angle))
        image += (np.float32(rng.uniform(8, 30)) * np.sin(ys[:, None] + xs[None, :]))[..., None]
    return image


def _draw_strokes(rng, image: np.ndarray, count: int) -> None:
    """Distractor line strokes (part of the background: drawn before the objects)."""
    H, W = image.shape[:2]
    for _ in range(count):
        canvas = Image.new("L", (W, H), 0)
        points = [(rng.uniform(0, W), rng.uniform(0, H)) for _ in range(rng.integers(2, 4))]
        ImageDraw.Draw(canvas).line(points, fill=1, width=int(rng.integers(1, 4)))
        image[np.asarray(canvas, dtype=bool)] = rng.uniform(0, 255, 3)


def _object_colour(rng, hue: Optional[float]) -> np.ndarray:
    """RGB in 0-255: any colour, or one of hue ``hue`` (in turns) +- 0.05 with random saturation and value."""
    if hue is None:
        return rng.uniform(0, 255, 3)
    h = (hue + rng.uniform(-0.05, 0.05)) % 1.0
    return 255.0 * np.asarray(colorsys.hsv_to_rgb(h, rng.uniform(0.5, 1.0), rng.uniform(0.45, 1.0)))


def _paint(rng, image: np.ndarray, mask: np.ndarray, hue: Optional[float]) -> None:
    """Fills ``mask`` with a colour (of ``hue`` if given) far from what it covers,
    shaded by a linear gradient."""
    under = image[mask].mean(axis=0)
    for _ in range(10):
        colour = _object_colour(rng, hue)
        if np.linalg.norm(colour - under) > 80:
            break
    else:
        colour = np.where(under > 127, colour * 0.3, 255 - (255 - colour) * 0.3)
    ys, xs = np.nonzero(mask)
    gx, gy = rng.uniform(-1, 1, 2) * 25
    span = max(np.ptp(xs), np.ptp(ys), 1)
    shade = (gx * (xs - xs.mean()) + gy * (ys - ys.mean())) / span
    image[ys, xs] = colour[None, :] + shade[:, None]


class SyntheticShapes:
    """The synthetic dataset: ``len`` images of one split, drawn on demand.

    Items are dicts with ``image`` (uint8 ``Tensor[3, H, W]``), ``boxes``
    (float32 ``Tensor[N, 4]``, ``x1, y1, x2, y2`` pixels), ``labels`` (int64
    ``Tensor[N]``) and ``image_id`` (``index + 1``), as every dataset of
    :mod:`atss_detector.data` returns.
    """

    def __init__(self, split: str, num_images: int, spec: SyntheticSpec = SyntheticSpec(), seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.split, self.num_images, self.spec, self.seed = split, num_images, spec, seed
        self.classes = CLASSES[: spec.num_classes]
        self.category_ids = tuple(range(1, spec.num_classes + 1))  # COCO ids: label + 1

    def __len__(self) -> int:
        return self.num_images

    def render(self, index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        return render(self.spec, self.seed, self.split, index)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        import torch

        image, boxes, labels = self.render(index)
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            "boxes": torch.from_numpy(boxes),
            "labels": torch.from_numpy(labels),
            "image_id": index + 1,
        }

    def coco_dict(self, image_dir: str = "") -> Dict[str, Any]:
        """The split as a COCO-format dict (renders every image once).

        File names are ``{index + 1:06d}.png``, relative to ``image_dir`` if given.
        """
        images, annotations = [], []
        for index in range(self.num_images):
            image, boxes, labels = self.render(index)
            image_id = index + 1
            images.append(
                {
                    "id": image_id,
                    "file_name": os.path.join(image_dir, f"{image_id:06d}.png") if image_dir else f"{image_id:06d}.png",
                    "height": int(image.shape[0]),
                    "width": int(image.shape[1]),
                }
            )
            for box, label in zip(boxes.tolist(), labels.tolist()):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": self.category_ids[label],
                        "bbox": [box[0], box[1], w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": i, "name": name} for i, name in zip(self.category_ids, self.classes)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def coco(self):
        """The split's ground truth as a ``pycocotools.coco.COCO`` object."""
        from .coco import coco_from_dict

        return coco_from_dict(self.coco_dict())

    def export_coco(self, directory: str) -> str:
        """Writes ``directory/annotations.json`` and ``directory/images/*.png``; returns the json path.

        The result loads with :class:`atss_detector.coco.CocoDetection`.
        """
        image_dir = os.path.join(directory, "images")
        os.makedirs(image_dir, exist_ok=True)
        coco = self.coco_dict()
        for index, info in enumerate(coco["images"]):
            image, _, _ = self.render(index)
            Image.fromarray(image).save(os.path.join(image_dir, info["file_name"]))
        path = os.path.join(directory, "annotations.json")
        with open(path, "w") as f:
            json.dump(coco, f)
        return path
