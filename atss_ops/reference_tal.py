"""Pure-PyTorch implementation of the task-aligned assignment (TAL) contract: the readable spec.

Each function is one part of the TAL contract (version 1) in
``docs/contract.md``, written step by step, vectorised over the batch and
never clever. The compiled ``tal_assign`` kernel computes exactly the same
bits; this module is also its fallback when it is not built (and on CUDA).

Numerics, as the contract fixes them:

* every float32 operation is a separate torch op, so each is rounded on its own
  (torch never fuses ``a * b + c`` in eager mode);
* ``min``/``max``/``pos`` are comparisons (``where``), as in the C++ kernel;
* the arctangent is the contract's ``atan_c`` (a reduction and a polynomial in
  float32), the powers its ``P`` (a float64 product chain rounded once), never
  the C library's ``atan``/``pow``, which round differently on CPU and GPU;
* top-k ties go to the lower anchor index through a stable sort, overlap ties
  to the lower GT index through the first maximum.

The reference materialises ``[B, G, A]`` tensors (inside mask, overlaps,
metrics); the compiled kernel does not.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import _validation as V
from .reference import _max, _min
from .types import TalResult

__all__ = ["atan_c", "power", "box_overlap", "inside_mask", "box_metrics", "select_and_resolve", "tal_assign"]

# The constants of the contract, as float32 values.
_IOU_EPS = 1e-7  # E: the IoU's guard (Ultralytics' bbox_iou eps)
_FOUR_OVER_PI2 = 0.40528473  # 4 / pi^2
_ATAN_BIG, _ATAN_MID = 2.4142137, 0.41421357  # tan(3 pi / 8), tan(pi / 8)
_HALF_PI, _QUARTER_PI = 1.5707964, 0.7853982
_ATAN_POLY = (-0.06071304, 0.10590773, -0.14243065, 0.19998442, -0.33333313)


def _f32(x: float, like: Tensor) -> Tensor:
    return torch.tensor(x, dtype=torch.float32, device=like.device)


def _pos(v: Tensor) -> Tensor:
    """``v > 0 ? v : +0`` (NaN gives +0)."""
    return torch.where(v > 0, v, torch.zeros((), dtype=v.dtype, device=v.device))


def atan_c(x: Tensor) -> Tensor:
    """The contract's arctangent of float32 ``x >= 0``, elementwise, in its order of operations."""
    one = _f32(1.0, x)
    big = x > _f32(_ATAN_BIG, x)
    mid = ~big & (x > _f32(_ATAN_MID, x))
    base = torch.where(big, _f32(_HALF_PI, x), torch.where(mid, _f32(_QUARTER_PI, x), _f32(0.0, x)))
    t = torch.where(big, -one / x, torch.where(mid, (x - one) / (x + one), x))
    z = t * t
    p = _f32(_ATAN_POLY[0], x).expand_as(z)
    for c in _ATAN_POLY[1:]:
        p = p * z + _f32(c, x)  # two torch ops: the product is rounded before the sum
    return base + (t + (t * z) * p)


def power(x: Tensor, e: float) -> Tensor:
    """The contract's ``P(x, e)`` for float32 ``x >= 0`` and ``e`` a multiple of 0.5: binary
    exponentiation in float64 from the lowest bit, times ``sqrt(x)`` for a half, rounded once."""
    X = x.double()
    n, half = int(math.floor(e)), (e - math.floor(e)) == 0.5
    r = torch.ones_like(X)
    base, k = X, n
    while k > 0:
        if k & 1:
            r = r * base
        k >>= 1
        if k > 0:
            base = base * base
    if half:
        r = r * torch.sqrt(X)
    return r.float()


