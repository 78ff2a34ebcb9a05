"""From an assignment to the per-anchor targets a detection head trains on."""

from __future__ import annotations

from typing import NamedTuple, Sequence, Union

import torch
from torch import Tensor

from .types import AssignResult


class AssignTargets(NamedTuple):
    """Per-anchor training targets (see :func:`assign_targets`)."""

    labels: Tensor  # [B, A] int64: class of the assigned GT; `background` elsewhere
    boxes: Tensor  # [B, A, 4] float32: the assigned GT box (x1, y1, x2, y2); 0 elsewhere
    positive: Tensor  # [B, A] bool: assigned to a GT

    def one_hot(self, num_classes: int) -> Tensor:
        """``Tensor[B, A, num_classes]`` float32 classification targets (all zero for background)."""
        labels = self.labels.clamp(min=0, max=num_classes - 1)
        hot = torch.nn.functional.one_hot(labels, num_classes).to(torch.float32)
        return hot * self.positive[..., None]


def assign_targets(
    result: AssignResult,
    gt_boxes: Union[Tensor, Sequence[Tensor]],
    gt_labels: Union[Tensor, Sequence[Tensor]],
    *,
    background: int = -1,
) -> AssignTargets:
    """Turns an :class:`AssignResult` and the GT labels into per-anchor targets.

    Args:
        result: the output of :func:`atss_ops.atss_assign`.
        gt_boxes: ``Tensor[B, G, 4]`` (or the list of ``Tensor[G_i, 4]``) given to ``atss_assign``.
        gt_labels: ``Tensor[B, G]`` int64 class ids, or a list of ``Tensor[G_i]``.
        background: label written for background anchors (default -1).

    Returns:
        :class:`AssignTargets` with ``labels [B, A]`` int64, ``boxes [B, A, 4]``
        float32 and ``positive [B, A]`` bool. Pure tensor ops, no host sync.
    """
    gt_index = result.gt_index
    B, A = gt_index.shape
    if not isinstance(gt_boxes, Tensor):
        from .ops import pad_gt_boxes

        gt_boxes, _ = pad_gt_boxes(gt_boxes)
    if not isinstance(gt_labels, Tensor):
        labels_list = list(gt_labels)
        G = max((len(labels) for labels in labels_list), default=0)
        padded = torch.full((len(labels_list), G), background, dtype=torch.int64, device=gt_index.device)
        for i, labels in enumerate(labels_list):
            padded[i, : len(labels)] = torch.as_tensor(labels, dtype=torch.int64, device=gt_index.device)
        gt_labels = padded
    if gt_labels.dim() != 2 or gt_labels.shape[0] != B:
        raise ValueError(f"gt_labels must have shape [B, G] with B = {B}, got shape {list(gt_labels.shape)}")
    if gt_boxes.dim() != 3 or gt_boxes.shape[0] != B or gt_boxes.shape[2] != 4:
        raise ValueError(f"gt_boxes must have shape [B, G, 4] with B = {B}, got shape {list(gt_boxes.shape)}")
    G = gt_boxes.shape[1]
    if gt_labels.shape[1] != G:
        raise ValueError(
            f"gt_labels must have shape [B, G] = [{B}, {G}] (one label per box of gt_boxes), "
            f"got shape {list(gt_labels.shape)}"
        )
    if gt_labels.dtype.is_floating_point or gt_labels.dtype == torch.bool:
        raise ValueError(f"gt_labels must hold integer class ids, got {gt_labels.dtype}")
    positive = gt_index >= 0
    if G == 0:
        labels = torch.full((B, A), background, dtype=torch.int64, device=gt_index.device)
        return AssignTargets(labels, gt_boxes.new_zeros(B, A, 4), positive)
    idx = gt_index.clamp(min=0)
    labels = torch.where(positive, gt_labels.to(torch.int64).gather(1, idx), background)
    boxes = gt_boxes.gather(1, idx[..., None].expand(B, A, 4))
    boxes = torch.where(positive[..., None], boxes, 0.0)
    return AssignTargets(labels, boxes, positive)
