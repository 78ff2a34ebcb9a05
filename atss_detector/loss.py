"""Training targets from the ATSS assignment, and the three losses of the head.

The assignment is :func:`atss_ops.atss_assign` on the whole padded batch, on
the batch's device, with each image's anchor validity; :func:`atss_ops.assign_targets`
turns it into per-anchor labels and boxes. ``assigner="max_iou"`` swaps in the
RetinaNet rule the paper compares against (:func:`max_iou_assign`) and
``assigner="fcos"`` FCOS's spatial and scale constraint (:func:`fcos_assign`), so
the effect of the assignment on AP can be measured with everything else unchanged.
Ignore regions (COCO crowd boxes, ``train --ignore-crowd``) become an
``anchor_ignore`` mask (:func:`atss_ops.ignore_mask`): those anchors are never
positive (``gt_index`` -2) and take no classification loss, whatever the assigner.
Losses, as in the ATSS paper:

* classification: sigmoid focal loss over every valid anchor, divided by the
  number of positives;
* box: GIoU loss of the decoded boxes of positives, weighted by their
  centerness target and divided by the sum of those weights (``box_loss_weight``);
* centerness: binary cross-entropy on positives, divided by the number of positives.

Under ``torchrun`` the normalisers are averaged over processes, so every rank
divides by the same numbers.
"""

from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

import atss_ops

from .anchors import BoxCoder, PointCoder
from .distributed import all_reduce_mean


class HeadTargets(NamedTuple):
    """Per-anchor targets of a batch."""

    assignment: atss_ops.AssignResult  # what atss_assign returned
    labels: Tensor  # [B, A] int64 class of the assigned GT, -1 for background, -2 for anchors under an ignore box
    boxes: Tensor  # [B, A, 4] float32 assigned GT box, 0 for background
    positive: Tensor  # [B, A] bool
    centerness: Tensor  # [B, A] float32 centerness of the anchor centre in its GT, 0 for background
    valid: Tensor  # [B, A] bool anchors that take a loss (inside the image, not ignored: max_iou's band, ignore boxes)


ASSIGNERS = ("atss", "max_iou", "fcos")

# FCOS's regression ranges, in pixels of 800-pixel images: P3 up to 64, P4 64-128,
# ..., P7 above 512. Level l's range is (4, 8] strides; the finest level starts at
# 0 and the coarsest is open (see fcos_size_ranges).
FCOS_RANGE_STRIDES = (4.0, 8.0)


def max_iou_assign(
    anchors: Tensor,
    anchor_valid: Tensor,
    gt_boxes: Tensor,
    gt_counts: Tensor,
    positive_iou: float = 0.5,
    negative_iou: float = 0.4,
) -> Tuple[atss_ops.AssignResult, Tensor]:
    """The RetinaNet assignment, the baseline the ATSS paper measures against.

    An anchor is positive for the GT it overlaps most when that IoU is at least
    ``positive_iou``, background below ``negative_iou`` and ignored in between;
    each GT also keeps the anchors it overlaps most (torchvision's
    :class:`~torchvision.models.detection._utils.Matcher` with low-quality
    matches). A dense ``[G, A]`` IoU matrix per image: a baseline, not a kernel.

    Args:
        anchors: ``Tensor[A, 4]``; anchor_valid: ``Tensor[B, A]`` bool (invalid
            anchors are background).
        gt_boxes: ``Tensor[B, G, 4]`` padded as by :func:`atss_ops.pad_gt_boxes`;
            gt_counts: ``Tensor[B]`` real boxes per image.

    Returns:
        ``(AssignResult, ignored)``: the result in :func:`atss_ops.atss_assign`'s
        format (``threshold`` is ``positive_iou`` for real GTs) and ``Tensor[B, A]``
        bool of the anchors between the two thresholds.
    """
    if not 0 <= negative_iou <= positive_iou <= 1:
        raise ValueError(f"need 0 <= negative_iou <= positive_iou <= 1, got {negative_iou} and {positive_iou}")
    B, G = gt_boxes.shape[:2]
    A = anchors.shape[0]
    device = anchors.device
    gt_index = torch.full((B, A), -1, dtype=torch.int64, device=device)
    iou = torch.zeros((B, A), dtype=torch.float32, device=device)
    ignored = torch.zeros((B, A), dtype=torch.bool, device=device)
    threshold = torch.zeros((B, G), dtype=torch.float32, device=device)
    num_positive = torch.zeros((B, G), dtype=torch.int64, device=device)
    matcher = Matcher(positive_iou, negative_iou, allow_low_quality_matches=True)
    for b, count in enumerate(gt_counts.tolist()):
        overlaps = box_iou(gt_boxes[b, :count].float(), anchors.float())  # [G_b, A]
        overlaps = overlaps.masked_fill(~anchor_valid[b], -1.0)
        # A GT that overlaps no valid anchor (zero size, outside the image) would make
        # the Matcher's low-quality rule claim every anchor of IoU 0: leave it out.
        kept = (overlaps.max(dim=1).values > 0).nonzero()[:, 0] if A else overlaps.new_zeros(0, dtype=torch.int64)
        if kept.numel() == 0:
            continue
        matches = matcher(overlaps[kept])
        positive = matches >= 0
        matches = torch.where(positive, kept[matches.clamp(min=0)], matches)
        gt_index[b] = torch.where(positive, matches, -1)
        iou[b] = torch.where(positive, overlaps.gather(0, matches.clamp(min=0)[None])[0], 0.0)
        ignored[b] = matches == Matcher.BETWEEN_THRESHOLDS
        threshold[b, :count] = positive_iou
        num_positive[b, :count] = torch.bincount(matches[positive], minlength=count)
    return atss_ops.AssignResult(gt_index, iou, threshold, num_positive), ignored


