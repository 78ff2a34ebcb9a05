"""Pure-PyTorch implementation of the ATSS assignment contract: the readable spec.

Each function here is one stage of the contract in ``docs/contract.md``
(version 2: 2-D and 3-D boxes, ignored anchors, an optional centre test and
an optional guaranteed positive), written step by step, vectorised over the
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


def _dims(boxes: Tensor) -> int:
    """D, the number of spatial axes: 2 for ``[..., 4]`` boxes, 3 for ``[..., 6]``."""
    return boxes.shape[-1] // 2


def _centers(boxes: Tensor) -> List[Tensor]:
    """Step 1: per axis, ``c = (lo + hi) / 2`` in float32 (``lo`` at ``t``, ``hi`` at ``t + D``)."""
    D = _dims(boxes)
    return [(boxes[..., t] + boxes[..., t + D]) / 2 for t in range(D)]


def _min(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(b < a, b, a)


def _max(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(b > a, b, a)


def _product(factors: List[Tensor]) -> Tensor:
    """``(x * y)`` or ``((x * y) * z)``: a product taken in axis order."""
    out = factors[0]
    for f in factors[1:]:
        out = out * f
    return out


def _iou(anchor: Tensor, gt: Tensor) -> Tensor:
    """Step 4, elementwise over broadcast ``[..., 2D]`` boxes, in the contract's order."""
    D = _dims(anchor)
    zero = torch.zeros((), dtype=anchor.dtype, device=anchor.device)
    vol_a = _product([anchor[..., t + D] - anchor[..., t] for t in range(D)])
    vol_g = _product([gt[..., t + D] - gt[..., t] for t in range(D)])
    overlaps = [
        _max(_min(anchor[..., t + D], gt[..., t + D]) - _max(anchor[..., t], gt[..., t]), zero) for t in range(D)
    ]
    inter = _product(overlaps)
    union = (vol_a + vol_g) - inter
    eps = torch.tensor(1e-6, dtype=anchor.dtype, device=anchor.device)
    return inter / _max(union, eps)


def center_distance(anchors: Tensor, gt_boxes: Tensor, gt_counts: Optional[Tensor] = None) -> Tensor:
    """Step 2: squared centre distances ``[B, G, A]`` float32; NaN rows for padding GTs.

    D = 2: ``dx*dx + dy*dy``; D = 3: ``(dx*dx + dy*dy) + dz*dz``, each operation
    rounded to float32.
    """
    V.check_center_distance_args(anchors, gt_boxes, gt_counts)
    V.check_box_values(anchors, gt_boxes, gt_counts)
    anchor_c = _centers(anchors)  # D x [A]
    gt_c = _centers(gt_boxes)  # D x [B, G]
    d2 = None
    for a_t, g_t in zip(anchor_c, gt_c):  # summed in axis order: (dx*dx + dy*dy) + dz*dz
        d = a_t[None, None, :] - g_t[:, :, None]
        d2 = d * d if d2 is None else d2 + d * d
    valid = V.gt_valid_mask(*gt_boxes.shape[:2], gt_counts, gt_boxes.device)
    return d2.masked_fill(~valid[:, :, None], float("nan"))


