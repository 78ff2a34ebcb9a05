"""Anchors on the feature pyramid, their validity in padded batches, and the two box codings.

The head regresses either from the anchor box (:class:`BoxCoder`, RetinaNet's
deltas) or from the anchor's centre point (:class:`PointCoder`, FCOS's distances
to the four sides): the paper's "regression starting status", box or point.
Both decode to boxes, for the GIoU loss and at inference.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

import atss_ops


class AnchorGenerator:
    """Anchors of every pyramid level, in the layout the head's outputs use.

    Level ``l`` (stride ``2**l``) gets, at each location ``(y, x)`` of its
    feature map, one anchor per ``(scale, ratio)`` pair centred at
    ``((x + 0.5) * stride, (y + 0.5) * stride)`` with area ``(scale * stride)**2``
    and ``height / width = ratio``. Anchors are ordered level by level, then row
    by row, then by ``(scale, ratio)``: the order of ``atss_assign``'s
    ``num_anchors_per_level`` and of the head's flattened predictions.

    Args:
        strides: stride of each level, finest first.
        scales: anchor size in strides (default one, 8: the ATSS paper's #A=1).
        ratios: anchor aspect ratios ``h / w``.
    """

    def __init__(self, strides: Sequence[int], scales: Sequence[float] = (8.0,), ratios: Sequence[float] = (1.0,)):
        if not strides or any(s <= 0 for s in strides):
            raise ValueError(f"strides must be positive, got {list(strides)}")
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"anchor scales must be positive, got {list(scales)}")
        if not ratios or any(r <= 0 for r in ratios):
            raise ValueError(f"anchor ratios must be positive, got {list(ratios)}")
        self.strides = tuple(int(s) for s in strides)
        self.scales = tuple(float(s) for s in scales)
        self.ratios = tuple(float(r) for r in ratios)
        self._cache: Dict[Tuple, Tuple[Tensor, List[int]]] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.scales) * len(self.ratios)

    def __call__(self, feature_sizes: Sequence[Tuple[int, int]], device: torch.device) -> Tuple[Tensor, List[int]]:
        """``(anchors Tensor[A, 4] float32 on device, num_anchors_per_level)`` for these feature map sizes."""
        if len(feature_sizes) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} feature maps, got {len(feature_sizes)}")
        key = (tuple(tuple(int(v) for v in s) for s in feature_sizes), str(device))
        if key not in self._cache:
            self._cache[key] = atss_ops.grid_anchors(
                0, 0, self.strides, self.scales, self.ratios, feature_sizes=key[0], device=device
            )
        return self._cache[key]


def anchor_validity(anchors: Tensor, image_sizes: Tensor) -> Tensor:
    """``Tensor[B, A]`` bool: the anchor's centre lies inside image b's unpadded area.

    ``image_sizes`` is ``Tensor[B, 2]`` (h, w). Anchors centred in the padding
    are never candidates in the assignment and are ignored by the losses and
    at inference.
    """
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    sizes = image_sizes.to(anchors.device, torch.float32)
    return (cx[None] < sizes[:, 1:2]) & (cy[None] < sizes[:, 0:1])


def anchor_strides(num_anchors_per_level: Sequence[int], strides: Sequence[int], device: torch.device) -> Tensor:
    """``Tensor[A]`` float32: the stride of each anchor's level, in anchor order."""
    if len(num_anchors_per_level) != len(strides):
        raise ValueError(f"expected one anchor count per stride, got {list(num_anchors_per_level)} for {list(strides)}")
    counts = torch.tensor([int(n) for n in num_anchors_per_level], device=device)
    return torch.tensor([float(s) for s in strides], device=device).repeat_interleave(counts)


class BoxCoder:
    """The R-CNN box parametrisation ``(dx, dy, dw, dh)`` relative to an anchor.

    ``dx = wx * (gx - ax) / aw``, ``dw = ww * log(gw / aw)`` etc., with weights
    ``(10, 10, 5, 5)`` as in ATSS. Decoding clamps ``dw, dh`` so that a wild
    prediction cannot overflow ``exp``.
    """

    def __init__(
        self,
        weights: Tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        max_log_scale: float = math.log(1000.0 / 16),
    ):
        self.weights = weights
        self.max_log_scale = max_log_scale

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """Deltas ``[..., 4]`` that turn ``anchors`` into ``boxes`` (both ``[..., 4]`` x1y1x2y2)."""
        wx, wy, ww, wh = self.weights
        aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
        ax, ay = anchors[..., 0] + aw / 2, anchors[..., 1] + ah / 2
        bw, bh = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        bx, by = boxes[..., 0] + bw / 2, boxes[..., 1] + bh / 2
        return torch.stack(
            [wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)], dim=-1
        )

    def decode(self, deltas: Tensor, anchors: Tensor, strides: Optional[Tensor] = None) -> Tensor:
        """Boxes ``[..., 4]`` (x1y1x2y2) from ``deltas`` and ``anchors`` (broadcast together).

        ``strides`` is not used (the anchor box sets the scale); it is taken so that
        both codings are called alike.
        """
        wx, wy, ww, wh = self.weights
        aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
        ax, ay = anchors[..., 0] + aw / 2, anchors[..., 1] + ah / 2
        cx = deltas[..., 0] / wx * aw + ax
        cy = deltas[..., 1] / wy * ah + ay
        w = torch.exp((deltas[..., 2] / ww).clamp(max=self.max_log_scale)) * aw
        h = torch.exp((deltas[..., 3] / wh).clamp(max=self.max_log_scale)) * ah
        return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


