"""A drop-in for MONAI's ATSS matching: ``monai.apps.detection`` on :func:`atss_ops.atss_assign`.

Switch a MONAI ``RetinaNetDetector`` over with one line, in place of its
``set_atss_matcher``::

    from atss_ops.integrations.monai import use_atss_ops

    detector = RetinaNetDetector(network, anchor_generator)
    use_atss_ops(detector, num_candidates=4, center_in_gt=False)  # was: detector.set_atss_matcher(4, False)

or use :class:`ATSSMatcher` wherever MONAI's own ``ATSSMatcher`` is used. The
matches follow ``docs/contract.md``, not MONAI's code line by line; where the two
differ (``docs/monai.md`` lists every difference, with the test that checks
it):

- MONAI takes ``min(num_candidates * num_anchors_per_loc, locations_l)``
  candidates on level l, so a level with fewer locations than that loses
  candidates; here a level gives ``min(num_candidates * num_anchors_per_loc,
  anchors_l)``, the original ATSS count.
- mean and std of the candidate IoUs are float64 in a fixed order (MONAI:
  float32, library order), so an anchor whose IoU lies within rounding of the
  threshold may switch sides.
- when an image has at most one candidate per GT in all, MONAI gives every
  candidate anchor to GT 0; here a single candidate gets std 0 and is positive
  for its own GT (if it passes the centre test).
- the IoU clamps the union at 1e-6 instead of adding float32 epsilon to it:
  the same bits whenever the union is at least 4 (pixels^2 or voxels^3).

MONAI is imported when this module is; ``atss_ops`` itself never imports it.
"""

from __future__ import annotations

import operator
import warnings
from typing import List, Optional, Sequence

from torch import Tensor

import atss_ops
from atss_ops import _validation as V
from atss_ops.types import AssignResult

from ._common import ignore_mask_of, per_anchor_group, to_sentinels

try:
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher as _MonaiATSSMatcher
    from monai.data.box_utils import box_iou
except ImportError as error:  # tests/test_monai.py hides MONAI to check this message
    raise ImportError(
        "atss_ops.integrations.monai needs MONAI, which could not be imported "
        f"({error}). Install it with `pip install monai` (or `pip install atss-ops[monai]`); "
        "the rest of atss_ops works without it."
    ) from error

__all__ = ["ATSSMatcher", "use_atss_ops"]


def _anchors_per_level(num_anchors_per_level: Sequence[int], num_anchors_per_loc: int, num_anchors: int) -> List[int]:
    """MONAI passes locations per level (HW or HWD); atss_assign takes anchors per level."""
    try:
        per_loc = operator.index(num_anchors_per_loc)  # an int, a numpy or a 0-d torch integer
    except TypeError:
        per_loc = 0
    if isinstance(num_anchors_per_loc, bool) or per_loc < 1:
        raise ValueError(f"num_anchors_per_loc must be an int >= 1, got {num_anchors_per_loc!r}")
    locations = [int(n) for n in num_anchors_per_level]
    levels = [n * per_loc for n in locations]
    if sum(levels) != num_anchors:
        raise ValueError(
            f"num_anchors_per_level (locations per level, as MONAI passes them) times num_anchors_per_loc must "
            f"sum to the number of anchors {num_anchors}, got {locations} x {per_loc} = {sum(levels)}"
        )
    return levels


