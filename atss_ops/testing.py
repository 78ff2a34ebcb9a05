"""Inputs for tests and benchmarks: random COCO-like GT boxes and YOLO's anchor points,
deterministic for a seed. The test suite, the benchmarks and your own tests of code
that calls atss_ops can share them.

    anchors, levels = atss_ops.grid_anchors(800, 1344)
    gt = atss_ops.testing.random_gt(2, 20, 800, 1344, seed=0)  # [2, 20, 4]
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def random_gt(batch: int, num_gt: int, height: int, width: int, seed: int = 0, device: str = "cpu") -> Tensor:
    """COCO-like GT boxes ``Tensor[B, G, 4]`` (``x1, y1, x2, y2``, float32) inside a
    ``height`` x ``width`` image: log-uniform sizes from about 8 px to 90% of the image."""
    g = torch.Generator().manual_seed(seed)
    size = torch.exp(torch.empty(batch, num_gt, 2).uniform_(2.0, 6.3, generator=g))
    size = torch.minimum(size, torch.tensor([width * 0.9, height * 0.9]))
    top_left = torch.rand(batch, num_gt, 2, generator=g) * (torch.tensor([width, height]) - size)
    return torch.cat([top_left, top_left + size], dim=-1).to(device)


def anchor_points(size: int = 640, strides: Sequence[int] = (8, 16, 32)) -> Tensor:
    """YOLO's anchor points ``Tensor[A, 2]`` of a ``size`` x ``size`` image: each stride's
    cell centres ``((i + 0.5) * stride, (j + 0.5) * stride)``, level by level, row-major
    (A = 8,400 at 640)."""
    out = []
    for s in strides:
        n = size // s
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        out.append((torch.stack([xs.flatten(), ys.flatten()], dim=-1) + 0.5) * s)
    return torch.cat(out).float()
