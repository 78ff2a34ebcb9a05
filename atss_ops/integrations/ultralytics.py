"""Ultralytics YOLO's task-aligned assignment on :func:`atss_ops.tal_assign`, in one line.

::

    from ultralytics import YOLO
    from atss_ops.integrations.ultralytics import use_atss_ops

    model = YOLO("yolo11n.yaml")
    use_atss_ops(model)  # or use_atss_ops(model, atss_warmup_epochs=4): ATSS first, as TOOD / PP-YOLOE / YOLOv6
    model.train(data="data.yaml", epochs=100)

Ultralytics' detection loss (``v8DetectionLoss``, and both branches of
``E2ELoss``) calls ``self.assigner(pd_scores, pd_bboxes, anc_points, gt_labels,
gt_bboxes, mask_gt)``, an instance of its ``TaskAlignedAssigner``, and takes five
tensors back. :func:`use_atss_ops` puts an :class:`AtssOpsAssigner` in its place:
the same call and the same five outputs, computed by one
:func:`atss_ops.tal_assign` call for the batch and :func:`atss_ops.tal_targets`.
The loss, the head, the data and the rest of the trainer stay Ultralytics'.
The hyperparameters are read from the replaced assigner at every call:
``topk``, ``alpha``, ``beta``, ``eps``, ``num_classes``; ``topk2`` when it differs
from ``topk`` (Ultralytics skips its second filter when they are equal); and,
where the installed Ultralytics has it (8.4), ``stride_val`` as ``min_side``
(its middle stride: GT sides below it are widened for the inside test). The
overlap is CIoU, as in Ultralytics' detection assigner.

The assignment follows the TAL contract (``docs/contract.md``), not
Ultralytics' code; the two differ only where the contract's table of
differences says (top-k among the inside anchors, index order on ties, the
lowest GT it is inside for a shared anchor whose overlaps are all 0, the
contract's own arctangent and powers). ``tests/test_ultralytics_switch.py``
checks that on real training batches; ``docs/ultralytics.md`` has the numbers.

**ATSS warm-up** (``atss_warmup_epochs=N``): during the first N epochs the
assignment is :func:`atss_ops.atss_assign` instead (``atss_topk`` per level,
centre-in-GT test of ``atss_assign``), on anchors built from the anchor points:
a square of side ``atss_anchor_scale * stride`` (default 5, PP-YOLOE's and
YOLOv6's ``grid_cell_scale``/``grid_cell_size``) centred on each point, the
levels read from the points' layout (Ultralytics' grid of cell centres, level
by level). A positive's target score is the IoU of its predicted box with its
GT (the contract's IoU, ``overlap="iou"``), as PP-YOLOE and YOLOv6 weight their
ATSS targets; background 0. One-to-one assigners (``topk2 < topk``: the
``one2one`` branch of YOLO26 / YOLOv10's ``E2ELoss``) keep TAL in the warm-up:
ATSS gives several positives per GT, which a one-to-one head must not learn.

**The epoch** is :attr:`UltralyticsSwitch.epoch`. Given a ``YOLO`` object or a
trainer, :func:`use_atss_ops` registers two callbacks: ``on_train_start``
installs the assigner in the trainer's model and in its EMA copy (whose loss
Ultralytics computes during validation), after the trainer has built both and
set the model's hyperparameters; ``on_train_epoch_start`` sets the epoch from
``trainer.epoch`` (resumed runs included) and re-installs where Ultralytics
rebuilt a loss. Given a bare ``DetectionModel``, the switch is installed at once
(its ``args`` must be Ultralytics' hyperparameters) and a training loop of your
own sets ``switch.epoch``. Callbacks do not reach DDP workers, which Ultralytics
starts as new processes: multi-GPU training needs a trainer subclass that calls
:func:`use_atss_ops` on itself.

Ultralytics (AGPL-3.0) is imported when :func:`use_atss_ops` runs, never by
this module's import, and none of its code is copied here. Without it,
:func:`use_atss_ops` raises ImportError naming ``pip install atss-ops[ultralytics]``.
"""

from __future__ import annotations

import copy
import numbers
from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor

import atss_ops
from atss_ops import reference_tal
from atss_ops.types import TalResult

__all__ = ["AtssOpsAssigner", "UltralyticsSwitch", "use_atss_ops"]

