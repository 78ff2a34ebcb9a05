"""The work counters of tal_assign's CUDA selection kernel, run through the host execution model
(``make emu``; marker ``emu``): what ``python -m benchmarks.bench_tal --work`` reports. The figures
are exact counts, so they are checked against what they count: the points inside each GT's test
box (the reference's step 1), the blocks of 32 points, the top-k inserts."""

from __future__ import annotations

import pytest
import torch
from backends import emu_available
from bits import assert_bits_equal
from cases_tal import make_tal_case, tal_args

from atss_ops import reference_tal

pytestmark = pytest.mark.emu

COUNTERS = ("block_bounds", "blocks_visited", "points_tested", "points_inside", "keys_inserted")


def run_counted(args: tuple) -> dict:
    """The emulated kernel on ``args`` (bits checked against the reference), then its counters per GT row."""
    assert emu_available()
    out = torch.ops.atss_ops_emu.tal_assign(*args)
    assert_bits_equal(tuple(out), tuple(reference_tal.tal_assign(*args)), "emulated tal_assign vs reference")
    return {c: torch.ops.atss_ops_emu._work_counters(c) for c in COUNTERS}


@pytest.mark.parametrize("name", ["random_b3_g20_min_side", "crowded", "shuffled_points", "points_on_edges"])
def test_counters_count_what_they_name(name):
    """points_inside equals the reference's inside count of every GT row (padding rows: 0); the culling
    tests at most 32 points per visited block and never fewer than the inside ones; every row tests
    every block's box; a GT inserts at least its picks and at most its inside points into its list."""
    case = make_tal_case(name)
    args = tal_args(case)
    counts = run_counted(args)
    pred_scores, _, points, gt_boxes, _, gt_counts, topk, *_ = args
    min_side, eps = args[10], args[12]
    B, G = gt_boxes.shape[:2]
    inside = reference_tal.inside_mask(points, gt_boxes, gt_counts, min_side, eps).sum(-1).flatten()
    valid = (
        torch.arange(G)[None, :] < (gt_counts if gt_counts is not None else torch.full((B,), G))[:, None]
    ).flatten()
    blocks = -(-points.shape[0] // 32)
    assert torch.equal(counts["points_inside"], inside)
    assert counts["block_bounds"][valid].eq(blocks).all() and counts["block_bounds"][~valid].eq(0).all()
    visited, tested = counts["blocks_visited"], counts["points_tested"]
    assert visited.le(counts["block_bounds"]).all()
    assert tested.le(32 * visited).all() and tested.ge(inside).all()
    assert counts["keys_inserted"].ge(inside.clamp(max=topk)).all()
    assert counts["keys_inserted"].le(inside).all()


def test_small_boxes_visit_few_blocks():
    """On a YOLO grid (8,400 points, row-major levels) with boxes of at most 40 px, each GT tests under
    a tenth of the points: the culling works on the layout it was made for."""
    from benchmarks.bench_tal import inputs

    x = inputs(1, 30, seed=3)
    x["gt_boxes"] = torch.cat([x["gt_boxes"][..., :2], x["gt_boxes"][..., :2] + 40.0], dim=-1).clamp(0, 640)
    names = ("pred_scores", "pred_boxes", "anchor_points", "gt_boxes", "gt_labels", "gt_counts")
    counts = run_counted((*(x[k] for k in names), 10, 0.5, 6.0, True, 16.0, None, 1e-9))
    valid = torch.arange(30) < x["gt_counts"][0]
    A = x["anchor_points"].shape[0]
    assert counts["points_tested"][valid].max() < A / 10
    assert counts["points_inside"][valid].sum() > 0
