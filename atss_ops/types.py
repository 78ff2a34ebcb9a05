"""The result types of the public API."""

from __future__ import annotations

from typing import NamedTuple, Sequence

from torch import Tensor

__all__ = ["AssignResult", "TalResult", "num_candidates"]


class AssignResult(NamedTuple):
    """Result of :func:`atss_ops.atss_assign` (one row per image of the batch).

    - ``gt_index`` ``Tensor[B, A]`` int64: index into ``gt_boxes[b]`` of the GT the
      anchor is assigned to; -1 for background, -2 for ignored anchors (``anchor_ignore``).
    - ``iou`` ``Tensor[B, A]`` float32: IoU with the assigned GT; 0 for background and ignored anchors.
    - ``threshold`` ``Tensor[B, G]`` float32: each GT's mean + std of its candidate
      IoUs; NaN for padding slots and GTs without candidates.
    - ``num_positive`` ``Tensor[B, G]`` int64: anchors finally assigned to each GT;
      0 for padding.
    """

    gt_index: Tensor
    iou: Tensor
    threshold: Tensor
    num_positive: Tensor


def num_candidates(num_anchors_per_level: Sequence[int], topk: int) -> int:
    """``C``, the candidate slots per GT (last dimension of ``topk_per_level``'s
    output): ``sum_l min(topk, N_l)``."""
    return sum(min(int(topk), int(n)) for n in num_anchors_per_level)


class TalResult(NamedTuple):
    """Result of :func:`atss_ops.tal_assign` (TAL contract version 1, ``docs/contract.md``).

    - ``gt_index`` ``Tensor[B, A]`` int64: index into ``gt_boxes[b]`` of the GT the anchor goes to; -1 for
      background.
    - ``target_score`` ``Tensor[B, A]`` float32: ``metric * O_g / (M_g + eps)`` (contract step 5); 0 for
      background.
    - ``overlap`` ``Tensor[B, A]`` float32: the overlap (CIoU or IoU, clamped at 0) with the anchor's GT; 0 for
      background.
    - ``num_positive`` ``Tensor[B, G]`` int64: anchors each GT finally owns; 0 for padding.
    """

    gt_index: Tensor
    target_score: Tensor
    overlap: Tensor
    num_positive: Tensor
