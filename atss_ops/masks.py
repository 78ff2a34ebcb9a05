"""Anchor masks built from boxes, in the layout :func:`atss_ops.atss_assign` takes."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import _validation as V

__all__ = ["ignore_mask"]

# Ignore boxes handled at once: memory is O(B * A * _CHUNK), i.e. O(B * A) per chunk.
_CHUNK = 8

# The IoF denominator is clamped as the IoU's union is (contract step 4) and as
# MMDetection's bbox_overlaps(mode="iof") clamps it.
_AREA_EPS = 1e-6


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _as_float32(name: str, boxes) -> Tensor:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if not boxes.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor (float32), got {boxes.dtype}")
    return boxes.to(torch.float32)


def _check_box_values(name: str, boxes: Tensor, dims: int) -> None:
    """Finite, and upper corner >= lower corner on every axis (``boxes`` is ``[N, 2D]``)."""
    bad = ~torch.isfinite(boxes).all(dim=-1) | (boxes[:, dims:] < boxes[:, :dims]).any(dim=-1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        values = ", ".join(f"{v:g}" for v in boxes[row].tolist())
        raise ValueError(
            f"{name} must be finite with the upper corner >= the lower corner on every axis, got box {row} = [{values}]"
        )


def ignore_mask(
    anchors: Tensor,
    ignore_boxes: Union[Tensor, Sequence[Tensor]],
    ignore_counts: Optional[Tensor] = None,
    iof_threshold: float = 0.5,
) -> Tensor:
    """Anchors covered by "ignore" boxes (crowd, don't-care regions): ``anchor_ignore`` for ``atss_assign``.

    Anchor a is ignored in image b when, for some valid ignore box m of that image,
    the anchor's *intersection over its own area* (IoF) exceeds the threshold::

        inter(a, m) / max(area(a), 1e-6) > iof_threshold

    the meaning of MMDetection's ``ignore_iof_thr``. ``area`` is the volume for
    3-D boxes. Computed in float32 in the order of the contract's IoU (per axis
    ``max(min(hi) - max(lo), 0)``, products in axis order); the comparison is in
    float32 (``iof_threshold`` rounded to float32). Because the denominator is
    clamped, a zero-area (or zero-volume) anchor has IoF 0 and is never ignored;
    an ignore box of zero extent ignores nothing.

    Args:
        anchors: ``Tensor[A, 4]`` (``x1, y1, x2, y2``) or ``Tensor[A, 6]``
            (``x1, y1, z1, x2, y2, z2``), float32 (other floating dtypes are
            converted). The same anchors as given to ``atss_assign``.
        ignore_boxes: ``Tensor[B, M, 4 or 6]`` (same layout and D as the anchors),
            padded to M per image, or a list of ``Tensor[M_i, 4 or 6]``, one per
            image (padded here, as ``atss_assign`` pads a list of GT boxes; then
            ``ignore_counts`` must be None).
        ignore_counts: optional ``Tensor[B]`` of integers: image b uses
            ``ignore_boxes[b, :ignore_counts[b]]``; the rest is padding, never read
            (NaN is fine). ``None``: all M boxes are valid.
        iof_threshold: in ``[0, 1]``; the IoF must be strictly greater.

    Returns:
        ``Tensor[B, A]`` bool on the anchors' device: pass it as
        ``atss_assign(..., anchor_ignore=mask)`` (ignored anchors come out as -2).

    Raises:
        ValueError (TypeError for a non-tensor) naming the argument and the value:
        wrong shapes or D, devices that differ, non-floating boxes, non-integer or
        out-of-range ``ignore_counts``, non-finite or inverted boxes (anchors, and
        the valid ignore boxes), a threshold outside ``[0, 1]``.

    Complexity: time O(B·M·A); memory O(B·A) per chunk of 8 ignore boxes (no
    ``[B, M, A]`` tensor). The value checks read the data: on CUDA they cost one
    device-to-host sync.
    """
    if not isinstance(ignore_boxes, Tensor) and isinstance(ignore_boxes, (list, tuple)):
        if ignore_counts is not None:
            raise ValueError("ignore_counts must be None when ignore_boxes is a list: the counts come from the list")
        from .ops import pad_boxes

        ignore_boxes, ignore_counts = pad_boxes(ignore_boxes, "ignore_boxes")
    anchors = _as_float32("anchors", anchors)
    ignore_boxes = _as_float32("ignore_boxes", ignore_boxes)
    if anchors.dim() != 2 or anchors.shape[1] not in (4, 6):
        raise ValueError(f"anchors must have shape [A, 4] or [A, 6], got shape {_shape(anchors)}")
    dims = anchors.shape[1] // 2
    if ignore_boxes.dim() != 3 or ignore_boxes.shape[2] != 2 * dims:
        raise ValueError(
            f"ignore_boxes must have shape [B, M, {2 * dims}] (anchors are [A, {2 * dims}]), "
            f"got shape {_shape(ignore_boxes)}"
        )
    if ignore_boxes.device != anchors.device:
        raise ValueError(
            f"ignore_boxes is on {ignore_boxes.device} but anchors is on {anchors.device}: "
            "all tensors must be on one device"
        )
    V.check_iof_threshold(iof_threshold)
    B, M, _ = ignore_boxes.shape
    A = anchors.shape[0]
    if ignore_counts is None:
        box_valid = torch.ones(B, M, dtype=torch.bool, device=anchors.device)
    else:
        if not isinstance(ignore_counts, Tensor):
            raise TypeError(f"ignore_counts must be a torch.Tensor or None, got {type(ignore_counts).__name__}")
        if ignore_counts.dtype.is_floating_point or ignore_counts.dtype == torch.bool or ignore_counts.is_complex():
            raise ValueError(f"ignore_counts must hold integers (int64), got {ignore_counts.dtype}")
        if ignore_counts.shape != (B,):
            raise ValueError(f"ignore_counts must have shape [B] = [{B}], got shape {_shape(ignore_counts)}")
        if ignore_counts.device != anchors.device:
            raise ValueError(
                f"ignore_counts is on {ignore_counts.device} but anchors is on {anchors.device}: "
                "all tensors must be on one device"
            )
        out_of_range = (ignore_counts < 0) | (ignore_counts > M)
        if bool(out_of_range.any()):
            b = int(out_of_range.nonzero()[0, 0])
            raise ValueError(
                f"ignore_counts must be in [0, M] = [0, {M}], got ignore_counts[{b}] = {int(ignore_counts[b])}"
            )
        box_valid = torch.arange(M, device=anchors.device)[None, :] < ignore_counts[:, None].to(torch.int64)
    _check_box_values("anchors", anchors, dims)
    _check_box_values("ignore_boxes", ignore_boxes[box_valid], dims)

    mask = torch.zeros(B, A, dtype=torch.bool, device=anchors.device)
    if B == 0 or M == 0 or A == 0:
        return mask
    # Padding rows become empty boxes, which ignore nothing; NaN never reaches the arithmetic.
    boxes = torch.where(box_valid[..., None], ignore_boxes, torch.zeros((), device=anchors.device))
    lo, hi = anchors[:, :dims], anchors[:, dims:]
    extent = hi - lo
    area = extent[:, 0]
    for axis in range(1, dims):
        area = area * extent[:, axis]
    area = torch.clamp(area, min=_AREA_EPS)
    for start in range(0, M, _CHUNK):
        chunk = boxes[:, start : start + _CHUNK, None, :]  # [B, c, 1, 2D]
        inter = None
        for axis in range(dims):
            overlap = torch.minimum(hi[:, axis], chunk[..., dims + axis]) - torch.maximum(lo[:, axis], chunk[..., axis])
            overlap = torch.clamp(overlap, min=0)  # [B, c, A]
            inter = overlap if inter is None else inter * overlap
        mask |= (inter / area > iof_threshold).any(dim=1)
    return mask
