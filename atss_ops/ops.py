"""The public API: typed wrappers of the ``torch.ops.atss_ops`` ops and ``atss_assign``.

Every op is a dispatcher op (schemas in ``csrc/schemas.h``), so
``torch.compile(fullgraph=True)``, ``torch.export`` and
``torch.library.opcheck`` see it. When the compiled extension is missing, or
has no kernel for the device at hand (a CPU-only build given CUDA tensors), the
wrappers fall back to :mod:`atss_ops.reference`, which computes the same bits
(see :mod:`atss_ops._extension`).

The wrappers accept float64, float16 and bfloat16 boxes and convert them to
float32: the assignment is always computed in float32 (the ops themselves, and
the reference, take float32 only).

Meta tensors (``device="meta"``) give shape inference: every wrapper sends them
to the ops' fake kernels (:mod:`atss_ops._fake`), which check the structure of
the inputs and return empty outputs of the right shapes and dtypes, read no
data, and work with or without the compiled extension.
"""

from __future__ import annotations

import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _fake, reference, reference_tal
from . import _validation as V
from ._extension import input_error, use_kernel
from .types import AssignResult, TalResult

__all__ = [
    "atss_assign",
    "center_distance",
    "topk_per_level",
    "iou_statistics",
    "resolve_multi_gt",
    "pad_gt_boxes",
    "tal_assign",
]

# Box dtypes the wrappers convert to float32 (the contract is defined in float32).
_CONVERTED = (torch.float64, torch.float16, torch.bfloat16)


def _as_float32(boxes):
    if isinstance(boxes, Tensor) and boxes.dtype in _CONVERTED:
        return boxes.to(torch.float32)
    return boxes


def _kernel(op: str, *args):
    """``torch.ops.atss_ops.<op>(*args)`` with the kernels' input errors as ``ValueError``
    whatever torch's version (torch 2.15 delivers the C++ ``std::invalid_argument`` of
    the stable ABI as ``RuntimeError``; earlier versions as ``ValueError``)."""
    fn = getattr(torch.ops.atss_ops, op)
    if torch.compiler.is_compiling():
        return fn(*args)
    try:
        return fn(*args)
    except RuntimeError as exc:
        message = input_error(exc)
        if message is None:
            raise
        raise ValueError(message) from None


def _on_meta(*args) -> bool:
    """True when a tensor argument is a meta tensor: the call is shape inference, served by the fake kernels."""
    return any(isinstance(a, Tensor) and a.device.type == "meta" for a in args)


# --------------------------------------------------------------------------- stage ops


def center_distance(anchors: Tensor, gt_boxes: Tensor, gt_counts: Optional[Tensor] = None) -> Tensor:
    """Squared distances between anchor and GT centres (contract steps 1-2).

    Args:
        anchors: ``Tensor[A, 4]`` float32, ``x1, y1, x2, y2``, or ``Tensor[A, 6]``,
            ``x1, y1, z1, x2, y2, z2`` (3-D) (float64, float16 and bfloat16 are
            converted to float32).
        gt_boxes: ``Tensor[B, G, 4]`` or ``Tensor[B, G, 6]`` in the anchors' layout,
            padded to G (converted likewise).
        gt_counts: optional ``Tensor[B]`` int64, valid boxes per image (``None``: all).

    Returns:
        ``Tensor[B, G, A]`` float32: ``dx*dx + dy*dy`` (3-D: ``(dx*dx + dy*dy) + dz*dz``),
        each operation rounded to float32; rows of padding GTs are NaN. Time and
        memory O(B·G·A).
    """
    anchors, gt_boxes = _as_float32(anchors), _as_float32(gt_boxes)
    V.check_gt_counts_type(gt_counts)
    if _on_meta(anchors, gt_boxes, gt_counts):
        return _fake.center_distance(anchors, gt_boxes, gt_counts)
    if isinstance(anchors, Tensor) and use_kernel("center_distance", anchors.device):
        return _kernel("center_distance", anchors, gt_boxes, gt_counts)
    return reference.center_distance(anchors, gt_boxes, gt_counts)