def box_overlap(gt: Tensor, pred: Tensor, ciou: bool) -> Tensor:
    """The contract's overlap ``o(g, p)`` of broadcast ``[..., 4]`` boxes: ``pos(IoU)`` or ``pos(CIoU)``."""
    E = _f32(_IOU_EPS, gt)
    gx1, gy1, gx2, gy2 = gt.unbind(-1)
    px1, py1, px2, py2 = pred.unbind(-1)
    gw, gh = gx2 - gx1, (gy2 - gy1) + E
    pw, ph = px2 - px1, (py2 - py1) + E
    iw = _pos(_min(gx2, px2) - _max(gx1, px1))
    ih = _pos(_min(gy2, py2) - _max(gy1, py1))
    inter = iw * ih
    union = (((gw * gh) + (pw * ph)) - inter) + E
    iou = inter / union
    if not ciou:
        return _pos(iou)
    cw = _max(gx2, px2) - _min(gx1, px1)
    ch = _max(gy2, py2) - _min(gy1, py1)
    c2 = ((cw * cw) + (ch * ch)) + E
    dx = ((px1 + px2) - gx1) - gx2
    dy = ((py1 + py2) - gy1) - gy2
    rho2 = ((dx * dx) + (dy * dy)) / _f32(4.0, gt)
    d = atan_c(pw / ph) - atan_c(gw / gh)
    v = _f32(_FOUR_OVER_PI2, gt) * (d * d)
    k = v / (((_f32(1.0, gt) - iou) + v) + E)
    return _pos(iou - ((rho2 / c2) + (v * k)))


def inside_mask(
    anchor_points: Tensor, gt_boxes: Tensor, gt_counts: Optional[Tensor], min_side: Optional[float], eps: float
) -> Tensor:
    """Step 1: ``[B, G, A]`` bool, anchor point strictly inside the (widened) test box of a valid GT by
    more than ``eps``; False for padding GTs."""
    B, G = gt_boxes.shape[:2]
    x1, y1, x2, y2 = gt_boxes.unbind(-1)
    if min_side is not None:
        m, two = _f32(min_side, gt_boxes), _f32(2.0, gt_boxes)
        cx, cy = (x1 + x2) / two, (y1 + y2) / two
        w, h = x2 - x1, y2 - y1
        hw = torch.where(w < m, m, w) / two
        hh = torch.where(h < m, m, h) / two
        x1, y1, x2, y2 = cx - hw, cy - hh, cx + hw, cy + hh
    e = _f32(eps, gt_boxes)
    px, py = anchor_points[:, 0], anchor_points[:, 1]
    inside = (px - x1[..., None]) > e
    inside &= (py - y1[..., None]) > e
    inside &= (x2[..., None] - px) > e
    inside &= (y2[..., None] - py) > e
    return inside & V.gt_valid_mask(B, G, gt_counts, gt_boxes.device)[..., None]


def box_metrics(
    pred_scores: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    inside: Tensor,
    alpha: float,
    beta: float,
    ciou: bool,
) -> Tuple[Tensor, Tensor]:
    """Step 2: ``(overlap, metric)``, both ``[B, G, A]`` float32, 0 where not ``inside``.

    ``metric = P(clamp01(score of the GT's class), alpha) * P(overlap, beta)``."""
    B, G, A = inside.shape
    labels = gt_labels.clamp(0, max(pred_scores.shape[2] - 1, 0))  # padding rows: any column, masked below
    if pred_scores.shape[2] == 0:
        scores = pred_scores.new_zeros(B, G, A)
    else:
        scores = pred_scores.gather(2, labels[:, None, :].expand(B, A, G)).transpose(1, 2)  # [B, G, A]
    s = _min(_pos(scores), _f32(1.0, scores))
    overlap = box_overlap(gt_boxes[:, :, None, :], pred_boxes[:, None, :, :], ciou)
    metric = power(s, alpha) * power(overlap, beta)
    zero = torch.zeros((), dtype=torch.float32, device=inside.device)
    return torch.where(inside, overlap, zero), torch.where(inside, metric, zero)


def _first_k_by_metric(metric: Tensor, member: Tensor, k: int) -> Tensor:
    """``[B, G, A]`` bool: per row, the ``k`` members first in the order (metric descending, anchor
    index ascending); all members when fewer."""
    A = metric.shape[-1]
    key = torch.where(member, metric, torch.full_like(metric, -1.0))  # metrics are >= 0
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices  # stable: lower index first
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(A, device=metric.device).expand_as(order))
    return member & (rank < k)


