"""Inputs of the benchmarks (and of the tests): COCO-like anchor grids and random GT boxes."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

import atss_ops


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


def random_gt(batch: int, num_gt: int, height: int, width: int, seed: int = 0, device: str = "cpu") -> Tensor:
    """COCO-like GT boxes ``[B, G, 4]``: log-uniform sizes from 8 px to most of the image."""
    g = torch.Generator().manual_seed(seed)
    size = torch.exp(torch.empty(batch, num_gt, 2).uniform_(2.0, 6.3, generator=g))
    size = torch.minimum(size, torch.tensor([width * 0.9, height * 0.9]))
    top_left = torch.rand(batch, num_gt, 2, generator=g) * (torch.tensor([width, height]) - size)
    return torch.cat([top_left, top_left + size], dim=-1).to(device)


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
