"""atss_ops: fast, bit-exact ATSS anchor assignment for PyTorch.

Public API::

    res = atss_ops.atss_assign(anchors, num_anchors_per_level, gt_boxes, gt_counts=None,
                               *, topk=9, anchor_valid=None, center_eps=0.01)
    res.gt_index, res.iou, res.threshold, res.num_positive

The four stages are also ops of their own (``center_distance``,
``topk_per_level``, ``iou_statistics``, ``resolve_multi_gt``), and
``assign_targets`` turns a result into per-anchor head targets. The function is
defined in ``docs/contract.md``; ``atss_ops.reference`` is its readable
pure-PyTorch implementation.
"""

from . import reference
from .ops import (
    AssignResult,
    atss_assign,
    center_distance,
    extension_available,
    has_kernel,
    iou_statistics,
    num_candidates,
    pad_gt_boxes,
    resolve_multi_gt,
    topk_per_level,
)
from .targets import AssignTargets, assign_targets

__version__ = "0.1.0"

__all__ = [
    "AssignResult",
    "AssignTargets",
    "assign_targets",
    "atss_assign",
    "center_distance",
    "extension_available",
    "has_kernel",
    "iou_statistics",
    "num_candidates",
    "pad_gt_boxes",
    "reference",
    "resolve_multi_gt",
    "topk_per_level",
]