INSTALL_HINT = "pip install atss-ops[ultralytics]"
# PP-YOLOE's grid_cell_scale and YOLOv6's grid_cell_size: the ATSS warm-up's anchor is 5 strides square.
ATSS_ANCHOR_SCALE = 5.0
ATSS_TOPK = 9  # ATSS's k, per level (TOOD, PP-YOLOE, YOLOv6)


def _ultralytics() -> Dict[str, type]:
    """Ultralytics' classes the switch needs, imported now; ImportError with the extra's name without it."""
    try:
        from ultralytics.engine.model import Model
        from ultralytics.engine.trainer import BaseTrainer
        from ultralytics.nn.tasks import DetectionModel
        from ultralytics.utils.tal import TaskAlignedAssigner
    except ImportError as error:
        raise ImportError(
            f"atss_ops.integrations.ultralytics needs Ultralytics YOLO, which could not be imported ({error}): "
            f"{INSTALL_HINT} (the rest of atss_ops works without it)"
        ) from error
    return dict(Model=Model, BaseTrainer=BaseTrainer, DetectionModel=DetectionModel, Assigner=TaskAlignedAssigner)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _level_sizes(anchor_points: Tensor, strides: List[float]) -> List[Tuple[int, int]]:
    """``(h_l, w_l)`` per level of Ultralytics' anchor points (``Tensor[A, 2]`` in pixels: the cell centres
    ``((j + 0.5) s_l, (i + 0.5) s_l)`` of each level's grid, row-major, level by level), checked exactly.

    The image width is the first row's length times the first stride; its height follows from A. Anything
    else (points of another layout) is a ValueError: the ATSS warm-up needs each anchor's level."""
    A = anchor_points.shape[0]
    s0 = strides[0]
    first_row = anchor_points[:, 1] == s0 / 2
    w0 = int(first_row.int().cumprod(0).sum()) if A else 0
    width = w0 * s0
    per_row = sum(width / (s * s) for s in strides)  # anchors per pixel row of the image, all levels
    height = A / per_row if per_row else 0.0
    sizes = [(round(height / s), round(width / s)) for s in strides]
    expected = torch.cat(
        [
            torch.stack(
                torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")[::-1], dim=-1
            ).reshape(-1, 2)
            * s
            for (h, w), s in zip(sizes, strides)
        ]
        or [torch.zeros(0, 2)]
    ).to(anchor_points)
    if A == 0 or expected.shape != anchor_points.shape or not torch.equal(expected, anchor_points):
        raise ValueError(
            "the ATSS warm-up needs Ultralytics' anchor points (cell centres of each stride's grid, level by level, "
            f"strides {strides}); anchor_points of shape {list(anchor_points.shape)} are not such a grid"
        )
    return sizes


