"""CUDA-specific tests of the atss_ops kernels (marker ``cuda``: skipped cleanly without a GPU).

test_equivalence.py already runs every op on every case of ``cases.py`` on CUDA
(CUDA == CPU kernel == reference, bit for bit). Here: what only the GPU path
has: CUDA graph capture and replay, ``torch.compile(fullgraph=True)``, run-to-run
determinism, the misaligned-anchors load path, inputs on different devices,
out-of-range ``gt_counts`` / candidate indices without value checks (clamped,
never a crash), no host sync, no ``[B, G, A]`` allocation, and large random
batches that exercise every selection path of the kernels (several chunks per
level, several passes per chunk, 1 to 32-key lists, many tiles).
"""

from __future__ import annotations

import pytest
import torch
from backends import kernel, move, ops_of, tensor_device
from bits import assert_bits_equal
from cases import CASE_NAMES, compute_stages, generator, make_case, op_args, random_case, reference_stages

import atss_ops
from atss_ops import reference
from atss_ops._extension import OPS

# The CUDA kernels on a GPU, and (for the tests that need no real device) the
# same kernel sources run through the host execution model (``make emu``).
BACKENDS = [pytest.param("cuda", marks=pytest.mark.cuda), pytest.param("emu", marks=pytest.mark.emu)]


def fused(case: dict):
    return kernel("atss_assign")(*op_args("atss_assign", case))


# --------------------------------------------------------------------------- large random batches

# (seed, B, G, height, width, strides, topk, counts, valid, scales): each hits other kernel paths.
LARGE = {
    # One 8-row tile per image, several 1024..8192-anchor chunks on level 0, K = 9.
    "coco_b4_g30": (1, 4, 30, 800, 1344, (8, 16, 32, 64, 128), 9, True, None, None),
    # anchor_valid, K = 16 (topk 13), rows not a multiple of 8.
    "coco_b3_g13_valid_topk13": (2, 3, 13, 512, 768, (8, 16, 32, 64), 13, False, 0.7, None),
    # K = 4 (topk 3) and K = 32 with two passes per chunk (topk 40) on many tiles.
    "crowd_b2_g300_topk3": (3, 2, 300, 640, 640, (8, 16, 32), 3, True, None, None),
    "crowd_b2_g150_topk40": (4, 2, 150, 640, 640, (8, 16, 32), 40, False, 0.9, None),
    # 3 anchors per location (distance ties by index), topk 27, many rows.
    "multi_anchor_b4_g64": (5, 4, 64, 512, 512, (8, 16, 32, 64), 27, True, None, [4.0, 5.0, 6.4]),
    # topk 100: four passes of 32 keys per chunk and per merge.
    "topk100_b2_g20": (6, 2, 20, 384, 512, (8, 16, 32), 100, False, 0.5, None),
    # C = 592 candidates: the score buffers live in global memory instead of shared memory.
    "topk200_b1_g9_global_scores": (8, 1, 9, 384, 512, (8, 16, 32), 200, True, 0.8, None),
}


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(LARGE))
def test_large_random_every_op_cuda_equals_cpu(name):
    """Every op: CUDA == CPU kernel bit for bit on large random batches; the fused op also == reference."""
    case = random_case(*LARGE[name])
    expected = compute_stages(case, torch.ops.atss_ops)
    cuda_case, cuda_stages = move(case, "cuda"), move(expected, "cuda")
    for op in OPS:
        out = kernel(op)(*op_args(op, cuda_case, cuda_stages))
        assert_bits_equal(out, expected[op], f"{name}: {op} CUDA vs CPU kernel")
    # The whole pipeline against the reference (the spec) too.
    ref = reference.atss_assign(*op_args("atss_assign", case))
    assert_bits_equal(expected["atss_assign"], ref, f"{name}: CPU kernel vs reference")


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("B,G", [(8, 500), (2, 1000)])
def test_benchmark_sizes_cuda_equals_cpu(B, G):
    """The benchmark's crowd-like sizes (8192-anchor chunks staged through 4 shared-memory tiles)."""
    case = random_case(7, B, G, 800, 1344, counts=True)
    assert_bits_equal(fused(move(case, "cuda")), fused(case), f"B={B} G={G}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["coco_s2_b3_g20", "anchor_valid_random", "multi_anchor_3scales", "signed_zeros"])
def test_misaligned_anchors(name, backend):
    """Anchors at a 4-byte offset (scalar loads instead of float4) give the same bits."""
    device = tensor_device(backend)
    case = move(make_case(name), device)
    anchors = case["anchors"]
    buf = torch.empty(anchors.numel() + 1, dtype=torch.float32, device=device)
    buf[1:] = anchors.flatten()
    shifted = buf[1:].view(-1, 4)
    assert shifted.is_contiguous() and shifted.data_ptr() % 16 != 0
    out = ops_of(backend).atss_assign(*op_args("atss_assign", dict(case, anchors=shifted)))
    assert_bits_equal(out, reference_stages(name)["atss_assign"], "misaligned anchors")


# --------------------------------------------------------------------------- determinism


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["multi_anchor_3scales", "duplicate_gts", "integer_boxes", "coco_full_b2_g20"])
def test_deterministic_across_runs(name):
    """Ten runs of every op give the same bits (integer atomics only; no float atomics)."""
    case = move(make_case(name), "cuda")
    stages = move(reference_stages(name), "cuda")
    for op in OPS:
        args = op_args(op, case, stages)
        first = kernel(op)(*args)
        for _ in range(9):
            assert_bits_equal(kernel(op)(*args), first, f"{op} run to run")