def topk_per_level(
    distances: Tensor,
    num_anchors_per_level: Sequence[int],
    topk: int,
    gt_counts: Optional[Tensor] = None,
    anchor_valid: Optional[Tensor] = None,
    anchor_ignore: Optional[Tensor] = None,
) -> Tensor:
    """Step 3: candidate anchor indices ``[B, G, C]`` int64, level by level, nearest first.

    A level contributes ``min(topk, N_l)`` slots; where it has fewer usable anchors
    (valid and not ignored) than that, the trailing slots hold -1. Padding GTs
    hold -1 everywhere. The order is ``(d2, a)`` with NaN after every number,
    among usable anchors only.
    """
    V.check_topk_per_level_args(distances, num_anchors_per_level, topk, gt_counts, anchor_valid, anchor_ignore)
    B, G, A = distances.shape
    V.check_gt_counts_values(gt_counts, G)
    device = distances.device
    usable = V.usable_mask(anchor_valid, anchor_ignore)
    per_level: List[Tensor] = []
    start = 0
    for n in (int(n) for n in num_anchors_per_level):
        k = min(topk, n)
        if k > 0:
            d = distances[:, :, start : start + n]
            # Stable sort: equal d2 keep anchor order, NaN goes last.
            order = torch.sort(d, dim=-1, stable=True).indices
            if usable is not None:
                level_valid = usable[:, start : start + n]
                # A second stable sort moves unusable anchors behind the usable ones
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
    center_eps: Optional[float] = 0.01,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Steps 4-6 for given candidates.

    Returns ``(candidate_iou [B, G, C] float32, threshold [B, G] float32,
    is_positive [B, G, C] bool)``. Empty slots (-1) and padding GTs have IoU 0
    and are never positive; ``threshold`` is NaN for padding and for GTs with no
    candidate. ``center_eps=None``: no centre test.
    """
    V.check_iou_statistics_args(anchors, gt_boxes, candidates, gt_counts, center_eps)
    V.check_box_values(anchors, gt_boxes, gt_counts)
    V.check_candidate_values(candidates, anchors.shape[0])
    B, G = gt_boxes.shape[:2]
    C = candidates.shape[2]
    gt_valid = V.gt_valid_mask(B, G, gt_counts, gt_boxes.device)
    present = (candidates >= 0) & gt_valid[:, :, None]

    cand_boxes = anchors[candidates.clamp(min=0)]  # [B, G, C, 2D]
    gt = gt_boxes[:, :, None, :]  # [B, G, 1, 2D]
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

    # Step 6: IoU reaches the threshold and (unless center_eps is None) the anchor
    # centre is inside the GT: every difference centre - lo and hi - centre > eps.
    reaches = iou64 >= thr[:, :, None]
    is_positive = present & reaches
    if center_eps is not None:
        D = _dims(anchors)
        eps = torch.tensor(center_eps, dtype=torch.float32, device=anchors.device)
        for t, c in enumerate(_centers(cand_boxes)):
            is_positive = is_positive & ((c - gt[..., t]) > eps) & ((gt[..., t + D] - c) > eps)
    return iou, threshold, is_positive


def _claim(claim_iou: Tensor, claim_anchor: Tensor, claiming: Tensor, num_anchors: int) -> Tuple[Tensor, Tensor]:
    """Claims ``[B, G, C]`` (GT g claims anchor ``claim_anchor`` with ``claim_iou`` where
    ``claiming``) resolved per anchor: the highest IoU, then the lowest GT index.

    Returns ``(winner [B, A] int64, -1 where unclaimed; iou [B, A] float32, 0 there)``.
    """
    B, G = claim_iou.shape[:2]
    A = num_anchors
    device = claim_iou.device
    # claim[b, g, a]: IoU with which GT g claims anchor a (-inf: no claim).
    # Slot A swallows the entries that claim nothing.
    neg_inf = torch.tensor(float("-inf"), device=device)
    claim = torch.full((B, G, A + 1), float("-inf"), device=device)
    target = torch.where(claiming, claim_anchor, A)
    claim.scatter_reduce_(2, target, torch.where(claiming, claim_iou, neg_inf), "amax")
    claim = claim[:, :, :A]
    best = claim.max(dim=1).values  # [B, A]
    claimed = best > float("-inf")
    gt_ids = torch.arange(G, device=device)[None, :, None]
    winner = torch.where(claim == best[:, None, :], gt_ids, G).min(dim=1).values
    iou = torch.where(claimed, claim.gather(1, winner[:, None, :].clamp(max=G - 1))[:, 0, :], 0.0)
    return torch.where(claimed, winner, -1), iou


def resolve_multi_gt(
    candidates: Tensor,
    candidate_iou: Tensor,
    is_positive: Tensor,
    num_anchors: int,
    anchor_ignore: Optional[Tensor] = None,
    ensure_positive: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Steps 7 and 8: one GT per anchor, then (``ensure_positive``) one proposal per empty GT.

    Returns ``(gt_index [B, A] int64, iou [B, A] float32, num_positive [B, G] int64)``.
    Step 7: an anchor positive for several GTs goes to the highest IoU, then the
    lowest GT index. Step 8: each GT with a candidate and no anchor proposes its
    candidate of highest IoU (> 0; the earliest on equal IoU) among the anchors
    still unassigned; competing proposals are resolved as in step 7. Anchors of
    ``anchor_ignore`` claim nothing and come out as -2 with IoU 0.
    """
    V.check_resolve_multi_gt_args(candidates, candidate_iou, is_positive, num_anchors, anchor_ignore)
    V.check_candidate_values(candidates, num_anchors)
    B, G = candidates.shape[:2]
    A = num_anchors
    device = candidates.device
    gt_index = torch.full((B, A), -1, dtype=torch.int64, device=device)
    iou = torch.zeros(B, A, dtype=torch.float32, device=device)
    num_positive = torch.zeros(B, G, dtype=torch.int64, device=device)
    if B == 0 or A == 0:
        return gt_index, iou, num_positive
    if anchor_ignore is not None:
        gt_index = gt_index.masked_fill(anchor_ignore, -2)
    if G == 0:
        return gt_index, iou, num_positive
    present = candidates >= 0
    anchor = candidates.clamp(min=0)
    if anchor_ignore is not None:
        # An ignored anchor takes part in nothing, even when a caller lists it.
        present = present & ~anchor_ignore.gather(1, anchor.view(B, -1)).view_as(candidates)
    # Step 7. Only a real IoU (>= 0; never NaN) claims an anchor.
    winner, won_iou = _claim(candidate_iou, anchor, is_positive & present & (candidate_iou >= 0), A)
    gt_ids = torch.arange(G, device=device)[None, :, None]
    if ensure_positive:
        # Step 8: the GTs left empty propose their best free candidate (IoU > 0).
        empty = ~(winner[:, None, :] == gt_ids).any(dim=-1)  # [B, G]
        free = winner.gather(1, anchor.view(B, -1)).view_as(candidates) < 0
        eligible = present & free & (candidate_iou > 0) & empty[:, :, None]
        score = torch.where(eligible, candidate_iou, float("-inf"))
        best = score.max(dim=-1, keepdim=True).values
        slot_ids = torch.arange(candidates.shape[2], device=device)
        first = torch.where(eligible & (score == best), slot_ids, candidates.shape[2]).min(dim=-1).values
        proposing = eligible & (slot_ids == first[:, :, None])
        proposed, proposed_iou = _claim(candidate_iou, anchor, proposing, A)
        taken = proposed >= 0  # only free anchors are proposed: no overlap with step 7
        winner = torch.where(taken, proposed, winner)
        won_iou = torch.where(taken, proposed_iou, won_iou)
    assigned = winner >= 0
    gt_index = torch.where(assigned, winner, gt_index)
    iou = won_iou
    num_positive = (winner[:, None, :] == gt_ids).sum(dim=-1)
    return gt_index, iou, num_positive


