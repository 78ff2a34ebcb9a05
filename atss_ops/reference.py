"""Pure-PyTorch implementation of the ATSS assignment contract: the readable spec.

Each function here is one stage of the contract in ``docs/contract.md``,
written step by step, vectorised over the
batch and never clever. The compiled kernels in ``csrc/`` compute exactly the
same bits; this module is also the fallback when they are not built.

Numerics, as the contract fixes them:

* every float32 operation is a separate torch op, so each is rounded on its own
  (torch never fuses ``a * b + c`` in eager mode);
* ``min``/``max`` are written as comparisons (``where(b < a, b, a)``) so that
  NaN produced by overflow and the sign of zero come out the same in C++ and
  CUDA, where ``fminf`` and ``std::min`` disagree on both;
* the candidate statistics are float64 sums taken one candidate at a time in
  candidate order (a Python loop over the candidate axis: ``torch.sum`` uses a
  tree reduction whose rounding differs);
* ordering ties are broken by the lower index, through stable sorts.

The reference materialises ``[B, G, A]`` tensors (distances, claims); the
compiled ``atss_assign`` does not.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _validation as V
from .types import AssignResult

__all__ = [
    "center_distance",
    "topk_per_level",
    "iou_statistics",
    "resolve_multi_gt",
    "atss_assign",
]


def _centers(boxes: Tensor) -> Tuple[Tensor, Tensor]:
    """Step 1: ``cx = (x1 + x2) / 2``, ``cy = (y1 + y2) / 2`` in float32."""
    return (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2


def _min(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(b < a, b, a)


def _max(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(b > a, b, a)


def _iou(anchor: Tensor, gt: Tensor) -> Tensor:
    """Step 4, elementwise over broadcast ``[..., 4]`` boxes, in the contract's order."""
    ax1, ay1, ax2, ay2 = anchor.unbind(-1)
    gx1, gy1, gx2, gy2 = gt.unbind(-1)
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_g = (gx2 - gx1) * (gy2 - gy1)
    zero = torch.zeros((), dtype=anchor.dtype, device=anchor.device)
    iw = _max(_min(ax2, gx2) - _max(ax1, gx1), zero)
    ih = _max(_min(ay2, gy2) - _max(ay1, gy1), zero)
    inter = iw * ih
    union = (area_a + area_g) - inter
    eps = torch.tensor(1e-6, dtype=anchor.dtype, device=anchor.device)
    return inter / _max(union, eps)


def center_distance(anchors: Tensor, gt_boxes: Tensor, gt_counts: Optional[Tensor] = None) -> Tensor:
    """Step 2: squared centre distances ``[B, G, A]`` float32; NaN rows for padding GTs."""
    V.check_center_distance_args(anchors, gt_boxes, gt_counts)
    V.check_box_values(anchors, gt_boxes, gt_counts)
    acx, acy = _centers(anchors)  # [A]
    gcx, gcy = _centers(gt_boxes)  # [B, G]
    dx = acx[None, None, :] - gcx[:, :, None]
    dy = acy[None, None, :] - gcy[:, :, None]
    d2 = dx * dx + dy * dy
    valid = V.gt_valid_mask(*gt_boxes.shape[:2], gt_counts, gt_boxes.device)
    return d2.masked_fill(~valid[:, :, None], float("nan"))