def topk_per_level(
    distances: Tensor,
    num_anchors_per_level: Sequence[int],
    topk: int = 9,
    gt_counts: Optional[Tensor] = None,
    anchor_valid: Optional[Tensor] = None,
    anchor_ignore: Optional[Tensor] = None,
) -> Tensor:
    """The ``topk`` nearest usable anchors of each level, per GT (contract step 3).

    Args:
        distances: ``Tensor[B, G, A]`` float32, e.g. from :func:`center_distance`.
        num_anchors_per_level: ``L`` ints summing to A.
        topk: candidates per level (>= 1).
        gt_counts: optional ``Tensor[B]`` int64; padding GTs get no candidate.
        anchor_valid: optional ``Tensor[B, A]`` bool; invalid anchors are never candidates.
        anchor_ignore: optional ``Tensor[B, A]`` bool; ignored anchors are never candidates.

    Returns:
        ``Tensor[B, G, C]`` int64 anchor indices, ``C = sum_l min(topk, N_l)``,
        level by level and nearest first; ordered by ``(distance, anchor index)``
        like ``torch.sort(stable=True)`` (NaN last). Slots a level cannot fill
        (fewer usable anchors than ``topk``) hold -1. Time O(B·G·A), memory O(B·G·C).
    """
    levels = _levels(num_anchors_per_level)
    V.check_gt_counts_type(gt_counts)
    V.check_topk_type(topk)
    if _on_meta(distances, gt_counts, anchor_valid, anchor_ignore):
        return _fake.topk_per_level(distances, levels, topk, gt_counts, anchor_valid, anchor_ignore)
    if use_kernel("topk_per_level", distances.device):
        return _kernel("topk_per_level", distances, levels, topk, gt_counts, anchor_valid, anchor_ignore)
    return reference.topk_per_level(distances, levels, topk, gt_counts, anchor_valid, anchor_ignore)