def fcos_size_ranges(strides: Sequence[int], scale: float = 1.0) -> List[Tuple[float, float]]:
    """FCOS's range of the largest regression distance for each level, ``[(low, high)]``.

    Level of stride ``s``: ``(4 s, 8 s) * scale``, the finest level from 0 and the
    coarsest open (``inf``): for P3-P7 and ``scale=1``, FCOS's 0-64, 64-128, 128-256,
    256-512 and 512-inf. ``scale`` adapts the ranges to images other than 800 px
    (the detector uses its image size / 800).
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    low, high = FCOS_RANGE_STRIDES
    ranges = [(low * s * scale, high * s * scale) for s in strides]
    if ranges:
        ranges[0] = (0.0, ranges[0][1])
        ranges[-1] = (ranges[-1][0], math.inf)
    return ranges


def fcos_assign(
    anchors: Tensor,
    num_anchors_per_level: Sequence[int],
    anchor_valid: Tensor,
    gt_boxes: Tensor,
    gt_counts: Tensor,
    size_ranges: Sequence[Tuple[float, float]],
) -> atss_ops.AssignResult:
    """FCOS's spatial and scale constraint on the anchors' centres (the paper's Table 2 row).

    An anchor is positive for a GT when its centre lies strictly inside the GT box
    and the largest of the four distances from the centre to the box's sides,
    ``max(l, t, r, b)``, lies in its level's ``[low, high]`` (both ends included,
    as in FCOS). An anchor that qualifies for several GTs goes to the one of
    smallest area (the lowest index among equal areas). Anchors of one location
    share their centre, so all of them get the same GT. A dense ``[B, G, A]``
    computation: a baseline, not a kernel.

    Args:
        anchors: ``Tensor[A, 4]``; num_anchors_per_level: anchors of each level.
        anchor_valid: ``Tensor[B, A]`` bool (invalid anchors are background).
        gt_boxes: ``Tensor[B, G, 4]`` padded as by :func:`atss_ops.pad_gt_boxes`;
            gt_counts: ``Tensor[B]`` real boxes per image.
        size_ranges: ``(low, high)`` per level, as from :func:`fcos_size_ranges`.

    Returns:
        An :class:`atss_ops.AssignResult`: ``iou`` is the IoU of the anchor box with
        its GT, ``threshold`` NaN (FCOS has none), ``num_positive`` per GT.
    """
    if len(size_ranges) != len(num_anchors_per_level):
        raise ValueError(
            f"size_ranges needs one (low, high) per level: {len(num_anchors_per_level)} levels, got {len(size_ranges)}"
        )
    B, G = gt_boxes.shape[:2]
    A = anchors.shape[0]
    device = anchors.device
    counts = torch.tensor([int(n) for n in num_anchors_per_level], device=device)
    low = torch.tensor([float(r[0]) for r in size_ranges], device=device).repeat_interleave(counts)
    high = torch.tensor([float(r[1]) for r in size_ranges], device=device).repeat_interleave(counts)
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    boxes = gt_boxes.float()
    distances = torch.stack(
        [
            cx - boxes[..., 0, None],
            cy - boxes[..., 1, None],
            boxes[..., 2, None] - cx,
            boxes[..., 3, None] - cy,
        ],
        dim=-1,
    )  # [B, G, A, 4]
    inside = distances.min(dim=-1).values > 0
    largest = distances.max(dim=-1).values
    in_range = (largest >= low) & (largest <= high)
    real = torch.arange(G, device=device)[None] < gt_counts.to(device)[:, None]  # [B, G]
    qualifies = inside & in_range & real[..., None] & anchor_valid[:, None, :]  # NaN padding compares False
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # [B, G]
    area = torch.where(qualifies, area[..., None], torch.full_like(largest, math.inf))
    gt_index = torch.full((B, A), -1, dtype=torch.int64, device=device)
    if G:
        smallest_area, smallest = area.min(dim=1)  # the first of equal areas
        gt_index = torch.where(torch.isfinite(smallest_area), smallest, -1)
    positive = gt_index >= 0
    iou = torch.zeros((B, A), dtype=torch.float32, device=device)
    num_positive = torch.zeros((B, G), dtype=torch.int64, device=device)
    for b in range(B):
        chosen = positive[b].nonzero()[:, 0]
        if chosen.numel():
            iou[b, chosen] = box_iou(anchors[chosen].float(), boxes[b]).gather(1, gt_index[b, chosen, None])[:, 0]
            num_positive[b] = torch.bincount(gt_index[b, chosen], minlength=G)
    threshold = torch.full((B, G), math.nan, dtype=torch.float32, device=device)
    return atss_ops.AssignResult(gt_index, iou, threshold, num_positive)


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
        box_coder: the head's box parametrisation (:class:`BoxCoder` or :class:`PointCoder`).
        topk: candidates per level per GT given to ``atss_assign`` (the paper's
            k times the anchors per location).
        assigner: ``"atss"`` (:func:`atss_ops.atss_assign`), ``"max_iou"``
            (:func:`max_iou_assign`, the RetinaNet baseline) or ``"fcos"``
            (:func:`fcos_assign`, FCOS's spatial and scale constraint).
        fcos_ranges: ``fcos``'s ``(low, high)`` per level (:func:`fcos_size_ranges`).
        center_eps: ``atss``: margin of the centre-inside-GT test; None: no centre test.
        ensure_positive: ``atss``: each GT left without positives takes its best
            free candidate of IoU > 0 (the contract's step 8).
        ignore_iof_threshold: an anchor whose intersection with an ignore box over
            its own area exceeds this is ignored (:func:`atss_ops.ignore_mask`).
    """

    def __init__(
        self,
        num_classes: int,
        box_coder: Union[BoxCoder, PointCoder],
        topk: int = 9,
        center_eps: Optional[float] = 0.01,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_loss_weight: float = 2.0,
        assigner: str = "atss",
        fcos_ranges: Optional[Sequence[Tuple[float, float]]] = None,
        ensure_positive: bool = False,
        ignore_iof_threshold: float = 0.5,
    ):
        if assigner not in ASSIGNERS:
            raise ValueError(f"assigner must be one of {list(ASSIGNERS)}, got {assigner!r}")
        if assigner == "fcos" and fcos_ranges is None:
            raise ValueError("assigner 'fcos' needs fcos_ranges (see fcos_size_ranges)")
        self.assigner = assigner
        self.fcos_ranges = fcos_ranges
        self.num_classes = num_classes
        self.box_coder = box_coder
        self.topk = topk
        self.center_eps = center_eps
        self.ensure_positive = ensure_positive
        self.ignore_iof_threshold = ignore_iof_threshold
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
        ignore_boxes: Optional[List[Tensor]] = None,
    ) -> HeadTargets:
        """Per-anchor targets: one ``atss_assign`` call for the whole batch (or a baseline's rule).

        Args:
            anchors: ``Tensor[A, 4]`` from :class:`AnchorGenerator`.
            num_anchors_per_level: anchors of each level.
            anchor_valid: ``Tensor[B, A]`` bool from :func:`anchor_validity`.
            gt_boxes: B x ``Tensor[G_i, 4]`` float32, same device as ``anchors``.
            gt_labels: B x ``Tensor[G_i]`` int64 in ``[0, num_classes)``.
            ignore_boxes: optional B x ``Tensor[M_i, 4]``, regions whose anchors
                are neither positive nor negative (``gt_index`` -2, left out of
                ``valid``); None, or no boxes in any image: nothing is ignored.
        """
        padded, counts = atss_ops.pad_gt_boxes(gt_boxes)
        anchor_ignore = None
        if ignore_boxes is not None and any(b.shape[0] for b in ignore_boxes):
            padded_ignore, ignore_counts = atss_ops.pad_gt_boxes(ignore_boxes)
            anchor_ignore = atss_ops.ignore_mask(anchors, padded_ignore, ignore_counts, self.ignore_iof_threshold)
        if self.assigner == "atss":
            assignment = atss_ops.atss_assign(
                anchors,
                num_anchors_per_level,
                padded,
                counts,
                topk=self.topk,
                anchor_valid=anchor_valid,
                anchor_ignore=anchor_ignore,
                center_eps=self.center_eps,
                ensure_positive=self.ensure_positive,
            )
        else:
            # The baselines never see the ignored anchors (as invalid ones, they stay background).
            usable = anchor_valid if anchor_ignore is None else anchor_valid & ~anchor_ignore
            if self.assigner == "max_iou":
                assignment, ignored = max_iou_assign(anchors, usable, padded, counts)
                anchor_valid = anchor_valid & ~ignored
            else:
                assignment = fcos_assign(anchors, num_anchors_per_level, usable, padded, counts, self.fcos_ranges)
            if anchor_ignore is not None:  # -2, as atss_assign marks them
                assignment = assignment._replace(gt_index=assignment.gt_index.masked_fill(anchor_ignore, -2))
        if anchor_ignore is not None:
            anchor_valid = anchor_valid & ~anchor_ignore
        assigned = atss_ops.assign_targets(assignment, padded, gt_labels)
        centerness = centerness_target(anchors, assigned.boxes) * assigned.positive
        return HeadTargets(assignment, assigned.labels, assigned.boxes, assigned.positive, centerness, anchor_valid)

    def __call__(
        self,
        cls_logits: Tensor,
        box_deltas: Tensor,
        centerness_logits: Tensor,
        anchors: Tensor,
        targets: HeadTargets,
        anchor_strides: Optional[Tensor] = None,
    ) -> Dict[str, Tensor]:
        """``{"loss_cls", "loss_box", "loss_ctr"}`` (float32 scalars) for head outputs.

        Args:
            cls_logits: ``Tensor[B, A, K]``; box_deltas: ``Tensor[B, A, 4]``;
            centerness_logits: ``Tensor[B, A]``, all in anchor order.
            anchor_strides: ``Tensor[A]``, each anchor's level stride (the point
                coding needs it; see :func:`~atss_detector.anchors.anchor_strides`).
        """
        cls_logits, box_deltas, centerness_logits = cls_logits.float(), box_deltas.float(), centerness_logits.float()
        positive, valid = targets.positive, targets.valid
        num_positive = all_reduce_mean(positive.sum().float()).clamp(min=1.0)

        one_hot = F.one_hot(targets.labels.clamp(min=0), self.num_classes).float() * positive[..., None]
        loss_cls = (
            sigmoid_focal_loss(
                cls_logits[valid], one_hot[valid], alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
            )
            / num_positive
        )

        weight = targets.centerness[positive]
        weight_sum = all_reduce_mean(weight.sum()).clamp(min=1e-6)
        anchors_of_positives = anchors.expand(positive.shape[0], -1, -1)[positive]
        strides_of_positives = None
        if anchor_strides is not None:
            strides_of_positives = anchor_strides.expand(positive.shape[0], -1)[positive]
        predicted = self.box_coder.decode(box_deltas[positive], anchors_of_positives, strides_of_positives)
        giou = generalized_box_iou_loss(predicted, targets.boxes[positive], reduction="none")
        loss_box = self.box_loss_weight * (giou * weight).sum() / weight_sum

        loss_ctr = (
            F.binary_cross_entropy_with_logits(centerness_logits[positive], weight, reduction="sum") / num_positive
        )
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_ctr": loss_ctr}
