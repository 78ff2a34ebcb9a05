"""Fake (meta) kernels of the ``atss_ops`` ops, for ``torch.compile``,
``torch.export``, ``torch.library.opcheck`` and meta tensors: output shapes and
dtypes, after the same structural checks as the compiled kernels (which read
no data).

When the extension is loaded, :func:`register` makes these functions the ops'
fake kernels (``torch.library.register_fake``). A fake kernel doubles as the
op's Meta kernel, so a 'meta' tensor among CPU ones lands here and the device
checks run here too. The public wrappers (:mod:`atss_ops.ops`) also call these
functions directly for meta inputs, so shape inference on meta tensors works
with or without the compiled extension, and never touches tensor data.
"""

from __future__ import annotations

import torch

from . import _validation as V
from ._extension import ALL_OPS, TAL_OPS
from .types import num_candidates


def center_distance(anchors, gt_boxes, gt_counts=None):
    V.check_center_distance_args(anchors, gt_boxes, gt_counts)
    return anchors.new_empty(gt_boxes.shape[0], gt_boxes.shape[1], anchors.shape[0])


def topk_per_level(distances, num_anchors_per_level, topk, gt_counts=None, anchor_valid=None, anchor_ignore=None):
    V.check_topk_per_level_args(distances, num_anchors_per_level, topk, gt_counts, anchor_valid, anchor_ignore)
    B, G, _ = distances.shape
    return distances.new_empty(B, G, num_candidates(num_anchors_per_level, topk), dtype=torch.int64)


def iou_statistics(anchors, gt_boxes, candidates, gt_counts=None, center_eps=0.01):
    V.check_iou_statistics_args(anchors, gt_boxes, candidates, gt_counts, center_eps)
    B, G = gt_boxes.shape[:2]
    return (
        anchors.new_empty(candidates.shape),
        anchors.new_empty(B, G),
        anchors.new_empty(candidates.shape, dtype=torch.bool),
    )


def resolve_multi_gt(candidates, candidate_iou, is_positive, num_anchors, anchor_ignore=None, ensure_positive=False):
    V.check_resolve_multi_gt_args(candidates, candidate_iou, is_positive, num_anchors, anchor_ignore)
    B, G = candidates.shape[:2]
    return (
        candidates.new_empty(B, num_anchors),
        candidate_iou.new_empty(B, num_anchors),
        candidates.new_empty(B, G),
    )


def atss_assign(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    gt_counts=None,
    topk=9,
    anchor_valid=None,
    center_eps=0.01,
    anchor_ignore=None,
    ensure_positive=False,
):
    V.check_atss_assign_args(
        anchors, num_anchors_per_level, gt_boxes, gt_counts, topk, anchor_valid, center_eps, anchor_ignore
    )
    B, G = gt_boxes.shape[:2]
    A = anchors.shape[0]
    return (
        anchors.new_empty(B, A, dtype=torch.int64),
        anchors.new_empty(B, A),
        anchors.new_empty(B, G),
        anchors.new_empty(B, G, dtype=torch.int64),
    )


def tal_assign(
    pred_scores,
    pred_boxes,
    anchor_points,
    gt_boxes,
    gt_labels,
    gt_counts=None,
    topk=10,
    alpha=0.5,
    beta=6.0,
    ciou=True,
    min_side=None,
    topk2=None,
    eps=1e-9,
):
    V.check_tal_assign_args(
        pred_scores, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_counts, topk, alpha, beta, min_side, topk2, eps
    )
    B, A = pred_scores.shape[:2]
    G = gt_boxes.shape[1]
    return (
        pred_scores.new_empty(B, A, dtype=torch.int64),
        pred_scores.new_empty(B, A),
        pred_scores.new_empty(B, A),
        pred_scores.new_empty(B, G, dtype=torch.int64),
    )


# Each op's fake kernel is the function of its name above.
KERNELS = {op: globals()[op] for op in ALL_OPS}


def register() -> None:
    """Registers every function above as its op's fake kernel (the ops must exist: the extension is loaded)."""
    for op, kernel in KERNELS.items():
        if op in TAL_OPS and not hasattr(torch.ops.atss_ops, op):
            continue  # a library built before the TAL op: the reference serves it
        torch.library.register_fake(f"atss_ops::{op}")(kernel)
