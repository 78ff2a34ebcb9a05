"""The CUDA kernels of ``tal_assign`` (csrc/cuda/tal_assign.cu) == the TAL reference, bit for bit.

Each test runs on two backends: ``emu`` (the kernel sources through the host execution model,
``torch.ops.atss_ops_emu.tal_assign`` on CPU tensors; ``make emu``) and ``cuda``
(``torch.ops.atss_ops.tal_assign`` on CUDA tensors; skipped without a GPU). Here: every case of
``cases_tal.py``; capped grids (grid-stride loops: one warp serving many GT rows, one thread many
anchors); other block orders and concurrency; top-k lists longer than a warp whose insertions move
the whole list (several groups of 32 keys); culling at the exact borders of the blocks of 32 points;
random inputs (hypothesis); non-contiguous inputs; and the CUDA path on input the CPU kernel
rejects, which it takes without a value check (no host sync): labels outside ``[0, C)`` score 0
(never an out-of-bounds read) and ``gt_counts`` outside ``[0, G]`` are clamped.
"""

from __future__ import annotations

import functools

import pytest
import torch
from backends import emu_available, move, ops_of, tensor_device
from bits import assert_bits_equal, bits_equal
from cases_tal import TAL_CASE_NAMES, make_tal_case, tal_args
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import atss_ops
from atss_ops import reference_tal

BACKENDS = [pytest.param("cuda", marks=pytest.mark.cuda), pytest.param("emu", marks=pytest.mark.emu)]


def run(backend: str, args: tuple) -> tuple:
    """``tal_assign`` of the backend on its device, the outputs on the CPU."""
    if backend == "emu":
        assert emu_available()
    out = ops_of(backend).tal_assign(*move(tuple(args), tensor_device(backend)))
    assert all(t.device.type == tensor_device(backend) for t in out)
    return tuple(t.cpu() for t in out)


@functools.lru_cache(maxsize=None)
def expected(name: str) -> tuple:
    """The reference's result of a case of cases_tal.py (computed once)."""
    return tuple(reference_tal.tal_assign(*tal_args(make_tal_case(name))))


@pytest.mark.cuda
def test_cuda_kernel_is_registered():
    assert atss_ops.has_kernel("tal_assign", "cuda")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", TAL_CASE_NAMES)
