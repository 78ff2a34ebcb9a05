"""Kernels == reference, bit for bit, on every case of ``cases.py`` and every op.

The reference (``atss_ops.reference``) is the spec. Each stage op gets the same
intermediate inputs (the reference's outputs of the previous stage), so a
difference points at one stage. The CUDA axis compares the CUDA kernel with
both the CPU kernel and the reference; the ``emu`` axis does the same with the
CUDA kernel sources run through the host execution model (``make emu``).
"""

from __future__ import annotations

import pytest
import torch
from backends import API_DEVICES, DEVICES, kernel, move, ops_of, reference_op, tensor_device
from bits import assert_bits_equal, bits_equal
from cases import ARG_NAMES, CASE_NAMES, chain_stage_kernels, generator, make_case, op_args, reference_stages
from subprocesses import isolated_results, run_isolated

import atss_ops
from atss_ops._extension import OPS


def check_op(op: str, args: tuple, device: str, expected, layout=lambda args: args) -> None:
    """``torch.ops.atss_ops.<op>(*args)`` equals ``expected`` on the CPU and, on the ``cuda`` or
    ``emu`` backend, that backend's kernel too.

    ``layout`` rewrites the arguments once they are on their device (e.g. into non-contiguous views)."""
    cpu = kernel(op)(*layout(args))
    assert_bits_equal(cpu, expected, f"{op}: CPU kernel vs reference")
    if device != "cpu":
        out = getattr(ops_of(device), op)(*layout(move(args, tensor_device(device))))
        for t in out if isinstance(out, tuple) else (out,):
            assert t.device.type == tensor_device(device)
        assert_bits_equal(out, expected, f"{op}: {device} kernel vs reference")
        assert_bits_equal(out, cpu, f"{op}: {device} kernel vs CPU kernel")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("op", OPS)
def test_op_matches_reference(op, name, device):
    """Every op's kernel computes the reference's bits on every case (stage inputs shared)."""
    stages = reference_stages(name)
    check_op(op, op_args(op, make_case(name), stages), device, stages[op])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASE_NAMES)
def test_chained_stages_equal_fused(name, device):
    """The stage kernels chained give the fused kernel's bits (and the reference's)."""
    case = move(make_case(name), tensor_device(device))
    fused = ops_of(device).atss_assign(*op_args("atss_assign", case))
    assert_bits_equal(chain_stage_kernels(case, ops_of(device)), fused, "chained stages vs fused")
    assert_bits_equal(fused, reference_stages(name)["atss_assign"], "fused vs reference")


def public_call(op: str, args: tuple):
    """The public wrapper ``atss_ops.<op>`` called with the op's positional arguments."""
    if op == "atss_assign":
        anchors, levels, gt_boxes, gt_counts = args[:4]
        return atss_ops.atss_assign(anchors, levels, gt_boxes, gt_counts, **dict(zip(ARG_NAMES[4:], args[4:])))
    return getattr(atss_ops, op)(*args)


@pytest.mark.parametrize("device", API_DEVICES)
@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("op", OPS)
def test_public_api_matches_reference(op, name, device):
    """The public wrappers ``atss_ops.<op>`` return the reference's bits (as tuples of tensors)."""
    stages = reference_stages(name)
    out = public_call(op, move(op_args(op, make_case(name), stages), device))
    if op == "atss_assign":
        assert isinstance(out, atss_ops.AssignResult)
    assert_bits_equal(out, stages[op], f"atss_ops.{op} vs reference")


# --------------------------------------------------------------------------- layouts and argument forms


def non_contiguous(t, kind: str):
    """Same values as ``t`` in a non-contiguous layout (other tensors and Python values pass through).

    ``slice``: a column slice of a wider tensor whose other columns hold garbage
    (NaN / 7 / True), e.g. anchors ``wide[:, 2:6]``; ``transpose``: all dims
    reversed, made contiguous, reversed back; ``stride``: every other row of a
    tensor twice as long.
    """
    if not isinstance(t, torch.Tensor) or t.numel() <= 1:
        return t
    garbage = float("nan") if t.dtype.is_floating_point else (True if t.dtype == torch.bool else 7)
    if kind == "transpose" and t.dim() >= 2:
        dims = list(range(t.dim()))[::-1]
        out = t.permute(*dims).contiguous().permute(*dims)
    elif kind == "slice" and t.dim() >= 1:
        wide = torch.full((*t.shape[:-1], t.shape[-1] + 4), garbage, dtype=t.dtype, device=t.device)
        wide[..., 2 : 2 + t.shape[-1]] = t
        out = wide[..., 2 : 2 + t.shape[-1]]
    else:
        long = torch.full((2 * t.shape[0], *t.shape[1:]), garbage, dtype=t.dtype, device=t.device)
        long[::2] = t
        out = long[::2]
    assert bits_equal(out, t)
    return out


