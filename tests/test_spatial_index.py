"""The fused CPU ``atss_assign``'s spatial index (csrc/cpu/spatial_index.h) against the scan.

The index is an acceleration structure only: with it, the fused op must give the
scan's bits and the reference's, ties included, on every layout. The path is
chosen per call by the environment variable ``ATSS_CPU_SELECT``:

* ``auto`` (or unset): the grid on levels where it pays off (the default);
* ``index``: the grid on every level it can handle, however small;
* ``index:N``: the same with about N anchors per cell (small N: many cells,
  many cell borders, the hardest case for the bounds);
* ``scan``: every anchor of every level, the path everything is compared with.

Layouts below are made to stress the bounds: GT centres on cell borders and
corners, anchors on cell borders, equal distances across cells (ties broken by
anchor index), huge and tiny anchors on one level, one-anchor levels, extreme
coordinates (finite and overflowing), topk larger than a level, masks that
leave one usable anchor far away, jittered and arbitrary anchors, several
anchors per location.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from backends import api_op, raw_op_error
from bits import assert_bits_equal
from cases import (
    CASE_NAMES,
    case_args,
    case_of,
    chain_stage_kernels,
    make_case,
    multi_scale_anchors,
    random_case,
    reference_stages,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import atss_ops
from atss_ops import reference

pytestmark = pytest.mark.skipif(
    not atss_ops.has_kernel("atss_assign", "cpu"), reason="the compiled CPU kernels are not built"
)

ENV = "ATSS_CPU_SELECT"
# Index settings every case runs under; each is compared with the scan.
INDEX_MODES = ["auto", "index", "index:1", "index:3"]
# More cell sizes for the small adversarial layouts: the cell borders move with N.
ADVERSARIAL_MODES = ["auto", "index", "index:1", "index:2", "index:3", "index:5", "index:16"]


def fused(case: dict, mode: str, monkeypatch) -> tuple:
    """The fused CPU kernel on ``case`` with ``ATSS_CPU_SELECT=mode``."""
    monkeypatch.setenv(ENV, mode)
    return tuple(torch.ops.atss_ops.atss_assign(*case_args(case)))


def check_against_scan(case: dict, modes, monkeypatch, what: str, want=None) -> None:
    """Every mode of ``modes`` gives the scan's bits (and ``want``'s, when given)."""
    scan = fused(case, "scan", monkeypatch)
    if want is not None:
        assert_bits_equal(scan, want, f"{what} scan vs reference")
    for mode in modes:
        assert_bits_equal(fused(case, mode, monkeypatch), scan, f"{what} {ENV}={mode} vs scan")


def boxes_at(cx: torch.Tensor, cy: torch.Tensor, w, h) -> torch.Tensor:
    w = torch.as_tensor(w, dtype=torch.float32).expand_as(cx)
    h = torch.as_tensor(h, dtype=torch.float32).expand_as(cy)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def lattice(nx: int, ny: int, step: float = 1.0, x0: float = 0.0, y0: float = 0.0):
    """Centres of an ``nx`` by ``ny`` lattice, row-major (x fastest), as two flat tensors."""
    ys, xs = torch.meshgrid(torch.arange(ny, dtype=torch.float32), torch.arange(nx, dtype=torch.float32), indexing="ij")
    return xs.flatten() * step + x0, ys.flatten() * step + y0


# --------------------------------------------------------------------------- every case of cases.py


@pytest.mark.parametrize("mode", INDEX_MODES)
@pytest.mark.parametrize("name", CASE_NAMES)
def test_case_index_equals_scan_and_reference(name, mode, monkeypatch):
    case = make_case(name)
    want = reference_stages(name)["atss_assign"]
    monkeypatch.setenv(ENV, "scan")
    assert_bits_equal(torch.ops.atss_ops.atss_assign(*case_args(case)), want, f"{name} scan vs reference")
    assert_bits_equal(fused(case, mode, monkeypatch), want, f"{name} {ENV}={mode} vs reference")


@pytest.mark.parametrize("mode", ["auto", "index:1"])
@pytest.mark.parametrize("name", ["coco_s2_b3_g20", "multi_anchor_3scales", "anchor_valid_random", "integer_boxes"])
def test_fused_with_index_equals_chained_stage_ops(name, mode, monkeypatch):
    """The stage ops never use the index; the fused op with it still equals their chain."""
    case = make_case(name)
    monkeypatch.setenv(ENV, mode)
    assert_bits_equal(fused(case, mode, monkeypatch), chain_stage_kernels(case), f"{name} fused vs chained")


def test_default_is_the_index_and_equals_scan(monkeypatch):
    """Unset means auto; a COCO-sized batch (every level above the auto threshold but the last)."""
    case = random_case(7, 2, 30, 800, 1344, counts=True, valid=0.9)
    monkeypatch.delenv(ENV, raising=False)
    default = tuple(torch.ops.atss_ops.atss_assign(*case_args(case)))
    assert_bits_equal(default, fused(case, "scan", monkeypatch), "default vs scan")
    assert_bits_equal(default, reference.atss_assign(*case_args(case)), "default vs reference")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_index_independent_of_threads(threads, monkeypatch, restore_threads):
    case = random_case(8, 3, 40, 320, 480, counts=True, valid=0.7, scales=[4.0, 6.0])
    case["topk"] = 18
    want = fused(case, "scan", monkeypatch)
    torch.set_num_threads(threads)
    for mode in ("auto", "index:1"):
        assert_bits_equal(fused(case, mode, monkeypatch), want, f"{threads} threads, {mode}")


@pytest.mark.parametrize("value", ["grid", "index:0", "index:", "index:-2", "index:x", "Index", "scan "])
def test_invalid_switch_names_the_variable(value, monkeypatch):
    case = make_case("tiny_image")
    monkeypatch.setenv(ENV, value)
    pattern = f"ATSS_CPU_SELECT must be auto, index, index:N .* got '{re.escape(value)}'"
    with pytest.raises(raw_op_error(), match=pattern):
        torch.ops.atss_ops.atss_assign(*case_args(case))
    # The public function: ValueError on every torch (2.15 delivers the kernels' errors as RuntimeError).
    with pytest.raises(ValueError, match=pattern):
        api_op("atss_assign")(*case_args(case))


def test_grids_reused_only_for_identical_anchors(monkeypatch):
    """The fused op keeps the last call's grids per thread and reuses them only when the anchors'
    bits, the level sizes and the settings are all unchanged: every change below must rebuild."""
    case = random_case(9, 2, 25, 256, 384, strides=(8, 16, 32), counts=True, valid=0.8)
    anchors = case["anchors"]
    monkeypatch.setenv(ENV, "index:2")
    op = torch.ops.atss_ops.atss_assign

    def expect_scan(what):
        got = op(*case_args(case))
        assert_bits_equal(got, fused(case, "scan", monkeypatch), what)
        monkeypatch.setenv(ENV, "index:2")
        assert_bits_equal(op(*case_args(case)), got, f"{what}, reused")  # the same grids, kept

    expect_scan("first call")
    case["anchors"] = anchors.clone()
    expect_scan("equal anchors, another tensor")
    case["anchors"][100, 0] = torch.nextafter(case["anchors"][100, 0], torch.tensor(-1e9))  # one ulp
    case["anchors"][100, 2] = torch.nextafter(case["anchors"][100, 2], torch.tensor(-1e9))
    expect_scan("one centre moved by an ulp")
    case["anchors"].add_(0.5)  # in place: same storage, new values
    expect_scan("anchors changed in place")
    levels = case["num_anchors_per_level"]
    case["num_anchors_per_level"] = [levels[0] - 7, levels[1] + 7, levels[2]]
    expect_scan("same anchors, other level sizes")
    case["topk"] = 300  # above n / 8 on the smallest level: auto would scan it, index:2 does not
    expect_scan("other topk")
    monkeypatch.setenv(ENV, "auto")
    assert_bits_equal(op(*case_args(case)), fused(case, "scan", monkeypatch), "auto after index:2")


# --------------------------------------------------------------------------- adversarial layouts


def _lattice_level_case(seed: int, where: str) -> dict:
    """Integer-lattice anchors (ties everywhere) and GT centres on the half-integer lattice:
    on anchor centres, on the lines between them, and on the corners between four."""
    g = torch.Generator().manual_seed(seed)
    cx, cy = lattice(24, 17)
    anchors = boxes_at(cx, cy, 2.0, 2.0)
    B, G = 2, 24
    if where == "centres":
        gx = torch.randint(0, 24, (B, G), generator=g).float()
        gy = torch.randint(0, 17, (B, G), generator=g).float()
    elif where == "lines":
        gx = torch.randint(0, 23, (B, G), generator=g).float() + 0.5
        gy = torch.randint(0, 17, (B, G), generator=g).float()
    elif where == "corners":
        gx = torch.randint(0, 23, (B, G), generator=g).float() + 0.5
        gy = torch.randint(0, 16, (B, G), generator=g).float() + 0.5
    else:  # outside the anchors' extent, on and off the lattice lines
        gx = torch.randint(-6, 30, (B, G), generator=g).float() * 0.5 - torch.randint(0, 2, (B, G), generator=g) * 20
        gy = torch.randint(-6, 24, (B, G), generator=g).float() * 0.5
    size = torch.randint(1, 12, (B, G, 2), generator=g).float()
    gt = boxes_at(gx, gy, size[..., 0], size[..., 1])
    return case_of(anchors, [anchors.shape[0]], gt, topk=9, center_eps=0.0)


@pytest.mark.parametrize("where", ["centres", "lines", "corners", "outside"])
def test_gt_centres_on_lattice_points_lines_and_corners(where, monkeypatch):
    case = _lattice_level_case(100 + len(where), where)
    check_against_scan(case, ADVERSARIAL_MODES, monkeypatch, where, reference.atss_assign(*case_args(case)))


@pytest.mark.parametrize("side", [16, 17, 32, 33])
def test_anchors_on_cell_borders(side, monkeypatch):
    """Lattices whose extent is a power of two (or one more): for some cell size the borders fall
    exactly on anchor centres, so an anchor sits on the border of its cell."""
    cx, cy = lattice(side, side)
    anchors = boxes_at(cx, cy, 3.0, 3.0)
    g = torch.Generator().manual_seed(side)
    gxy = torch.randint(0, 2 * side, (2, 20, 2), generator=g).float() / 2  # half-integers: borders and midpoints
    gt = boxes_at(gxy[..., 0], gxy[..., 1], 5.0, 3.0)
    case = case_of(anchors, [anchors.shape[0]], gt, topk=9)
    check_against_scan(case, ADVERSARIAL_MODES + ["index:4", "index:8", "index:64"], monkeypatch, f"side {side}")


def test_duplicated_centres_across_the_level(monkeypatch):
    """Each centre three times, at anchor indices far apart (a shuffled lattice repeated):
    equal distances everywhere, decided by the anchor index alone."""
    cx, cy = lattice(12, 10, step=4.0)
    g = torch.Generator().manual_seed(5)
    parts = []
    for _ in range(3):
        perm = torch.randperm(cx.numel(), generator=g)
        parts.append(boxes_at(cx[perm], cy[perm], 6.0, 6.0))
    anchors = torch.cat(parts)
    gxy = torch.randint(0, 96, (2, 16, 2), generator=g).float() / 2
    gt = boxes_at(gxy[..., 0], gxy[..., 1], 10.0, 8.0)
    case = case_of(anchors, [anchors.shape[0]], gt, topk=10)
    check_against_scan(case, ADVERSARIAL_MODES, monkeypatch, "duplicates", reference.atss_assign(*case_args(case)))


def test_huge_and_tiny_anchors_on_one_level(monkeypatch):
    g = torch.Generator().manual_seed(6)
    cx, cy = lattice(20, 20, step=8.0)
    tiny = boxes_at(cx, cy, 1e-3, 1e-3)
    huge = boxes_at(cx + 4, cy + 4, 1e4, 1e4)
    anchors = torch.stack([tiny, huge], dim=1).reshape(-1, 4)  # alternating, two centres apart
    far = boxes_at(torch.tensor([-1e4, 5e4]), torch.tensor([3e4, -2e4]), 1.0, 1.0)
    anchors = torch.cat([anchors, far])
    gxy = torch.rand(2, 12, 2, generator=g) * 170 - 5
    gt = boxes_at(gxy[..., 0], gxy[..., 1], 30.0, 20.0)
    case = case_of(anchors, [anchors.shape[0]], gt, topk=9)
    check_against_scan(case, ADVERSARIAL_MODES, monkeypatch, "huge+tiny", reference.atss_assign(*case_args(case)))


def test_levels_of_one_anchor_and_empty_levels(monkeypatch):
    cx, cy = lattice(15, 9, step=8.0, x0=4.0, y0=4.0)
    big = boxes_at(cx, cy, 32.0, 32.0)
    one = torch.tensor([[40.0, 20.0, 80.0, 60.0]])
    anchors = torch.cat([one, big, one, one * 2])
    gt = torch.tensor([[[10.0, 10.0, 50.0, 40.0], [60.0, 20.0, 100.0, 70.0], [0.0, 0.0, 120.0, 72.0]]])
    case = case_of(anchors, [1, 0, big.shape[0], 1, 0, 1], gt, topk=4)
    check_against_scan(
        case, ADVERSARIAL_MODES, monkeypatch, "one-anchor levels", reference.atss_assign(*case_args(case))
    )


def test_extreme_but_finite_coordinates(monkeypatch):
    """Centres from 1e-30 to 1e38 on one level: distances overflow to inf together, and every
    centre stays finite, so the level is indexed and inf keys tie by anchor index."""
    vals = torch.tensor([-3e38, -1e38, -1e30, -1e19, -1.0, -1e-30, 0.0, 1e-30, 1.0, 1e19, 1e30, 1e38, 3e38])
    cx, cy = torch.meshgrid(vals, vals.flip(0), indexing="ij")
    cx, cy = cx.flatten(), cy.flatten()
    anchors = torch.stack([cx, cy, cx, cy], dim=-1)  # points: centre = corner, always finite
    gvals = torch.tensor([-3e38, -2e38, 0.0, 5e-31, 1e19, 3.3e38, 7.0])
    gx, gy = torch.meshgrid(gvals, gvals, indexing="ij")
    gt = torch.stack([gx.flatten(), gy.flatten(), gx.flatten(), gy.flatten()], dim=-1)[None]
    case = case_of(anchors, [100, anchors.shape[0] - 100], gt, topk=5, center_eps=None)
    check_against_scan(case, ADVERSARIAL_MODES, monkeypatch, "extreme", reference.atss_assign(*case_args(case)))


def test_overflowing_centres_fall_back_to_the_scan(monkeypatch):
    """Anchors and GTs whose centre overflows to +-inf ((x1 + x2) / 2 with x1 + x2 > float max):
    no bound is NaN-free there, so such a level or GT is scanned; the answer is still exact."""
    cx, cy = lattice(10, 10, step=3e37, x0=-1.4e38, y0=-1.4e38)
    anchors = boxes_at(cx, cy, 1e37, 1e37)
    edge = torch.tensor(
        [[3.0e38, 3.0e38, 3.2e38, 3.3e38], [-3.3e38, 0.0, -3.1e38, 1.0], [3.0e38, -3.4e38, 3.4e38, -3.0e38]]
    )
    anchors = torch.cat([anchors[:50], edge, anchors[50:]])
    gt = torch.cat(
        [boxes_at(torch.tensor([0.0, 1e38, -1.2e38]), torch.tensor([0.0, -5e37, 1e38]), 2e37, 2e37), edge[:2]]
    )[None]
    case = case_of(anchors, [53, 50], gt, topk=6, center_eps=None)
    check_against_scan(case, ADVERSARIAL_MODES, monkeypatch, "overflow", reference.atss_assign(*case_args(case)))


@pytest.mark.parametrize("topk", [40, 299, 300, 301, 5000])
def test_topk_near_and_above_the_level_size(topk, monkeypatch):
    cx, cy = lattice(20, 15, step=8.0)
    anchors = boxes_at(cx, cy, 24.0, 24.0)
    g = torch.Generator().manual_seed(topk)
    valid = torch.rand(2, 300, generator=g) < 0.9
    gxy = torch.rand(2, 5, 2, generator=g) * 150
    gt = boxes_at(gxy[..., 0], gxy[..., 1], 40.0, 60.0)
    case = case_of(anchors, [300], gt, topk=topk, anchor_valid=valid)
    check_against_scan(case, ADVERSARIAL_MODES, monkeypatch, f"topk {topk}", reference.atss_assign(*case_args(case)))


@pytest.mark.parametrize("usable", [1, 2, 9])
def test_mask_leaves_few_usable_anchors_in_a_far_cell(usable, monkeypatch):
    """Every anchor masked but ``usable`` ones in the far corner: the search must reach them."""
    cx, cy = lattice(40, 30, step=8.0)
    anchors = boxes_at(cx, cy, 32.0, 32.0)
    valid = torch.zeros(2, anchors.shape[0], dtype=torch.bool)
    far = (cx >= 8.0 * 37) & (cy >= 8.0 * 27)  # the 3x3 far corner
    valid[0, far.nonzero().flatten()[:usable]] = True
    valid[1, far.nonzero().flatten()[-usable:]] = True
    valid[1, 0] = True  # and one at the near corner in image 1
    gt = torch.tensor(
        [[[0.0, 0.0, 20.0, 20.0], [100.0, 60.0, 180.0, 100.0]], [[0.0, 0.0, 8.0, 8.0], [300, 220, 320, 240]]]
    )
    case = case_of(anchors, [anchors.shape[0]], gt, topk=9, anchor_valid=valid)
    check_against_scan(
        case, ADVERSARIAL_MODES, monkeypatch, f"{usable} usable", reference.atss_assign(*case_args(case))
    )


@pytest.mark.parametrize(
    "layout", ["jittered", "uniform", "clustered", "one_point", "vertical_line", "two_clusters_far"]
)
def test_arbitrary_anchor_layouts(layout, monkeypatch):
    g = torch.Generator().manual_seed(len(layout))
    n = 400
    if layout == "jittered":
        cx, cy = lattice(20, 20, step=8.0)
        cx = cx + (torch.rand(n, generator=g) - 0.5) * 8
        cy = cy + (torch.rand(n, generator=g) - 0.5) * 8
    elif layout == "uniform":
        cx, cy = torch.rand(n, generator=g) * 160, torch.rand(n, generator=g) * 160
    elif layout == "clustered":  # most anchors within a fraction of one cell, a few far
        cx, cy = 80 + torch.randn(n, generator=g) * 0.01, 80 + torch.randn(n, generator=g) * 0.01
        cx[:5], cy[:5] = torch.tensor([0.0, 160, 0, 160, 80]), torch.tensor([0.0, 0, 160, 160, 300])
    elif layout == "one_point":  # everything in one cell: the index degrades to a scan
        cx, cy = torch.full((n,), 33.0), torch.full((n,), 44.0)
    elif layout == "vertical_line":  # zero extent along x
        cx, cy = torch.full((n,), 50.0), torch.arange(n, dtype=torch.float32) * 0.5
    else:
        cx = torch.cat([torch.rand(n // 2, generator=g), 1e6 + torch.rand(n // 2, generator=g)])
        cy = torch.cat([torch.rand(n // 2, generator=g), -1e6 + torch.rand(n // 2, generator=g)])
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    anchors = boxes_at(cx, cy, wh[:, 0], wh[:, 1])
    gxy = torch.cat([torch.rand(2, 8, 2, generator=g) * 170 - 5, torch.stack([cx[:16], cy[:16]], -1).view(2, 8, 2)], 1)
    gt = boxes_at(gxy[..., 0], gxy[..., 1], 25.0, 35.0)
    case = case_of(anchors, [150, 250], gt, topk=9)
    check_against_scan(case, ADVERSARIAL_MODES, monkeypatch, layout, reference.atss_assign(*case_args(case)))


@pytest.mark.parametrize("per_location", [2, 9])
def test_several_anchors_per_location(per_location, monkeypatch):
    scales = [2 + i * 0.7 for i in range(per_location)]
    anchors, levels = multi_scale_anchors(96, 128, (8, 16, 32), scales)
    g = torch.Generator().manual_seed(per_location)
    gxy = torch.randint(0, 32, (2, 10, 2), generator=g).float() * 4  # on lattice lines and centres
    gt = boxes_at(gxy[..., 0], gxy[..., 1], 30.0, 22.0)
    case = case_of(anchors, levels, gt, topk=9 * per_location)
    check_against_scan(
        case, ADVERSARIAL_MODES, monkeypatch, f"{per_location} per location", reference.atss_assign(*case_args(case))
    )


# --------------------------------------------------------------------------- properties


@st.composite
def layouts(draw):
    """A random level layout, GTs and options, mixing lattices (ties), duplicates, random floats."""
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    num_levels = draw(st.integers(1, 3))
    boxes, levels = [], []
    for _ in range(num_levels):
        kind = draw(st.sampled_from(["lattice", "random", "duplicates", "line", "mixed"]))
        n = draw(st.integers(0, 160))
        if kind == "lattice":
            nx = draw(st.integers(1, 16))
            step = draw(st.sampled_from([1.0, 0.5, 8.0, 3.0]))
            i = torch.arange(n)
            cx, cy = (i % nx).float() * step, (i // nx).float() * step
        elif kind == "random":
            cx, cy = torch.rand(n, generator=g) * 100, torch.rand(n, generator=g) * 100
        elif kind == "duplicates":
            pool = torch.randint(0, 10, (n, 2), generator=g).float() * 4
            cx, cy = pool[:, 0], pool[:, 1]
        elif kind == "line":
            cx, cy = torch.randint(0, 50, (n,), generator=g).float(), torch.full((n,), 7.0)
        else:
            cx = torch.where(
                torch.rand(n, generator=g) < 0.5,
                torch.randint(0, 20, (n,), generator=g).float() * 5,
                torch.rand(n, generator=g) * 100,
            )
            cy = torch.randint(0, 20, (n,), generator=g).float() * 5
        wh = torch.randint(1, 40, (n, 2), generator=g).float()
        boxes.append(boxes_at(cx, cy, wh[:, 0], wh[:, 1]))
        levels.append(n)
    anchors = torch.cat(boxes) if boxes else torch.zeros(0, 4)
    B, G = draw(st.integers(1, 2)), draw(st.integers(1, 6))
    gxy = torch.randint(-10, 220, (B, G, 2), generator=g).float() / 2  # half-integers: on lines and corners
    if anchors.shape[0] > 0 and draw(st.booleans()):  # some GT centres on anchor centres
        pick = torch.randint(0, anchors.shape[0], (B, G), generator=g)
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        gxy = torch.where(torch.rand(B, G, 1, generator=g) < 0.5, centres[pick], gxy)
    gwh = torch.randint(0, 60, (B, G, 2), generator=g).float()
    gt = boxes_at(gxy[..., 0], gxy[..., 1], gwh[..., 0], gwh[..., 1])
    valid = None
    if draw(st.booleans()):
        valid = torch.rand(B, anchors.shape[0], generator=g) < draw(st.sampled_from([0.05, 0.5, 0.95]))
    topk = draw(st.integers(1, 24))
    mode = draw(st.sampled_from(["index", "index:1", "index:2", "index:3", "index:6", "auto"]))
    return case_of(anchors, levels, gt, topk=topk, anchor_valid=valid), mode


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=layouts())
def test_property_index_equals_scan(drawn, monkeypatch):
    case, mode = drawn
    check_against_scan(case, [mode], monkeypatch, "random layout")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=layouts())
def test_property_index_equals_reference(drawn, monkeypatch):
    case, mode = drawn
    assert_bits_equal(fused(case, mode, monkeypatch), reference.atss_assign(*case_args(case)), f"{mode} vs reference")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**31 - 1),
    jitter=st.sampled_from([0.0, 0.25, 1.0, 8.0]),
    cell=st.sampled_from(["auto", "index:1", "index:2", "index:4", "index:9"]),
)
def test_property_coco_like_grids(seed, jitter, cell, monkeypatch):
    """Pyramid grids of a COCO-like image (levels above the auto threshold), jittered by up to
    ``jitter`` pixels, GT centres on the half-pixel lattice, random masks."""
    case = random_case(seed % 1000, 2, 12, 256, 320, strides=(8, 16, 32), counts=True, valid=0.8)
    g = torch.Generator().manual_seed(seed)
    if jitter:
        shift = (torch.rand(case["anchors"].shape[0], 2, generator=g) - 0.5) * jitter
        case["anchors"] = case["anchors"] + shift.repeat(1, 2)
    boxes = case["gt_boxes"]
    centre = torch.round((boxes[..., :2] + boxes[..., 2:]) / 2 / 4) * 4  # on stride lines
    half = (boxes[..., 2:] - boxes[..., :2]) / 2
    case["gt_boxes"] = torch.cat([centre - half, centre + half], dim=-1)
    counts = case["gt_counts"]
    for b in range(2):
        case["gt_boxes"][b, int(counts[b]) :] = math.nan
    check_against_scan(case, [cell], monkeypatch, f"coco grid jitter {jitter}")