@pytest.mark.cuda
def test_deterministic_large_crowd():
    case = move(random_case(11, 4, 400, 640, 640, (8, 16, 32), counts=True, valid=0.8), "cuda")
    first = fused(case)
    for _ in range(5):
        assert_bits_equal(fused(case), first, "crowd run to run")


# --------------------------------------------------------------------------- graphs, compile, syncs


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["coco_s2_b3_g20", "anchor_valid_random", "nan_padding"])
def test_cuda_graph_capture_and_replay(name):
    """atss_assign captured in a CUDA graph, replayed on new data in the same buffers, equals eager."""
    case = move(make_case(name), "cuda")
    args = list(op_args("atss_assign", case))
    static_gt = args[2].clone()
    args[2] = static_gt
    torch.cuda.synchronize()
    # Warm up on a side stream, as torch.cuda.graphs recommends.
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fused_args = tuple(args)
        kernel("atss_assign")(*fused_args)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = kernel("atss_assign")(*fused_args)
    graph.replay()
    assert_bits_equal(tuple(static_out), tuple(kernel("atss_assign")(*fused_args)), "replay vs eager")
    # New boxes in the captured buffer: the replay recomputes everything.
    g = generator(5)
    jitter = (torch.rand(static_gt.shape, generator=g) * 4).to("cuda")
    new_gt = static_gt + jitter
    new_gt[..., 2:] = torch.maximum(new_gt[..., 2:], new_gt[..., :2])
    static_gt.copy_(new_gt)
    graph.replay()
    eager = kernel("atss_assign")(*fused_args)
    assert_bits_equal(tuple(static_out), tuple(eager), "replay on new data vs eager")
    cpu = kernel("atss_assign")(*move(fused_args, "cpu"))
    assert_bits_equal(tuple(static_out), tuple(cpu), "replay on new data vs CPU kernel")