class AtssOpsAssigner:
    """Ultralytics' ``TaskAlignedAssigner`` call on :func:`atss_ops.tal_assign` (ATSS during a warm-up).

    ``original`` is the assigner it replaces: its hyperparameters are read at every call (a write to
    ``topk``, ``alpha`` and the like on this object goes to it too). ``switch`` holds the epoch and the
    warm-up's options, shared by every assigner a :class:`UltralyticsSwitch` installed (a deep copy, as
    Ultralytics' EMA makes, shares it too).
    """

    _OWN = ("original", "switch", "_atss_anchors")

    def __init__(self, original: Any, switch: "UltralyticsSwitch"):
        object.__setattr__(self, "original", original)
        object.__setattr__(self, "switch", switch)
        object.__setattr__(self, "_atss_anchors", None)  # (anchor_points, anchors, level sizes) of the last call

    def __getattr__(self, name: str) -> Any:  # topk, alpha, stride, ...: the replaced assigner's
        if name in AtssOpsAssigner._OWN:
            raise AttributeError(name)
        return getattr(self.original, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in AtssOpsAssigner._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.original, name, value)

    def __deepcopy__(self, memo: dict) -> "AtssOpsAssigner":
        return AtssOpsAssigner(copy.deepcopy(self.original, memo), self.switch)

    @property
    def one_to_one(self) -> bool:
        """A one-to-one assigner (``topk2`` below ``topk``, E2ELoss's ``one2one``): no ATSS warm-up."""
        topk2 = getattr(self.original, "topk2", None)
        return topk2 is not None and topk2 < self.original.topk

    def tal_options(self) -> Dict[str, Any]:
        """The :func:`atss_ops.tal_assign` options of the replaced assigner, as it holds them now."""
        a = self.original
        topk2 = getattr(a, "topk2", None)
        min_side = getattr(a, "stride_val", None)
        return dict(
            topk=int(a.topk),
            alpha=float(a.alpha),
            beta=float(a.beta),
            overlap="ciou",
            min_side=None if min_side is None else float(min_side),
            topk2=None if topk2 is None or topk2 == a.topk else int(topk2),
            eps=float(a.eps),
        )

    @torch.no_grad()
    def __call__(
        self,
        pd_scores: Tensor,
        pd_bboxes: Tensor,
        anc_points: Tensor,
        gt_labels: Tensor,
        gt_bboxes: Tensor,
        mask_gt: Tensor,
        **extra: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Ultralytics' five assignment outputs.

        Args:
            pd_scores: ``Tensor[B, A, C]`` class probabilities (after the sigmoid).
            pd_bboxes: ``Tensor[B, A, 4]`` predicted ``x1, y1, x2, y2`` in pixels.
            anc_points: ``Tensor[A, 2]`` anchor points in pixels.
            gt_labels: ``Tensor[B, G, 1]`` classes (float, as Ultralytics passes them).
            gt_bboxes: ``Tensor[B, G, 4]`` ``x1, y1, x2, y2`` in pixels, padded.
            mask_gt: ``Tensor[B, G, 1]``: 1 for a real GT, 0 for padding (in any order).

        Returns:
            ``(target_labels [B, A] int64, target_bboxes [B, A, 4] float32, target_scores [B, A, C] float32,
            fg_mask [B, A] bool, target_gt_idx [B, A] int64)``, Ultralytics' conventions: background anchors
            have ``fg_mask`` False, GT index 0 and GT 0's label and box, target score 0.

        Raises:
            TypeError: extra keyword tensors (the pose, segmentation and rotated assigners' inputs: not supported).
            ValueError: from :func:`atss_ops.tal_assign`'s checks, e.g. non-finite predicted boxes
                (on CUDA only the checks that need no host sync run: see ``check_inputs``).
        """
        if extra:
            raise TypeError(
                f"AtssOpsAssigner takes the detection assigner's six tensors only, got extra {sorted(extra)} "
                "(pose, segmentation and rotated assigners are not supported)"
            )
        mask = mask_gt.reshape(gt_bboxes.shape[:2]).bool()
        labels = gt_labels.reshape(gt_bboxes.shape[:2]).long()
        boxes, labels_first, counts, order = _valid_first(gt_bboxes, labels, mask)
        if self.switch.in_warmup and not self.one_to_one:
            result = self._atss(pd_bboxes, anc_points, boxes, counts)
            self.switch.calls["atss"] += 1
        else:
            result = atss_ops.tal_assign(
                pd_scores, pd_bboxes, anc_points, boxes, labels_first, counts, **self.tal_options()
            )
            self.switch.calls["tal"] += 1
        if order is not None:
            result = _to_original_order(result, order)
        return tuple(atss_ops.tal_targets(result, gt_bboxes, labels, int(self.original.num_classes)))

    def _atss(self, pd_bboxes: Tensor, anc_points: Tensor, gt_boxes: Tensor, counts: Tensor) -> TalResult:
        """The warm-up: ATSS on squares of ``atss_anchor_scale`` strides about each point; target score = IoU
        of the positive's predicted box with its GT."""
        cached = self._atss_anchors
        if cached is None or cached[0].shape != anc_points.shape or not torch.equal(cached[0], anc_points):
            strides = [float(s) for s in self.original.stride]
            sizes = _level_sizes(anc_points, strides)
            point_stride = torch.cat(
                [torch.full((h * w, 1), s, dtype=torch.float32) for (h, w), s in zip(sizes, strides)]
            ).to(anc_points.device)
            half = point_stride * (self.switch.atss_anchor_scale / 2)
            points = anc_points.float()
            anchors = torch.cat([points - half, points + half], dim=-1)
            cached = (anc_points.clone(), anchors, [h * w for h, w in sizes])
            self._atss_anchors = cached
        _, anchors, per_level = cached
        res = atss_ops.atss_assign(anchors, per_level, gt_boxes, counts, topk=self.switch.atss_topk)
        fg = res.gt_index >= 0
        B, A = res.gt_index.shape
        if gt_boxes.shape[1] == 0:  # no GT in the batch: nothing to gather
            zeros = torch.zeros(B, A, dtype=torch.float32, device=fg.device)
            return TalResult(res.gt_index, zeros, zeros, res.num_positive)
        assigned = gt_boxes.float().gather(1, res.gt_index.clamp(min=0)[..., None].expand(B, A, 4))
        iou = reference_tal.box_overlap(assigned, pd_bboxes.float(), ciou=False)
        iou = torch.where(fg, iou, torch.zeros((), dtype=iou.dtype, device=iou.device))
        return TalResult(res.gt_index, iou, iou, res.num_positive)


def _valid_first(gt_bboxes: Tensor, labels: Tensor, mask: Tensor):
    """Ultralytics marks real GTs with ``mask_gt``; ``tal_assign`` takes a count per image. Its padding follows
    its GTs, so the boxes go as they are; otherwise (a mask with holes) each image's real GTs are moved first,
    in order, and ``order`` ([B, G]: new position -> original index) maps the result back."""
    counts = mask.sum(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if bool((mask == (positions[None, :] < counts[:, None])).all()):
        return gt_bboxes, labels, counts, None
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    boxes = gt_bboxes.gather(1, order[..., None].expand_as(gt_bboxes))
    return boxes, labels.gather(1, order), counts, order


def _to_original_order(result: TalResult, order: Tensor) -> TalResult:
    gt_index = torch.where(result.gt_index >= 0, order.gather(1, result.gt_index.clamp(min=0)), -1)
    num_positive = torch.zeros_like(result.num_positive).scatter(1, order, result.num_positive)
    return TalResult(gt_index, result.target_score, result.overlap, num_positive)


class UltralyticsSwitch:
    """What :func:`use_atss_ops` installed: the options, the epoch, and the assigner calls so far.

    Attributes:
        atss_warmup_epochs: epochs ``0 .. atss_warmup_epochs - 1`` assign with ATSS (0: never).
        atss_topk: ATSS's k per level during the warm-up.
        atss_anchor_scale: the warm-up anchor's side, in strides.
        epoch: the current epoch, counted from 0 (set by the trainer callback, or by you).
        calls: ``{"tal": n, "atss": n}``, assigner calls of each kind (for logs and tests).
    """

    def __init__(self, atss_warmup_epochs: int, atss_topk: int, atss_anchor_scale: float, assigner_type: type):
        self.atss_warmup_epochs = atss_warmup_epochs
        self.atss_topk = atss_topk
        self.atss_anchor_scale = atss_anchor_scale
        self.epoch = 0
        self.calls = {"tal": 0, "atss": 0}
        self._assigner_type = assigner_type

    @property
    def in_warmup(self) -> bool:
        return self.epoch < self.atss_warmup_epochs

    def install(self, model: torch.nn.Module) -> List[AtssOpsAssigner]:
        """Replaces the detection assigner(s) of ``model``'s loss (built now if the model has none yet: its
        ``args`` must then be Ultralytics' hyperparameters). Returns the installed assigners. Idempotent."""
        model = getattr(model, "module", model)  # DistributedDataParallel
        if getattr(model, "criterion", None) is None:
            args = getattr(model, "args", None)
            if args is None or isinstance(args, dict):
                raise ValueError(
                    "use_atss_ops: the model has no loss yet and model.args is "
                    f"{type(args).__name__ if args is not None else None}, not Ultralytics' hyperparameters; "
                    "pass the YOLO object or its trainer instead, or set "
                    "model.args = ultralytics.cfg.get_cfg() first"
                )
            model.criterion = model.init_criterion()
        return self._switch_loss(model.criterion)

    def _switch_loss(self, criterion: Any) -> List[AtssOpsAssigner]:
        losses = [criterion] + [getattr(criterion, n) for n in ("one2many", "one2one") if hasattr(criterion, n)]
        installed = []
        for loss in losses:
            assigner = getattr(loss, "assigner", None)
            if assigner is None:
                continue
            if isinstance(assigner, AtssOpsAssigner):
                assigner.switch = self
            elif type(assigner) is self._assigner_type:
                assigner = AtssOpsAssigner(assigner, self)
                loss.assigner = assigner
            else:
                raise TypeError(
                    f"use_atss_ops: the loss {type(loss).__name__} assigns with {type(assigner).__name__}, not "
                    "Ultralytics' detection TaskAlignedAssigner (rotated, pose and segmentation are not supported)"
                )
            installed.append(assigner)
        if not installed:
            raise TypeError(f"use_atss_ops: the loss {type(criterion).__name__} has no assigner to replace")
        return installed

    def _install_in_trainer(self, trainer: Any) -> None:
        self.install(trainer.model)
        ema = getattr(getattr(trainer, "ema", None), "ema", None)
        if ema is not None:
            if getattr(ema, "args", None) is None or isinstance(ema.args, dict):
                ema.args = getattr(trainer.model, "args", None)
            self.install(ema)

    def on_train_start(self, trainer: Any) -> None:
        """Ultralytics callback: installs in the trainer's model and its EMA copy, once both exist."""
        self.epoch = int(trainer.epoch) if hasattr(trainer, "epoch") else 0
        self._install_in_trainer(trainer)

    def on_train_epoch_start(self, trainer: Any) -> None:
        """Ultralytics callback: the epoch (from 0) for the warm-up; re-installs where a loss was rebuilt."""
        self.epoch = int(trainer.epoch)
        self._install_in_trainer(trainer)


def use_atss_ops(
    model_or_trainer: Any,
    *,
    atss_warmup_epochs: int = 0,
    atss_topk: int = ATSS_TOPK,
    atss_anchor_scale: float = ATSS_ANCHOR_SCALE,
) -> UltralyticsSwitch:
    """Makes an Ultralytics detection model assign with :func:`atss_ops.tal_assign` (and ATSS first, optionally).

    Args:
        model_or_trainer: a ``YOLO`` object (the switch applies to its ``train()``), a detection trainer
            (``DetectionTrainer`` or any ``BaseTrainer``, before or after its setup), or a ``DetectionModel``
            whose ``args`` are Ultralytics' hyperparameters (installed at once; set ``switch.epoch`` yourself).
        atss_warmup_epochs: assign with :func:`atss_ops.atss_assign` during epochs ``0 .. N - 1`` (0: never).
        atss_topk: the warm-up's ATSS k per level (>= 1).
        atss_anchor_scale: the warm-up's anchor side in strides (> 0).

    Returns:
        :class:`UltralyticsSwitch` (``.epoch``, ``.calls``, ``.in_warmup``).

    Raises:
        ImportError: Ultralytics is not installed (``pip install atss-ops[ultralytics]``).
        ValueError: an option out of range; a bare model without Ultralytics' hyperparameters.
        TypeError: not a YOLO object, trainer or detection model; a loss that is not a detection loss.
    """
    classes = _ultralytics()
    atss_warmup_epochs = _check_int(atss_warmup_epochs, "atss_warmup_epochs", 0)
    atss_topk = _check_int(atss_topk, "atss_topk", 1)
    if (
        isinstance(atss_anchor_scale, bool)
        or not isinstance(atss_anchor_scale, numbers.Real)
        or not atss_anchor_scale > 0
        or atss_anchor_scale == float("inf")
    ):
        raise ValueError(f"atss_anchor_scale must be a finite number > 0, got {atss_anchor_scale!r}")
    switch = UltralyticsSwitch(atss_warmup_epochs, atss_topk, float(atss_anchor_scale), classes["Assigner"])
    if isinstance(model_or_trainer, (classes["Model"], classes["BaseTrainer"])):
        model_or_trainer.add_callback("on_train_start", switch.on_train_start)
        model_or_trainer.add_callback("on_train_epoch_start", switch.on_train_epoch_start)
        model = getattr(model_or_trainer, "model", None)
        if isinstance(model_or_trainer, classes["BaseTrainer"]) and isinstance(model, torch.nn.Module):
            switch._install_in_trainer(model_or_trainer)  # a trainer already set up
    elif isinstance(getattr(model_or_trainer, "module", model_or_trainer), classes["DetectionModel"]):
        switch.install(model_or_trainer)
    else:
        raise TypeError(
            "use_atss_ops takes an Ultralytics YOLO object, trainer or DetectionModel, "
            f"got {type(model_or_trainer).__name__}"
        )
    return switch
