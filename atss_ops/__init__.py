"""atss_ops: fast, bit-exact ATSS anchor assignment for PyTorch.

Public API::

    anchors, levels = atss_ops.grid_anchors(height, width)      # or your own anchors
    anchors, levels = atss_ops.grid_anchors((S0, S1, S2), strides=(4, 8))   # 3-D, [A, 6]
    res = atss_ops.atss_assign(anchors, levels, gt_boxes, gt_counts=None,
                               *, topk=9, anchor_valid=None, anchor_ignore=None,
                               center_eps=0.01, ensure_positive=False)
    res.gt_index, res.iou, res.threshold, res.num_positive
    targets = atss_ops.assign_targets(res, gt_boxes, gt_labels)   # .weight: 0 for ignored anchors
    tal = atss_ops.tal_assign(pred_scores, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_counts,
                              *, topk=10, alpha=0.5, beta=6.0, overlap="ciou", min_side=None, topk2=None)
    labels, boxes, scores, fg, idx = atss_ops.tal_targets(tal, gt_boxes, gt_labels, num_classes)
    anchor_ignore = atss_ops.ignore_mask(anchors, ignore_boxes)   # crowd / don't-care regions

Boxes are 2-D (``[..., 4]``) or 3-D (``[..., 6]``, ``x1, y1, z1, x2, y2, z2``).
The four stages are also ops of their own (``center_distance``,
``topk_per_level``, ``iou_statistics``, ``resolve_multi_gt``). The function is
defined in ``docs/contract.md`` (version 2); ``atss_ops.reference`` is its
readable pure-PyTorch implementation. MONAI's detectors switch over with
``atss_ops.integrations.monai.use_atss_ops`` (MONAI imported only there).
Needs torch alone.
"""

from . import _fake, _metadata, reference, reference_tal
from ._extension import extension_available, has_kernel

if extension_available():
    _fake.register()  # the ops' fake kernels (torch.compile, torch.export, opcheck)

from .anchors import grid_anchors
from .masks import ignore_mask
from .ops import (
    atss_assign,
    center_distance,
    iou_statistics,
    pad_gt_boxes,
    resolve_multi_gt,
    tal_assign,
    topk_per_level,
)
from .targets import AssignTargets, TalTargets, assign_targets, tal_targets
from .types import AssignResult, TalResult, num_candidates

__version__ = _metadata.VERSION  # pyproject.toml's, the one home of the version

__all__ = [
    "AssignResult",
    "AssignTargets",
    "assign_targets",
    "atss_assign",
    "center_distance",
    "extension_available",
    "grid_anchors",
    "has_kernel",
    "ignore_mask",
    "iou_statistics",
    "num_candidates",
    "pad_gt_boxes",
    "reference",
    "reference_tal",
    "resolve_multi_gt",
    "TalResult",
    "TalTargets",
    "tal_assign",
    "tal_targets",
    "topk_per_level",
]