def topk_per_level(
    distances: Tensor,
    num_anchors_per_level: Sequence[int],
    topk: int,
    gt_counts: Optional[Tensor] = None,
    anchor_valid: Optional[Tensor] = None,
) -> Tensor:
    """Step 3: candidate anchor indices ``[B, G, C]`` int64, level by level, nearest first.

    A level contributes ``min(topk, N_l)`` slots; where it has fewer valid anchors
    than that, the trailing slots hold -1. Padding GTs hold -1 everywhere. The
    order is ``(d2, a)`` with NaN after every number, among valid anchors only.
    """
    V.check_topk_per_level_args(distances, num_anchors_per_level, topk, gt_counts, anchor_valid)
    B, G, A = distances.shape
    V.check_gt_counts_values(gt_counts, G)
    device = distances.device
    per_level: List[Tensor] = []
    start = 0
    for n in (int(n) for n in num_anchors_per_level):
        k = min(topk, n)
        if k > 0:
            d = distances[:, :, start : start + n]
            # Stable sort: equal d2 keep anchor order, NaN goes last.
            order = torch.sort(d, dim=-1, stable=True).indices
            if anchor_valid is not None:
                level_valid = anchor_valid[:, start : start + n]
                # A second stable sort moves invalid anchors behind the valid ones
                # without disturbing the (d2, a) order inside each group.
                invalid = (~level_valid)[:, None, :].expand(B, G, n).gather(-1, order)
                order = order.gather(-1, torch.sort(invalid.to(torch.uint8), dim=-1, stable=True).indices)
                num_valid = level_valid.sum(dim=-1)  # V_l per image
            else:
                num_valid = torch.full((B,), n, dtype=torch.int64, device=device)
            rank = torch.arange(k, device=device)
            chosen = order[:, :, :k] + start
            per_level.append(torch.where(rank < num_valid[:, None, None], chosen, -1))
        start += n
    if per_level:
        candidates = torch.cat(per_level, dim=-1)
    else:
        candidates = torch.empty(B, G, 0, dtype=torch.int64, device=device)
    gt_valid = V.gt_valid_mask(B, G, gt_counts, device)
    return candidates.masked_fill(~gt_valid[:, :, None], -1)


