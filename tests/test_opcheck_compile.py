"""The ops are well-formed dispatcher ops: ``torch.library.opcheck`` passes, and ``torch.compile``
(fullgraph) runs them with the eager bits."""

from __future__ import annotations

import pytest
import torch
from backends import kernel
from bits import assert_bits_equal
from cases import compute_reference_stages, make_case, op_args, reference_stages

import atss_ops
from atss_ops._extension import OPS


def _sample(name: str, **changes) -> dict:
    case = make_case(name)
    case.update(changes)
    return case


def opcheck_samples():
    """(id, case) pairs: optional arguments absent and given, padding, and the empty shapes."""
    small = "level_smaller_than_topk"  # B = 2, G = 6, A = 108, levels [80, 20, 6, 2]
    valid = torch.rand(2, 108, generator=torch.Generator().manual_seed(0)) < 0.8
    return [
        ("optional_none", _sample(small)),
        ("optional_given", _sample(small, gt_counts=torch.tensor([6, 6]), anchor_valid=valid, center_eps=0.5, topk=4)),
        ("nan_padding", _sample("gt_counts_zero")),
        ("v2_3d_ignore_step8", _sample("d3_everything")),
        ("v2_ignore_no_center_test", _sample("ensure_positive_no_center_test_ignore")),
        ("g0", _sample("g0")),
        ("b0", _sample("b0")),
        ("a0", _sample("a0_empty_levels")),
    ]


SAMPLES = opcheck_samples()


def _has_nan(out) -> bool:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return any(t.is_floating_point() and bool(t.isnan().any()) for t in outs)


@pytest.mark.parametrize("sample", [c for _, c in SAMPLES], ids=[i for i, _ in SAMPLES])
@pytest.mark.parametrize("op", OPS)
def test_opcheck(op, sample):
    """Schema, autograd registration, fake kernel (shapes, dtypes, devices) and AOT dispatch all check out.

    ``test_aot_dispatch_dynamic`` compares with ``assert_close`` and NaN != NaN there, so it runs only on
    samples whose outputs hold no NaN; the compile tests below cover the others bit for bit."""
    args = op_args(op, sample, compute_reference_stages(sample))
    utils = ["test_schema", "test_autograd_registration", "test_faketensor"]
    if not _has_nan(kernel(op)(*args)):
        utils.append("test_aot_dispatch_dynamic")
    result = torch.library.opcheck(getattr(torch.ops.atss_ops, op).default, args, test_utils=utils)
    assert all(v == "SUCCESS" for v in result.values()), result


COMPILE_CASES = [
    "coco_s1_b2_g7",
    "anchor_valid_padded_image",
    "gt_counts_zero",
    "g0",
    "d3_everything",
    "ignore_regions_boxes",
    "d3_g0_ignore",
]


def _assign(anchors, levels, gt_boxes, gt_counts, anchor_valid, topk: int, center_eps, anchor_ignore, ensure_positive):
    return atss_ops.atss_assign(
        anchors,
        levels,
        gt_boxes,
        gt_counts,
        topk=topk,
        anchor_valid=anchor_valid,
        center_eps=center_eps,
        anchor_ignore=anchor_ignore,
        ensure_positive=ensure_positive,
    )


def _wrapper_args(case: dict) -> tuple:
    c = case
    return (
        c["anchors"],
        c["num_anchors_per_level"],
        c["gt_boxes"],
        c["gt_counts"],
        c["anchor_valid"],
        c["topk"],
        c["center_eps"],
        c["anchor_ignore"],
        c["ensure_positive"],
    )


@pytest.fixture(scope="module")
def compiled():
    torch._dynamo.reset()
    yield {
        "atss_ops.atss_assign": torch.compile(_assign, fullgraph=True),
        "torch.ops.atss_ops.atss_assign": torch.compile(torch.ops.atss_ops.atss_assign, fullgraph=True),
    }
    torch._dynamo.reset()


@pytest.mark.parametrize("name", COMPILE_CASES)
@pytest.mark.parametrize("which", ["atss_ops.atss_assign", "torch.ops.atss_ops.atss_assign"])
def test_compile_fullgraph_matches_eager(which, name, compiled):
    """``torch.compile(fullgraph=True)`` of the public call and of the raw op: eager's bits, on several
    shapes (so recompiled / dynamic graphs are exercised too)."""
    case = make_case(name)
    eager = reference_stages(name)["atss_assign"]
    if which == "atss_ops.atss_assign":
        out = compiled[which](*_wrapper_args(case))
        assert isinstance(out, atss_ops.AssignResult)
    else:
        out = compiled[which](*op_args("atss_assign", case))
    assert_bits_equal(tuple(out), tuple(eager), which)