NON_CONTIGUOUS_CASES = [
    "coco_s1_b2_g7",
    "nan_padding",
    "anchor_valid_random",
    "multi_anchor_3scales",
    "empty_level_middle",
    "integer_boxes",
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["slice", "transpose", "stride"])
@pytest.mark.parametrize("name", NON_CONTIGUOUS_CASES)
@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_inputs(op, name, kind, device):
    """Non-contiguous views of every tensor argument give the same bits as contiguous ones."""
    stages = reference_stages(name)

    def layout(args):
        args = tuple(non_contiguous(a, kind) for a in args)
        assert any(isinstance(a, torch.Tensor) and not a.is_contiguous() for a in args)
        return args

    check_op(op, op_args(op, make_case(name), stages), device, stages[op], layout)


LIST_CASES = [n for n in CASE_NAMES if n not in ("b0",)]


@pytest.mark.parametrize("device", API_DEVICES)
@pytest.mark.parametrize("name", LIST_CASES)
def test_list_gt_boxes_equals_padded(name, device):
    """``gt_boxes`` as a list of ``[G_i, 4]`` tensors gives the padded form's assignment.

    The list form pads to ``max G_i`` columns: there threshold and num_positive
    equal the padded result's first columns, whose remaining columns are padding
    (NaN, 0)."""
    case = move(make_case(name), device)
    gt_boxes, counts = case["gt_boxes"], case["gt_counts"]
    B, G = gt_boxes.shape[:2]
    counts_list = counts.tolist() if counts is not None else [G] * B
    boxes = [gt_boxes[b, :n] for b, n in enumerate(counts_list)]
    kw = {k: case[k] for k in ARG_NAMES[4:]}
    from_list = atss_ops.atss_assign(case["anchors"], case["num_anchors_per_level"], boxes, **kw)
    padded = atss_ops.atss_assign(case["anchors"], case["num_anchors_per_level"], gt_boxes, counts, **kw)
    g_max = max(counts_list)
    assert_bits_equal(from_list.gt_index, padded.gt_index, "gt_index")
    assert_bits_equal(from_list.iou, padded.iou, "iou")
    assert_bits_equal(from_list.threshold, padded.threshold[:, :g_max], "threshold")
    assert_bits_equal(from_list.num_positive, padded.num_positive[:, :g_max], "num_positive")
    assert padded.threshold[:, g_max:].isnan().all() and (padded.num_positive[:, g_max:] == 0).all()


FORM_CASES = ["coco_s1_b2_g7", "gt_counts_zero", "anchor_valid_padded_image", "g0", "b0"]


def _forms(case: dict):
    """Equivalent spellings of the same call to ``atss_ops.atss_assign``."""
    B, G = case["gt_boxes"].shape[:2]
    counts = case["gt_counts"]
    full = torch.full((B,), G, dtype=torch.int64)
    yield "levels as tuple", dict(case, num_anchors_per_level=tuple(case["num_anchors_per_level"]))
    yield "levels as tensor", dict(case, num_anchors_per_level=torch.tensor(case["num_anchors_per_level"]))
    if counts is not None:
        yield "gt_counts int32", dict(case, gt_counts=counts.int())
    else:
        yield "gt_counts all G", dict(case, gt_counts=full)
    if case["anchor_valid"] is None:
        yield (
            "anchor_valid all True",
            dict(case, anchor_valid=torch.ones(B, case["anchors"].shape[0], dtype=torch.bool)),
        )
    if case["anchor_ignore"] is None:
        yield (
            "anchor_ignore all False",
            dict(case, anchor_ignore=torch.zeros(B, case["anchors"].shape[0], dtype=torch.bool)),
        )


@pytest.mark.parametrize("name", FORM_CASES)
def test_equivalent_argument_forms(name):
    """Tuple / tensor level sizes, int32 or all-G ``gt_counts`` and an all-True mask change nothing."""
    case = make_case(name)
    expected = reference_stages(name)["atss_assign"]
    for what, form in _forms(case):
        out = atss_ops.atss_assign(
            form["anchors"],
            form["num_anchors_per_level"],
            form["gt_boxes"],
            form["gt_counts"],
            **{k: form[k] for k in ARG_NAMES[4:]},
        )
        assert_bits_equal(out, expected, what)


