"""Input checks: the one home of every validation rule and message in Python.

The public wrappers (:mod:`atss_ops.ops`), the fake kernels
(:mod:`atss_ops._fake`) and the reference (:mod:`atss_ops.reference`) all call
these functions. The messages are word for word those of
``csrc/common/checks.cpp``, and the ``check_<op>_args`` functions run the
checks in the order of their C++ namesakes, so a caller sees the same error
whichever implementation runs (``tests/test_error_parity.py``).

Structural checks (shape, dtype, device, level sizes, ``topk``) read no tensor
data. Value checks (finite boxes, ``x2 >= x1``, ``gt_counts`` in range,
candidate indices in range) read the data, which on a GPU costs a
device-to-host sync: the public API runs them on CUDA only when asked
(``check_inputs=True``).
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import torch
from torch import Tensor


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _fail(msg: str) -> None:
    raise ValueError(msg)


def check_same_device(**tensors: Optional[Tensor]) -> None:
    named = [(n, t) for n, t in tensors.items() if t is not None]
    if not named:
        return
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            _fail(f"{name} is on {t.device} but {first_name} is on {first.device}: all tensors must be on one device")


# Anchor indices travel as 32 bits inside the kernels' packed sort keys.
MAX_ANCHORS = 2**31 - 1


def check_num_anchors(num_anchors: int) -> None:
    if num_anchors > MAX_ANCHORS:
        _fail(f"anchors must hold at most 2^31 - 1 anchors, got A = {num_anchors}")


def check_anchors(anchors: Tensor) -> None:
    if not isinstance(anchors, Tensor):
        raise TypeError(f"anchors must be a torch.Tensor, got {type(anchors).__name__}")
    if anchors.dim() != 2 or anchors.shape[1] not in (4, 6):
        _fail(f"anchors must have shape [A, 4] (2-D) or [A, 6] (3-D), got shape {_shape(anchors)}")
    if anchors.dtype != torch.float32:
        _fail(f"anchors must be float32, got {anchors.dtype}")
    check_num_anchors(anchors.shape[0])


def check_gt_boxes(gt_boxes: Tensor) -> None:
    if not isinstance(gt_boxes, Tensor):
        raise TypeError(f"gt_boxes must be a torch.Tensor, got {type(gt_boxes).__name__}")
    if gt_boxes.dim() != 3 or gt_boxes.shape[2] not in (4, 6):
        _fail(f"gt_boxes must have shape [B, G, 4] (2-D) or [B, G, 6] (3-D), got shape {_shape(gt_boxes)}")


def check_same_dims(anchors: Tensor, gt_boxes: Tensor) -> None:
    if anchors.shape[-1] != gt_boxes.shape[-1]:
        a = "2-D ([A, 4])" if anchors.shape[-1] == 4 else "3-D ([A, 6])"
        g = "2-D ([B, G, 4])" if gt_boxes.shape[-1] == 4 else "3-D ([B, G, 6])"
        _fail(f"anchors and gt_boxes must have the same number of axes: anchors are {a}, gt_boxes are {g}")
    if gt_boxes.dtype != torch.float32:
        _fail(f"gt_boxes must be float32, got {gt_boxes.dtype}")


def check_levels(num_anchors_per_level: Sequence[int], num_anchors: int) -> None:
    levels = list(num_anchors_per_level)
    if any(int(n) < 0 for n in levels):
        _fail(f"num_anchors_per_level entries must be >= 0, got {levels}")
    total = sum(int(n) for n in levels)
    if total != num_anchors:
        _fail(
            f"num_anchors_per_level must sum to A = {num_anchors} (anchors.shape[0]), got {levels} summing to {total}"
        )


def check_topk(topk: int) -> None:
    check_topk_type(topk)
    if topk < 1:
        _fail(f"topk must be >= 1, got {topk}")


def check_topk_type(topk: int) -> None:
    # Any integer (numpy's too, through __index__), never a float or a bool.
    integral = isinstance(topk, torch.SymInt) or hasattr(type(topk), "__index__")
    if isinstance(topk, bool) or not integral:
        _fail(f"topk must be an int, got {type(topk).__name__} {topk!r}")


def check_center_eps_type(center_eps) -> None:
    """A Python number or None (never a bool): what the public functions accept."""
    if center_eps is not None and (isinstance(center_eps, bool) or not isinstance(center_eps, numbers.Real)):
        _fail(f"center_eps must be a number or None, got {type(center_eps).__name__} {center_eps!r}")


def check_bool(value, name: str) -> None:
    if not isinstance(value, bool):
        _fail(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def check_iof_threshold(iof_threshold) -> None:
    """The IoF above which an anchor counts as ignored (:func:`atss_ops.ignore_mask`)."""
    number = not isinstance(iof_threshold, bool) and isinstance(iof_threshold, numbers.Real)
    if not (number and math.isfinite(iof_threshold) and 0.0 <= iof_threshold <= 1.0):
        _fail(f"iof_threshold must be a number in [0, 1], got {type(iof_threshold).__name__} {iof_threshold!r}")


def check_center_eps(center_eps: Optional[float]) -> None:
    if center_eps is None:
        return
    if not (math.isfinite(center_eps) and center_eps >= 0):
        _fail(f"center_eps must be finite and >= 0 (or None: no centre test), got {center_eps:g}")


def check_gt_counts_type(gt_counts) -> None:
    if gt_counts is not None and not isinstance(gt_counts, Tensor):
        _fail(f"gt_counts must be a Tensor[B] of int64 or None, got {type(gt_counts).__name__} {gt_counts!r}")


def check_gt_counts(gt_counts: Optional[Tensor], batch: int) -> None:
    if gt_counts is None:
        return
    check_gt_counts_type(gt_counts)
    if gt_counts.dim() != 1 or gt_counts.shape[0] != batch:
        _fail(f"gt_counts must have shape [B] = [{batch}], got shape {_shape(gt_counts)}")
    if gt_counts.dtype != torch.int64:
        _fail(f"gt_counts must be int64, got {gt_counts.dtype}")


def check_anchor_mask(mask: Optional[Tensor], name: str, batch: int, num_anchors: int) -> None:
    """``anchor_valid`` or ``anchor_ignore``: None or a ``Tensor[B, A]`` of bool."""
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        _fail(f"{name} must be a Tensor[B, A] of bool or None, got {type(mask).__name__}")
    if mask.dim() != 2 or tuple(mask.shape) != (batch, num_anchors):
        _fail(f"{name} must have shape [B, A] = [{batch}, {num_anchors}], got shape {_shape(mask)}")
    if mask.dtype != torch.bool:
        _fail(f"{name} must be bool, got {mask.dtype}")


def check_anchor_valid(anchor_valid: Optional[Tensor], batch: int, num_anchors: int) -> None:
    check_anchor_mask(anchor_valid, "anchor_valid", batch, num_anchors)


def check_anchor_ignore(anchor_ignore: Optional[Tensor], batch: int, num_anchors: int) -> None:
    check_anchor_mask(anchor_ignore, "anchor_ignore", batch, num_anchors)


def usable_mask(anchor_valid: Optional[Tensor], anchor_ignore: Optional[Tensor]) -> Optional[Tensor]:
    """``[B, A]`` bool: valid and not ignored (None when neither mask is given)."""
    if anchor_ignore is None:
        return anchor_valid
    if anchor_valid is None:
        return ~anchor_ignore
    return anchor_valid & ~anchor_ignore


def check_distances(distances: Tensor) -> None:
    if distances.dim() != 3:
        _fail(f"distances must have shape [B, G, A], got shape {_shape(distances)}")
    if distances.dtype != torch.float32:
        _fail(f"distances must be float32, got {distances.dtype}")
    check_num_anchors(distances.shape[2])


def check_candidates(candidates: Tensor, batch: int, num_gt: int) -> None:
    if candidates.dim() != 3 or tuple(candidates.shape[:2]) != (batch, num_gt):
        _fail(f"candidates must have shape [B, G, C] with B = {batch}, G = {num_gt}, got shape {_shape(candidates)}")
    if candidates.dtype != torch.int64:
        _fail(f"candidates must be int64, got {candidates.dtype}")


def check_candidate_like(t: Tensor, name: str, candidates: Tensor, dtype: torch.dtype) -> None:
    if tuple(t.shape) != tuple(candidates.shape):
        _fail(f"{name} must have the shape of candidates {_shape(candidates)}, got shape {_shape(t)}")
    if t.dtype != dtype:
        _fail(f"{name} must be {str(dtype).replace('torch.', '')}, got {t.dtype}")


# --- every structural check of one op, in the order of csrc/common/checks.cpp ---


def check_center_distance_args(anchors: Tensor, gt_boxes: Tensor, gt_counts: Optional[Tensor]) -> None:
    check_anchors(anchors)
    check_gt_boxes(gt_boxes)
    check_same_dims(anchors, gt_boxes)
    check_same_device(anchors=anchors, gt_boxes=gt_boxes, gt_counts=gt_counts)
    check_gt_counts(gt_counts, gt_boxes.shape[0])


def check_topk_per_level_args(
    distances: Tensor,
    num_anchors_per_level: Sequence[int],
    topk: int,
    gt_counts: Optional[Tensor],
    anchor_valid: Optional[Tensor],
    anchor_ignore: Optional[Tensor] = None,
) -> None:
    check_distances(distances)
    check_same_device(distances=distances, gt_counts=gt_counts, anchor_valid=anchor_valid, anchor_ignore=anchor_ignore)
    check_levels(num_anchors_per_level, distances.shape[2])
    check_topk(topk)
    check_gt_counts(gt_counts, distances.shape[0])
    check_anchor_valid(anchor_valid, distances.shape[0], distances.shape[2])
    check_anchor_ignore(anchor_ignore, distances.shape[0], distances.shape[2])


def check_iou_statistics_args(
    anchors: Tensor, gt_boxes: Tensor, candidates: Tensor, gt_counts: Optional[Tensor], center_eps: Optional[float]
) -> None:
    check_anchors(anchors)
    check_gt_boxes(gt_boxes)
    check_same_dims(anchors, gt_boxes)
    check_candidates(candidates, gt_boxes.shape[0], gt_boxes.shape[1])
    check_same_device(anchors=anchors, gt_boxes=gt_boxes, candidates=candidates, gt_counts=gt_counts)
    check_gt_counts(gt_counts, gt_boxes.shape[0])
    check_center_eps(center_eps)


def check_resolve_multi_gt_args(
    candidates: Tensor,
    candidate_iou: Tensor,
    is_positive: Tensor,
    num_anchors: int,
    anchor_ignore: Optional[Tensor] = None,
) -> None:
    batch = candidates.shape[0] if candidates.dim() > 0 else 0
    num_gt = candidates.shape[1] if candidates.dim() > 1 else 0
    check_candidates(candidates, batch, num_gt)
    check_candidate_like(candidate_iou, "candidate_iou", candidates, torch.float32)
    check_candidate_like(is_positive, "is_positive", candidates, torch.bool)
    check_same_device(
        candidates=candidates, candidate_iou=candidate_iou, is_positive=is_positive, anchor_ignore=anchor_ignore
    )
    if num_anchors < 0:
        _fail(f"num_anchors must be >= 0, got {num_anchors}")
    check_num_anchors(num_anchors)
    check_anchor_ignore(anchor_ignore, batch, num_anchors)


def _box_str(row: Tensor) -> str:
    return "[" + ", ".join(f"{v:g}" for v in row.tolist()) + "]"


# What a box whose upper corner lies below its lower one is told, per D.
MISORDERED = {2: "has x2 < x1 or y2 < y1", 3: "has x2 < x1, y2 < y1 or z2 < z1"}


def _check_boxes_values(name: str, boxes: Tensor, valid: Optional[Tensor]) -> None:
    """Finite and ordered, for the rows where ``valid`` holds (all when None)."""
    D = boxes.shape[-1] // 2
    finite = torch.isfinite(boxes).all(dim=-1)
    ordered = (boxes[..., D:] >= boxes[..., :D]).all(dim=-1)
    bad_finite = ~finite
    bad_order = finite & ~ordered
    if valid is not None:
        bad_finite &= valid
        bad_order &= valid
    for bad, what in ((bad_finite, "is not finite"), (bad_order, MISORDERED[D])):
        if bool(bad.any()):
            where = bad.nonzero()[0].tolist()
            idx = ", ".join(str(i) for i in where)
            _fail(f"{name}[{idx}] = {_box_str(boxes[tuple(where)])} {what}")


def check_candidate_values(candidates: Tensor, num_anchors: int) -> None:
    bad = (candidates < -1) | (candidates >= num_anchors)
    if bool(bad.any()):
        where = bad.nonzero()[0].tolist()
        idx = ", ".join(str(i) for i in where)
        _fail(f"candidates[{idx}] = {int(candidates[tuple(where)])} is out of range [-1, A) with A = {num_anchors}")


def check_gt_counts_values(gt_counts: Optional[Tensor], num_gt: int) -> None:
    if gt_counts is None or gt_counts.numel() == 0:
        return
    bad = (gt_counts < 0) | (gt_counts > num_gt)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        _fail(f"gt_counts[{b}] = {int(gt_counts[b])} is out of range [0, G = {num_gt}]")


def gt_valid_mask(batch: int, num_gt: int, gt_counts: Optional[Tensor], device) -> Tensor:
    """``[B, G]`` bool: True for the boxes that are not padding."""
    if gt_counts is None:
        return torch.ones(batch, num_gt, dtype=torch.bool, device=device)
    return torch.arange(num_gt, device=device)[None, :] < gt_counts[:, None]


def check_box_values(anchors: Tensor, gt_boxes: Tensor, gt_counts: Optional[Tensor]) -> None:
    """Value checks on anchors, the valid GT boxes and ``gt_counts`` (reads data)."""
    check_gt_counts_values(gt_counts, gt_boxes.shape[1])
    _check_boxes_values("anchors", anchors, None)
    valid = gt_valid_mask(gt_boxes.shape[0], gt_boxes.shape[1], gt_counts, gt_boxes.device)
    _check_boxes_values("gt_boxes", gt_boxes, valid)


def check_assign_inputs(
    anchors: Tensor,
    num_anchors_per_level: Sequence[int],
    gt_boxes: Tensor,
    gt_counts: Optional[Tensor],
    topk: int,
    anchor_valid: Optional[Tensor],
    center_eps: Optional[float],
    anchor_ignore: Optional[Tensor] = None,
    *,
    values: bool,
) -> None:
    """Every check of ``atss_assign``; ``values=False`` keeps to the ones that read no data."""
    check_atss_assign_args(
        anchors, num_anchors_per_level, gt_boxes, gt_counts, topk, anchor_valid, center_eps, anchor_ignore
    )
    if values:
        check_box_values(anchors, gt_boxes, gt_counts)


def check_atss_assign_args(
    anchors: Tensor,
    num_anchors_per_level: Sequence[int],
    gt_boxes: Tensor,
    gt_counts: Optional[Tensor],
    topk: int,
    anchor_valid: Optional[Tensor],
    center_eps: Optional[float],
    anchor_ignore: Optional[Tensor] = None,
) -> None:
    check_anchors(anchors)
    check_gt_boxes(gt_boxes)
    check_same_dims(anchors, gt_boxes)
    check_same_device(
        anchors=anchors, gt_boxes=gt_boxes, gt_counts=gt_counts, anchor_valid=anchor_valid, anchor_ignore=anchor_ignore
    )
    check_levels(num_anchors_per_level, anchors.shape[0])
    check_topk(topk)
    check_center_eps(center_eps)
    check_gt_counts(gt_counts, gt_boxes.shape[0])
    check_anchor_valid(anchor_valid, gt_boxes.shape[0], anchors.shape[0])
    check_anchor_ignore(anchor_ignore, gt_boxes.shape[0], anchors.shape[0])


# --------------------------------------------------------------------------- tal_assign (TAL contract v1)

# The largest power alpha and beta may take (the contract's routine P, docs/contract.md).
MAX_POWER = 1024.0


def _check_float32(t: Tensor, name: str) -> None:
    if t.dtype != torch.float32:
        _fail(f"{name} must be float32, got {t.dtype}")


def _check_tensor(t, name: str, shape: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}, got {type(t).__name__}")


def check_power(value: float, name: str) -> None:
    """alpha, beta: a multiple of 0.5 in [0, MAX_POWER] (the powers with a portable routine)."""
    ok = math.isfinite(value) and 0 <= value <= MAX_POWER and float(value) * 2 == math.floor(float(value) * 2)
    if not ok:
        _fail(
            f"{name} must be a multiple of 0.5 in [0, 1024] (0, 0.5, 1, 1.5, ...: the powers the "
            f"contract computes exactly), got {value:g}"
        )


def check_tal_options(topk: int, alpha: float, beta: float, min_side: Optional[float], topk2, eps: float) -> None:
    check_topk(topk)
    if topk2 is not None and topk2 < 1:
        _fail(f"topk2 must be >= 1 (or None: no second filter), got {topk2}")
    check_power(alpha, "alpha")
    check_power(beta, "beta")
    if min_side is not None and not (math.isfinite(min_side) and min_side > 0):
        _fail(f"min_side must be finite and > 0 (or None: no widening), got {min_side:g}")
    if not (math.isfinite(eps) and eps >= 0):
        _fail(f"eps must be finite and >= 0, got {eps:g}")


def check_tal_assign_args(
    pred_scores: Tensor,
    pred_boxes: Tensor,
    anchor_points: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_counts: Optional[Tensor],
    topk: int,
    alpha: float,
    beta: float,
    min_side: Optional[float],
    topk2: Optional[int],
    eps: float,
) -> None:
    """Every structural check of ``tal_assign``, in the order of ``check_tal_assign_args`` in checks.cpp."""
    _check_tensor(pred_scores, "pred_scores", "[B, A, C]")
    if pred_scores.dim() != 3:
        _fail(f"pred_scores must have shape [B, A, C], got shape {_shape(pred_scores)}")
    _check_float32(pred_scores, "pred_scores")
    B, A = pred_scores.shape[:2]
    check_num_anchors(A)
    _check_tensor(pred_boxes, "pred_boxes", "[B, A, 4]")
    if tuple(pred_boxes.shape) != (B, A, 4):
        _fail(f"pred_boxes must have shape [B, A, 4] = [{B}, {A}, 4], got shape {_shape(pred_boxes)}")
    _check_float32(pred_boxes, "pred_boxes")
    _check_tensor(anchor_points, "anchor_points", "[A, 2]")
    if tuple(anchor_points.shape) != (A, 2):
        _fail(f"anchor_points must have shape [A, 2] = [{A}, 2], got shape {_shape(anchor_points)}")
    _check_float32(anchor_points, "anchor_points")
    _check_tensor(gt_boxes, "gt_boxes", "[B, G, 4]")
    if gt_boxes.dim() != 3 or gt_boxes.shape[0] != B or gt_boxes.shape[2] != 4:
        _fail(f"gt_boxes must have shape [B, G, 4] with B = {B}, got shape {_shape(gt_boxes)}")
    _check_float32(gt_boxes, "gt_boxes")
    G = gt_boxes.shape[1]
    _check_tensor(gt_labels, "gt_labels", "[B, G]")
    if tuple(gt_labels.shape) != (B, G):
        _fail(f"gt_labels must have shape [B, G] = [{B}, {G}], got shape {_shape(gt_labels)}")
    if gt_labels.dtype != torch.int64:
        _fail(f"gt_labels must be int64, got {gt_labels.dtype}")
    check_same_device(
        pred_scores=pred_scores,
        pred_boxes=pred_boxes,
        anchor_points=anchor_points,
        gt_boxes=gt_boxes,
        gt_labels=gt_labels,
        gt_counts=gt_counts,
    )
    check_gt_counts(gt_counts, B)
    check_tal_options(topk, alpha, beta, min_side, topk2, eps)


def check_tal_values(
    pred_scores: Tensor,
    pred_boxes: Tensor,
    anchor_points: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_counts: Optional[Tensor],
) -> None:
    """The checks of ``tal_assign`` that read data: counts, finite points, finite and ordered predicted
    and valid GT boxes, valid labels in ``[0, C)``. Scores are not read (the contract clamps them)."""
    B, G = gt_boxes.shape[:2]
    check_gt_counts_values(gt_counts, G)
    bad = ~torch.isfinite(anchor_points).all(dim=-1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        _fail(f"anchor_points[{i}] = {_box_str(anchor_points[i])} is not finite")
    _check_boxes_values("pred_boxes", pred_boxes, None)
    valid = gt_valid_mask(B, G, gt_counts, gt_boxes.device)
    _check_boxes_values("gt_boxes", gt_boxes, valid)
    C = pred_scores.shape[2]
    bad = valid & ((gt_labels < 0) | (gt_labels >= C))
    if bool(bad.any()):
        b, g = bad.nonzero()[0].tolist()
        _fail(f"gt_labels[{b}, {g}] = {int(gt_labels[b, g])} is out of range [0, C = {C})")
