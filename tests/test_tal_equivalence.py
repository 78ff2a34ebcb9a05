"""The CPU kernel of ``atss_ops::tal_assign`` == the TAL reference, bit for bit, on every case of
``cases_tal.py``; the public call, non-contiguous inputs, meta tensors, ``opcheck``,
``torch.compile(fullgraph=True)`` and the error messages (kernel and reference word for word)."""

from __future__ import annotations

import warnings

import pytest
import torch
from backends import raw_op_error
from bits import assert_bits_equal
from cases_tal import TAL_ARG_NAMES, TAL_CASE_NAMES, make_tal_case, tal_args
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from subprocesses import isolated_results, run_isolated
from test_tal_reference import BAD, op_call_args, small_call

import atss_ops
from atss_ops import reference_tal

pytestmark = pytest.mark.skipif(not atss_ops.has_kernel("tal_assign", "cpu"), reason="needs the compiled CPU kernel")

OPTION_NAMES = TAL_ARG_NAMES[6:]


@pytest.fixture(scope="module")
def expected():
    """The reference's result of each case, computed once."""
    return {name: reference_tal.tal_assign(*tal_args(make_tal_case(name))) for name in TAL_CASE_NAMES}


@pytest.mark.parametrize("name", TAL_CASE_NAMES)
def test_kernel_matches_reference(name, expected):
    out = torch.ops.atss_ops.tal_assign(*tal_args(make_tal_case(name)))
    assert_bits_equal(tuple(out), tuple(expected[name]), f"tal_assign kernel vs reference, {name}")


def public_call(case: dict):
    options = {k: case[k] for k in OPTION_NAMES if k != "ciou"}
    options["overlap"] = "ciou" if case["ciou"] else "iou"
    names = ("pred_scores", "pred_boxes", "anchor_points", "gt_boxes", "gt_labels", "gt_counts")
    return atss_ops.tal_assign(*(case[k] for k in names), **options)


@pytest.mark.parametrize("name", TAL_CASE_NAMES)
def test_public_call_matches_reference(name, expected):
    out = public_call(make_tal_case(name))
    assert isinstance(out, atss_ops.TalResult)
    assert_bits_equal(out, expected[name], f"atss_ops.tal_assign vs reference, {name}")


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("name", ["crowded", "random_b3_g20_min_side", "topk2_3"])
def test_thread_count_changes_nothing(name, threads, expected, restore_threads):
    torch.set_num_threads(threads)
    out = torch.ops.atss_ops.tal_assign(*tal_args(make_tal_case(name)))
    assert_bits_equal(tuple(out), tuple(expected[name]), f"{threads} threads")


def strided(t):
    """The same values in a non-contiguous layout (every other row of a tensor twice as long)."""
    if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] <= 1:
        return t
    long = torch.zeros((2 * t.shape[0], *t.shape[1:]), dtype=t.dtype)
    long[::2] = t
    return long[::2]


@pytest.mark.parametrize("name", ["random_b2_g7", "duplicate_gts", "scattered_points", "empty_images"])
def test_non_contiguous_inputs(name, expected):
    case = make_tal_case(name)
    args = [strided(a) for a in tal_args(case)]
    args[0] = case["pred_scores"].transpose(1, 2).contiguous().transpose(1, 2)  # [B, A, C] with C outermost
    assert not args[0].is_contiguous() and not args[1].is_contiguous()
    assert_bits_equal(tuple(torch.ops.atss_ops.tal_assign(*args)), tuple(expected[name]), "non-contiguous")


def test_float64_and_int32_inputs_are_converted(expected):
    case = make_tal_case("random_b2_g7")
    for k in ("pred_scores", "pred_boxes", "anchor_points", "gt_boxes"):
        case[k] = case[k].double()
    case["gt_labels"] = case["gt_labels"].clamp(min=0).int()
    reference = reference_tal.tal_assign(*tal_args(make_tal_case("random_b2_g7")))
    assert_bits_equal(public_call(case), reference, "float64 / int32 inputs")


@pytest.mark.parametrize("name", ["random_b2_g7", "topk2_3", "g0", "b0", "a0"])
def test_meta_inputs_give_the_real_shapes(name, expected):
    case = make_tal_case(name)
    meta = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = public_call(meta)
    assert [(tuple(t.shape), t.dtype, t.device.type) for t in out] == [
        (tuple(t.shape), t.dtype, "meta") for t in expected[name]
    ]


OPCHECK_CASES = ["random_b2_g7", "topk2_3", "random_iou_alpha1_topk13", "empty_images", "g0", "b0", "a0"]


@pytest.mark.parametrize("name", OPCHECK_CASES)
def test_opcheck(name):
    """Schema, autograd registration, fake kernel and AOT dispatch (no NaN outputs: assert_close is fine)."""
    args = tal_args(make_tal_case(name))
    utils = ["test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"]
    result = torch.library.opcheck(torch.ops.atss_ops.tal_assign.default, args, test_utils=utils)
    assert all(v == "SUCCESS" for v in result.values()), result


def _public(pred_scores, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_counts, topk: int, min_side, topk2):
    return atss_ops.tal_assign(
        pred_scores,
        pred_boxes,
        anchor_points,
        gt_boxes,
        gt_labels,
        gt_counts,
        topk=topk,
        min_side=min_side,
        topk2=topk2,
    )


