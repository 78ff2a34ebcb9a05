"""ATSS inside torchvision's own ``RetinaNet`` and ``FCOS``, in one line.

::

    from torchvision.models.detection import retinanet_resnet50_fpn
    from atss_ops.integrations.torchvision import use_atss_ops

    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    use_atss_ops(model)  # training now assigns anchors with ATSS, one atss_assign call per step

torchvision matches each image in a Python loop: RetinaNet builds the dense
``[G, A]`` IoU matrix and applies its ``Matcher`` (0.5 / 0.4, low-quality
matches allowed), FCOS applies centre sampling and per-level scale ranges.
:func:`use_atss_ops` replaces that matching, and nothing else, with one
:func:`atss_ops.atss_assign` call for the whole padded batch. The heads' losses,
the anchor generator, the transform and inference stay torchvision's. What the
head receives as ``matched_idxs`` is, per image, the contract's ``gt_index``
(``docs/contract.md``):

- RetinaNet: on the model's own anchors, in torchvision's order (level, then
  location, then the anchors of a location), with ``topk = k * anchors per
  location`` (the original ATSS code's count);
- FCOS (anchor-free): on one anchor per location 8 times the anchor generator's
  anchor, centred on the same point (the paper's 8S square anchor; torchvision's
  FCOS generator gives squares of side S = stride), with ``topk = k``. The head
  still regresses from torchvision's points, so every positive's point must lie
  inside its box: FCOS refuses ``center_eps=None`` and ``ensure_positive=True``.

-1 is background (``Matcher.BELOW_LOW_THRESHOLD``); -2, an anchor covered by an
ignore box (``ignore_box_key``), is ``Matcher.BETWEEN_THRESHOLDS``: RetinaNet's
head leaves it out of the classification loss; FCOS's head has no such case and
counts every negative index as background. Anchors centred in an image's padding
(torchvision pads the images of a batch to one size) are never candidates
(``anchor_valid``), as in :mod:`atss_detector`.

``docs/torchvision.md`` lists what differs from torchvision's matchers, the
speed and memory of both, and the paper's rows trained in these models.
torchvision is imported when this module is; ``atss_ops`` itself never imports it.
"""

from __future__ import annotations

import math
import numbers
import threading
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

import atss_ops
from atss_ops import _validation as V

from ._common import ignore_mask_of, per_anchor_group, to_sentinels

try:
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection._utils import Matcher
    from torchvision.models.detection.anchor_utils import AnchorGenerator
except ImportError as error:  # tests/test_torchvision.py hides torchvision to check this message
    raise ImportError(
        "atss_ops.integrations.torchvision needs torchvision, which could not be imported "
        f"({error}). Install the torchvision that matches your torch (`pip install torchvision`); "
        "the rest of atss_ops works without it."
    ) from error

__all__ = ["ATSSComputeLoss", "fcos_assign_anchors", "use_atss_ops"]

# The paper's anchor for an anchor-free detector: a square of 8 strides per location.
FCOS_ANCHOR_SCALE = 8.0


def fcos_assign_anchors(anchors: Tensor, scale: float = FCOS_ANCHOR_SCALE) -> Tensor:
    """The anchors ATSS assigns on for FCOS: each of torchvision's FCOS anchors
    (``Tensor[A, 4]``, ``x1, y1, x2, y2``, a square of side S = stride centred on
    the location's point) scaled by ``scale`` about its centre, in float32:
    ``centre -/+ side * (scale / 2)`` per axis. Same centres, so the same distance
    order; sides 8S, the paper's anchor."""
    anchors = anchors.to(torch.float32)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    half_sides = (anchors[:, 2:] - anchors[:, :2]) * (scale / 2)
    return torch.cat([centres - half_sides, centres + half_sides], dim=1)


def _centres_inside(anchors: Tensor, image_sizes: Sequence[Tuple[int, int]]) -> Tensor:
    """``Tensor[B, A]`` bool: the anchor's centre lies inside image b's unpadded ``(h, w)``."""
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    sizes = torch.tensor([[float(h), float(w)] for h, w in image_sizes], device=anchors.device).reshape(-1, 2)
    return (cx[None] < sizes[:, 1:2]) & (cy[None] < sizes[:, 0:1])


class _SizesSeen(threading.local):
    """What the anchor generator last saw in this thread (``nn.DataParallel``
    runs replicas in threads): the images' unpadded sizes and the locations per level."""

    image_sizes: Optional[List[Tuple[int, int]]] = None
    locations_per_level: Optional[List[int]] = None


