"""Property tests (hypothesis) on small random inputs: kernel == reference, and the contract's invariants."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from backends import kernel, ops_of
from bits import assert_bits_equal, bits_equal
from cases import CASE_NAMES, chain_stage_kernels, compute_reference_stages, make_case, op_args, reference_stages
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from atss_ops import AssignResult, reference
from atss_ops._extension import OPS

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

COORDS = {
    # Small integers: many exact distance and IoU ties, degenerate boxes.
    "int": (st.integers(-2, 10).map(float), st.integers(0, 8).map(float)),
    "half": (st.integers(-4, 20).map(lambda v: v / 2), st.integers(0, 16).map(lambda v: v / 2)),
    "float": (
        st.floats(-2, 10, width=32, allow_subnormal=False),
        st.floats(0, 12, width=32, allow_subnormal=False),
    ),
}


def _boxes(draw, n: int, mode: str, scale: float = 1.0, dims: int = 2) -> torch.Tensor:
    """``[n, 2D]`` float32 boxes ``lo, lo + size`` per axis (size >= 0, so hi >= lo after rounding);
    ``scale`` (a power of two) multiplies the sizes."""
    start, size = COORDS[mode]
    lo = torch.tensor(draw(st.lists(st.tuples(*[start] * dims), min_size=n, max_size=n)), dtype=torch.float32)
    ext = torch.tensor(draw(st.lists(st.tuples(*[size] * dims), min_size=n, max_size=n)), dtype=torch.float32)
    return torch.cat([lo.reshape(n, dims), (lo + ext * scale).reshape(n, dims)], dim=-1)


@st.composite
def assign_inputs(draw, modes=tuple(COORDS), dims=(2, 3), ensure_positive=(False, True)):
    """A small random case (same keys as ``cases.py``): 2-D or 3-D boxes, 1-3 levels of 0-7 anchors,
    B 0-3, G 0-4 (mostly > 0), optional gt_counts (NaN padding), anchor_valid and anchor_ignore, topk 1-6,
    a few center_eps values (None: no centre test), with or without ensure_positive."""
    mode = draw(st.sampled_from(modes))
    D = draw(st.sampled_from(dims))
    levels = draw(st.lists(st.integers(0, 7), min_size=1, max_size=3))
    A = sum(levels)
    # B = 0 or G = 0 about one time in ten each (the empty cases have their own tests).
    B = draw(st.integers(1, 3)) if draw(st.integers(0, 9)) else 0
    G = draw(st.integers(1, 4)) if draw(st.integers(0, 9)) else 0
    anchors = _boxes(draw, A, mode, dims=D)
    gt_boxes = _boxes(draw, B * G, mode, scale=2.0, dims=D).reshape(B, G, 2 * D)  # GTs larger: more positives
    gt_counts = None
    if draw(st.booleans()):
        gt_counts = torch.tensor(draw(st.lists(st.integers(0, G), min_size=B, max_size=B)), dtype=torch.int64)
        for b in range(B):
            gt_boxes[b, int(gt_counts[b]) :] = float("nan")
    masks = {}
    for name in ("anchor_valid", "anchor_ignore"):
        masks[name] = None
        if draw(st.booleans()):
            # Ignored anchors rarer than invalid ones, so that candidates remain.
            flags = draw(st.lists(st.integers(0, 3), min_size=B * A, max_size=B * A))
            on = [f > 0 for f in flags] if name == "anchor_valid" else [f == 0 for f in flags]
            masks[name] = torch.tensor(on, dtype=torch.bool).reshape(B, A)
    return dict(
        anchors=anchors,
        num_anchors_per_level=levels,
        gt_boxes=gt_boxes,
        gt_counts=gt_counts,
        topk=draw(st.integers(1, 6)),
        anchor_valid=masks["anchor_valid"],
        center_eps=draw(st.sampled_from([0.01, 0.0, 0.5, None])),
        anchor_ignore=masks["anchor_ignore"],
        ensure_positive=draw(st.sampled_from(ensure_positive)),
    )


def kernel_assign(case: dict) -> AssignResult:
    return AssignResult(*kernel("atss_assign")(*op_args("atss_assign", case)))


KERNEL_BACKENDS = ["cpu", pytest.param("emu", marks=pytest.mark.emu)]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=60, **SETTINGS)
@given(case=assign_inputs())
def test_kernels_equal_reference(backend, case):
    """Every op's kernel (CPU, or the emulated CUDA kernel) returns the reference's bits (stage inputs
    shared), and chained == fused."""
    stages = compute_reference_stages(case)
    for op in OPS:
        assert_bits_equal(getattr(ops_of(backend), op)(*op_args(op, case, stages)), stages[op], op)
    assert_bits_equal(chain_stage_kernels(case, ops_of(backend)), stages["atss_assign"], "chained stage kernels")


def _gt_valid(case) -> torch.Tensor:
    B, G = case["gt_boxes"].shape[:2]
    if case["gt_counts"] is None:
        return torch.ones(B, G, dtype=torch.bool)
    return torch.arange(G)[None, :] < case["gt_counts"][:, None]


def _anchor_mask(case, name: str, default: bool) -> torch.Tensor:
    B, A = case["gt_boxes"].shape[0], case["anchors"].shape[0]
    mask = case.get(name)
    return mask if mask is not None else torch.full((B, A), default, dtype=torch.bool)


def _anchor_valid(case) -> torch.Tensor:
    return _anchor_mask(case, "anchor_valid", True)


def _anchor_ignore(case) -> torch.Tensor:
    return _anchor_mask(case, "anchor_ignore", False)


def without_step8(case: dict) -> dict:
    return dict(case, ensure_positive=False)


def check_invariants(case: dict, res: AssignResult, stages: dict) -> None:
    """Invariants of the result ``res`` of ``case`` that hold whatever the inputs (``stages``: the
    reference's stage outputs, for the candidates). With ``ensure_positive``, the threshold and centre
    invariants hold for the step 7 assignments, and ``check_step8`` checks the rest."""
    anchors, gt_boxes = case["anchors"], case["gt_boxes"]
    B, G = gt_boxes.shape[:2]
    A = anchors.shape[0]
    D = anchors.shape[1] // 2
    gt_valid, anchor_valid, ignored = _gt_valid(case), _anchor_valid(case), _anchor_ignore(case)
    gi = res.gt_index
    assert gi.shape == (B, A) and res.iou.shape == (B, A)
    assert res.threshold.shape == (B, G) and res.num_positive.shape == (B, G)
    pos = gi >= 0

    # One GT per anchor, only valid (non-padding) GTs; background is -1; -2 exactly on ignored anchors.
    assert ((gi >= -2) & (gi < G)).all()
    assert torch.equal(gi == -2, ignored)
    b_idx, a_idx = pos.nonzero(as_tuple=True)
    g_idx = gi[b_idx, a_idx]
    assert gt_valid[b_idx, g_idx].all()

    # The IoU output is the contract's IoU of the assigned pair; background and ignored hold +0.
    assert bits_equal(res.iou[b_idx, a_idx], reference._iou(anchors[a_idx], gt_boxes[b_idx, g_idx]))
    assert bits_equal(res.iou[~pos], torch.zeros(int((~pos).sum())))

    # num_positive counts the final assignment per GT.
    counts = torch.stack([torch.bincount(gi[b][pos[b]], minlength=G) for b in range(B)]) if B else res.num_positive
    assert torch.equal(res.num_positive, counts.reshape(B, G))
    assert torch.equal(res.num_positive.sum(dim=1), pos.sum(dim=1))

    # Invalid anchors are background (or ignored).
    assert not pos[~anchor_valid].any()

    # Step 7's positives reach the GT's threshold (float32 rounding of thr cannot pass a float32 IoU)
    # and their centres lie inside their GT by more than center_eps (float32 arithmetic).
    step7 = pos if not case.get("ensure_positive") else pos & (kernel_assign(without_step8(case)).gt_index == gi)
    b_idx, a_idx = step7.nonzero(as_tuple=True)
    g_idx = gi[b_idx, a_idx]
    assert (res.iou[b_idx, a_idx] >= res.threshold[b_idx, g_idx]).all()
    if case["center_eps"] is not None:
        box, gt = anchors[a_idx], gt_boxes[b_idx, g_idx]
        eps = torch.tensor(case["center_eps"], dtype=torch.float32)
        for t in range(D):
            c = (box[:, t] + box[:, t + D]) / 2
            assert ((c - gt[:, t]) > eps).all() and ((gt[:, t + D] - c) > eps).all()

    # Padding GTs: NaN threshold, no positive. Valid GTs: NaN exactly when the GT has no candidate
    # (C == 0: e.g. no valid anchor in the image) or a candidate's IoU is NaN (float overflow).
    assert res.threshold[~gt_valid].isnan().all() and (res.num_positive[~gt_valid] == 0).all()
    cand, cand_iou = stages["topk_per_level"], stages["iou_statistics"][0]
    no_candidate = (cand < 0).all(dim=-1) & gt_valid
    usable = anchor_valid & ~ignored
    assert torch.equal(no_candidate, (usable.sum(dim=1) == 0)[:, None].expand(B, G) & gt_valid)
    assert torch.equal(res.threshold.isnan() & gt_valid, (no_candidate | cand_iou.isnan().any(dim=-1)) & gt_valid)


def check_step8(case: dict, res: AssignResult, stages: dict) -> None:
    """Step 8 against the step 7 result: assignments of step 7 stay; each GT left empty gains at most its
    proposal, a free candidate of IoU > 0; no GT with such a candidate ends empty unless the anchor it
    proposes (its best free candidate, the earliest on ties) went to a GT of higher IoU or, on equal IoU,
    lower index."""
    before = kernel_assign(without_step8(case))
    cand, cand_iou = stages["topk_per_level"], stages["iou_statistics"][0]
    B, G, C = cand.shape
    kept = before.gt_index >= 0
    assert torch.equal(res.gt_index[kept], before.gt_index[kept])
    for b in range(B):
        for g in range(G):
            gained = int(res.num_positive[b, g] - before.num_positive[b, g])
            if before.num_positive[b, g] > 0:
                assert gained == 0
                continue
            free = [
                (float(cand_iou[b, g, c]), -c, int(cand[b, g, c]))
                for c in range(C)
                if cand[b, g, c] >= 0 and before.gt_index[b, cand[b, g, c]] == -1 and cand_iou[b, g, c] > 0
            ]
            if not free:
                assert gained == 0
                continue
            iou, _, a = max(free)  # highest IoU, then the earliest slot
            winner = int(res.gt_index[b, a])
            assert winner >= 0, "a proposed anchor stays assigned to some GT"
            if winner == g:
                assert gained == 1 and bits_equal(
                    res.iou[b, a], cand_iou[b, g, [c for c in range(C) if cand[b, g, c] == a][0]]
                )
            else:
                assert gained == 0
                assert float(res.iou[b, a]) > iou or (float(res.iou[b, a]) == iou and winner < g)


@settings(max_examples=80, **SETTINGS)
@given(case=assign_inputs())
def test_assignment_invariants(case):
    """The invariants of ``check_invariants`` (and of step 8, where on) on random inputs."""
    res = kernel_assign(case)
    event("has positives" if bool((res.gt_index >= 0).any()) else "no positive")
    event(f"D = {case['anchors'].shape[1] // 2}")
    stages = compute_reference_stages(case)
    check_invariants(case, res, stages)
    if case["ensure_positive"]:
        check_step8(case, res, stages)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_invariants_on_named_cases(name):
    """The same invariants, the step 7 rule and step 8 on every adversarial case of ``cases.py``."""
    case, stages = make_case(name), reference_stages(name)
    res = kernel_assign(case)
    check_invariants(case, res, stages)
    check_resolution(kernel_assign(without_step8(case)), stages)
    if case["ensure_positive"]:
        check_step8(case, res, stages)


@settings(max_examples=40, **SETTINGS)
@given(case=assign_inputs(ensure_positive=(False,)))
def test_resolution_picks_best_positive_gt(case):
    """Step 7 against the stage outputs: an anchor positive for some GT is assigned to the one with the
    highest IoU (lowest index on ties); an anchor positive for none is background."""
    check_resolution(kernel_assign(case), compute_reference_stages(case))


def check_resolution(res: AssignResult, stages: dict) -> None:
    """Each anchor goes to the positive GT of highest IoU, the lowest index on ties; NaN IoUs never claim
    (``res``: a result without step 8; ignored anchors are never candidates, so stay -2)."""
    cand = stages["topk_per_level"]
    cand_iou, _, is_positive = stages["iou_statistics"]
    B, G, C = cand.shape
    for b in range(B):
        best = {}  # anchor -> (iou, -g) of its best claim
        for g in range(G):
            for c in range(C):
                a = int(cand[b, g, c])
                if is_positive[b, g, c] and not math.isnan(cand_iou[b, g, c]):
                    key = (float(cand_iou[b, g, c]), -g)
                    best[a] = max(best.get(a, key), key)
        expected = torch.where(res.gt_index[b] == -2, -2, -1)
        for a, (_, neg_g) in best.items():
            expected[a] = -neg_g
        assert torch.equal(res.gt_index[b], expected)


@settings(max_examples=40, **SETTINGS)
@given(case=assign_inputs(), data=st.data())
def test_appended_duplicate_gt_gets_nothing(case, data):
    """Appending a copy of valid GT j (as GT G) leaves every output unchanged; the copy gets GT j's
    threshold and no positive, since every tie goes to the lower index."""
    B, G = case["gt_boxes"].shape[:2]
    if B == 0 or G == 0:
        return
    # Every slot valid (padding rows become point boxes at the origin), so the copy is a valid GT. Without
    # step 8: the copy, left empty, would propose an anchor.
    case = dict(case, gt_counts=None, gt_boxes=case["gt_boxes"].nan_to_num(0.0), ensure_positive=False)
    j = data.draw(st.integers(0, G - 1))
    base = kernel_assign(case)
    grown = dict(case, gt_boxes=torch.cat([case["gt_boxes"], case["gt_boxes"][:, j : j + 1]], dim=1))
    res = kernel_assign(grown)
    assert_bits_equal(res.gt_index, base.gt_index, "gt_index")
    assert_bits_equal(res.iou, base.iou, "iou")
    assert_bits_equal(res.threshold[:, :G], base.threshold, "threshold")
    assert_bits_equal(res.num_positive[:, :G], base.num_positive, "num_positive")
    assert_bits_equal(res.threshold[:, G], base.threshold[:, j], "threshold of the copy")
    assert (res.num_positive[:, G] == 0).all()


@settings(max_examples=40, **SETTINGS)
@given(case=assign_inputs(modes=("int", "half")))
def test_scaling_by_two_changes_nothing(case):
    """Multiplying every coordinate and center_eps by 2 is exact in float32, so every rounding step
    commutes with it: gt_index, iou, threshold and num_positive keep their bits."""
    base = kernel_assign(case)
    eps = case["center_eps"]
    scaled = dict(
        case, anchors=case["anchors"] * 2, gt_boxes=case["gt_boxes"] * 2, center_eps=None if eps is None else eps * 2
    )
    assert_bits_equal(kernel_assign(scaled), base, "scaled x2")
    assert_bits_equal(reference.atss_assign(*op_args("atss_assign", scaled)), base, "reference, scaled x2")


# Distances the selection must order exactly: ties, both zeros, negatives, subnormals, infinities, NaN.
DISTANCE_PALETTE = [-float("inf"), -1.0, -1e-45, -0.0, 0.0, 1e-45, 1.0, 1.5, 2.0, 3.4e38, float("inf"), float("nan")]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_topk_per_level_arbitrary_distances(backend, data):
    """``topk_per_level`` on any float32 distances over levels of up to 70 anchors (several of the kernels'
    16-anchor chunks): the kernel orders by ``(d, index)``, -0 == +0, NaN last, exactly as the reference."""
    levels = data.draw(st.lists(st.integers(0, 70), min_size=1, max_size=3))
    B, G, A = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), sum(levels)
    palette = data.draw(st.lists(st.sampled_from(DISTANCE_PALETTE), min_size=1, max_size=5, unique_by=str))
    values = data.draw(st.lists(st.sampled_from(palette), min_size=B * G * A, max_size=B * G * A))
    distances = torch.tensor(values, dtype=torch.float32).reshape(B, G, A)
    topk = data.draw(st.integers(1, 20))
    valid = None
    if data.draw(st.booleans()):
        valid_flags = data.draw(st.lists(st.booleans(), min_size=B * A, max_size=B * A))
        valid = torch.tensor(valid_flags, dtype=torch.bool).reshape(B, A)
    ignore = None
    if data.draw(st.booleans()):
        flags = data.draw(st.lists(st.booleans(), min_size=B * A, max_size=B * A))
        ignore = torch.tensor(flags, dtype=torch.bool).reshape(B, A)
    args = (distances, levels, topk, None, valid, ignore)
    assert_bits_equal(ops_of(backend).topk_per_level(*args), reference.topk_per_level(*args), "topk_per_level")


# --------------------------------------------------------------------------- what each adversarial case is for


def _duplicates(case, res, stages):
    # gt[:, 3] and gt[:, 6] copy gt[:, 0]; gt[:, 7] copies gt[:, 2]: the copies get nothing.
    for copy, orig in ((3, 0), (6, 0), (7, 2)):
        assert (res.num_positive[:, copy] == 0).all()
        assert bits_equal(res.threshold[:, copy], res.threshold[:, orig])
    assert (res.num_positive[:, [0, 2]] > 0).all()


def _degenerate(case, res, stages):
    # Zero-width / zero-height / point GTs: candidates, all IoUs 0, so threshold 0, and no positive.
    for b, g in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (0, 3), (1, 4)]:
        assert (stages["topk_per_level"][b, g] >= 0).all()
        assert (stages["iou_statistics"][0][b, g] == 0).all()
        assert res.threshold[b, g] == 0 and res.num_positive[b, g] == 0


def _no_center_test(case, res, stages):
    # No centre test lets degenerate GTs have positives, with IoU 0; the copy GT1 loses every tie to GT0.
    pos = res.gt_index >= 0
    assert pos.any() and (res.iou[pos] == 0).all()
    assert res.num_positive[0, 1] == 0 and res.num_positive[0, 0] > 0


def _no_positive(case, res, stages):
    assert (res.gt_index == -1).all() and not res.threshold.isnan().any()


def _counts_zero(case, res, stages):
    assert (res.gt_index[[0, 2]] == -1).all() and (res.gt_index[1] >= 0).any()


def _none_valid(case, res, stages):
    assert res.threshold[1].isnan().all() and (res.gt_index[1] == -1).all()
    assert not res.threshold[0].isnan().any()


def _single_candidate(case, res, stages):
    # C == 1: std = 0, so the threshold is the candidate's IoU.
    assert stages["topk_per_level"].shape[-1] == 1
    assert bits_equal(res.threshold, stages["iou_statistics"][0][..., 0])


def _short_levels(case, res, stages):
    assert case["num_anchors_per_level"] == [80, 20, 6, 2]
    assert stages["topk_per_level"].shape[-1] == 9 + 9 + 6 + 2


def _ties(count, case, res, stages):
    # Every GT centre is equidistant from its 2 (lines) or 4 (corners) nearest anchors of the first level.
    d = stages["center_distance"][..., : case["num_anchors_per_level"][0]]
    nearest = (d == d.min(dim=-1, keepdim=True).values).sum(dim=-1)
    assert (nearest >= count).all()


def _huge(case, res, stages):
    # Overflow happens: some distances are inf and some IoUs NaN, and NaN IoUs never get an anchor.
    assert stages["center_distance"].isinf().any() and stages["iou_statistics"][0].isnan().any()


def _competing(case, res, stages):
    # GT0, GT1 and GT4 are the same tiny box (GT2 is shifted by 1): the big margin leaves them without
    # positives; all propose, GT0 takes the anchor, the copies stay empty (one round).
    before = kernel_assign(without_step8(case))
    assert (before.num_positive[0, [0, 1, 2, 4]] == 0).all()
    assert res.num_positive[0, 0] == 1 and res.num_positive[0, 1] == 0 and res.num_positive[0, 4] == 0


def _no_overlap(case, res, stages):
    # GT0 overlaps no usable anchor and GT1 is degenerate: nothing to propose. GT2 gets an anchor.
    assert (stages["iou_statistics"][0][0, :2] == 0).all()
    assert res.num_positive[0, 0] == 0 and res.num_positive[0, 1] == 0 and res.num_positive[0, 2] >= 1


def _all_ignored(case, res, stages):
    assert (res.gt_index[1] == -2).all() and res.threshold[1].isnan().all()
    assert (res.gt_index[0] >= 0).any()


def _along_z(case, res, stages):
    # Three anchors per location that differ along z only: equal centres, so distance ties by index.
    d = stages["center_distance"][..., : case["num_anchors_per_level"][0]]
    assert torch.equal(d[..., 0::3], d[..., 1::3]) and torch.equal(d[..., 0::3], d[..., 2::3])


CASE_PURPOSE = {
    "duplicate_gts": _duplicates,
    "degenerate_gts": _degenerate,
    "no_center_test_degenerate": _no_center_test,
    "d3_centres_on_cell_corners": functools.partial(_ties, 8),
    "ensure_positive_competing_tiny_gts": _competing,
    "ensure_positive_no_overlap": _no_overlap,
    "ignore_every_anchor_of_an_image": _all_ignored,
    "d3_anchors_along_z": _along_z,
    "large_center_eps": _no_positive,
    "gt_counts_zero": _counts_zero,
    "anchor_valid_none_in_image": _none_valid,
    "c1_topk1_one_level": _single_candidate,
    "level_smaller_than_topk": _short_levels,
    "gt_centres_on_grid_lines": functools.partial(_ties, 2),
    "gt_centres_on_cell_corners": functools.partial(_ties, 4),
    "huge_coordinates_overflow": _huge,
}


@pytest.mark.parametrize("name", list(CASE_PURPOSE))
def test_case_does_what_its_name_says(name):
    """The adversarial inputs really contain what they are meant to test (and the kernel's answer on them
    follows the contract: copies lose ties, degenerate GTs get no positive, ...)."""
    case, stages = make_case(name), reference_stages(name)
    CASE_PURPOSE[name](case, kernel_assign(case), stages)
