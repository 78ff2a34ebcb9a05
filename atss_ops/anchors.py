"""Anchors on a feature pyramid's grid, in the layout :func:`atss_ops.atss_assign` takes."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["grid_anchors"]


def grid_anchors(
    height: int,
    width: int,
    strides: Sequence[int] = (8, 16, 32, 64, 128),
    scales: Sequence[float] = (8.0,),
    ratios: Sequence[float] = (1.0,),
    *,
    feature_sizes: Optional[Sequence[Tuple[int, int]]] = None,
    device: Union[str, torch.device, None] = None,
) -> Tuple[Tensor, List[int]]:
    """Anchors for a ``height x width`` image on pyramid levels of the given strides.

    Level ``l`` (stride ``s``) has ``ceil(height / s) x ceil(width / s)`` locations
    (or ``feature_sizes[l]``, the ``(h, w)`` of the feature maps a network
    produced). At each location ``(y, x)`` it holds one anchor per
    ``(scale, ratio)`` pair, centred at ``((x + 0.5) * s, (y + 0.5) * s)``, of
    area ``(scale * s) ** 2`` and ``height / width = ratio``. The defaults give
    the ATSS paper's single square anchor of side ``8 * stride`` on P3-P7 (an
    800 x 1344 image gets A = 22,400 anchors).

    Anchors are ordered level by level, then row by row, then by ``(scale,
    ratio)``. With several anchors per location, pass ``topk = k * len(scales) *
    len(ratios)`` to ``atss_assign``, as the original ATSS code does.

    Returns:
        ``(anchors, num_anchors_per_level)``: ``Tensor[A, 4]`` float32 ``x1, y1,
        x2, y2`` on ``device`` (default CPU) and the ``L`` level sizes.
    """
    if not strides or any(s <= 0 for s in strides):
        raise ValueError(f"strides must be positive, got {list(strides)}")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive, got {list(scales)}")
    if not ratios or any(r <= 0 for r in ratios):
        raise ValueError(f"ratios must be positive, got {list(ratios)}")
    if feature_sizes is None:
        feature_sizes = [(-(-int(height) // int(s)), -(-int(width) // int(s))) for s in strides]
    elif len(feature_sizes) != len(strides):
        raise ValueError(f"feature_sizes must give one (h, w) per stride ({len(strides)}), got {len(feature_sizes)}")
    # [#A, 2] (w, h) of the anchors of one location, in strides.
    shapes = torch.tensor([(s / math.sqrt(r), s * math.sqrt(r)) for s in scales for r in ratios], dtype=torch.float32)
    per_level = []
    for (h, w), stride in zip(feature_sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(int(h)), torch.arange(int(w)), indexing="ij")
        centres = (torch.stack([xs, ys], dim=-1).reshape(-1, 1, 2).float() + 0.5) * int(stride)  # [HW, 1, 2]
        half = shapes[None] * int(stride) / 2  # [1, #A, 2]
        per_level.append(torch.cat([centres - half, centres + half], dim=-1).reshape(-1, 4))
    anchors = torch.cat(per_level).to(device) if device is not None else torch.cat(per_level)
    return anchors, [a.shape[0] for a in per_level]
