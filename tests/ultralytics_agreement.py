"""Sorting the differences between Ultralytics' ``TaskAlignedAssigner`` and ``atss_ops.tal_assign`` by cause.

Used by ``test_ultralytics_switch.py`` on real training batches. Both sides are described by the same
dense ``[B, G, A]`` quantities: each GT's picks (step 3 of the TAL contract: Ultralytics' ``mask_pos``
before the multi-GT resolution, the reference's ``Selection.picks``), the metrics and overlaps each side
computed, and the final GT index per anchor (-1 background). An anchor *differs* when its GT index (or
its being foreground) differs. Each differing anchor gets one cause from the contract's table of
deliberate differences (``docs/contract.md``), or is *unexplained*:

Pick differences, GT g picks anchor a on one side only (every such (g, a) of the anchor must be explained);
with ``k_o``, ``k_t`` the smallest metric among g's picks on our side and on Ultralytics' (its k-th place):

- ``kth_place_metric_0``: the anchor's metric is 0 on both sides and a k-th place is 0: g has fewer than
  topk inside anchors of positive metric, and Ultralytics' top-k over all anchors keeps an arbitrary
  subset of the zero-metric ones, the contract the lowest-indexed inside ones.
- ``kth_place_tie``: the anchor's metric equals the k-th place on both sides and is the same on both
  sides (a tie at the k-th place: ``torch.topk``'s order against index order).
- ``kth_place_rounding``: the anchor's metric lies within ``D_g`` of the k-th place on both sides, where
  ``D_g > 0`` is the largest difference between the two sides' metrics over g's inside anchors (the
  contract's arctangent and powers against the C library's: a near-tie that rounding swaps).

Resolution differences, the anchor's picks agree (picked by two or more GTs on both sides):

- ``shared_overlaps_0``: all its overlaps are 0 (Ultralytics' argmax over all GTs gives GT 0; the
  contract the lowest GT it is inside).
- ``shared_overlap_tie``: the two GTs' overlaps are equal on Ultralytics' side (``max``'s index against
  the lowest index).
- ``shared_overlap_rounding``: the two GTs' overlaps differ by at most twice the largest difference
  between the two sides' overlaps at this anchor.
"""

from __future__ import annotations

from typing import Dict, NamedTuple

import torch
from torch import Tensor

CAUSES = (
    "kth_place_metric_0",
    "kth_place_tie",
    "kth_place_rounding",
    "shared_overlaps_0",
    "shared_overlap_tie",
    "shared_overlap_rounding",
)


class Side(NamedTuple):
    """One implementation's view of a batch (all dense; G and A as in the inputs)."""

    picks: Tensor  # [B, G, A] bool: step 3, each GT's picks (inside anchors only)
    metric: Tensor  # [B, G, A] float32: the metric where inside, anything elsewhere
    overlap: Tensor  # [B, G, A] float32: the overlap where inside, anything elsewhere
    gt_index: Tensor  # [B, A] int64: the final GT of each anchor, -1 background


class Sorted(NamedTuple):
    counts: Dict[str, int]  # differing anchors per cause
    unexplained: Tensor  # [N, 2] (b, a) of the differing anchors no cause explains
    differing: int
    anchors: int
    foreground_union: int


def kth_place(side: Side) -> Tensor:
    """``[B, G, 1]``: the smallest metric among each GT's picks (+inf for a GT without picks)."""
    inf = torch.full((), float("inf"))
    return torch.where(side.picks, side.metric, inf).amin(dim=-1, keepdim=True)


def sort_differences(ours: Side, theirs: Side, inside: Tensor) -> Sorted:
    """Every anchor whose GT differs between ``ours`` and ``theirs``, sorted into ``CAUSES`` (see the
    module's docstring) or left unexplained. ``inside`` (``[B, G, A]`` bool) is the inside test, the same
    on both sides (``test_tal_ultralytics`` checks it bit for bit)."""
    differ = ours.gt_index != theirs.gt_index  # [B, A]
    zero = torch.zeros(())
    m_o = torch.where(inside, ours.metric, zero)
    m_t = torch.where(inside, theirs.metric, zero)
    k_o, k_t = kth_place(ours), kth_place(theirs)
    pick_diff = ours.picks != theirs.picks  # [B, G, A]

    metric_0 = (m_o == 0) & (m_t == 0) & ((k_o == 0) | (k_t == 0))
    tie = (m_o == k_o) & (m_t == k_t) & (m_o == m_t) & (m_o > 0)
    spread = (m_o - m_t).abs().amax(dim=-1, keepdim=True)  # D_g
    rounding = (spread > 0) & ((m_o - k_o).abs() <= spread) & ((m_t - k_t).abs() <= spread)
    pick_cause = torch.full(pick_diff.shape, -1, dtype=torch.int64)
    for i, mask in enumerate((metric_0, tie, rounding)):  # the first that holds
        pick_cause = torch.where(mask & (pick_cause < 0), i, pick_cause)
    unexplained_pick = (pick_diff & (pick_cause < 0)).any(dim=1)  # [B, A]
    any_pick_diff = pick_diff.any(dim=1)
    # The anchor's cause among its pick differences: the first in CAUSES order that occurs.
    big = len(CAUSES)
    first_pick_cause = torch.where(pick_diff, pick_cause, big).amin(dim=1)

    # Resolution: picks agree, several pickers on both sides.
    shared = ours.picks.sum(dim=1) > 1
    o_o = torch.where(inside, ours.overlap, zero)
    o_t = torch.where(inside, theirs.overlap, zero)
    all_zero = o_t.amax(dim=1) == 0
    g_o = ours.gt_index.clamp(min=0)[:, None, :]
    g_t = theirs.gt_index.clamp(min=0)[:, None, :]
    ov_t_o, ov_t_t = o_t.gather(1, g_o)[:, 0], o_t.gather(1, g_t)[:, 0]
    ov_o_o, ov_o_t = o_o.gather(1, g_o)[:, 0], o_o.gather(1, g_t)[:, 0]
    overlap_spread = (o_o - o_t).abs().amax(dim=1)
    overlap_tie = ov_t_o == ov_t_t
    overlap_rounding = ((ov_o_o - ov_o_t).abs() <= 2 * overlap_spread) & (overlap_spread > 0)
    resolution = differ & ~any_pick_diff & shared
    cause = torch.full(differ.shape, -1, dtype=torch.int64)
    pick_explained = differ & any_pick_diff & ~unexplained_pick
    cause = torch.where(pick_explained, first_pick_cause, cause)
    for i, mask in enumerate((all_zero, overlap_tie, overlap_rounding), start=3):  # the first that holds
        cause = torch.where(resolution & mask & (cause < 0), i, cause)
    unexplained = differ & (cause < 0)
    counts = {name: int((differ & (cause == i)).sum()) for i, name in enumerate(CAUSES)}
    return Sorted(
        counts,
        unexplained.nonzero(),
        int(differ.sum()),
        differ.numel(),
        int(((ours.gt_index >= 0) | (theirs.gt_index >= 0)).sum()),
    )