@pytest.mark.parametrize("which", ["atss_ops.tal_assign", "torch.ops.atss_ops.tal_assign"])
def test_compile_fullgraph_matches_eager(which, expected):
    torch._dynamo.reset()
    fn = torch.compile(_public if which == "atss_ops.tal_assign" else torch.ops.atss_ops.tal_assign, fullgraph=True)
    for name in ("random_b2_g7", "topk2_3", "empty_images", "g0"):
        case = make_tal_case(name)
        if which == "atss_ops.tal_assign":
            names = ("pred_scores", "pred_boxes", "anchor_points", "gt_boxes", "gt_labels", "gt_counts")
            out = fn(*(case[k] for k in names), case["topk"], case["min_side"], case["topk2"])
            assert isinstance(out, atss_ops.TalResult)
        else:
            out = fn(*tal_args(case))
        assert_bits_equal(tuple(out), tuple(expected[name]), f"compiled {which}, {name}")
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(BAD))
def test_error_messages_equal_the_reference(name):
    """Every bad input of test_tal_reference: the kernel's message is the reference's, word for word."""
    change, options, _ = BAD[name]
    args = op_call_args(change(small_call()), options)
    with pytest.raises(ValueError) as ref:
        reference_tal.tal_assign(*args)
    with pytest.raises(raw_op_error()) as kernel:
        torch.ops.atss_ops.tal_assign(*args)
    assert str(kernel.value).startswith(str(ref.value)), (str(kernel.value), str(ref.value))
    if "] = " in str(ref.value):
        return  # a value check: it reads data, so meta tensors pass it
    with pytest.raises(ValueError) as meta:  # the fake kernel runs the structural checks
        torch.ops.atss_ops.tal_assign(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])
    assert str(meta.value) == str(ref.value)


MEMORY_SETUP = """
from atss_ops.testing import anchor_points
B, G, C = 8, 8000, 3
points = anchor_points(1280, (4, 8, 16, 32))  # A = 136000: a [B, G, A] float32 tensor takes 35 GB
A = points.shape[0]
g = torch.Generator().manual_seed(0)
boxes = torch.cat([points - 3, points + 3], -1).expand(B, A, 4).contiguous()
scores = torch.rand(B, A, C, generator=g)
xy = torch.rand(B, G, 2, generator=g) * 1200
gt = torch.cat([xy, xy + 30], -1)
labels = torch.randint(0, C, (B, G), generator=g)
def run():
    out = torch.ops.atss_ops.tal_assign(scores, boxes, points, gt, labels, None, 10, 0.5, 6.0, True, None, None, 1e-9)
    return int((out[0] >= 0).sum())
"""


def test_memory_is_not_dense():
    """A batch whose [B, G, A] float tensor would take 35 GB runs in a process capped at 8 GiB of address
    space: the kernel holds O(B*A + B*G*topk)."""
    results = isolated_results(run_isolated(MEMORY_SETUP, {"tal_assign": "run()"}, memory_gb=8), ["tal_assign"])
    assert results["tal_assign"].startswith("ok "), results
    assert int(results["tal_assign"][3:]) > 8 * 8000  # most GTs got picks


# --------------------------------------------------------------------------- property test


@st.composite
def tal_inputs(draw):
    """Small batches on a coarse lattice (so ties of every kind are common): points, predicted and GT boxes
    in half-units, scores in quarters, any options."""
    B, G, A, C = draw(st.integers(0, 3)), draw(st.integers(0, 6)), draw(st.integers(0, 40)), draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    half = lambda *shape, hi=24: torch.randint(0, hi, shape, generator=g).float() / 2  # noqa: E731
    points = half(A, 2)
    lo, size = half(B, A, 2), half(B, A, 2, hi=12)
    pred_boxes = torch.cat([lo, lo + size], dim=-1)
    glo, gsize = half(B, G, 2), half(B, G, 2, hi=16)
    gt_boxes = torch.cat([glo, glo + gsize], dim=-1)
    scores = torch.randint(0, 5, (B, A, C), generator=g).float() / 4
    labels = torch.randint(0, C, (B, G), generator=g)
    counts = torch.randint(0, G + 1, (B,), generator=g) if draw(st.booleans()) else None
    return dict(
        pred_scores=scores,
        pred_boxes=pred_boxes,
        anchor_points=points,
        gt_boxes=gt_boxes,
        gt_labels=labels,
        gt_counts=counts,
        topk=draw(st.integers(1, 6)),
        alpha=draw(st.sampled_from([0.0, 0.5, 1.0, 1.5])),
        beta=draw(st.sampled_from([0.0, 1.0, 2.5, 6.0])),
        ciou=draw(st.booleans()),
        min_side=draw(st.sampled_from([None, 1.0, 4.0])),
        topk2=draw(st.sampled_from([None, 1, 3, 8])),
        eps=draw(st.sampled_from([0.0, 1e-9, 0.5])),
    )


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(tal_inputs())
def test_kernel_matches_reference_on_random_lattices(case):
    args = tal_args(case)
    assert_bits_equal(tuple(torch.ops.atss_ops.tal_assign(*args)), tuple(reference_tal.tal_assign(*args)), "lattice")


def test_without_a_kernel_the_reference_serves_with_a_warning(monkeypatch, expected):
    """A library built before the TAL op: the public call warns once and returns the reference's bits."""
    from atss_ops import _extension

    monkeypatch.setattr(_extension, "_KERNELS", {(op, "cpu"): True for op in _extension.OPS})
    monkeypatch.setattr(_extension, "_warned_fallback", set())
    with pytest.warns(UserWarning, match="tal_assign has no cpu kernel in this build of the library"):
        out = public_call(make_tal_case("crowded"))
    assert_bits_equal(out, expected["crowded"], "fallback")
