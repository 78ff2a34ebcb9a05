"""The CUDA kernel sources run through the host execution model (``make emu``; marker ``emu``).

test_equivalence.py, test_properties.py and test_errors.py already run every
op on every case through ``torch.ops.atss_ops_emu``. Here: the execution model
itself (collectives compute what the device computes; each misuse fails the
launch with a message naming the kernel, the block and the barrier, never a
hang; launches the device rejects are rejected), and the kernel paths that only
some launch shapes reach: a capped grid (a block serving many work items, shared
memory reused across items), every per-lane list size K, several passes per
chunk and per merge (topk > 32), score buffers in global memory, chunks scanned
in several tiles, other multiprocessor counts (other chunk lengths), several
concurrent blocks in other orders; the scan's filters (a 32-bit prefilter on the
distance bits, a bound taken only when a list changed) on layouts made to defeat
them: ties on every distance, distances that fall at every anchor, and caller
distances of every sign and kind; the work counters; and the fused kernel's block
culling on layouts made to defeat it (jittered, shuffled, ties on block borders,
masks, 3-D, infinite centres).
"""

from __future__ import annotations

import pytest
import torch
from backends import emu_available
from bits import assert_bits_equal
from cases import (
    boxes_around,
    case_args,
    case_of,
    compute_stages,
    generator,
    make_case,
    multi_scale_anchors,
    op_args,
    random_case,
    random_case_3d,
)
from subprocesses import env_vars

from atss_ops._extension import OPS

pytestmark = pytest.mark.emu


def emu_ops():
    assert emu_available()
    return torch.ops.atss_ops_emu


def all_ops_equal_cpu(case: dict, what: str) -> None:
    """Every emulated op equals the CPU kernel bit for bit (stage inputs from the CPU kernels)."""
    expected = compute_stages(case, torch.ops.atss_ops)
    for op in OPS:
        out = getattr(emu_ops(), op)(*op_args(op, case, expected))
        assert_bits_equal(out, expected[op], f"{what}: {op} emulated CUDA vs CPU kernel")


# --------------------------------------------------------------------------- the execution model


def test_collectives_compute_what_the_device_computes():
    out = emu_ops()._selftest("collectives")
    order, block, rmin, shfl, ballot, ok = out.unbind(1)
    assert sorted(order.tolist()) == list(range(8))  # each block started once
    assert block.tolist() == list(range(8))  # static __shared__ is per block
    assert rmin.tolist() == [100 - 31] * 8  # min over warp 0's lanes 0..31 of 100 - tid
    assert shfl.tolist() == [100 - 3] * 8  # lane 3's value, 64-bit shuffle
    assert ballot.tolist() == [11] * 8  # lanes 0, 3, ..., 30
    assert ok.tolist() == [64] * 8  # xor shuffles and half-warp masks, every thread


def test_dynamic_shared_memory_per_block():
    out = emu_ops()._selftest("smem")
    assert out.tolist() == list(range(127, -1, -1))


def test_blocks_run_in_shuffled_orders():
    orders = set()
    for seed in range(6):
        with env_vars(ATSS_EMU_SEED=seed, ATSS_EMU_CONCURRENCY=1):
            orders.add(tuple(emu_ops()._selftest("collectives")[:, 0].tolist()))
    assert len(orders) > 1