class ATSSComputeLoss:
    """Stands in for ``model.compute_loss`` of one torchvision ``RetinaNet`` or
    ``FCOS``: ATSS matching for the whole batch, then the model's own head losses.

    Installed by :func:`use_atss_ops`, which also hooks the model's anchor
    generator so that this object learns the images' unpadded sizes and the
    feature-map sizes of the step (``RetinaNet.compute_loss`` is not given them).
    A plain object, not a bound method, so the model still pickles and deep-copies.
    """

    def __init__(
        self,
        model,
        topk: int,
        center_eps: Optional[float],
        ensure_positive: bool,
        ignore_box_key: Optional[str],
        iof_threshold: float,
        fcos_anchor_scale: float = FCOS_ANCHOR_SCALE,
    ):
        self.model = model
        self.topk = topk
        self.center_eps = center_eps
        self.ensure_positive = ensure_positive
        self.ignore_box_key = ignore_box_key
        self.iof_threshold = iof_threshold
        self.fcos_anchor_scale = fcos_anchor_scale
        self.anchors_per_location = _anchors_per_location(model)
        self._seen = _SizesSeen()
        self.hook = model.anchor_generator.register_forward_hook(self._record_sizes, with_kwargs=True)

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_seen"]  # per-step and per-thread; a thread-local does not pickle
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._seen = _SizesSeen()

    def _record_sizes(self, module, args, kwargs, output) -> None:
        image_list = args[0] if args else kwargs["image_list"]
        feature_maps = args[1] if len(args) > 1 else kwargs["feature_maps"]
        self._seen.image_sizes = [(int(h), int(w)) for h, w in image_list.image_sizes]
        self._seen.locations_per_level = [int(f.shape[-2]) * int(f.shape[-1]) for f in feature_maps]

    def __call__(self, targets, head_outputs, anchors, num_anchors_per_level=None):
        """``RetinaNet.compute_loss(targets, head_outputs, anchors)`` or
        ``FCOS.compute_loss(targets, head_outputs, anchors, num_anchors_per_level)``
        with ATSS's ``matched_idxs``."""
        seen = self._seen
        if seen.image_sizes is None or len(seen.image_sizes) != len(targets):
            raise RuntimeError(
                "compute_loss needs the image and feature sizes of the step, which use_atss_ops records when the "
                "model's anchor generator runs: call the model (model(images, targets)), not compute_loss alone"
            )
        levels = [n * self.anchors_per_location for n in seen.locations_per_level]
        if num_anchors_per_level is not None and [int(n) for n in num_anchors_per_level] != levels:
            raise RuntimeError(
                f"num_anchors_per_level {list(num_anchors_per_level)} differs from the feature maps the anchor "
                f"generator saw ({levels})"
            )
        matched_idxs = self.matched_idxs(targets, anchors, levels, seen.image_sizes)
        return self.model.head.compute_loss(targets, head_outputs, anchors, matched_idxs)

    def matched_idxs(
        self,
        targets: List[dict],
        anchors: List[Tensor],
        num_anchors_per_level: Sequence[int],
        image_sizes: Sequence[Tuple[int, int]],
    ) -> List[Tensor]:
        """What the head receives as ``matched_idxs``: one ``Tensor[A]`` int64 per image,
        a GT index, -1 background, -2 ignored (``Matcher``'s sentinels).

        ``anchors`` is the anchor generator's output (one ``Tensor[A, 4]`` per image,
        the same for every image with torchvision's ``AnchorGenerator``: then ONE
        ``atss_assign`` call covers the batch; with another generator, images whose
        anchors differ get one call each), ``num_anchors_per_level`` anchors (not locations) per level,
        ``image_sizes`` each image's unpadded ``(h, w)`` after the transform.
        """
        if not anchors:
            return []
        # torchvision's own generator gives every image the same anchors (one padded size);
        # comparing them would cost a device-to-host sync per image on CUDA.
        return per_anchor_group(
            anchors,
            lambda group_anchors, images: self._assign(
                group_anchors, [targets[b] for b in images], num_anchors_per_level, [image_sizes[b] for b in images]
            ).unbind(0),
            same_by_construction=type(self.model.anchor_generator) is AnchorGenerator,
        )

    def _assign(
        self,
        anchors: Tensor,
        targets: List[dict],
        num_anchors_per_level: Sequence[int],
        image_sizes: Sequence[Tuple[int, int]],
    ) -> Tensor:
        device = anchors.device
        gt_boxes, gt_counts = atss_ops.pad_gt_boxes([t["boxes"].to(device) for t in targets])
        anchor_valid = _centres_inside(anchors, image_sizes)
        anchor_ignore = ignore_mask_of(anchors, targets, self.ignore_box_key, self.iof_threshold)
        assign_on = fcos_assign_anchors(anchors, self.fcos_anchor_scale) if isinstance(self.model, FCOS) else anchors
        result = atss_ops.atss_assign(
            assign_on,
            num_anchors_per_level,
            gt_boxes,
            gt_counts,
            topk=self.topk * self.anchors_per_location,
            anchor_valid=anchor_valid,
            anchor_ignore=anchor_ignore,
            center_eps=self.center_eps,
            ensure_positive=self.ensure_positive,
        )
        return to_sentinels(result.gt_index, Matcher.BELOW_LOW_THRESHOLD, Matcher.BETWEEN_THRESHOLDS)


def _anchors_per_location(model) -> int:
    counts = [int(n) for n in model.anchor_generator.num_anchors_per_location()]
    if not counts or any(n != counts[0] for n in counts):
        raise ValueError(
            "use_atss_ops needs the same number of anchors per location on every level (one topk for all), "
            f"got anchor_generator.num_anchors_per_location() = {counts}"
        )
    return counts[0]