def test_compile_stage_ops_fullgraph():
    """The four stage wrappers chained under one compiled graph give the fused result's bits."""

    def stages(anchors, levels, gt_boxes, gt_counts, anchor_valid, topk: int, center_eps, anchor_ignore, ensure):
        d = atss_ops.center_distance(anchors, gt_boxes, gt_counts)
        cand = atss_ops.topk_per_level(d, levels, topk, gt_counts, anchor_valid, anchor_ignore)
        cand_iou, threshold, is_positive = atss_ops.iou_statistics(anchors, gt_boxes, cand, gt_counts, center_eps)
        gt_index, iou, num_positive = atss_ops.resolve_multi_gt(
            cand, cand_iou, is_positive, anchors.shape[0], anchor_ignore, ensure
        )
        return gt_index, iou, threshold, num_positive

    for name in ("anchor_valid_random", "d3_everything"):
        torch._dynamo.reset()
        out = torch.compile(stages, fullgraph=True)(*_wrapper_args(make_case(name)))
        assert_bits_equal(out, tuple(reference_stages(name)["atss_assign"]), f"compiled stages, {name}")


# --------------------------------------------------------------------------- NaN outputs of padded batches

PADDED = "nan_padding"  # gt_counts < G: the padding slots' threshold is NaN (and center_distance's rows)
NAN_OPS = ["center_distance", "iou_statistics", "atss_assign"]  # the ops with a NaN output on a padded batch


@pytest.mark.parametrize("op", NAN_OPS)
def test_opcheck_aot_dispatch_trips_only_on_nan_equality(op):
    """Why ``test_aot_dispatch_dynamic`` is left out above for outputs with NaN: opcheck compares
    eager and AOTDispatcher outputs with ``torch.testing.assert_close``, whose ``equal_nan`` is False,
    so a NaN in both reads as a difference. The very same check with NaN equal to NaN (and no
    tolerance) passes: the traced outputs are eager's, NaN included."""
    from torch.testing._internal.optests import aot_autograd_check

    case = make_case(PADDED)
    args = op_args(op, case, compute_reference_stages(case))
    assert _has_nan(kernel(op)(*args))
    fn = getattr(torch.ops.atss_ops, op).default
    with pytest.raises(Exception, match="Outputs of the operator are different in eager-mode PyTorch vs AOTDispatcher"):
        torch.library.opcheck(fn, args, test_utils="test_aot_dispatch_dynamic")

    def nan_equal(actual, expected, **kwargs):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)

    aot_autograd_check(fn, args, {}, dynamic=True, assert_equals_fn=nan_equal, check_gradients="auto")


class _Assign(torch.nn.Module):
    """``atss_assign`` with the non-tensor arguments fixed, for ``torch.export``."""

    def __init__(self, levels, topk: int, center_eps: float):
        super().__init__()
        self.levels, self.topk, self.center_eps = list(levels), topk, center_eps

    def forward(self, anchors, gt_boxes, gt_counts, anchor_valid):
        return torch.ops.atss_ops.atss_assign(
            anchors, self.levels, gt_boxes, gt_counts, self.topk, anchor_valid, self.center_eps
        )


@pytest.mark.parametrize("name", [PADDED, "garbage_padding", "gt_counts_zero"])
def test_compile_and_export_equal_eager_bit_for_bit_on_padded_batches(name):
    """On padded batches (NaN thresholds), ``torch.compile`` and ``torch.export`` give eager's bits,
    NaN included (compared through an integer view: NaN payloads must match too)."""
    case = make_case(name)
    args = op_args("atss_assign", case)
    eager = torch.ops.atss_ops.atss_assign(*args)
    assert _has_nan(eager)
    torch._dynamo.reset()
    compiled = torch.compile(torch.ops.atss_ops.atss_assign, fullgraph=True)(*args)
    assert_bits_equal(tuple(compiled), tuple(eager), "torch.compile")

    module = _Assign(case["num_anchors_per_level"], case["topk"], case["center_eps"])
    inputs = (case["anchors"], case["gt_boxes"], case["gt_counts"], case["anchor_valid"])
    exported = torch.export.export(module, inputs)
    assert_bits_equal(tuple(exported.module()(*inputs)), tuple(eager), "torch.export")