MISUSES = {
    # scenario: what the message must say
    "divergent_barrier": [
        r"kernel divergent_barrier_kernel, block \(\d, 0, 0\)",
        "deadlock",
        r"threads 0-31 wait at __syncthreads \(selftest.cu:\d+\)",
        "threads 32-63 have exited",
    ],
    "divergent_sites": ["divergent __syncthreads", r"selftest.cu:\d+"],
    "mask_leaves_lane_out": ["__shfl_sync", "mask 0x0000ffff, which leaves the lane out"],
    "missing_lanes": ["deadlock", r"__shfl_sync\(mask 0xffffffff\)", "have exited"],
    "source_outside_mask": ["reads lane 20, which mask 0x0000ffff leaves out"],
    "mismatched_masks": ["__syncwarp", "uses mask|deadlock"],
    "different_collectives": ["wait at different collectives", "__reduce_min_sync", "__shfl_sync"],
    "block_too_large": ["launch rejected", r"block \(1025, 1, 1\)"],
    "block_z_too_large": ["launch rejected", r"block \(1, 1, 65\)"],
    "grid_y_too_large": ["launch rejected", r"grid \(1, 65536, 1\)"],
    "empty_grid": ["launch rejected", r"grid \(0, 1, 1\)"],
    "smem_over_default_limit": ["launch rejected", "49156 bytes of dynamic shared memory", "opt-in"],
    "smem_opt_in_over_device_limit": ["233472", "at most 232448 bytes"],
}


@pytest.mark.parametrize("scenario", list(MISUSES))
def test_misuse_fails_the_launch(scenario):
    """Divergent barriers, bad masks and impossible launches raise (never hang), naming what failed."""
    with pytest.raises(RuntimeError) as info:
        emu_ops()._selftest(scenario)
    import re

    for pattern in MISUSES[scenario]:
        assert re.search(pattern, str(info.value)), f"{pattern!r} not in {info.value}"


def test_opt_in_shared_memory_is_accepted():
    assert emu_ops()._selftest("smem_opt_in").tolist() == list(range(31, -1, -1))


def test_bad_knob_is_a_clear_error():
    with env_vars(ATSS_MAX_BLOCKS="many"), pytest.raises(ValueError, match="ATSS_MAX_BLOCKS=many"):
        emu_ops().atss_assign(*op_args("atss_assign", make_case("coco_s0_b1_g1")))


# --------------------------------------------------------------------------- kernel paths

# (seed, B, G, height, width, strides, topk, counts, valid, scales): small enough for the
# emulation, each reaching other kernel paths.
PATHS = {
    "k4_topk3": (1, 2, 9, 256, 320, (8, 16, 32), 3, True, None, None),
    "k9_valid": (2, 2, 12, 256, 320, (8, 16, 32), 9, False, 0.7, None),
    "k16_topk13_counts": (3, 3, 5, 192, 256, (8, 16, 32), 13, True, 0.9, None),
    "k32_topk27_three_per_location": (4, 2, 6, 128, 160, (8, 16, 32), 27, True, None, [4.0, 5.0, 6.4]),
    "k32_topk40_two_passes": (5, 2, 5, 192, 256, (8, 16), 40, False, 0.8, None),
    "k32_topk100_four_passes": (6, 1, 4, 128, 192, (8, 16), 100, True, None, None),
    "global_score_buffers_topk200": (7, 1, 3, 192, 256, (8, 16, 32), 200, False, 0.8, None),
    "rows_not_multiple_of_8": (8, 3, 7, 128, 160, (8, 16, 32, 64), 9, True, 0.5, None),
}


def path_case(name: str) -> dict:
    seed, B, G, h, w, strides, topk, counts, valid, scales = PATHS[name]
    return random_case(seed, B, G, h, w, strides, topk, counts=counts, valid=valid, scales=scales)


@pytest.mark.parametrize("name", list(PATHS))
def test_list_sizes_and_passes(name):
    all_ops_equal_cpu(path_case(name), name)


@pytest.mark.parametrize("max_blocks", [1, 3])
@pytest.mark.parametrize("name", ["k9_valid", "k32_topk40_two_passes", "global_score_buffers_topk200"])
def test_capped_grid(name, max_blocks):
    """ATSS_MAX_BLOCKS: every kernel's grid-stride loop, one block serving many items, the shared
    tile and score buffers reused across items, the last-block protocol on a block that is not new."""
    with env_vars(ATSS_MAX_BLOCKS=max_blocks):
        all_ops_equal_cpu(path_case(name), f"{name}, at most {max_blocks} blocks")


