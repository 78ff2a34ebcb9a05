"""From an assignment to the per-anchor targets a detection head trains on."""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from .types import AssignResult, TalResult


class AssignTargets(NamedTuple):
    """Per-anchor training targets (see :func:`assign_targets`).

    Every anchor is exactly one of: *positive* (assigned to a GT), *ignored*
    (``gt_index == -2``: left out of training) or *background* (the rest). A
    loss must leave the ignored anchors out; :attr:`weight` is the per-anchor
    factor that does it::

        loss = sigmoid_focal_loss(logits, targets.one_hot(C), reduction="none")  # [B, A, C]
        loss = (loss * targets.weight[..., None]).sum() / targets.positive.sum().clamp(min=1)

    or select with the mask ``~targets.ignored`` (``logits[~targets.ignored]``).
    """

    labels: Tensor  # [B, A] int64: class of the assigned GT; `background` for background, `ignore_label` if ignored
    boxes: Tensor  # [B, A, 2D] float32: the assigned GT box (x1, y1[, z1], x2, y2[, z2]); 0 elsewhere
    positive: Tensor  # [B, A] bool: assigned to a GT
    ignored: Tensor  # [B, A] bool: ignored (gt_index -2): no loss at all, neither positive nor negative

    @property
    def weight(self) -> Tensor:
        """``Tensor[B, A]`` float32: 1 for positive and background anchors, 0 for ignored ones.

        Multiply a per-anchor loss by it (``[..., None]`` for a per-class loss such
        as a sigmoid focal loss on :meth:`one_hot`) so ignored anchors take no loss.
        """
        return (~self.ignored).to(torch.float32)

    def one_hot(self, num_classes: int) -> Tensor:
        """``Tensor[B, A, num_classes]`` float32 classification targets: a 1 at the label of
        positives, all zero for background **and for ignored anchors**, which are not
        negatives: weight the loss with :attr:`weight` (or mask with ``~ignored``) to leave
        them out."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        labels = self.labels.clamp(min=0, max=num_classes - 1)  # non-positive rows: zeroed below
        hot = torch.nn.functional.one_hot(labels, num_classes).to(torch.float32)
        return hot * self.positive[..., None]


def assign_targets(
    result: AssignResult,
    gt_boxes: Union[Tensor, Sequence[Tensor]],
    gt_labels: Union[Tensor, Sequence[Tensor]],
    *,
    background: int = -1,
    ignore_label: int = -2,
) -> AssignTargets:
    """Turns an :class:`AssignResult` and the GT labels into per-anchor targets.

    Args:
        result: the output of :func:`atss_ops.atss_assign`.
        gt_boxes: ``Tensor[B, G, 4]`` or ``Tensor[B, G, 6]`` (3-D), or the list of
            ``Tensor[G_i, 4 or 6]``, as given to ``atss_assign``.
        gt_labels: ``Tensor[B, G]`` int64 class ids, or a list of ``Tensor[G_i]``.
        background: label written for background anchors (default -1).
        ignore_label: label written for ignored anchors (``gt_index == -2``, from
            ``anchor_ignore``; default -2); must differ from ``background``.

    Returns:
        :class:`AssignTargets` with ``labels [B, A]`` int64, ``boxes [B, A, 2D]``
        float32, ``positive [B, A]`` bool and ``ignored [B, A]`` bool (and the
        ``weight`` and ``one_hot`` a loss needs). Pure tensor ops, no host sync.

    Raises:
        ValueError naming the argument and the value: shapes that do not match
        ``result`` or each other, non-integer labels, ``ignore_label == background``.
    """
    gt_index = result.gt_index
    B, A = gt_index.shape
    if isinstance(ignore_label, bool) or not isinstance(ignore_label, int):
        raise ValueError(f"ignore_label must be an int, got {type(ignore_label).__name__} {ignore_label!r}")
    if isinstance(background, bool) or not isinstance(background, int):
        raise ValueError(f"background must be an int, got {type(background).__name__} {background!r}")
    if ignore_label == background:
        raise ValueError(
            f"ignore_label must differ from background (ignored anchors are not background), got both {background}"
        )
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
    if gt_boxes.dim() != 3 or gt_boxes.shape[0] != B or gt_boxes.shape[2] not in (4, 6):
        raise ValueError(
            f"gt_boxes must have shape [B, G, 4] (2-D) or [B, G, 6] (3-D) with B = {B}, "
            f"got shape {list(gt_boxes.shape)}"
        )
    G, width = gt_boxes.shape[1], gt_boxes.shape[2]
    if gt_labels.shape[1] != G:
        raise ValueError(
            f"gt_labels must have shape [B, G] = [{B}, {G}] (one label per box of gt_boxes), "
            f"got shape {list(gt_labels.shape)}"
        )
    if gt_labels.dtype.is_floating_point or gt_labels.dtype == torch.bool:
        raise ValueError(f"gt_labels must hold integer class ids, got {gt_labels.dtype}")
    gt_boxes = gt_boxes.to(torch.float32)
    positive = gt_index >= 0
    ignored = gt_index == -2
    rest = torch.where(ignored, ignore_label, background)
    if G == 0:
        return AssignTargets(rest, gt_boxes.new_zeros(B, A, width), positive, ignored)
    idx = gt_index.clamp(min=0)
    labels = torch.where(positive, gt_labels.to(torch.int64).gather(1, idx), rest)
    boxes = gt_boxes.gather(1, idx[..., None].expand(B, A, width))
    boxes = torch.where(positive[..., None], boxes, 0.0)
    return AssignTargets(labels, boxes, positive, ignored)


class TalTargets(NamedTuple):
    """Ultralytics' ``TaskAlignedAssigner`` outputs, in its order and conventions (see :func:`tal_targets`)."""

    target_labels: Tensor  # [B, A] int64: class of the anchor's GT (of GT 0 for background)
    target_bboxes: Tensor  # [B, A, 4] float32: the anchor's GT box (GT 0's for background)
    target_scores: Tensor  # [B, A, C] float32: target_score at the label of positives, 0 elsewhere
    fg_mask: Tensor  # [B, A] bool: positive
    target_gt_idx: Tensor  # [B, A] int64: the anchor's GT (0 for background)


