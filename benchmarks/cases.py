"""Inputs of the benchmarks: COCO-like anchor grids, random GT boxes (atss_ops.testing), the cases' sizes."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

import atss_ops
from atss_ops.testing import anchor_points, random_gt  # noqa: F401  (the benchmarks take them from here)


def grid_anchors(
    height: int,
    width: int,
    strides: Sequence[int] = (8, 16, 32, 64, 128),
    scale: float = 8.0,
    device: str = "cpu",
) -> Tuple[Tensor, List[int]]:
    """One square ``scale * stride`` anchor per location of each level, level by level
    (:func:`atss_ops.grid_anchors` with one scale and ratio 1).

    An 800x1344 image with strides 8..128 gives A = 22,400 anchors.
    """
    return atss_ops.grid_anchors(height, width, strides, scales=(scale,), device=device)


# name: (B, G, height, width, strides)
GPU_CASES = {
    "coco-g20": (16, 20, 800, 1344, (8, 16, 32, 64, 128)),
    "coco-g100": (16, 100, 800, 1344, (8, 16, 32, 64, 128)),
    "yolo-640": (64, 50, 640, 640, (8, 16, 32)),
    "crowd": (8, 500, 800, 1344, (8, 16, 32, 64, 128)),
    "aerial": (2, 1000, 1600, 2560, (8, 16, 32, 64, 128)),
}

CPU_CASES = {
    "coco-b2-g20": (2, 20, 800, 1344, (8, 16, 32, 64, 128)),
    "coco-b8-g50": (8, 50, 800, 1344, (8, 16, 32, 64, 128)),
    "crowd-b2-g500": (2, 500, 800, 1344, (8, 16, 32, 64, 128)),
}


# --------------------------------------------------------------------------- 3-D: MONAI's LUNA16 setting

# A 192 x 192 x 80 patch (x, y, z), three anchor shapes per location on levels of 48 x 48 x 40,
# 24 x 24 x 20 and 12 x 12 x 10 locations (strides (4, 4, 2), (8, 8, 4), (16, 16, 8)): A = 315,360,
# modelled on MONAI's LUNA16 detection tutorial (base anchor shapes (6, 8, 4), (8, 6, 5), (10, 10, 6),
# doubled on each coarser level).
LUNA16_PATCH = (192, 192, 80)
LUNA16_LEVELS = ((48, 48, 40), (24, 24, 20), (12, 12, 10))
LUNA16_SHAPES = ((6.0, 8.0, 4.0), (8.0, 6.0, 5.0), (10.0, 10.0, 6.0))


def luna16_anchors(device: str = "cpu") -> Tuple[Tensor, List[int]]:
    """The 3-D anchors ``[315360, 6]`` (``x1, y1, z1, x2, y2, z2``), level by level, location-major
    (z, then y, then x), the three shapes of a location consecutive; and the level sizes."""
    boxes, counts = [], []
    for level, (nx, ny, nz) in enumerate(LUNA16_LEVELS):
        stride = torch.tensor([LUNA16_PATCH[0] / nx, LUNA16_PATCH[1] / ny, LUNA16_PATCH[2] / nz])
        zs, ys, xs = torch.meshgrid(torch.arange(nz), torch.arange(ny), torch.arange(nx), indexing="ij")
        centre = (torch.stack([xs, ys, zs], dim=-1).reshape(-1, 3).float() + 0.5) * stride
        half = torch.tensor(LUNA16_SHAPES) * (2**level) / 2
        level_boxes = torch.cat([centre[:, None] - half[None], centre[:, None] + half[None]], dim=-1).reshape(-1, 6)
        boxes.append(level_boxes)
        counts.append(level_boxes.shape[0])
    return torch.cat(boxes).to(device), counts


def random_nodules(batch: int, num_gt: int, seed: int = 0, device: str = "cpu") -> Tensor:
    """LUNA16-like GT boxes ``[B, G, 6]`` inside the patch: nodules of 3 to 30 voxels per axis."""
    g = torch.Generator().manual_seed(seed)
    patch = torch.tensor(LUNA16_PATCH, dtype=torch.float32)
    size = torch.exp(torch.empty(batch, num_gt, 3).uniform_(1.1, 3.4, generator=g))
    lo = torch.rand(batch, num_gt, 3, generator=g) * (patch - size)
    return torch.cat([lo, lo + size], dim=-1).to(device)