# --------------------------------------------------------------------------- adversarial stage inputs
# Stage ops are public: they must agree on inputs the pipeline never produces.


def arbitrary_distances(kind: str, seed: int = 0):
    """``[B, G, A]`` distances outside what ``center_distance`` yields, with level sizes."""
    g = generator(seed)
    # Levels shorter and longer than the kernels' 16-anchor chunks, and empty ones.
    B, G, levels = 2, 5, [13, 0, 70, 33, 1, 16]
    A = sum(levels)
    if kind == "integer_ties":
        d = torch.randint(0, 4, (B, G, A), generator=g).float()
    elif kind == "nan_inf":
        d = torch.randint(0, 5, (B, G, A), generator=g).float()
        d[torch.rand(B, G, A, generator=g) < 0.25] = float("nan")
        d[torch.rand(B, G, A, generator=g) < 0.15] = float("inf")
    elif kind == "negative_signed_zero":
        d = torch.randint(-3, 3, (B, G, A), generator=g).float()
        zeros = torch.rand(B, G, A, generator=g) < 0.4
        d[zeros] = torch.where(torch.rand(int(zeros.sum()), generator=g) < 0.5, -0.0, 0.0)
        d[0, 0, :4] = float("-inf")
    elif kind == "all_nan":
        d = torch.full((B, G, A), float("nan"))
    elif kind == "random":
        d = torch.rand(B, G, A, generator=g) * 1e3
    else:
        raise KeyError(kind)
    return d, levels


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("masks", ["none", "counts", "valid", "both"])
@pytest.mark.parametrize("kind", ["integer_ties", "nan_inf", "negative_signed_zero", "all_nan", "random"])
def test_topk_per_level_arbitrary_distances(kind, masks, device):
    """Ordering ``(d, index)`` with NaN last, -0 == +0 and negative keys, like a stable sort."""
    d, levels = arbitrary_distances(kind)
    B, G, A = d.shape
    counts = torch.tensor([G, 2]) if masks in ("counts", "both") else None
    valid = (torch.rand(B, A, generator=generator(1)) < 0.7) if masks in ("valid", "both") else None
    for topk in (1, 3, 20):
        args = (d, levels, topk, counts, valid)
        check_op("topk_per_level", args, device, reference_op("topk_per_level")(*args))


def bounded_selection_distances(kind: str, seed: int = 0):
    """``[B, G, A]`` distances on levels of 16 * k - 1 to 16 * k + 1 anchors and larger (topk k = 9),
    aimed at the CPU selection's bound (the k-th smallest of the 16-anchor chunks' minima): every
    chunk's minimum tied with the bound, the smallest distances on unusable anchors or NaN, chunks
    of +inf only, a bound of -inf."""
    g = generator(seed)
    B, G, levels = 2, 3, [16 * 9 - 1, 16 * 9, 16 * 9 + 1, 16 * 9 * 3 + 5]
    A = sum(levels)
    if kind == "chunk_minima_tied":
        d = torch.randint(1, 3, (B, G, A), generator=g).float()
        d[..., ::16] = 1.0  # every chunk's minimum equals the bound, and so do half the others
    elif kind == "few_finite_chunks":
        d = torch.full((B, G, A), float("inf"))
        finite = torch.rand(B, G, A, generator=g) < 0.03  # about 0.5 finite anchors per chunk
        d[finite] = torch.randint(0, 3, (int(finite.sum()),), generator=g).float()
    elif kind == "nan_minima":
        d = torch.rand(B, G, A, generator=g) * 10
        d[..., 1::16] = float("nan")
        d[..., 5::16] = float("-inf") * (torch.rand(B, G, A, generator=g)[..., 5::16] < 0.2)
    elif kind == "raster":  # a GT centre's squared distances, rows scanned towards it
        y, x = torch.arange(A) // 40, torch.arange(A) % 40  # ties: columns 20 - j and 20 + j
        d = ((y - 9.5) ** 2 + (x - 20.0) ** 2).float().expand(B, G, A).clone()
        d[1, 1] = d[1, 1].flip(-1)
    else:
        raise KeyError(kind)
    return d, levels


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("masks", ["none", "valid", "valid_nearest"])
@pytest.mark.parametrize("kind", ["chunk_minima_tied", "few_finite_chunks", "nan_minima", "raster"])
def test_topk_per_level_bounded_selection(kind, masks, device):
    """The selection with a bound computed from chunk minima gives the same ``(d, index)`` order as a
    full sort, whatever the minima are tied with and whichever anchors are unusable."""
    d, levels = bounded_selection_distances(kind)
    B, G, A = d.shape
    valid = None
    if masks == "valid":
        valid = torch.rand(B, A, generator=generator(2)) < 0.6
    elif masks == "valid_nearest":  # the nearest anchors of each row unusable: no chunk minimum is usable
        valid = torch.ones(B, A, dtype=torch.bool)
        valid[:, ::16] = False
        valid[:, 1::16] = False
    for topk in (1, 9, 30):
        args = (d, levels, topk, None, valid)
        check_op("topk_per_level", args, device, reference_op("topk_per_level")(*args))