def iou_statistics(
    anchors: Tensor,
    gt_boxes: Tensor,
    candidates: Tensor,
    gt_counts: Optional[Tensor] = None,
    center_eps: Optional[float] = 0.01,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Candidate IoUs, the per-GT threshold and the positive mask (contract steps 4-6).

    2-D or 3-D boxes (D from the shapes, as in :func:`center_distance`);
    ``center_eps=None`` switches the centre test off.

    Returns:
        ``candidate_iou`` ``Tensor[B, G, C]`` float32 (0 in empty slots),
        ``threshold`` ``Tensor[B, G]`` float32 (mean + std of the candidate IoUs in
        float64, rounded; NaN for padding and GTs without candidates),
        ``is_positive`` ``Tensor[B, G, C]`` bool (IoU >= threshold and, unless
        ``center_eps`` is None, the anchor centre inside the GT by more than
        ``center_eps`` on every axis). Time O(B·G·C).
    """
    anchors, gt_boxes = _as_float32(anchors), _as_float32(gt_boxes)
    V.check_gt_counts_type(gt_counts)
    if _on_meta(anchors, gt_boxes, candidates, gt_counts):
        return _fake.iou_statistics(anchors, gt_boxes, candidates, gt_counts, center_eps)
    if isinstance(anchors, Tensor) and use_kernel("iou_statistics", anchors.device):
        return tuple(_kernel("iou_statistics", anchors, gt_boxes, candidates, gt_counts, center_eps))
    return reference.iou_statistics(anchors, gt_boxes, candidates, gt_counts, center_eps)


def resolve_multi_gt(
    candidates: Tensor,
    candidate_iou: Tensor,
    is_positive: Tensor,
    num_anchors: int,
    anchor_ignore: Optional[Tensor] = None,
    ensure_positive: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One GT per anchor (contract step 7), and the guaranteed positive (step 8).

    Args:
        candidates, candidate_iou, is_positive: ``Tensor[B, G, C]`` from
            :func:`topk_per_level` and :func:`iou_statistics`.
        num_anchors: A.
        anchor_ignore: optional ``Tensor[B, A]`` bool: these anchors claim nothing
            (even when listed as candidates) and come out as -2.
        ensure_positive: step 8: each GT with a candidate and no anchor after step 7
            proposes its candidate of highest IoU (> 0; the earliest on equal IoU)
            among the anchors still unassigned; an anchor proposed by several GTs
            goes to the highest IoU, then the lowest GT index; one round.

    Returns:
        ``gt_index`` ``Tensor[B, A]`` int64 (-1 background, -2 ignored), ``iou``
        ``Tensor[B, A]`` float32 (0 background and ignored), ``num_positive``
        ``Tensor[B, G]`` int64. An anchor positive for several GTs goes to the
        highest IoU, then the lowest GT index; entries whose IoU is NaN or
        negative never claim an anchor.
    """
    if _on_meta(candidates, candidate_iou, is_positive, anchor_ignore):
        return _fake.resolve_multi_gt(
            candidates, candidate_iou, is_positive, num_anchors, anchor_ignore, ensure_positive
        )
    if use_kernel("resolve_multi_gt", candidates.device):
        return tuple(
            _kernel(
                "resolve_multi_gt", candidates, candidate_iou, is_positive, num_anchors, anchor_ignore, ensure_positive
            )
        )
    return reference.resolve_multi_gt(
        candidates, candidate_iou, is_positive, num_anchors, anchor_ignore, ensure_positive
    )


# --------------------------------------------------------------------------- the public call


def pad_gt_boxes(boxes: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """Pads a list of ``Tensor[G_i, 4]`` (or all ``Tensor[G_i, 6]``, 3-D) into
    ``(Tensor[B, max G_i, 4 or 6], gt_counts Tensor[B] int64)``.

    Padding rows are zeros; they are never read for assignment.
    """
    return pad_boxes(boxes, "gt_boxes")


def pad_boxes(boxes: Sequence[Tensor], name: str) -> Tuple[Tensor, Tensor]:
    """:func:`pad_gt_boxes` for the list argument ``name`` (named in the errors)."""
    boxes = [_as_float32(b) for b in boxes]
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[-1] not in (4, 6):
            shape = list(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"{name}[{i}] must be a Tensor[G_i, 4] or Tensor[G_i, 6], got {shape}")
        if b.shape[-1] != boxes[0].shape[-1]:
            raise ValueError(
                f"{name}[{i}] has {b.shape[-1]} coordinates per box but {name}[0] has {boxes[0].shape[-1]}: "
                "every image must use the same layout"
            )
    if not boxes:
        raise ValueError(f"{name} is an empty list: pass a Tensor[0, G, 4] for an empty batch")
    device = boxes[0].device
    counts = torch.tensor([b.shape[0] for b in boxes], dtype=torch.int64, device=device)
    G = max(b.shape[0] for b in boxes)
    padded = boxes[0].new_zeros(len(boxes), G, boxes[0].shape[-1])
    for i, b in enumerate(boxes):
        padded[i, : b.shape[0]] = b
    return padded, counts


def _levels(num_anchors_per_level) -> List[int]:
    if isinstance(num_anchors_per_level, Tensor):
        if num_anchors_per_level.device.type == "meta":
            raise ValueError(
                "num_anchors_per_level must be a list of ints or a tensor with values, got a meta tensor "
                f"of shape {list(num_anchors_per_level.shape)}: the level sizes decide the output shapes"
            )
        return [int(n) for n in num_anchors_per_level.tolist()]
    return [int(n) for n in num_anchors_per_level]


def atss_assign(
    anchors: Tensor,
    num_anchors_per_level: Sequence[int],
    gt_boxes: Union[Tensor, Sequence[Tensor]],
    gt_counts: Optional[Tensor] = None,
    *,
    topk: int = 9,
    anchor_valid: Optional[Tensor] = None,
    anchor_ignore: Optional[Tensor] = None,
    center_eps: Optional[float] = 0.01,
    ensure_positive: bool = False,
    check_inputs: Optional[bool] = None,
) -> AssignResult:
    """ATSS assignment of a whole padded batch, exactly as ``docs/contract.md`` defines it.

    Per image and valid GT: on each pyramid level the ``topk`` usable anchors
    (valid and not ignored) whose centres are nearest the GT centre become
    candidates (ties: lower anchor index); a candidate is positive when its IoU
    reaches the mean plus the standard deviation of the GT's candidate IoUs
    (float64, summed in candidate order) and its centre lies inside the GT by
    more than ``center_eps``; an anchor positive for several GTs goes to the
    highest IoU, then the lowest GT index. With ``ensure_positive``, a GT left
    without positives then takes its best free candidate (step 8).

    Args:
        anchors: ``Tensor[A, 4]`` float32, ``x1, y1, x2, y2``, or ``Tensor[A, 6]``,
            ``x1, y1, z1, x2, y2, z2`` (3-D, MONAI's "xyzxyz"), level by level,
            shared by the batch (e.g. from :func:`atss_ops.grid_anchors`). float64,
            float16 and bfloat16 anchors and GT boxes are converted to float32:
            the assignment is computed in float32. D (2 or 3) comes from the shapes.
        num_anchors_per_level: ``L`` ints (list, tuple or 1-D tensor) summing to A;
            a level may be empty.
        gt_boxes: ``Tensor[B, G, 2D]`` float32 in the anchors' layout, padded to G,
            or a list of ``Tensor[G_i, 2D]`` (padded here; then ``gt_counts`` must be None).
        gt_counts: optional ``Tensor[B]`` of integers: image b uses
            ``gt_boxes[b, :gt_counts[b]]``; the rest is never read (NaN is fine).
        topk: candidates per level per GT, the paper's k (>= 1). With several
            anchors per location, pass ``k * anchors_per_location`` as the
            original code does.
        anchor_valid: optional ``Tensor[B, A]`` bool; an invalid anchor is never a
            candidate and always background (e.g. outside an image's unpadded area).
        anchor_ignore: optional ``Tensor[B, A]`` bool; an ignored anchor is never a
            candidate, never counted, and comes out as ``gt_index = -2`` with IoU 0
            whatever ``anchor_valid`` says (e.g. from :func:`atss_ops.ignore_mask`
            over crowd or "don't care" boxes).
        center_eps: margin of the centre-inside-GT test, in box units (rounded to
            float32, >= 0); ``None`` switches the test off (MONAI's
            ``center_in_gt=False``).
        ensure_positive: contract step 8: after the one-GT-per-anchor step, every
            GT with candidates but no anchor proposes its candidate of highest IoU
            (> 0) among the anchors still unassigned; competing proposals go to the
            highest IoU, then the lowest GT index; one round, so a GT whose
            proposal is taken by another stays empty.
        check_inputs: value checks (finite boxes, upper corners not below lower
            ones, ``gt_counts`` in ``[0, G]``). The CPU kernels always run them.
            On CUDA they cost a device-to-host sync, so they run only with
            ``check_inputs=True``; without them the CUDA kernels never read out of
            bounds (counts are clamped) but non-finite boxes yield no positives
            rather than an error. Shape, dtype and device checks always run and
            never sync.

    Returns:
        :class:`AssignResult` (a NamedTuple):

        - ``gt_index`` ``Tensor[B, A]`` int64: index into ``gt_boxes[b]`` of the GT
          the anchor is assigned to; -1 for background, -2 for ignored anchors.
        - ``iou`` ``Tensor[B, A]`` float32: IoU with the assigned GT; 0 for
          background and ignored anchors.
        - ``threshold`` ``Tensor[B, G]`` float32: each GT's mean + std; NaN for
          padding slots and GTs without candidates.
        - ``num_positive`` ``Tensor[B, G]`` int64: anchors finally assigned to each
          GT (step 8 included); 0 for padding.

    Complexity: memory O(B·A + B·G·C) with ``C = sum_l min(topk, N_l)``: no
    ``[B, G, A]`` tensor is built by the kernels (the pure-PyTorch fallback does
    build them); time about O(A + B·G·L·k) on grid-like anchors, on CPU and CUDA
    (how each kernel finds a GT's candidates without scanning a level: the
    comments of ``csrc/cpu/atss_assign.cpp`` and ``csrc/cuda/select_culled.cuh``;
    the README's "The CPU spatial index", ``ATSS_CPU_SELECT`` included).
    Deterministic: the same inputs give the same bits on every run, thread count
    and device. No host sync on CUDA unless ``check_inputs=True``; runs under
    ``torch.compile(fullgraph=True)`` and CUDA graph capture. Meta tensors give
    shape inference (``num_anchors_per_level`` must then be a list of ints).

    How this differs from the original code, MMDetection's ``ATSSAssigner`` and
    MONAI's ``ATSSMatcher`` (GT index sentinels, tie rules, float64 statistics,
    the IoU convention, ignored anchors): ``docs/contract.md``, "Deliberate
    differences from other implementations".
    """
    if not isinstance(gt_boxes, Tensor):
        if gt_counts is not None:
            raise ValueError("gt_counts must be None when gt_boxes is a list: the counts come from the list")
        gt_boxes, gt_counts = pad_gt_boxes(gt_boxes)
    anchors, gt_boxes = _as_float32(anchors), _as_float32(gt_boxes)
    V.check_gt_counts_type(gt_counts)
    V.check_topk_type(topk)
    V.check_bool(ensure_positive, "ensure_positive")
    V.check_center_eps_type(center_eps)
    if gt_counts is not None and gt_counts.dtype != torch.int64:
        if gt_counts.dtype.is_floating_point or gt_counts.dtype == torch.bool:
            raise ValueError(f"gt_counts must be int64, got {gt_counts.dtype}")
        gt_counts = gt_counts.to(torch.int64)
    levels = _levels(num_anchors_per_level)
    if center_eps is not None:
        center_eps = float(center_eps)
    args = (anchors, levels, gt_boxes, gt_counts, topk, anchor_valid, center_eps, anchor_ignore, ensure_positive)
    if _on_meta(anchors, gt_boxes, gt_counts, anchor_valid, anchor_ignore):
        return AssignResult(*_fake.atss_assign(*args))
    if not (isinstance(anchors, Tensor) and use_kernel("atss_assign", anchors.device)):
        return reference.atss_assign(*args)
    if check_inputs and anchors.device.type != "cpu" and not torch.compiler.is_compiling():
        V.check_assign_inputs(*args[:8], values=True)
    return AssignResult(*_kernel("atss_assign", *args))


# --------------------------------------------------------------------------- task-aligned assignment


def _pad_labels(labels: Sequence[Tensor], counts: Tensor) -> Tensor:
    """A list of ``Tensor[G_i]`` labels padded into ``Tensor[B, max G_i]`` int64 (padding 0, never read)."""
    if len(labels) != counts.shape[0]:
        raise ValueError(f"gt_labels has {len(labels)} entries but gt_boxes has {counts.shape[0]}: one per image")
    G = int(counts.max()) if counts.numel() else 0
    padded = torch.zeros(len(labels), G, dtype=torch.int64, device=counts.device)
    for i, (lab, n) in enumerate(zip(labels, counts.tolist())):
        if not isinstance(lab, Tensor) or lab.dim() != 1 or lab.shape[0] != n:
            shape = list(lab.shape) if isinstance(lab, Tensor) else type(lab).__name__
            raise ValueError(f"gt_labels[{i}] must be a Tensor[G_i] with G_i = {n} (as gt_boxes[{i}]), got {shape}")
        padded[i, :n] = lab
    return padded


def _real(value, name: str, allow_none: bool = False) -> Optional[float]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a number{none}, got {type(value).__name__} {value!r}")
    return float(value)


def tal_assign(
    pred_scores: Tensor,
    pred_boxes: Tensor,
    anchor_points: Tensor,
    gt_boxes: Union[Tensor, Sequence[Tensor]],
    gt_labels: Union[Tensor, Sequence[Tensor]],
    gt_counts: Optional[Tensor] = None,
    *,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    overlap: str = "ciou",
    min_side: Optional[float] = None,
    topk2: Optional[int] = None,
    eps: float = 1e-9,
    check_inputs: Optional[bool] = None,
) -> TalResult:
    """Task-aligned assignment (TOOD, Ultralytics YOLO) of a whole padded batch, exactly as the TAL
    contract (version 1) in ``docs/contract.md`` defines it.

    Per image and valid GT g: the anchor points inside g (widened to ``min_side``
    for this test) are scored with ``metric = score^alpha * overlap^beta``
    (``overlap``: CIoU or IoU of g with the anchor's predicted box, clamped at
    0; ``score``: the predicted probability of g's class); g takes the ``topk``
    of highest metric (ties: lower anchor index). An anchor taken by several
    GTs goes to the GT of highest overlap among all GTs it is inside (ties:
    lower GT index). With ``topk2``, each GT then keeps its ``topk2`` anchors
    of highest metric. Each positive gets ``metric * O_g / (M_g + eps)`` as
    target score (``M_g``, ``O_g``: its GT's largest metric and overlap).

    Args:
        pred_scores: ``Tensor[B, A, C]`` class probabilities (after the sigmoid);
            NaN and negative scores count as 0, scores above 1 as 1.
        pred_boxes: ``Tensor[B, A, 4]`` predicted ``x1, y1, x2, y2``, finite, ``x2 >= x1``, ``y2 >= y1``.
        anchor_points: ``Tensor[A, 2]`` ``x, y``, shared by the batch, any order.
        gt_boxes: ``Tensor[B, G, 4]`` ``x1, y1, x2, y2`` padded to G, or a list of ``Tensor[G_i, 4]``.
        gt_labels: ``Tensor[B, G]`` integer classes in ``[0, C)``, or a list of ``Tensor[G_i]``
            (with a list of boxes).
        gt_counts: optional ``Tensor[B]``: image b uses GTs ``0 .. gt_counts[b] - 1``; the rest is
            never read. Must be None with lists.
        topk: anchors each GT takes (>= 1).
        alpha, beta: powers of the score and the overlap in the metric: multiples of 0.5 in
            ``[0, 1024]`` (the contract computes exactly these: 0.5 is a correctly rounded square
            root, integers a fixed product chain).
        overlap: ``"ciou"`` (Ultralytics) or ``"iou"`` (TOOD, PP-YOLOE, YOLOv6).
        min_side: for the inside test only, GT sides shorter than this are widened to it about
            the box's centre (Ultralytics passes its middle stride); None: no widening.
        topk2: Ultralytics' second filter: each GT keeps its ``topk2`` own anchors of highest metric.
        eps: inside margin (a point must lie more than ``eps`` inside) and the normaliser's guard.
        check_inputs: value checks (``gt_counts`` in ``[0, G]``, finite anchor points, finite predicted
            and GT boxes with upper corners not below lower ones, labels in ``[0, C)``). The CPU kernel
            and the reference always run them. On CUDA they cost a device-to-host sync, so they run
            only with ``check_inputs=True``; without them the CUDA kernel never reads out of bounds
            (counts are clamped to ``[0, G]``, a label outside ``[0, C)`` scores 0) but other bad
            values give unspecified assignments rather than an error. Shape, dtype, device and
            option checks always run and never sync.

    Returns:
        :class:`TalResult`: ``gt_index`` ``Tensor[B, A]`` int64 (-1 background),
        ``target_score`` and ``overlap`` ``Tensor[B, A]`` float32 (0 background),
        ``num_positive`` ``Tensor[B, G]`` int64. :func:`atss_ops.tal_targets` gives
        Ultralytics' five outputs from it.

    Complexity: the CPU kernel visits, per GT, only the anchor points in the cells of a
    uniform grid over the points that its box covers; the CUDA kernel, one warp per GT,
    only the blocks of 32 consecutive anchor points whose bounding box its box can hold
    a point of. Both hold O(B·A + B·G·topk) memory: no ``[B, G, A]`` and no
    ``[B, A, C]`` tensor. Without the compiled extension the pure-PyTorch reference
    serves, with the same bits and ``[B, G, A]`` memory. Deterministic (the same bits
    on every backend, thread count and launch configuration). No host sync on CUDA
    unless ``check_inputs=True``. Runs under ``torch.compile(fullgraph=True)``; meta
    tensors give shape inference.

    Differences from Ultralytics' ``TaskAlignedAssigner`` (all in ``docs/contract.md``):
    top-k among the inside anchors (Ultralytics: over all anchors, then keeps the
    inside ones: they differ when a GT has fewer than ``topk`` inside anchors of
    metric > 0); metric ties go to the lower anchor index (``torch.topk``'s order
    there); an anchor taken by several GTs whose overlaps are all 0 goes to the
    lowest GT it is inside (GT 0 there); the arctangent and the powers are the
    contract's own routines (a few ulp from the C library's).
    """
    if not isinstance(gt_boxes, Tensor):
        if gt_counts is not None:
            raise ValueError("gt_counts must be None when gt_boxes is a list: the counts come from the list")
        if isinstance(gt_labels, Tensor):
            raise ValueError("gt_labels must be a list of Tensor[G_i] when gt_boxes is a list")
        gt_boxes, gt_counts = pad_boxes(gt_boxes, "gt_boxes")
        gt_labels = _pad_labels(gt_labels, gt_counts)
    pred_scores, pred_boxes = _as_float32(pred_scores), _as_float32(pred_boxes)
    anchor_points, gt_boxes = _as_float32(anchor_points), _as_float32(gt_boxes)
    V.check_gt_counts_type(gt_counts)
    if gt_counts is not None and gt_counts.dtype != torch.int64:
        if gt_counts.dtype.is_floating_point or gt_counts.dtype == torch.bool:
            raise ValueError(f"gt_counts must be int64, got {gt_counts.dtype}")
        gt_counts = gt_counts.to(torch.int64)
    if isinstance(gt_labels, Tensor) and gt_labels.dtype != torch.int64:
        if gt_labels.dtype.is_floating_point or gt_labels.dtype == torch.bool:
            raise ValueError(f"gt_labels must be int64, got {gt_labels.dtype}")
        gt_labels = gt_labels.to(torch.int64)
    V.check_topk_type(topk)
    if topk2 is not None and (isinstance(topk2, bool) or not hasattr(type(topk2), "__index__")):
        raise ValueError(f"topk2 must be an int or None, got {type(topk2).__name__} {topk2!r}")
    alpha, beta = _real(alpha, "alpha"), _real(beta, "beta")
    min_side, eps = _real(min_side, "min_side", allow_none=True), _real(eps, "eps")
    if overlap not in ("ciou", "iou"):
        raise ValueError(f"overlap must be 'ciou' or 'iou', got {overlap!r}")
    ciou = overlap == "ciou"
    args = (pred_scores, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_counts)
    args += (topk, alpha, beta, ciou, min_side, topk2, eps)
    if _on_meta(*args[:6]):
        return TalResult(*_fake.tal_assign(*args))
    if isinstance(pred_scores, Tensor) and use_kernel("tal_assign", pred_scores.device):
        if check_inputs and pred_scores.device.type != "cpu" and not torch.compiler.is_compiling():
            V.check_tal_assign_args(*args[:6], topk, alpha, beta, min_side, topk2, eps)
            V.check_tal_values(*args[:6])
        return TalResult(*_kernel("tal_assign", *args))
    return reference_tal.tal_assign(*args)
