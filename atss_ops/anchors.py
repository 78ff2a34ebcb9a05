"""Anchors on a feature pyramid's grid, in the layout :func:`atss_ops.atss_assign` takes (2-D and 3-D)."""

from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["grid_anchors"]


def grid_anchors(
    height: Union[int, Sequence[int]],
    width: Optional[int] = None,
    strides: Sequence[Union[int, Sequence[int]]] = (8, 16, 32, 64, 128),
    scales: Sequence[float] = (8.0,),
    ratios: Optional[Sequence] = None,
    *,
    feature_sizes: Optional[Sequence[Sequence[int]]] = None,
    device: Union[str, torch.device, None] = None,
) -> Tuple[Tensor, List[int]]:
    """Anchors for a ``height x width`` image, or a 3-D volume, on pyramid levels of the given strides.

    **2-D**, ``grid_anchors(height, width, strides, scales, ratios)``: level ``l``
    (stride ``s``) has ``ceil(height / s) x ceil(width / s)`` locations (or
    ``feature_sizes[l]``, the ``(h, w)`` of the feature maps a network
    produced). At each location ``(y, x)`` it holds one anchor per ``(scale,
    ratio)`` pair, centred at ``((x + 0.5) * s, (y + 0.5) * s)``, of area
    ``(scale * s) ** 2`` and ``height / width = ratio`` (default ``ratios=(1.0,)``).
    Anchors are ordered level by level, then row by row (y slowest), then by
    ``(scale, ratio)``, scale by scale. Boxes ``x1, y1, x2, y2``.

    **3-D**, ``grid_anchors((S0, S1, S2), strides=..., scales, ratios)``: a volume
    whose axis ``i`` goes with box coordinates ``i`` and ``i + 3`` (MONAI's
    "xyzxyz": ``x1, y1, z1, x2, y2, z2``, x along axis 0). A stride is one int
    (the same on every axis) or a triple ``(s0, s1, s2)``. Level ``l`` has
    ``ceil(S_i / s_i)`` locations along axis ``i`` (or ``feature_sizes[l]``, a
    triple), centred at ``(k + 0.5) * s_i``. Each ratio is a pair ``(r1, r2)``,
    MONAI's ``AnchorGenerator`` convention ``extent_0 : extent_1 : extent_2 = 1 :
    r1 : r2`` at constant volume (default ``ratios=((1.0, 1.0),)``, cubes); the
    anchor of ``(scale, (r1, r2))`` has ``extent_i = scale * s_i * f_i`` with ``f
    = (1, r1, r2) / cbrt(r1 * r2)``: a cube of side ``scale * s`` for isotropic
    strides, as MONAI's ``AnchorGenerator(sizes=scale * s, aspect_ratios)``.
    Anchors are ordered as MONAI's ``AnchorGenerator`` (``indexing="ij"``) orders
    them, which is also the order a MONAI head's flattened outputs use: level by
    level, then location by location with axis 0 slowest and axis 2 fastest,
    then ratio by ratio and, within a ratio, scale by scale. (MONAI puts centres
    at ``k * s + s // 2`` and rounds the extents to even integers: the same
    anchors for even strides and extents.)

    The defaults give the ATSS paper's single square anchor of side ``8 *
    stride`` on P3-P7 (an 800 x 1344 image gets A = 22,400 anchors). With
    several anchors per location, pass ``topk = k * len(scales) * len(ratios)``
    to ``atss_assign``, as the original ATSS code does.

    Args:
        height: the image height (2-D), or the volume size ``(S0, S1, S2)`` (3-D).
        width: the image width (2-D); must be left out in 3-D.
        strides: one per level, positive ints (3-D: an int or a triple each).
        scales: anchor sizes in strides, positive.
        ratios: 2-D: ``height / width`` per anchor shape; 3-D: ``(r1, r2)`` pairs; positive.
        feature_sizes: the feature maps' sizes, one ``(h, w)`` (2-D) or
            ``(n0, n1, n2)`` (3-D) per level, instead of the ceil division.
        device: where the anchors go (default CPU).

    Returns:
        ``(anchors, num_anchors_per_level)``: ``Tensor[A, 4]`` (2-D) or
        ``Tensor[A, 6]`` (3-D) float32 on ``device`` and the ``L`` level sizes.

    Raises:
        ValueError naming the argument and the value: non-positive sizes,
        strides, scales or ratios, a 3-D ratio that is not a pair, a stride
        triple in 2-D, ``feature_sizes`` of the wrong length.
    """
    if isinstance(height, (tuple, list, torch.Size)):
        if width is not None:
            raise ValueError(
                f"width must be left out with a 3-D volume size (height = {tuple(height)}), got width = {width!r}: "
                "pass strides by keyword, grid_anchors((S0, S1, S2), strides=(...))"
            )
        if len(height) != 3:
            raise ValueError(
                f"a volume size must be 3 ints (S0, S1, S2), got {tuple(height)}; "
                "for a 2-D image call grid_anchors(height, width, ...)"
            )
        return _grid_anchors_3d(tuple(height), strides, scales, ratios, feature_sizes, device)
    if width is None:
        raise ValueError(
            f"width is missing: grid_anchors(height, width, ...) in 2-D or grid_anchors((S0, S1, S2), ...) "
            f"in 3-D, got height = {height!r} alone"
        )
    ratios = (1.0,) if ratios is None else ratios
    _check_positive("strides", strides)
    _check_positive("scales", scales)
    _check_positive("ratios", ratios)
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


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_positive(name: str, values) -> None:
    if (
        isinstance(values, (str, bytes))
        or not isinstance(values, Sequence)
        or not values
        or not all(_is_number(v) and v > 0 for v in values)
    ):
        shown = list(values) if isinstance(values, Sequence) and not isinstance(values, str) else values
        raise ValueError(f"{name} must be a non-empty sequence of positive numbers, got {shown!r}")