@pytest.mark.parametrize("sms", [1, 4, 1000])
def test_other_multiprocessor_counts(sms):
    """ATSS_NUM_SMS changes the chunk length (8192 .. 1024 anchors): one chunk per level, or many."""
    with env_vars(ATSS_NUM_SMS=sms):
        all_ops_equal_cpu(path_case("k16_topk13_counts"), f"{sms} SMs")


def test_chunk_staged_through_several_tiles():
    """A level of 3,072 anchors in one 8192-anchor chunk: with 1 SM seen and 3 tiles of rows
    (B * G = 20), 8192-anchor chunks already give 4 work items per SM, so topk_per_level's scan
    takes the level in 2 tiles of 2,048 anchors (with fewer rows it would pick 1024-anchor chunks)."""
    case = random_case(9, 2, 10, 384, 512, (8, 16), 9, counts=False, valid=0.9)
    assert case["num_anchors_per_level"][0] > 2048
    with env_vars(ATSS_NUM_SMS=1):
        all_ops_equal_cpu(case, "multi-tile chunk")
    with env_vars(ATSS_NUM_SMS=1, ATSS_MAX_BLOCKS=1):
        all_ops_equal_cpu(case, "multi-tile chunk, one block")


def test_levels_of_whole_chunks():
    """Levels of exactly 4 and 1 chunks of 1,024 anchors (1000 SMs seen): a chunk bound one anchor
    too far would read the next level's first anchor, whose centre is the GTs' centre, or read past A."""
    anchors, levels = multi_scale_anchors(256, 1024, (8, 16), [8.0])
    assert levels == [4096, 1024]
    gt = torch.tensor(
        [[[0.0, 0.0, 16.0, 16.0], [2.0, 2.0, 14.0, 14.0], [1000.0, 232.0, 1024.0, 256.0], [300.0, 100.0, 420.0, 180.0]]]
    )
    case = dict(
        anchors=anchors,
        num_anchors_per_level=levels,
        gt_boxes=gt,
        gt_counts=None,
        topk=9,
        anchor_valid=None,
        center_eps=0.01,
    )
    with env_vars(ATSS_NUM_SMS=1000):
        all_ops_equal_cpu(case, "levels of whole chunks")


@pytest.mark.parametrize("concurrency", [1, 4])
def test_concurrent_blocks_in_other_orders(concurrency):
    case = path_case("k9_valid")
    expected = compute_stages(case, torch.ops.atss_ops)["atss_assign"]
    for seed in (1, 2):
        with env_vars(ATSS_EMU_CONCURRENCY=concurrency, ATSS_EMU_SEED=seed):
            out = emu_ops().atss_assign(*op_args("atss_assign", case))
        assert_bits_equal(out, expected, f"{concurrency} blocks at once, seed {seed}")


# --------------------------------------------------------------------------- the scan's filters

# The scan rejects most anchors on their distance's 32 bits (the high half of the
# (distance, anchor index) key) before it builds the key, and takes the warp-wide
# bound again only when a lane's list changed. Made to break them: keys that tie on
# the high half (equal distances, decided by the index alone, across lanes, chunks,
# shared-memory tiles and passes of K keys), limits that change at every anchor,
# and caller distances of every sign (-0, negatives, NaNs of both signs).

SCAN_TOPKS = [4, 9, 16, 27, 40, 100]


def line_anchors(centres: torch.Tensor, size: float = 4.0) -> torch.Tensor:
    """Square anchors of side ``size`` centred on ``(centres, 0)`` (exact: small integers)."""
    zeros = torch.zeros_like(centres)
    side = torch.full_like(centres, size)
    return boxes_around(centres, zeros, side, side)