def _background(B: int, G: int, A: int, device) -> TalResult:
    """Every anchor background: the result when B, G or A is 0."""
    return TalResult(
        torch.full((B, A), -1, dtype=torch.int64, device=device),
        torch.zeros(B, A, dtype=torch.float32, device=device),
        torch.zeros(B, A, dtype=torch.float32, device=device),
        torch.zeros(B, G, dtype=torch.int64, device=device),
    )


class Selection(NamedTuple):
    """Steps 3 to 5 spelled out (for tests that compare them with other implementations)."""

    result: TalResult
    picks: Tensor  # [B, G, A] bool: step 3, each GT's top-k among its inside anchors
    owner: Tensor  # [B, A] int64: step 4, before topk2 (-1: nobody picked the anchor)


def select_and_resolve(
    inside: Tensor, overlap: Tensor, metric: Tensor, topk: int, topk2: Optional[int], eps: float
) -> Selection:
    """Steps 3, 4, 4b and 5 on dense ``[B, G, A]`` inside mask, overlaps and metrics."""
    B, G, A = inside.shape
    device = inside.device
    if B * G * A == 0:
        return Selection(_background(B, G, A, device), inside.clone(), torch.full((B, A), -1, device=device))
    picks = _first_k_by_metric(metric, inside, topk)  # step 3
    # Step 4: one picker: that GT; several: the highest overlap over every GT the anchor is inside,
    # the lowest index on equal overlaps (max's first maximum, on -1 where not inside).
    num_pickers = picks.sum(dim=1)  # [B, A]
    single = picks.int().argmax(dim=1)  # the picker, when there is one
    ranked = torch.where(inside, overlap, torch.full_like(overlap, -1.0))
    best = ranked.max(dim=1, keepdim=True).values
    gt_ids = torch.arange(G, device=device)[None, :, None]
    best_gt = torch.where(ranked == best, gt_ids, G).min(dim=1).values
    owner = torch.where(num_pickers == 1, single, torch.where(num_pickers > 1, best_gt, -1))
    owns = (owner[:, None, :] == gt_ids) & (owner[:, None, :] >= 0)  # [B, G, A]
    if topk2 is not None:  # step 4b
        owns = _first_k_by_metric(metric, owns, topk2)
    # Step 5: M_g, O_g over each GT's own anchors (metrics and overlaps are >= 0).
    zero = torch.zeros((), dtype=torch.float32, device=device)
    own_metric = torch.where(owns, metric, zero)
    own_overlap = torch.where(owns, overlap, zero)
    largest_metric = own_metric.max(dim=2, keepdim=True).values  # M_g
    largest_overlap = own_overlap.max(dim=2, keepdim=True).values  # O_g
    score = (metric * largest_overlap) / (largest_metric + _f32(eps, metric))
    assigned = owns.any(dim=1)  # [B, A]
    gt_index = torch.where(assigned, owns.int().argmax(dim=1), -1)
    target_score = torch.where(owns, score, zero).sum(dim=1)  # one term at most: exact
    anchor_overlap = own_overlap.sum(dim=1)
    num_positive = owns.sum(dim=2)
    return Selection(TalResult(gt_index, target_score, anchor_overlap, num_positive), picks, owner)


def tal_assign(
    pred_scores: Tensor,
    pred_boxes: Tensor,
    anchor_points: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_counts: Optional[Tensor] = None,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    ciou: bool = True,
    min_side: Optional[float] = None,
    topk2: Optional[int] = None,
    eps: float = 1e-9,
) -> TalResult:
    """The whole TAL contract (the op's arguments; see ``atss_ops.tal_assign`` for the full docs)."""
    V.check_tal_assign_args(
        pred_scores, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_counts, topk, alpha, beta, min_side, topk2, eps
    )
    V.check_tal_values(pred_scores, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_counts)
    inside = inside_mask(anchor_points, gt_boxes, gt_counts, min_side, eps)
    overlap, metric = box_metrics(pred_scores, pred_boxes, gt_boxes, gt_labels, inside, alpha, beta, ciou)
    return select_and_resolve(inside, overlap, metric, topk, topk2, eps).result