def _triples(name: str, values, what: str) -> List[Tuple]:
    """Each entry an int (the same on every axis) or a triple, positive."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty sequence, one {what} per level, got {values!r}")
    out = []
    for v in values:
        triple = (v, v, v) if _is_number(v) else tuple(v) if isinstance(v, Sequence) else None
        if triple is None or len(triple) != 3 or not all(_is_number(t) and t > 0 for t in triple):
            raise ValueError(f"{name} must hold positive ints or triples of them (3-D), got {list(values)!r}")
        out.append(tuple(int(t) for t in triple))
    return out


def _grid_anchors_3d(size, strides, scales, ratios, feature_sizes, device) -> Tuple[Tensor, List[int]]:
    if not all(_is_number(s) and s > 0 for s in size):
        raise ValueError(f"the volume size (S0, S1, S2) must be positive ints, got {size!r}")
    strides = _triples("strides", strides, "stride")
    _check_positive("scales", scales)
    ratios = ((1.0, 1.0),) if ratios is None else ratios
    if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Sequence) or not ratios:
        raise ValueError(f"ratios must be a non-empty sequence of (r1, r2) pairs (3-D), got {ratios!r}")
    for r in ratios:
        if not (isinstance(r, Sequence) and len(r) == 2 and all(_is_number(v) and v > 0 for v in r)):
            raise ValueError(
                f"ratios must be (r1, r2) pairs of positive numbers in 3-D (extents 1 : r1 : r2 along axes "
                f"0, 1, 2, MONAI's convention), got {list(ratios)!r}"
            )
    if feature_sizes is None:
        feature_sizes = [tuple(-(-int(n) // s) for n, s in zip(size, st)) for st in strides]
    else:
        if len(feature_sizes) != len(strides):
            raise ValueError(
                f"feature_sizes must give one (n0, n1, n2) per stride ({len(strides)}), got {len(feature_sizes)}"
            )
        if any(len(f) != 3 for f in feature_sizes):
            raise ValueError(f"feature_sizes must be (n0, n1, n2) triples in 3-D, got {list(feature_sizes)!r}")
    # [#A, 3] extents of one location's anchors in strides: ratio by ratio, then scale by scale (MONAI's order).
    factors = []
    for r1, r2 in ratios:
        root = (r1 * r2) ** (1.0 / 3.0)
        root = round(root) if abs(root - round(root)) < 1e-12 else root  # exact for perfect cubes (1, 8, ...)
        factors.append((1.0 / root, r1 / root, r2 / root))
    shapes = torch.tensor([[sc * f for f in fac] for fac in factors for sc in scales], dtype=torch.float64)
    per_level = []
    for sizes, stride in zip(feature_sizes, strides):
        axes = [torch.arange(int(n), dtype=torch.float64) for n in sizes]
        grid = torch.meshgrid(*axes, indexing="ij")
        step = torch.tensor(stride, dtype=torch.float64)
        centres = ((torch.stack([g.reshape(-1) for g in grid], dim=-1) + 0.5) * step)[:, None, :]  # [N, 1, 3]
        half = (shapes * step / 2)[None]  # [1, #A, 3]
        level = torch.cat([centres - half, centres + half], dim=-1).reshape(-1, 6).to(torch.float32)
        per_level.append(level)
    anchors = torch.cat(per_level) if per_level else torch.zeros(0, 6)
    if device is not None:
        anchors = anchors.to(device)
    return anchors, [a.shape[0] for a in per_level]