def tied_case(topk: int) -> dict:
    """Levels whose anchors share a handful of centres, so most keys tie on their distance."""
    lv0 = line_anchors((torch.arange(3000) % 5).float() * 8.0)  # 5 centres, repeated
    lv1 = line_anchors(torch.full((1200,), 16.0))  # one centre for the whole level
    lv2 = line_anchors(torch.full((37,), 4.0))
    anchors = torch.cat([lv0, lv1, lv2])
    cx = torch.tensor([[16.0, 0.0, 4.0, 100.0, -8.0, 12.0], [32.0, 16.0, 20.0, 8.0, 0.0, 1e6]])
    cy = torch.tensor([[0.0, 0.0, 3.0, 0.0, 5.0, -7.0], [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    gt = boxes_around(cx, cy, torch.full_like(cx, 24.0), torch.full_like(cx, 16.0))
    valid = torch.rand(2, anchors.shape[0], generator=generator(11)) < 0.9
    return case_of(anchors, [3000, 1200, 37], gt, topk=topk, anchor_valid=valid)


def falling_case(topk: int) -> dict:
    """Anchor centres on a line, GTs far to the right: every anchor is nearer than all before it,
    so each lane's list and limit change at every anchor (and GTs on the left, where none does)."""
    n = 4500
    anchors = line_anchors(torch.arange(n).float() * 2.0)
    cx = torch.tensor([[2.0 * n + 1000.0, -50.0, 4500.0, 2.0 * n + 3.0]])
    cy = torch.zeros_like(cx)
    gt = boxes_around(cx, cy, torch.full_like(cx, 10.0), torch.full_like(cx, 10.0))
    return case_of(anchors, [n - 300, 300], gt, topk=topk)


@pytest.mark.parametrize("topk", SCAN_TOPKS)
@pytest.mark.parametrize("sms", [132, 1000])
def test_scan_ties_on_every_distance(topk, sms):
    """Keys equal in their high 32 bits everywhere: the order is the anchor index alone."""
    with env_vars(ATSS_NUM_SMS=sms):
        all_ops_equal_cpu(tied_case(topk), f"tied distances, topk {topk}, {sms} SMs")


@pytest.mark.parametrize("topk", SCAN_TOPKS)
def test_scan_limit_falls_at_every_anchor(topk):
    with env_vars(ATSS_NUM_SMS=1000):
        all_ops_equal_cpu(falling_case(topk), f"falling distances, topk {topk}")


def caller_distances(seed: int, B: int, G: int, A: int) -> torch.Tensor:
    """[B, G, A] distances drawn from values of every sign and kind, so most of them tie."""
    values = torch.tensor(
        [float("-inf"), -1.0, -1e-45, -0.0, 0.0, 1e-45, 1.0, 1.0 + 2**-23, 3e38, float("inf"), float("nan"), 0.0]
    )
    bits = values.view(torch.int32).clone()
    bits[-1] = -4194304  # 0xffc00000: a NaN with its sign bit set
    values = bits.view(torch.float32)
    g = generator(seed)
    idx = torch.randint(0, values.numel(), (B, G, A), generator=g)
    # Some rows of only a few kinds (long runs of equal keys), some spread over a real range.
    d = values[idx]
    d[0, 0] = values[torch.randint(3, 5, (A,), generator=g)]  # -0.0 and 0.0 only
    d[0, 1] = values[torch.randint(0, 2, (A,), generator=g)]  # negatives only
    d[-1, -1] = torch.randn(A, generator=g).abs()
    return d.contiguous()


@pytest.mark.parametrize("topk", SCAN_TOPKS)
def test_scan_caller_distances_of_every_sign(topk):
    """topk_per_level on caller distances: negative limits (the prefilter then passes everything),
    -0 == +0, NaNs of both signs after +inf, ties across lanes, chunks and passes."""
    B, G, levels = 2, 5, [2500, 1100, 7]
    A = sum(levels)
    d = caller_distances(topk, B, G, A)
    counts = torch.tensor([G, 3])
    valid = torch.rand(B, A, generator=generator(topk + 1)) < 0.8
    for mask in (None, valid):
        expected = torch.ops.atss_ops.topk_per_level(d, levels, topk, counts, mask)
        for sms in (132, 1000):
            with env_vars(ATSS_NUM_SMS=sms):
                out = emu_ops().topk_per_level(d, levels, topk, counts, mask)
            assert_bits_equal(out, expected, f"caller distances, topk {topk}, mask {mask is not None}, {sms} SMs")


# --------------------------------------------------------------------------- work counters

# The emulated selection counts its work per GT row (csrc/cuda/work_counters.h, read with
# torch.ops.atss_ops_emu._work_counters): what benchmarks/bench_gpu.py --work reports. The
# figures must be exact counts, so their identities are checked here on the chunked scan of
# topk_per_level (every anchor of every chunk, once per pass).


def work(name: str) -> torch.Tensor:
    return emu_ops()._work_counters(name)


def test_work_counters_of_the_scan():
    """distances_computed == A per row (one pass), zero on padding rows and per pass on topk > 32;
    keys_inserted covers at least every candidate; rounds between inserts / 32 and inserts."""
    B, G, levels = 2, 5, [2500, 1100, 7]
    A = sum(levels)
    d = caller_distances(9, B, G, A).abs()
    counts = torch.tensor([G, 3])
    out = emu_ops().topk_per_level(d, levels, 9, counts, None)
    assert_bits_equal(out, torch.ops.atss_ops.topk_per_level(d, levels, 9, counts, None), "counters run")
    active = torch.tensor([True] * G + [True] * 3 + [False] * (G - 3))
    dist, keys, rounds = work("distances_computed"), work("keys_inserted"), work("insert_rounds")
    assert dist.shape == (B * G,)
    assert dist[active].eq(A).all() and dist[~active].eq(0).all()
    C = sum(min(9, n) for n in levels)
    assert keys[active].ge(C).all() and keys[~active].eq(0).all()
    assert rounds[active].le(keys[active]).all() and (32 * rounds[active]).ge(keys[active]).all()
    assert work("passes")[active].eq(work("chunks")[active]).all()  # one pass per chunk at topk 9
    with pytest.raises(ValueError, match="unknown counter"):
        work("no_such_counter")
    # Two passes per chunk at topk 40 (> K = 32): every anchor's distance twice.
    emu_ops().topk_per_level(d, levels, 40, counts, None)
    assert work("distances_computed")[active].eq(2 * A - levels[2]).all()  # the 7-anchor level: one pass
    # A row with no usable anchor inserts nothing, yet computes every distance.
    valid = torch.ones(B, A, dtype=torch.bool)
    valid[1] = False
    emu_ops().topk_per_level(d, levels, 9, None, valid)
    keys = work("keys_inserted")
    assert keys[G:].eq(0).all() and keys[:G].ge(C).all() and work("distances_computed").eq(A).all()


# --------------------------------------------------------------------------- the culled selection

# The fused kernel visits blocks of 256 consecutive anchors nearest first and skips a block when
# the float32 squared distance from the GT centre to the box of the block's centres is strictly
# above the warp's k-th key (csrc/cuda/select_culled.cuh, with the proof). Layouts made to break
# that: jittered and shuffled centres, centres repeated across block borders, ties that the
# bound meets exactly, masks that hide the nearest anchors, 3-D, non-finite centres; each one's
# bits against the CPU kernels, and the counters to show where the culling paid and where not.

CULL_BLOCK = 256


def grid_case(seed: int, B: int, G: int, size=(384, 512), strides=(8, 16, 32), **kw) -> dict:
    h, w = size
    return random_case(seed, B, G, h, w, strides, **kw)


def assign_equal_cpu(case: dict, what: str) -> tuple:
    """The emulated atss_assign of ``case``, checked bit for bit against the CPU kernel."""
    expected = torch.ops.atss_ops.atss_assign(*case_args(case))
    out = emu_ops().atss_assign(*case_args(case))
    assert_bits_equal(out, expected, what)
    return out


def per_level_permutation(levels, seed: int) -> torch.Tensor:
    g, parts, start = generator(seed), [], 0
    for n in levels:
        parts.append(start + torch.randperm(n, generator=g))
        start += n
    return torch.cat(parts)


def test_culling_skips_most_blocks_on_a_grid():
    """Grid anchors: the counters show the culling at work (and the bits are the CPU's)."""
    case = grid_case(21, 2, 12)
    assign_equal_cpu(case, "grid")
    A = case["anchors"].shape[0]
    dist, skipped = work("distances_computed"), work("blocks_skipped")
    assert dist.gt(0).all() and dist.float().mean() < A / 4, dist.tolist()
    assert skipped.gt(0).all()
    assert work("keys_inserted").le(work("keys_considered")).all()
    total_blocks = sum(-(-n // CULL_BLOCK) for n in case["num_anchors_per_level"])
    assert (work("blocks_visited") + work("blocks_skipped")).eq(total_blocks).all()


@pytest.mark.parametrize("topk", [1, 9, 40])
def test_culling_jittered_and_shuffled(topk):
    """Centres jittered by up to a stride (boxes overlap), then each level shuffled: the culling
    stops paying but the answer stays the CPU's."""
    case = grid_case(22, 2, 8, topk=topk, valid=0.9)
    anchors = case["anchors"].clone()
    jitter = (torch.rand(anchors.shape[0], 2, generator=generator(23)) - 0.5) * 16.0
    anchors += jitter.repeat(1, 2)
    case = dict(case, anchors=anchors)
    assign_equal_cpu(case, f"jittered, topk {topk}")
    perm = per_level_permutation(case["num_anchors_per_level"], 24)
    shuffled = dict(case, anchors=anchors[perm].contiguous(), anchor_valid=case["anchor_valid"][:, perm].contiguous())
    assign_equal_cpu(shuffled, f"shuffled, topk {topk}")
    A = anchors.shape[0]
    assert work("distances_computed").float().mean() > A / 2  # culling does not pay here


def line_level(xs: torch.Tensor) -> torch.Tensor:
    return line_anchors(xs.float())


def test_culling_ties_on_block_borders():
    """The bound of a block equals the k-th key exactly: a block visited later (higher bound key)
    holds anchors at that same distance with lower indices, which must win; skipping on an equal
    bound would lose them. Also runs of one centre across block borders."""
    n = 4 * CULL_BLOCK
    xs = torch.full((n,), 1000.0)
    xs[:CULL_BLOCK] = -10.0  # block 0: all at distance 10 from the GT, indices 0..255
    xs[2 * CULL_BLOCK : 2 * CULL_BLOCK + 12] = 10.0  # block 2: 12 at distance 10 ...
    xs[2 * CULL_BLOCK + 100] = 1.0  # ... and one near: block 2 is visited first
    runs = (torch.arange(n) // 100).float() * 3.0  # a level of runs of 100 equal centres
    anchors = torch.cat([line_level(xs), line_level(runs)])
    cx = torch.tensor([[0.0, 0.0, 1.5, 4.5, 31.5]])
    cy = torch.zeros_like(cx)
    gt = boxes_around(cx, cy, torch.full_like(cx, 40.0), torch.full_like(cx, 8.0))
    for topk in (1, 9, 40, 300):
        case = case_of(anchors, [n, n], gt, topk=topk, center_eps=None)
        assign_equal_cpu(case, f"ties on block borders, topk {topk}")
        if topk == 9:
            cand = torch.ops.atss_ops.topk_per_level(
                torch.ops.atss_ops.center_distance(anchors, gt, None), [n, n], 9, None, None
            )
            assert cand[0, 0, :9].tolist() == [2 * CULL_BLOCK + 100] + list(range(8))


def test_culling_under_masks():
    """Masks that hide the nearest anchors (valid and ignore), so far blocks must be visited."""
    case = grid_case(25, 2, 10, valid=0.15, ignore=0.3, topk=9)
    assign_equal_cpu(case, "sparse masks")
    valid = torch.ones(2, case["anchors"].shape[0], dtype=torch.bool)
    valid[0, : case["num_anchors_per_level"][0] - 7] = False  # level 0: only its last 7 anchors
    valid[1, case["num_anchors_per_level"][0] :] = False  # image 1: only level 0
    assign_equal_cpu(dict(case, anchor_valid=valid, anchor_ignore=None), "one level nearly hidden")


def test_culling_3d_jittered():
    case = random_case_3d(26, 2, 7, size=(64, 48, 32), strides=(4, 8), topk=9)
    assign_equal_cpu(case, "3-D grid")
    assert work("blocks_skipped").float().mean() > 0
    anchors = case["anchors"].clone()
    anchors += ((torch.rand(anchors.shape[0], 3, generator=generator(27)) - 0.5) * 6.0).repeat(1, 2)
    assign_equal_cpu(dict(case, anchors=anchors), "3-D jittered")


def test_culling_never_skips_non_finite_centres():
    """Blocks holding an infinite centre (finite boxes whose coordinate sum overflows) are never
    skipped (the bound needs finite centres), nor is anything for a GT whose centre is not finite;
    huge finite centres overflow d2 and bound alike."""
    anchors, levels = multi_scale_anchors(256, 512, (8, 16), [8.0])
    anchors = anchors.clone()
    far = levels[0] - 5  # far from the GTs, in the level's last block
    anchors[far] = torch.tensor([3e38, 0.0, 3.4e38, 4.0])  # centre x = +inf
    anchors[far - 300] = torch.tensor([-3.4e38, 0.0, -3e38, 4.0])  # centre x = -inf
    anchors[levels[0] + 3] = torch.tensor([3e38, 3e38, 3.4e38, 3.4e38])
    gt = torch.tensor([[[0.0, 0.0, 30.0, 30.0], [200.0, 90.0, 250.0, 120.0], [3e38, 0.0, 3.4e38, 8.0]]])
    for topk in (9, 300):
        case = case_of(anchors, levels, gt, topk=topk, center_eps=None)
        assign_equal_cpu(case, f"non-finite centres, topk {topk}")
        skipped = work("blocks_skipped")
        assert skipped[0] > 0 and skipped[2] == 0  # GT 2's centre is +inf: it skips nothing


@pytest.mark.parametrize("topk", [9, 40])
def test_step8_proposals_tie_across_lanes(topk):
    """Step 8 with a warp per row: no positive after step 7 (a centre margin nothing meets), so every
    GT proposes; identical anchor boxes tie on IoU across lanes and slots (topk 40: two slots per
    lane), and the earliest slot must win; GTs whose best anchors coincide compete for them."""
    case = dict(tied_case(topk), center_eps=1e6, ensure_positive=True)
    assert assign_equal_cpu(case, f"step 8 ties, topk {topk}")[3].sum() > 0  # proposals were made


# --------------------------------------------------------------------------- planted defects


def test_every_planted_defect_still_applies():
    """scripts/planted_defects.py replaces a text of a CUDA source by a defect: each text must stand exactly
    once in its file, or the experiment would plant nothing (or something else) after an edit."""
    import importlib.util

    from subprocesses import ROOT

    spec = importlib.util.spec_from_file_location("planted_defects", f"{ROOT}/scripts/planted_defects.py")
    planted = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(planted)
    assert len(planted.DEFECTS) >= 14
    for name, (_, path, old, new) in planted.DEFECTS.items():
        with open(f"{ROOT}/{path}") as f:
            assert f.read().count(old) == 1, f"{name}: its text is not exactly once in {path}"
        assert old != new, name