def test_case_matches_reference(name, backend):
    assert_bits_equal(run(backend, tal_args(make_tal_case(name))), expected(name), f"{backend} kernel, {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("max_blocks", [1, 3])
@pytest.mark.parametrize("name", ["crowded", "topk2_3", "huge_topk", "random_b3_g20_min_side"])
def test_capped_grid(name, max_blocks, backend, monkeypatch):
    """ATSS_MAX_BLOCKS: every grid-stride loop runs several times; a warp's second GT row starts a new
    list on the state (length, floor) the first row left in its registers only if the kernel is wrong."""
    monkeypatch.setenv("ATSS_MAX_BLOCKS", str(max_blocks))
    assert_bits_equal(run(backend, tal_args(make_tal_case(name))), expected(name), f"at most {max_blocks} blocks")


@pytest.mark.emu
@pytest.mark.parametrize("seed, concurrency", [(1, 1), (2, 3), (3, 8)])
def test_other_block_orders_and_concurrency(seed, concurrency, monkeypatch):
    """The claims (atomicMax) and pick counts (atomicAdd) of GT rows in other blocks, in other orders and
    more of them at once: the same bits."""
    monkeypatch.setenv("ATSS_EMU_SEED", str(seed))
    monkeypatch.setenv("ATSS_EMU_CONCURRENCY", str(concurrency))
    assert_bits_equal(run("emu", tal_args(make_tal_case("crowded"))), expected("crowded"), f"seed {seed}")


def inside_and_metric(case: dict):
    inside = reference_tal.inside_mask(
        case["anchor_points"], case["gt_boxes"], case["gt_counts"], case["min_side"], case["eps"]
    )
    names = ("pred_scores", "pred_boxes", "gt_boxes", "gt_labels")
    _, metric = reference_tal.box_metrics(*(case[k] for k in names), inside, case["alpha"], case["beta"], case["ciou"])
    return inside, metric


@pytest.mark.parametrize("name", ["rising_metrics_topk70", "rising_metrics_topk70_topk2_40"])
def test_rising_metrics_put_every_key_at_the_head_of_a_full_list(name):
    """What the rising-metrics cases are for (test_case_matches_reference runs them): rows holding far more
    than topk + 32 inside anchors whose metrics rise strictly with the anchor index, so each key offered in
    index order goes to place 0 of a list of more than 32 keys, moving it down by several groups of 32,
    the last key falling off; with topk2 = 40 the second list fills the same way."""
    case = make_tal_case(name)
    inside, metric = inside_and_metric(case)
    rising = 0
    for b, g in inside.sum(-1).gt(case["topk"] + 2 * 32).nonzero().tolist():
        m = metric[b, g][inside[b, g]]
        rising += bool((m[1:] > m[:-1]).all())
    assert rising >= 6
    if case["topk2"] is not None:
        assert expected(name)[3].eq(case["topk2"]).sum() >= 4  # full second lists


@pytest.mark.parametrize("name", ["points_on_edges", "points_on_edges_eps_0", "tiled_points_block_borders"])
def test_edge_cases_hold_points_on_borders(name):
    """What the edge cases are for (test_case_matches_reference runs them): points exactly on GT sides,
    several blocks of 32 points per GT row, and more blocks than one ballot of 32 covers."""
    case = make_tal_case(name)
    points, gt = case["anchor_points"], case["gt_boxes"]
    px, py = points[:, 0], points[:, 1]
    x1, y1, x2, y2 = (gt[..., i, None] for i in range(4))
    on_side = ((px == x1) | (px == x2)) & (py > y1) & (py < y2) | ((py == y1) | (py == y2)) & (px > x1) & (px < x2)
    assert on_side.sum() >= 20
    inside, _ = inside_and_metric(case)
    A = points.shape[0]
    assert A > 32 * 32
    padded = torch.nn.functional.pad(inside, (0, -A % 32))
    blocks_per_row = padded.view(*inside.shape[:2], -1, 32).any(-1).sum(-1)
    assert blocks_per_row.max() > 4


# --------------------------------------------------------------------------- random inputs


@st.composite
def tal_inputs(draw):
    """Small batches on a quarter-unit lattice (points, duplicates among them, on GT sides; boxes; ties),
    sometimes more than 32 x 32 points (several ballots of blocks), any options."""
    B, G, C = draw(st.integers(1, 2)), draw(st.integers(0, 5)), draw(st.integers(1, 3))
    A = draw(st.one_of(st.integers(1, 80), st.integers(1025, 1100)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    quarter = lambda *shape, hi=64: torch.randint(0, hi, shape, generator=g).float() / 4  # noqa: E731
    points = quarter(A, 2)
    if draw(st.booleans()):  # duplicated points
        points[A // 2 :] = points[: A - A // 2].clone()
    lo, size = quarter(B, A, 2), quarter(B, A, 2, hi=24)
    glo, gsize = quarter(B, G, 2), quarter(B, G, 2, hi=40)
    if draw(st.booleans()):
        scores = torch.randint(0, 5, (B, A, C), generator=g).float() / 4  # ties
    else:
        scores = torch.rand(B, A, C, generator=g)
    return dict(
        pred_scores=scores,
        pred_boxes=torch.cat([lo, lo + size], dim=-1),
        anchor_points=points,
        gt_boxes=torch.cat([glo, glo + gsize], dim=-1),
        gt_labels=torch.randint(0, C, (B, G), generator=g),
        gt_counts=torch.randint(0, G + 1, (B,), generator=g) if draw(st.booleans()) else None,
        topk=draw(st.integers(1, 15)),
        alpha=draw(st.sampled_from([0.5, 1.0])),
        beta=draw(st.sampled_from([6.0, 1.0])),
        ciou=draw(st.booleans()),
        min_side=draw(st.sampled_from([None, 2.0])),
        topk2=draw(st.one_of(st.none(), st.integers(1, 5))),
        eps=draw(st.sampled_from([0.0, 1e-9])),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=tal_inputs())
def test_random_inputs_match_reference(backend, case):
    args = tal_args(case)
    assert_bits_equal(run(backend, args), tuple(reference_tal.tal_assign(*args)), f"{backend} kernel, random")


# --------------------------------------------------------------------------- layouts


def non_contiguous(t, kind: str):
    """The same values in a non-contiguous layout whose gaps hold garbage (NaN, 7): ``slice``, a slice of
    the last dimension of a wider tensor; ``transpose``, every dimension reversed in memory; ``stride``,
    every other row of a tensor twice as long. Python values and ``None`` pass through."""
    if not isinstance(t, torch.Tensor) or t.numel() <= 1:
        return t
    garbage = float("nan") if t.dtype.is_floating_point else 7
    if kind == "transpose" and t.dim() >= 2:
        dims = list(range(t.dim()))[::-1]
        out = t.permute(*dims).contiguous().permute(*dims)
    elif kind == "slice" and t.dim() >= 2:
        wide = torch.full((*t.shape[:-1], t.shape[-1] + 3), garbage, dtype=t.dtype, device=t.device)
        wide[..., 1 : 1 + t.shape[-1]] = t
        out = wide[..., 1 : 1 + t.shape[-1]]
    else:
        long = torch.full((2 * t.shape[0], *t.shape[1:]), garbage, dtype=t.dtype, device=t.device)
        long[::2] = t
        out = long[::2]
    assert bits_equal(out, t) and not out.is_contiguous()
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["slice", "transpose", "stride"])
@pytest.mark.parametrize("name", ["random_b2_g7", "topk2_3"])
def test_non_contiguous_inputs(name, kind, backend):
    args = tuple(non_contiguous(a, kind) for a in move(tal_args(make_tal_case(name)), tensor_device(backend)))
    assert_bits_equal(run(backend, args), expected(name), f"{kind} layout")  # (moving keeps the layouts)


# --------------------------------------------------------------------------- input the CPU kernel rejects


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["duplicate_gts", "topk2_3", "crowded"])
def test_labels_outside_the_classes_score_zero(name, backend):
    """A valid GT's label outside [0, C) (negative, C, far above, beyond 32 bits): no value check on CUDA,
    no out-of-bounds read, and the score is 0: the reference's bits on the same input with an extra
    all-zero class C taking those labels."""
    case = make_tal_case(name)
    labels, C = case["gt_labels"].clone(), case["pred_scores"].shape[2]
    counts = case["gt_counts"]
    bad = [-1, C, C + 1000, -(2**40), 2**40]
    where = []
    for b in range(labels.shape[0]):
        valid = labels.shape[1] if counts is None else int(counts[b])
        where += [(b, g) for g in range(0, valid, 2)]
    for i, (b, g) in enumerate(where):
        labels[b, g] = bad[i % len(bad)]
    assert len(where) >= 4
    out = run(backend, tal_args(dict(case, gt_labels=labels)))
    zero_class = torch.cat([case["pred_scores"], torch.zeros_like(case["pred_scores"][..., :1])], dim=-1)
    valid_labels = labels.clone()
    for b, g in where:
        valid_labels[b, g] = C
    reference = reference_tal.tal_assign(*tal_args(dict(case, pred_scores=zero_class, gt_labels=valid_labels)))
    assert_bits_equal(out, tuple(reference), "labels outside [0, C)")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name, counts",
    [("crowded", [63, -2]), ("duplicate_gts", [-1, 2**40]), ("duplicate_gts", [-(2**40), 8]), ("crowded", [0, 60])],
)
def test_gt_counts_outside_zero_to_g_are_clamped(name, counts, backend):
    """gt_counts above G or negative (no value check on CUDA): clamped to [0, G]."""
    case = make_tal_case(name)
    G = case["gt_boxes"].shape[1]
    counts = torch.tensor(counts)
    out = run(backend, tal_args(dict(case, gt_counts=counts)))
    reference = reference_tal.tal_assign(*tal_args(dict(case, gt_counts=counts.clamp(0, G))))
    assert_bits_equal(out, tuple(reference), f"gt_counts {counts.tolist()}")


# --------------------------------------------------------------------------- the public call on a GPU


def public_call(case: dict, **extra):
    names = ("pred_scores", "pred_boxes", "anchor_points", "gt_boxes", "gt_labels", "gt_counts")
    options = {k: case[k] for k in ("topk", "alpha", "beta", "min_side", "topk2", "eps")}
    options["overlap"] = "ciou" if case["ciou"] else "iou"
    return atss_ops.tal_assign(*(case[k] for k in names), **options, **extra)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["crowded", "topk2_3", "random_b3_g20_min_side"])