def arbitrary_candidates(seed: int, B=2, G=4, C=7, A=12):
    """Candidate lists in no particular order, with -1 slots and repeated anchors."""
    g = generator(seed)
    cand = torch.randint(-1, A, (B, G, C), generator=g)
    cand[0, 0, :3] = 5  # one anchor listed three times by one GT
    return cand


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_iou_statistics_arbitrary_candidates(seed, device):
    """Unordered candidates, empty slots and repeats: same IoUs, thresholds and positives."""
    g = generator(100 + seed)
    A = 12
    xy = torch.randint(0, 20, (A, 2), generator=g).float()
    anchors = torch.cat([xy, xy + torch.randint(0, 8, (A, 2), generator=g).float()], -1)
    gxy = torch.randint(0, 20, (2, 4, 2), generator=g).float()
    gt = torch.cat([gxy, gxy + torch.randint(0, 10, (2, 4, 2), generator=g).float()], -1)
    cand = arbitrary_candidates(seed, A=A)
    for counts in (None, torch.tensor([4, 1])):
        for eps in (0.01, 0.0, None):
            args = (anchors, gt, cand, counts, eps)
            check_op("iou_statistics", args, device, reference_op("iou_statistics")(*args))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(6))
def test_resolve_multi_gt_arbitrary_inputs(seed, device):
    """IoU ties between GTs (lowest index wins), NaN / negative IoUs (never claim), repeats, -1 slots;
    with ignored anchors (listed as candidates or not) and with step 8."""
    g = generator(200 + seed)
    A = 12
    cand = arbitrary_candidates(seed, A=A)
    iou = torch.randint(0, 4, cand.shape, generator=g).float() / 4  # many exact ties
    r = torch.rand(cand.shape, generator=g)
    iou[r < 0.1] = float("nan")
    iou[(r >= 0.1) & (r < 0.2)] = -0.5
    is_positive = torch.rand(cand.shape, generator=g) < 0.6
    for num_anchors in (A, A + 5):
        ignore = torch.rand(cand.shape[0], num_anchors, generator=g) < 0.25
        for anchor_ignore in (None, ignore):
            for ensure_positive in (False, True):
                args = (cand, iou, is_positive, num_anchors, anchor_ignore, ensure_positive)
                check_op("resolve_multi_gt", args, device, reference_op("resolve_multi_gt")(*args))


def test_bits_equal_helper():
    """The comparison itself: NaN == NaN, -0 != +0, dtype and shape count."""
    nan, z = float("nan"), torch.tensor([0.0])
    assert bits_equal(torch.tensor([nan, 1.0]), torch.tensor([nan, 1.0]))
    assert not bits_equal(z, -z)
    assert not bits_equal(z, z.double())
    assert not bits_equal(z, z[None])
    assert not bits_equal(torch.tensor([1, 2]), torch.tensor([1, 3]))
    assert bits_equal(torch.tensor([True]), torch.tensor([True]))


HUGE_TOPK_SETUP = """
from bits import assert_bits_equal
from cases import make_case, op_args, compute_reference_stages
c = make_case("level_smaller_than_topk")
stages = compute_reference_stages(c)
def check(op, topk):
    args = op_args(op, dict(c, topk=topk), stages)
    assert_bits_equal(getattr(torch.ops.atss_ops, op)(*args), getattr(reference, op)(*args), op)
    return "same bits"
"""


def test_topk_far_beyond_anchor_count():
    """``topk`` is any int >= 1: values far above A (up to 2**62) select every valid anchor, as in the
    reference, without allocating memory in proportion to topk. Run in a child process whose address
    space is capped, so a kernel that allocates O(topk) fails fast instead of exhausting the machine."""
    calls = {
        f"{op} topk={topk}": f"check({op!r}, {topk})"
        for op in ("topk_per_level", "atss_assign")
        for topk in (10**6, 2**40, 2**62)
    }
    results = isolated_results(run_isolated(HUGE_TOPK_SETUP, calls), calls)
    failures = [f"{label} -> {r}" for label, r in results.items() if not r.startswith("ok")]
    assert not failures, "\n".join(failures)
