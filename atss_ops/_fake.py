"""Fake (meta) kernels of the ``atss_ops`` ops, for ``torch.compile``,
``torch.export`` and ``torch.library.opcheck``: output shapes and dtypes, after
the same structural checks as the compiled kernels (which read no data).

The fake kernels double as Meta kernels: a 'meta' tensor among CPU ones lands
here, so the device checks run here too. Imported by :mod:`atss_ops` when the
extension is loaded (the ops must exist to be given a fake kernel).
"""

from __future__ import annotations

import torch

from . import _validation as V
from .types import num_candidates


@torch.library.register_fake("atss_ops::center_distance")
def _center_distance_fake(anchors, gt_boxes, gt_counts=None):
    V.check_center_distance_args(anchors, gt_boxes, gt_counts)
    return anchors.new_empty(gt_boxes.shape[0], gt_boxes.shape[1], anchors.shape[0])


@torch.library.register_fake("atss_ops::topk_per_level")
def _topk_per_level_fake(distances, num_anchors_per_level, topk, gt_counts=None, anchor_valid=None, anchor_ignore=None):
    V.check_topk_per_level_args(distances, num_anchors_per_level, topk, gt_counts, anchor_valid, anchor_ignore)
    B, G, _ = distances.shape
    return distances.new_empty(B, G, num_candidates(num_anchors_per_level, topk), dtype=torch.int64)


@torch.library.register_fake("atss_ops::iou_statistics")
def _iou_statistics_fake(anchors, gt_boxes, candidates, gt_counts=None, center_eps=0.01):
    V.check_iou_statistics_args(anchors, gt_boxes, candidates, gt_counts, center_eps)
    B, G = gt_boxes.shape[:2]
    return (
        anchors.new_empty(candidates.shape),
        anchors.new_empty(B, G),
        anchors.new_empty(candidates.shape, dtype=torch.bool),
    )


@torch.library.register_fake("atss_ops::resolve_multi_gt")
def _resolve_multi_gt_fake(
    candidates, candidate_iou, is_positive, num_anchors, anchor_ignore=None, ensure_positive=False
):
    V.check_resolve_multi_gt_args(candidates, candidate_iou, is_positive, num_anchors, anchor_ignore)
    B, G = candidates.shape[:2]
    return (
        candidates.new_empty(B, num_anchors),
        candidate_iou.new_empty(B, num_anchors),
        candidates.new_empty(B, G),
    )


@torch.library.register_fake("atss_ops::atss_assign")
def _atss_assign_fake(
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