def test_public_call_uses_the_kernel_without_warning(name, recwarn):
    """atss_ops.tal_assign on CUDA tensors: the CUDA kernel serves (no fallback warning), the reference's bits."""
    out = public_call(move(make_tal_case(name), "cuda"))
    assert all(t.is_cuda for t in out)
    assert not [w for w in recwarn if "reference" in str(w.message)]
    assert_bits_equal(tuple(t.cpu() for t in out), expected(name), f"public call on CUDA, {name}")


@pytest.mark.cuda
def test_check_inputs_on_cuda():
    """check_inputs=True runs the value checks on CUDA (the CPU kernel's words); without it a bad label
    scores 0 and nothing is raised."""
    case = move(make_tal_case("duplicate_gts"), "cuda")
    labels = case["gt_labels"].clone()
    labels[0, 0] = 99
    bad = dict(case, gt_labels=labels)
    with pytest.raises(ValueError, match=r"gt_labels\[0, 0\] = 99 is out of range"):
        public_call(bad, check_inputs=True)
    public_call(bad)  # no check, no error
    torch.cuda.synchronize()


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["crowded", "topk2_3"])
def test_opcheck_on_cuda(name):
    args = move(tal_args(make_tal_case(name)), "cuda")
    utils = ["test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"]
    result = torch.library.opcheck(torch.ops.atss_ops.tal_assign.default, args, test_utils=utils)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.cuda
def test_cuda_graph_capture_and_replay():
    """No host sync and no data-dependent allocation: the call captures into a CUDA graph, and a replay
    on other inputs copied into the captured tensors gives those inputs' bits."""
    from cases_tal import TAL_DEFAULTS, random_case

    cases = [make_tal_case("random_b2_g7"), dict(TAL_DEFAULTS, **random_case(99))]
    args = [move(tal_args(c), "cuda") for c in cases]
    assert all(a.shape == b.shape for a, b in zip(*args) if isinstance(a, torch.Tensor))
    static = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args[0])
    op = torch.ops.atss_ops.tal_assign
    side = torch.cuda.Stream()  # warm-up on a side stream, as torch.cuda.graphs recommends
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        op(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op(*static)
    for case, new in zip(reversed(cases), reversed(args)):
        for s, a in zip(static, new):
            if isinstance(s, torch.Tensor):
                s.copy_(a)
        graph.replay()
        torch.cuda.synchronize()
        want = tuple(reference_tal.tal_assign(*tal_args(case)))
        assert_bits_equal(tuple(t.cpu() for t in out), want, "graph replay")
