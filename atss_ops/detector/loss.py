"""Training targets from the ATSS assignment, and the three losses of the head.

The assignment is :func:`atss_ops.atss_assign` on the whole padded batch, on
the batch's device, with each image's anchor validity; :func:`atss_ops.assign_targets`
turns it into per-anchor labels and boxes. Losses, as in the ATSS paper:

* classification: sigmoid focal loss over every valid anchor, divided by the
  number of positives;
* box: GIoU loss of the decoded boxes of positives, weighted by their
  centerness target and divided by the sum of those weights (``box_loss_weight``);
* centerness: binary cross-entropy on positives, divided by the number of positives.

Under ``torchrun`` the normalisers are averaged over processes, so every rank
divides by the same numbers.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

import atss_ops

from .anchors import BoxCoder
from .distributed import all_reduce_mean


class HeadTargets(NamedTuple):
    """Per-anchor targets of a batch."""

    assignment: atss_ops.AssignResult  # what atss_assign returned
    labels: Tensor  # [B, A] int64 class of the assigned GT, -1 for background
    boxes: Tensor  # [B, A, 4] float32 assigned GT box, 0 for background
    positive: Tensor  # [B, A] bool
    centerness: Tensor  # [B, A] float32 centerness of the anchor centre in its GT, 0 for background
    valid: Tensor  # [B, A] bool anchors inside the image (the others take no loss)


def centerness_target(anchors: Tensor, boxes: Tensor) -> Tensor:
    """``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` of each anchor centre in ``boxes``.

    ``anchors`` ``[A, 4]``, ``boxes`` ``[B, A, 4]``; 0 where the centre is not inside the box.
    """
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    left, right = cx - boxes[..., 0], boxes[..., 2] - cx
    top, bottom = cy - boxes[..., 1], boxes[..., 3] - cy
    lr = torch.minimum(left, right) / torch.maximum(left, right).clamp(min=1e-6)
    tb = torch.minimum(top, bottom) / torch.maximum(top, bottom).clamp(min=1e-6)
    return torch.sqrt((lr * tb).clamp(min=0) * ((lr > 0) & (tb > 0)))


class ATSSLoss:
    """Assigns a batch and computes the head's losses.

    Args:
        num_classes: K, number of foreground classes.
        box_coder: the head's box parametrisation.
        topk: candidates per level per GT given to ``atss_assign`` (the paper's
            k times the anchors per location).
    """

    def __init__(
        self,
        num_classes: int,
        box_coder: BoxCoder,
        topk: int = 9,
        center_eps: float = 0.01,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_loss_weight: float = 2.0,
    ):
        self.num_classes = num_classes
        self.box_coder = box_coder
        self.topk = topk
        self.center_eps = center_eps
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.box_loss_weight = box_loss_weight

    def targets(
        self,
        anchors: Tensor,
        num_anchors_per_level: Sequence[int],
        anchor_valid: Tensor,
        gt_boxes: List[Tensor],
        gt_labels: List[Tensor],
    ) -> HeadTargets:
        """Per-anchor targets: one ``atss_assign`` call for the whole batch.

        Args:
            anchors: ``Tensor[A, 4]`` from :class:`AnchorGenerator`.
            num_anchors_per_level: anchors of each level.
            anchor_valid: ``Tensor[B, A]`` bool from :func:`anchor_validity`.
            gt_boxes: B x ``Tensor[G_i, 4]`` float32, same device as ``anchors``.
            gt_labels: B x ``Tensor[G_i]`` int64 in ``[0, num_classes)``.
        """
        padded, counts = atss_ops.pad_gt_boxes(gt_boxes)
        assignment = atss_ops.atss_assign(
            anchors, num_anchors_per_level, padded, counts,
            topk=self.topk, anchor_valid=anchor_valid, center_eps=self.center_eps,
        )
        assigned = atss_ops.assign_targets(assignment, padded, gt_labels)
        centerness = centerness_target(anchors, assigned.boxes) * assigned.positive
        return HeadTargets(assignment, assigned.labels, assigned.boxes, assigned.positive, centerness, anchor_valid)

    def __call__(
        self, cls_logits: Tensor, box_deltas: Tensor, centerness_logits: Tensor, anchors: Tensor, targets: HeadTargets
    ) -> Dict[str, Tensor]:
        """``{"loss_cls", "loss_box", "loss_ctr"}`` (float32 scalars) for head outputs.

        Args:
            cls_logits: ``Tensor[B, A, K]``; box_deltas: ``Tensor[B, A, 4]``;
            centerness_logits: ``Tensor[B, A]``, all in anchor order.
        """
        cls_logits, box_deltas, centerness_logits = cls_logits.float(), box_deltas.float(), centerness_logits.float()
        positive, valid = targets.positive, targets.valid
        num_positive = all_reduce_mean(positive.sum().float()).clamp(min=1.0)

        one_hot = F.one_hot(targets.labels.clamp(min=0), self.num_classes).float() * positive[..., None]
        loss_cls = sigmoid_focal_loss(
            cls_logits[valid], one_hot[valid], alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        ) / num_positive

        weight = targets.centerness[positive]
        weight_sum = all_reduce_mean(weight.sum()).clamp(min=1e-6)
        anchors_of_positives = anchors.expand(positive.shape[0], -1, -1)[positive]
        predicted = self.box_coder.decode(box_deltas[positive], anchors_of_positives)
        giou = generalized_box_iou_loss(predicted, targets.boxes[positive], reduction="none")
        loss_box = self.box_loss_weight * (giou * weight).sum() / weight_sum

        loss_ctr = F.binary_cross_entropy_with_logits(
            centerness_logits[positive], weight, reduction="sum"
        ) / num_positive
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_ctr": loss_ctr}