class ATSSMatcher(_MonaiATSSMatcher):
    """MONAI's ``ATSSMatcher``, computed by :func:`atss_ops.atss_assign`.

    Same constructor and same call as
    ``monai.apps.detection.utils.ATSS_matcher.ATSSMatcher``:
    ``matcher(boxes, anchors, num_anchors_per_level, num_anchors_per_loc)`` with
    ``boxes`` ``Tensor[G, 4 or 6]`` and ``anchors`` ``Tensor[A, 4 or 6]`` in MONAI's
    standard mode (``xyxy`` / ``xyzxyz``), ``num_anchors_per_level`` the number of
    *locations* on each level (HW or HWD, what MONAI's detector passes) and
    ``num_anchors_per_loc`` the anchors per location. Returns
    ``(match_quality_matrix, matches)``: ``matches`` ``Tensor[A]`` int64, a GT index,
    ``BELOW_LOW_THRESHOLD`` (-1) for background, ``BETWEEN_THRESHOLDS`` (-2) for
    anchors ignored through :meth:`assign`'s ``anchor_ignore``.

    It runs ``atss_assign`` with ``topk = num_candidates * num_anchors_per_loc``
    and, when ``center_in_gt`` is False, no centre test (``center_eps=None``;
    otherwise MONAI's margin 0.01). The dense ``[G, A]`` IoU matrix is what MONAI
    returns first; its detector reads it only when debugging, so it is built
    (with MONAI's ``box_iou``) only when ``debug`` is True. Otherwise
    ``match_quality_matrix`` is an empty ``Tensor[0]``.

    Args:
        num_candidates: candidate locations per level (MONAI's k), >= 1.
        similarity_fn: must be MONAI's ``box_iou`` (the default): atss_ops computes
            the IoU itself, so any other function is refused with a ValueError. It is
            the *second* positional argument, as in MONAI: ``ATSSMatcher(4, False)``
            is refused with a ValueError that says so; write
            ``ATSSMatcher(4, center_in_gt=False)``.
        center_in_gt: the centre-inside-GT test, margin 0.01 (MONAI's default here
            is True; its detector's ``set_atss_matcher`` default is False).
        debug: print each GT's threshold and return the dense IoU matrix, as MONAI does.
    """

    def __init__(
        self,
        num_candidates: int = 4,
        similarity_fn=box_iou,
        center_in_gt: bool = True,
        debug: bool = False,
    ):
        if isinstance(similarity_fn, bool) or not callable(similarity_fn):
            raise ValueError(
                "ATSSMatcher's second positional argument is similarity_fn (MONAI's order: num_candidates, "
                f"similarity_fn, center_in_gt, debug), got {similarity_fn!r}: leave it out (it must be "
                "monai.data.box_utils.box_iou, the default) and pass the rest by keyword, e.g. "
                f"ATSSMatcher({num_candidates!r}, center_in_gt={similarity_fn!r})"
            )
        if similarity_fn is not box_iou:
            name = getattr(similarity_fn, "__qualname__", None) or type(similarity_fn).__name__
            raise ValueError(
                "similarity_fn must be monai.data.box_utils.box_iou: atss_ops computes that IoU itself, "
                f"got {getattr(similarity_fn, '__module__', '?')}.{name}"
            )
        if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
            raise ValueError(f"num_candidates must be an int >= 1, got {num_candidates!r}")
        super().__init__(num_candidates, similarity_fn, center_in_gt, debug)

    def assign(
        self,
        gt_boxes: Tensor,
        anchors: Tensor,
        num_anchors_per_level: Sequence[int],
        num_anchors_per_loc: int,
        gt_counts: Optional[Tensor] = None,
        anchor_ignore: Optional[Tensor] = None,
    ) -> AssignResult:
        """The whole padded batch in one ``atss_assign`` call.

        ``gt_boxes`` ``Tensor[B, G, 4 or 6]`` padded to G (``gt_counts`` as in
        ``atss_assign``), the other arguments as in the call. ``anchor_ignore``
        (``Tensor[B, A]`` bool, e.g. from :func:`atss_ops.ignore_mask`) marks
        anchors to leave out of training; they come out as -2, which MONAI's
        detector treats as ``BETWEEN_THRESHOLDS`` (neither positive nor negative).
        Returns the :class:`atss_ops.AssignResult` (``gt_index`` -1 background,
        -2 ignored, the values of MONAI's ``BELOW_LOW_THRESHOLD`` and
        ``BETWEEN_THRESHOLDS``).
        """
        levels = _anchors_per_level(num_anchors_per_level, num_anchors_per_loc, anchors.shape[0])
        return atss_ops.atss_assign(
            anchors,
            levels,
            gt_boxes,
            gt_counts,
            topk=self.num_candidates * operator.index(num_anchors_per_loc),
            anchor_ignore=anchor_ignore,
            center_eps=self.min_dist if self.center_in_gt else None,
        )

    def compute_matches(
        self, boxes: Tensor, anchors: Tensor, num_anchors_per_level: Sequence[int], num_anchors_per_loc: int
    ):
        """One image (MONAI's ``Matcher.__call__`` has already answered images without boxes)."""
        result = self.assign(boxes.to(anchors.device)[None], anchors, num_anchors_per_level, num_anchors_per_loc)
        matches = to_sentinels(result.gt_index, self.BELOW_LOW_THRESHOLD, self.BETWEEN_THRESHOLDS)[0]
        if self.debug:
            print(f"Anchor matcher threshold: {result.threshold[0]}")
            return self.similarity_fn(boxes.to(anchors.device), anchors), matches
        return anchors.new_empty((0,)), matches