class PointCoder:
    """FCOS's parametrisation: the distances from the anchor's centre to the four
    sides of the box, ``(l, t, r, b)``, in units of the level's stride, regressed
    in log space (FCOS's ``exp(s * x)``): ``delta = log(distance / stride)``.

    The anchor's size and shape play no part, only its centre and level. Decoding
    clamps the log-distances like :class:`BoxCoder` does.
    """

    def __init__(self, max_log_distance: float = math.log(1000.0 / 16)):
        self.max_log_distance = max_log_distance

    @staticmethod
    def _centres(anchors: Tensor) -> Tuple[Tensor, Tensor]:
        return (anchors[..., 0] + anchors[..., 2]) / 2, (anchors[..., 1] + anchors[..., 3]) / 2

    def encode(self, boxes: Tensor, anchors: Tensor, strides: Tensor) -> Tensor:
        """``log(distance / stride)`` ``[..., 4]`` of each anchor centre to the sides of ``boxes``
        (``-inf`` or NaN where the centre is not strictly inside the box)."""
        cx, cy = self._centres(anchors)
        distances = torch.stack([cx - boxes[..., 0], cy - boxes[..., 1], boxes[..., 2] - cx, boxes[..., 3] - cy], -1)
        return torch.log(distances / strides[..., None])

    def decode(self, deltas: Tensor, anchors: Tensor, strides: Optional[Tensor] = None) -> Tensor:
        """Boxes ``[..., 4]`` (x1y1x2y2) from ``deltas``, the anchors' centres and
        ``strides`` (``Tensor[...]``, each anchor's level stride; required)."""
        if strides is None:
            raise ValueError("PointCoder.decode needs the strides of the anchors (see anchor_strides)")
        cx, cy = self._centres(anchors)
        distances = torch.exp(deltas.clamp(max=self.max_log_distance)) * strides[..., None]
        return torch.stack(
            [cx - distances[..., 0], cy - distances[..., 1], cx + distances[..., 2], cy + distances[..., 3]], dim=-1
        )


REGRESSIONS = {"box": BoxCoder, "point": PointCoder}


def build_coder(regression: str):
    """The coder of ``regression``: ``"box"`` (:class:`BoxCoder`) or ``"point"`` (:class:`PointCoder`)."""
    if regression not in REGRESSIONS:
        raise ValueError(f"regression must be one of {sorted(REGRESSIONS)}, got {regression!r}")
    return REGRESSIONS[regression]()