@pytest.mark.cuda
@pytest.mark.parametrize("op", OPS)
def test_no_host_sync(op):
    """No op syncs with the host (torch's sync debug mode raises on a synchronising call)."""
    name = "coco_s1_b2_g7"
    case = move(make_case(name), "cuda")
    args = op_args(op, case, move(reference_stages(name), "cuda"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        kernel(op)(*args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.cuda
def test_torch_compile_fullgraph():
    """The public atss_assign under torch.compile(fullgraph=True) on CUDA equals eager."""
    torch._dynamo.reset()
    case = move(make_case("coco_s1_b2_g7"), "cuda")

    def fn(anchors, gt_boxes, gt_counts, anchor_valid):
        r = atss_ops.atss_assign(
            anchors,
            case["num_anchors_per_level"],
            gt_boxes,
            gt_counts,
            topk=case["topk"],
            anchor_valid=anchor_valid,
            center_eps=case["center_eps"],
        )
        return r.gt_index, r.iou, r.threshold, r.num_positive

    compiled = torch.compile(fn, fullgraph=True)
    valid = torch.ones(case["gt_boxes"].shape[0], case["anchors"].shape[0], dtype=torch.bool, device="cuda")
    args = (case["anchors"], case["gt_boxes"], case["gt_counts"], valid)
    assert_bits_equal(compiled(*args), fn(*args), "compiled vs eager")
    assert_bits_equal(compiled(*args), tuple(reference_stages("coco_s1_b2_g7")["atss_assign"]), "compiled vs reference")


@pytest.mark.cuda
def test_no_bga_allocation():
    """atss_assign's peak extra memory stays far below one [B, G, A] float tensor."""
    case = move(random_case(12, 8, 200, 800, 1344), "cuda")
    B, G = case["gt_boxes"].shape[:2]
    A = case["anchors"].shape[0]
    fused(case)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fused(case)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    outputs = sum(t.numel() * t.element_size() for t in out)
    assert extra < outputs + 16 * B * A + 64 * B * G * 200, (extra, B * G * A * 4)
    assert extra < B * G * A * 4 / 8


# --------------------------------------------------------------------------- devices and unchecked values


@pytest.mark.cuda
@pytest.mark.parametrize("op", OPS)
def test_inputs_on_different_devices_raise(op):
    """One tensor on the CPU and the rest on CUDA: a clear ValueError naming the devices."""
    name = "coco_s1_b2_g7"
    args = op_args(op, make_case(name), reference_stages(name))
    tensor_positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    assert len(tensor_positions) >= 2
    for keep_on_cpu in tensor_positions:
        mixed = tuple(
            a.to("cuda") if isinstance(a, torch.Tensor) and i != keep_on_cpu else a for i, a in enumerate(args)
        )
        with pytest.raises(ValueError, match="all tensors must be on one device"):
            kernel(op)(*mixed)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_inputs_on_two_gpus_raise():
    name = "coco_s1_b2_g7"
    args = list(op_args("atss_assign", make_case(name)))
    args = [a.to("cuda:0") if isinstance(a, torch.Tensor) else a for a in args]
    args[2] = args[2].to("cuda:1")
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        kernel("atss_assign")(*args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("counts", [[-3, 100], [2, -1], [99, 99]])
def test_gt_counts_out_of_range_clamped(counts, backend):
    """Without value checks, gt_counts outside [0, G] never crashes and is clamped to [0, G]."""
    name = "coco_s1_b2_g7"
    case = make_case(name)
    G = case["gt_boxes"].shape[1]
    # The case's padding rows are NaN; counts clamped to G make them valid, which the CPU kernel
    # (the expected value) would reject: give them finite boxes.
    case["gt_boxes"] = torch.where(case["gt_boxes"].isnan(), torch.tensor([8.0, 8.0, 40.0, 56.0]), case["gt_boxes"])
    bad = torch.tensor(counts, dtype=torch.int64)
    clamped_case = dict(case, gt_counts=bad.clamp(0, G))
    expected = compute_stages(clamped_case, torch.ops.atss_ops)
    bad_case = move(dict(case, gt_counts=bad), tensor_device(backend))
    inputs = move(expected, tensor_device(backend))
    for op in ("center_distance", "topk_per_level", "iou_statistics", "atss_assign"):
        out = getattr(ops_of(backend), op)(*op_args(op, bad_case, inputs))
        assert_bits_equal(out, expected[op], f"{op} with gt_counts {counts}")
    if backend == "emu":
        return
    # The public API on CUDA runs no value check by default either.
    res = atss_ops.atss_assign(
        bad_case["anchors"],
        bad_case["num_anchors_per_level"],
        bad_case["gt_boxes"],
        bad_case["gt_counts"],
    )
    assert_bits_equal(res, expected["atss_assign"], "public atss_assign")
    # With check_inputs=True the public API reports the value instead (one sync).
    with pytest.raises(ValueError, match="out of range"):
        atss_ops.atss_assign(
            bad_case["anchors"],
            bad_case["num_anchors_per_level"],
            bad_case["gt_boxes"],
            bad_case["gt_counts"],
            check_inputs=True,
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_candidates_out_of_range_are_empty_slots(backend):
    """iou_statistics / resolve_multi_gt on CUDA treat indices outside [-1, A) as empty slots (-1)."""
    name = "coco_s1_b2_g7"
    case = make_case(name)
    stages = reference_stages(name)
    A = case["anchors"].shape[0]
    cand = stages["topk_per_level"].clone()
    g = generator(3)
    bad = torch.rand(cand.shape, generator=g) < 0.2
    junk = torch.where(torch.rand(cand.shape, generator=g) < 0.5, torch.full_like(cand, -7), cand + A + 3)
    cand_bad = torch.where(bad, junk, cand)
    cand_clean = torch.where(bad, torch.full_like(cand, -1), cand)
    args = (case["anchors"], case["gt_boxes"], cand_clean, case["gt_counts"], case["center_eps"])
    expected = kernel("iou_statistics")(*args)
    out = ops_of(backend).iou_statistics(
        *move(
            (case["anchors"], case["gt_boxes"], cand_bad, case["gt_counts"], case["center_eps"]), tensor_device(backend)
        )
    )
    assert_bits_equal(out, expected, "iou_statistics")
    cand_iou, _, is_positive = expected
    is_positive = is_positive | bad  # out-of-range slots marked positive: still never claim
    expected = kernel("resolve_multi_gt")(cand_clean, cand_iou, is_positive, A)
    out = ops_of(backend).resolve_multi_gt(*move((cand_bad, cand_iou, is_positive, A), tensor_device(backend)))
    assert_bits_equal(out, expected, "resolve_multi_gt")


@pytest.mark.parametrize("topk", [9, 40])
@pytest.mark.parametrize("backend", BACKENDS)
def test_more_levels_than_one_level_table(backend, topk):
    """More non-empty levels than one CUDA level table holds (128; the contract has no limit):
    several launches, one per table, give the CPU's answer (empty levels among them too)."""
    g = generator(topk)
    sizes = [0, 3] + torch.randint(1, 12, (140,), generator=g).tolist() + [0, 300]
    assert sum(n > 0 for n in sizes) == 142  # two tables of levels
    A = sum(sizes)
    centres = torch.rand(A, 2, generator=g) * 200.0
    anchors = torch.cat([centres - 6.0, centres + 6.0], dim=1)
    lo = torch.rand(2, 5, 2, generator=g) * 150.0
    gt = torch.cat([lo, lo + 10.0 + torch.rand(2, 5, 2, generator=g) * 40.0], dim=-1)
    counts = torch.tensor([5, 3])
    dev = tensor_device(backend)
    args = (anchors, sizes, gt, counts, topk, None, 0.01, None, True)
    assert_bits_equal(
        ops_of(backend).atss_assign(*move(args, dev)), kernel("atss_assign")(*args), f"atss_assign, topk {topk}"
    )
    d = kernel("center_distance")(anchors, gt, counts)
    expected = kernel("topk_per_level")(d, sizes, topk, counts, None, None)
    out = ops_of(backend).topk_per_level(*move((d, sizes, topk, counts, None, None), dev))
    assert_bits_equal(out, expected, f"topk_per_level, topk {topk}")


@pytest.mark.cuda
@pytest.mark.parametrize("name", CASE_NAMES)
def test_every_case_fused_cuda_equals_cpu_kernel(name):
    """Quick cross-check on every case: the fused CUDA op equals the fused CPU op."""
    case = make_case(name)
    assert_bits_equal(fused(move(case, "cuda")), fused(case), name)