def use_atss_ops(
    model,
    topk: int = 9,
    center_eps: Optional[float] = 0.01,
    ensure_positive: bool = False,
    *,
    ignore_box_key: Optional[str] = None,
    iof_threshold: float = 0.5,
    fcos_anchor_scale: float = FCOS_ANCHOR_SCALE,
):
    """Makes a torchvision ``RetinaNet`` or ``FCOS`` train with ATSS; returns the model.

    Replaces the model's per-image matching in ``compute_loss`` with one
    :func:`atss_ops.atss_assign` call per training step (an :class:`ATSSComputeLoss`
    installed as ``model.compute_loss``, and a forward hook on
    ``model.anchor_generator`` that records the step's image and feature sizes).
    Works on any instance, however built (``retinanet_resnet50_fpn(_v2)``,
    ``fcos_resnet50_fpn``, another backbone), on CPU and CUDA, in eager mode. Not
    under TorchScript: ``torch.jit.script`` compiles the class's ``compute_loss``,
    so a scripted model would train with torchvision's matcher; scripting a model
    switched over is refused (``docs/torchvision.md``). Calling it again replaces
    the previous settings.

    Args:
        model: a ``torchvision.models.detection.RetinaNet`` or ``FCOS`` (or subclass).
        topk: the paper's k, candidates per level per GT (>= 1); RetinaNet passes
            ``k * anchors per location`` to ``atss_assign``, FCOS ``k``.
        center_eps: margin of the centre-inside-GT test in pixels (>= 0), or None for no
            test (RetinaNet only).
        ensure_positive: contract step 8: a GT left without positives takes its best free
            candidate, whatever its centre (RetinaNet only).
        ignore_box_key: optional key of ``Tensor[M, 4]`` ignore boxes (crowd regions)
            in the targets; anchors whose intersection over their own area with one
            exceeds ``iof_threshold`` (:func:`atss_ops.ignore_mask`, on the model's own
            anchors) come out as ``BETWEEN_THRESHOLDS``. The boxes must be in the
            transformed images' pixels: torchvision's transform resizes only ``boxes``.
        iof_threshold: in ``[0, 1]``.
        fcos_anchor_scale: FCOS only: the side of the anchor ATSS assigns on, in
            multiples of the anchor generator's (the paper's 8). On images far smaller
            than COCO's, objects smaller than ~6 strides fit inside all their nearest
            8S anchors, whose IoUs are then equal, and ATSS's mean + std threshold lies
            above them: such objects get no positive (``docs/torchvision.md`` measures it).

    Raises:
        TypeError: ``model`` is neither a ``RetinaNet`` nor an ``FCOS``.
        ValueError: a bad argument (named, with its value); for FCOS, ``center_eps=None``
            or ``ensure_positive=True``, which can make a positive of a point outside its
            box, where torchvision's FCOS head computes a NaN centreness target; an
            anchor generator with different anchor counts per location on different levels.
    """
    if not isinstance(model, (RetinaNet, FCOS)):
        raise TypeError(f"model must be a torchvision.models.detection.RetinaNet or FCOS, got {type(model).__name__}")
    V.check_topk(topk)
    V.check_center_eps_type(center_eps)
    V.check_center_eps(center_eps)
    center_eps = None if center_eps is None else float(center_eps)
    V.check_bool(ensure_positive, "ensure_positive")
    if isinstance(model, FCOS) and (center_eps is None or ensure_positive):
        raise ValueError(
            "FCOS needs center_eps >= 0 and ensure_positive=False: torchvision's FCOS head regresses distances "
            "from each positive's point to its box and takes the square root of their ratios (centreness), which "
            "is NaN for a point outside the box; without the centre test, or with ensure_positive, a positive's "
            f"point may lie outside its box (got center_eps={center_eps!r}, ensure_positive={ensure_positive!r})"
        )
    if ignore_box_key is not None and not isinstance(ignore_box_key, str):
        raise ValueError(
            f"ignore_box_key must be a str or None, got {type(ignore_box_key).__name__} {ignore_box_key!r}"
        )
    V.check_iof_threshold(iof_threshold)
    if isinstance(fcos_anchor_scale, bool) or not isinstance(fcos_anchor_scale, numbers.Real):
        raise ValueError(f"fcos_anchor_scale must be a number > 0, got {fcos_anchor_scale!r}")
    if not (math.isfinite(fcos_anchor_scale) and fcos_anchor_scale > 0):
        raise ValueError(f"fcos_anchor_scale must be finite and > 0, got {fcos_anchor_scale!r}")
    previous = model.__dict__.get("compute_loss")
    if isinstance(previous, ATSSComputeLoss):
        previous.hook.remove()
    model.compute_loss = ATSSComputeLoss(
        model, int(topk), center_eps, ensure_positive, ignore_box_key, float(iof_threshold), float(fcos_anchor_scale)
    )
    return model