class _BatchedAnchorMatching:
    """Stands in for ``RetinaNetDetector.compute_anchor_matched_idxs`` on one detector:
    one ``atss_assign`` call for the batch instead of a loop over the images.

    A plain object (not a bound method) so that a detector carrying it still pickles.
    """

    def __init__(self, detector: RetinaNetDetector, ignore_box_key: Optional[str], iof_threshold: float):
        self.detector = detector
        self.ignore_box_key = ignore_box_key
        self.iof_threshold = iof_threshold

    def __call__(
        self, anchors: List[Tensor], targets: List[dict], num_anchor_locs_per_level: Sequence[int]
    ) -> List[Tensor]:
        det = self.detector
        matcher = det.proposal_matcher
        if not isinstance(matcher, ATSSMatcher) or not anchors:  # the matcher was replaced since
            return RetinaNetDetector.compute_anchor_matched_idxs(det, anchors, targets, num_anchor_locs_per_level)
        # MONAI's generator: one tensor for all images.
        return per_anchor_group(
            anchors,
            lambda group_anchors, images: self._match(
                group_anchors, [targets[b] for b in images], num_anchor_locs_per_level
            ),
        )

    def _match(self, anchors: Tensor, targets: List[dict], num_anchor_locs_per_level: Sequence[int]) -> List[Tensor]:
        det, matcher = self.detector, self.detector.proposal_matcher
        boxes = [t[det.target_box_key].to(anchors.device) for t in targets]
        gt_boxes, gt_counts = atss_ops.pad_gt_boxes(boxes)
        anchor_ignore = ignore_mask_of(anchors, targets, self.ignore_box_key, self.iof_threshold)
        result = matcher.assign(
            gt_boxes, anchors, num_anchor_locs_per_level, det.num_anchors_per_loc, gt_counts, anchor_ignore
        )
        if matcher.debug:  # what MONAI's matcher and detector print, image by image
            for b, image_boxes in enumerate(boxes):
                if image_boxes.shape[0]:
                    print(f"Anchor matcher threshold: {result.threshold[b, : image_boxes.shape[0]]}")
                    overlap = matcher.similarity_fn(image_boxes, anchors).max(dim=1)[0]
                    print(f"Max box overlap between anchors and gt boxes: {overlap}.")
        # MONAI warns about each image whose boxes got no anchor; one host sync for the batch.
        unmatched = ((result.num_positive.sum(dim=1) == 0) & (gt_counts > 0)).nonzero().flatten().tolist()
        for b in unmatched:
            warnings.warn(
                "No anchor is matched with GT boxes. Please adjust matcher setting, anchor setting,"
                " or the network setting to change zoom scale between network output and input images."
                f"GT boxes are {boxes[b]}.",
                stacklevel=3,
            )
        return list(to_sentinels(result.gt_index, matcher.BELOW_LOW_THRESHOLD, matcher.BETWEEN_THRESHOLDS).unbind(0))


def use_atss_ops(
    detector: RetinaNetDetector,
    num_candidates: int = 4,
    center_in_gt: bool = False,
    *,
    ignore_box_key: Optional[str] = None,
    iof_threshold: float = 0.5,
) -> RetinaNetDetector:
    """Makes a MONAI ``RetinaNetDetector`` match anchors with ``atss_ops``; returns the detector.

    The counterpart of ``detector.set_atss_matcher(num_candidates, center_in_gt)``
    (same arguments, same defaults): installs :class:`ATSSMatcher` as
    ``detector.proposal_matcher`` and replaces the detector's per-image matching
    loop (``compute_anchor_matched_idxs``) with one ``atss_assign`` call for the
    whole batch. The matches keep MONAI's format (a list of ``Tensor[A]`` int64
    per image, -1 background), so the losses and samplers are unchanged. Images
    whose anchors differ from the first image's (MONAI's generator gives all the
    same tensor) get one call each. In debug mode the per-image thresholds and
    maximum overlaps are printed as MONAI prints them.

    Ignore regions (crowd, "don't care"): with ``ignore_box_key``, each target
    may hold ``Tensor[M, 4 or 6]`` boxes under that key; anchors whose
    intersection over their own area with one of them exceeds ``iof_threshold``
    (:func:`atss_ops.ignore_mask`) are matched -2, MONAI's ``BETWEEN_THRESHOLDS``:
    never positive, left out of the classification loss and of the samplers.

    Raises:
        TypeError: ``detector`` is not a ``RetinaNetDetector``.
        ValueError: ``num_candidates`` < 1, ``iof_threshold`` outside ``[0, 1]``, or
            the detector's ``box_overlap_metric`` is not MONAI's ``box_iou``.
    """
    if not isinstance(detector, RetinaNetDetector):
        raise TypeError(
            f"detector must be a monai.apps.detection.networks.retinanet_detector.RetinaNetDetector, "
            f"got {type(detector).__name__}"
        )
    V.check_iof_threshold(iof_threshold)
    detector.proposal_matcher = ATSSMatcher(num_candidates, detector.box_overlap_metric, center_in_gt, detector.debug)
    detector.compute_anchor_matched_idxs = _BatchedAnchorMatching(detector, ignore_box_key, float(iof_threshold))
    return detector