def tal_targets(
    result: TalResult,
    gt_boxes: Union[Tensor, Sequence[Tensor]],
    gt_labels: Union[Tensor, Sequence[Tensor]],
    num_classes: int,
    *,
    out: Optional[Tensor] = None,
) -> TalTargets:
    """The five outputs of Ultralytics' ``TaskAlignedAssigner`` from a :func:`atss_ops.tal_assign` result.

    Args:
        result: from ``tal_assign`` on the same GTs.
        gt_boxes: ``Tensor[B, G, 4]`` (or the list given to ``tal_assign``).
        gt_labels: ``Tensor[B, G]`` or Ultralytics' ``Tensor[B, G, 1]`` (or the list given to ``tal_assign``).
        num_classes: C.
        out: optional ``Tensor[B, A, C]`` float32 to hold ``target_scores`` (overwritten): a training
            loop that passes the same buffer at every step skips allocating (and, on Linux, page-faulting
            in) a fresh ``[B, A, C]`` tensor each time, which costs more than the assignment itself.

    Returns:
        :class:`TalTargets` ``(target_labels, target_bboxes, target_scores, fg_mask, target_gt_idx)``
        with Ultralytics' conventions: a background anchor has GT index 0 and GT 0's label and box
        (``fg_mask`` tells them apart); with G = 0 the labels are ``num_classes`` and the boxes 0.
        ``target_scores`` is the only ``[B, A, C]`` tensor.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if not isinstance(gt_boxes, Tensor):
        from .ops import _pad_labels, pad_gt_boxes

        gt_boxes, counts = pad_gt_boxes(gt_boxes)
        gt_labels = _pad_labels(gt_labels, counts)
    if gt_labels.dim() == 3 and gt_labels.shape[-1] == 1:
        gt_labels = gt_labels[..., 0]
    B, A = result.gt_index.shape
    G = gt_boxes.shape[1]
    fg = result.gt_index >= 0
    if out is None:
        scores = torch.zeros(B, A, num_classes, dtype=torch.float32, device=fg.device)
    else:
        if not isinstance(out, Tensor) or tuple(out.shape) != (B, A, num_classes) or out.dtype != torch.float32:
            shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            dtype = f" {out.dtype}" if isinstance(out, Tensor) else ""
            raise ValueError(f"out must be a float32 Tensor[B, A, C] = [{B}, {A}, {num_classes}], got {shape}{dtype}")
        if out.device != fg.device:
            raise ValueError(
                f"out is on {out.device} but the result is on {fg.device}: all tensors must be on one device"
            )
        scores = out.zero_()
    if G == 0:
        labels = torch.full((B, A), num_classes, dtype=torch.int64, device=fg.device)
        boxes = torch.zeros(B, A, 4, dtype=torch.float32, device=fg.device)
        return TalTargets(labels, boxes, scores, fg, torch.zeros(B, A, dtype=torch.int64, device=fg.device))
    idx = result.gt_index.clamp(min=0)
    labels = gt_labels.long().gather(1, idx).clamp(min=0)
    boxes = gt_boxes.to(torch.float32).gather(1, idx[..., None].expand(B, A, 4))
    positive_score = torch.where(fg, result.target_score, 0.0)
    scores.scatter_(2, labels.clamp(max=num_classes - 1)[..., None], positive_score[..., None])
    return TalTargets(labels, boxes, scores, fg, idx)
