"""The CUDA kernel sources run through the host execution model (``make emu``; marker ``emu``).

test_equivalence.py, test_properties.py and test_errors.py already run every
op on every case through ``torch.ops.atss_ops_emu``. Here: the execution model
itself (collectives compute what the device computes; each misuse fails the
launch with a message naming the kernel, the block and the barrier, never a
hang; launches the device rejects are rejected), and the kernel paths that only
some launch shapes reach: a capped grid (a block serving many work items, shared
memory reused across items), every per-lane list size K, several passes per
chunk and per merge (topk > 32), score buffers in global memory, chunks staged
through several shared-memory tiles, other multiprocessor counts (other chunk
lengths), several concurrent blocks in other orders.
"""

from __future__ import annotations

import pytest
import torch
from cases import (
    OPS,
    assert_bits_equal,
    compute_stages,
    emu_available,
    env_vars,
    make_case,
    multi_scale_anchors,
    op_args,
    random_case,
)

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
    (B * G = 20), 8192-anchor chunks already give 4 work items per SM, so the fused kernel stages
    the level through 2 shared-memory tiles (with fewer rows it would pick 1024-anchor chunks)."""
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