def atss_assign(
    anchors: Tensor,
    num_anchors_per_level: Sequence[int],
    gt_boxes: Tensor,
    gt_counts: Optional[Tensor] = None,
    topk: int = 9,
    anchor_valid: Optional[Tensor] = None,
    center_eps: Optional[float] = 0.01,
    anchor_ignore: Optional[Tensor] = None,
    ensure_positive: bool = False,
) -> AssignResult:
    """The whole contract, stage by stage (see ``atss_ops.atss_assign`` for the full docs)."""
    V.check_assign_inputs(
        anchors,
        num_anchors_per_level,
        gt_boxes,
        gt_counts,
        topk,
        anchor_valid,
        center_eps,
        anchor_ignore,
        values=True,
    )
    B, G = gt_boxes.shape[:2]
    A = anchors.shape[0]
    if B * G == 0:
        device = anchors.device
        gt_index = torch.full((B, A), -1, dtype=torch.int64, device=device)
        if anchor_ignore is not None:
            gt_index = gt_index.masked_fill(anchor_ignore, -2)
        return AssignResult(
            gt_index,
            torch.zeros(B, A, dtype=torch.float32, device=device),
            torch.full((B, G), float("nan"), dtype=torch.float32, device=device),
            torch.zeros(B, G, dtype=torch.int64, device=device),
        )
    distances = center_distance(anchors, gt_boxes, gt_counts)
    candidates = topk_per_level(distances, num_anchors_per_level, topk, gt_counts, anchor_valid, anchor_ignore)
    cand_iou, threshold, is_positive = iou_statistics(anchors, gt_boxes, candidates, gt_counts, center_eps)
    gt_index, iou, num_positive = resolve_multi_gt(candidates, cand_iou, is_positive, A, anchor_ignore, ensure_positive)
    return AssignResult(gt_index, iou, threshold, num_positive)