def iou_statistics(
    anchors: Tensor,
    gt_boxes: Tensor,
    candidates: Tensor,
    gt_counts: Optional[Tensor] = None,
    center_eps: float = 0.01,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Steps 4-6 for given candidates.

    Returns ``(candidate_iou [B, G, C] float32, threshold [B, G] float32,
    is_positive [B, G, C] bool)``. Empty slots (-1) and padding GTs have IoU 0
    and are never positive; ``threshold`` is NaN for padding and for GTs with no
    candidate.
    """
    V.check_iou_statistics_args(anchors, gt_boxes, candidates, gt_counts, center_eps)
    V.check_box_values(anchors, gt_boxes, gt_counts)
    V.check_candidate_values(candidates, anchors.shape[0])
    B, G = gt_boxes.shape[:2]
    C = candidates.shape[2]
    gt_valid = V.gt_valid_mask(B, G, gt_counts, gt_boxes.device)
    present = (candidates >= 0) & gt_valid[:, :, None]

    cand_boxes = anchors[candidates.clamp(min=0)]  # [B, G, C, 4]
    gt = gt_boxes[:, :, None, :]  # [B, G, 1, 4]
    iou = torch.where(present, _iou(cand_boxes, gt), 0.0)

    # Step 5: float64, one candidate at a time, in candidate order.
    count = present.sum(dim=-1)
    iou64 = iou.double()
    total = torch.zeros(B, G, dtype=torch.float64, device=iou.device)
    for c in range(C):
        total = total + torch.where(present[:, :, c], iou64[:, :, c], 0.0)
    mean = total / count
    squares = torch.zeros_like(total)
    for c in range(C):
        d = iou64[:, :, c] - mean
        squares = squares + torch.where(present[:, :, c], d * d, 0.0)
    std = torch.where(count > 1, torch.sqrt(squares / (count - 1)), 0.0)
    thr = mean + std
    has_candidates = count > 0
    threshold = torch.where(has_candidates, thr.float(), float("nan"))

    # Step 6: IoU reaches the threshold and the anchor centre is inside the GT.
    acx, acy = _centers(cand_boxes)
    gx1, gy1, gx2, gy2 = gt.unbind(-1)
    eps = torch.tensor(center_eps, dtype=torch.float32, device=anchors.device)
    inside = ((acx - gx1) > eps) & ((acy - gy1) > eps) & ((gx2 - acx) > eps) & ((gy2 - acy) > eps)
    reaches = iou64 >= thr[:, :, None]
    is_positive = present & reaches & inside
    return iou, threshold, is_positive


def resolve_multi_gt(
    candidates: Tensor, candidate_iou: Tensor, is_positive: Tensor, num_anchors: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """Step 7: one GT per anchor.

    Returns ``(gt_index [B, A] int64, iou [B, A] float32, num_positive [B, G] int64)``.
    An anchor positive for several GTs goes to the highest IoU, then the lowest GT index.
    """
    V.check_resolve_multi_gt_args(candidates, candidate_iou, is_positive, num_anchors)
    V.check_candidate_values(candidates, num_anchors)
    B, G = candidates.shape[:2]
    A = num_anchors
    device = candidates.device
    gt_index = torch.full((B, A), -1, dtype=torch.int64, device=device)
    iou = torch.zeros(B, A, dtype=torch.float32, device=device)
    num_positive = torch.zeros(B, G, dtype=torch.int64, device=device)
    if B == 0 or G == 0 or A == 0:
        return gt_index, iou, num_positive
    # claim[b, g, a]: IoU with which GT g claims anchor a (-inf: no claim).
    # Slot A swallows the non-positive entries.
    neg_inf = torch.tensor(float("-inf"), device=device)
    claim = torch.full((B, G, A + 1), float("-inf"), device=device)
    # Only a real IoU (>= 0; never NaN) claims an anchor.
    claiming = is_positive & (candidates >= 0) & (candidate_iou >= 0)
    target = torch.where(claiming, candidates, A)
    claim.scatter_reduce_(2, target, torch.where(claiming, candidate_iou, neg_inf), "amax")
    claim = claim[:, :, :A]
    best = claim.max(dim=1).values  # [B, A]
    claimed = best > float("-inf")
    gt_ids = torch.arange(G, device=device)[None, :, None]
    winner = torch.where(claim == best[:, None, :], gt_ids, G).min(dim=1).values
    gt_index = torch.where(claimed, winner, -1)
    iou = torch.where(claimed, claim.gather(1, winner[:, None, :].clamp(max=G - 1))[:, 0, :], 0.0)
    num_positive = (gt_index[:, None, :] == gt_ids).sum(dim=-1)
    return gt_index, iou, num_positive


def atss_assign(
    anchors: Tensor,
    num_anchors_per_level: Sequence[int],
    gt_boxes: Tensor,
    gt_counts: Optional[Tensor] = None,
    topk: int = 9,
    anchor_valid: Optional[Tensor] = None,
    center_eps: float = 0.01,
) -> AssignResult:
    """The whole contract, stage by stage (see ``atss_ops.atss_assign`` for the full docs)."""
    V.check_assign_inputs(
        anchors, num_anchors_per_level, gt_boxes, gt_counts, topk, anchor_valid, center_eps, values=True
    )
    B, G = gt_boxes.shape[:2]
    A = anchors.shape[0]
    if B * G == 0:
        device = anchors.device
        return AssignResult(
            torch.full((B, A), -1, dtype=torch.int64, device=device),
            torch.zeros(B, A, dtype=torch.float32, device=device),
            torch.full((B, G), float("nan"), dtype=torch.float32, device=device),
            torch.zeros(B, G, dtype=torch.int64, device=device),
        )
    distances = center_distance(anchors, gt_boxes, gt_counts)
    candidates = topk_per_level(distances, num_anchors_per_level, topk, gt_counts, anchor_valid)
    cand_iou, threshold, is_positive = iou_statistics(anchors, gt_boxes, candidates, gt_counts, center_eps)
    gt_index, iou, num_positive = resolve_multi_gt(candidates, cand_iou, is_positive, A)
    return AssignResult(gt_index, iou, threshold, num_positive)
