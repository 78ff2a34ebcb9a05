"""A small workload that runs every CUDA op through every kernel path, for the sanitizers.

On a GPU, under compute-sanitizer:

    compute-sanitizer --tool memcheck  --error-exitcode 1 python scripts/sanitizer_workload.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python scripts/sanitizer_workload.py

On the host, through the emulated kernels (``--emu``: the library of
``make emu`` (CMakeLists.txt's ATSS_EMU), sanitized builds with the runtime preloaded; see
scripts/emu_sanitize.sh):

    LD_PRELOAD=$(gcc -print-file-name=libtsan.so) \
        python scripts/sanitizer_workload.py --emu build-emu-tsan/libatss_ops_emu.so

It imports the test suite's cases (tests/cases.py): run it with the repository and
tests/ on PYTHONPATH, as gpu_check.sh and emu_sanitize.sh do
(``PYTHONPATH=.:tests python scripts/sanitizer_workload.py``).

Covers: the four stage ops and the fused atss_assign; padding GTs and
gt_counts out of [0, G] (clamped); anchor_valid; empty levels; topk 1 and 3
(4-key lists), 9, 13 (16-key lists), 27 and 40 / 100 (32-key lists, several
passes per chunk and per merge); one level cut into several chunks; a chunk
staged through several shared-memory tiles; score buffers in global memory;
a capped grid (ATSS_MAX_BLOCKS: one block serving many items); misaligned
anchors (scalar loads); candidate indices out of range; signed zeros; G == 0,
B == 0, A == 0. And tal_assign (tests/cases_tal.py): shared anchors, topk2,
min_side, lists longer than a warp, padding, a capped grid, labels outside
[0, C) and gt_counts outside [0, G] (no value check on CUDA: a zero score,
clamped counts). Each result is also compared with the CPU kernel (bits), so a
run that the sanitizer passes is a correct run too. Exit status 0 when every
comparison holds.
"""

from __future__ import annotations

import argparse
import sys

import torch
from backends import move
from bits import bits_equal
from cases import compute_stages, make_case, op_args, random_case, random_case_3d
from cases_tal import TAL_DEFAULTS, make_tal_case, tal_args
from cases_tal import random_case as random_tal_case
from subprocesses import env_vars

import atss_ops
from atss_ops._extension import OPS


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return bits_equal(a, b)
    return all(bits_equal(x, y) for x, y in zip(a, b))


def workload(emu: bool):
    """(name, case, environment) triples; the emulated run keeps to small sizes."""
    named = [
        "coco_s1_b2_g7",
        "nan_padding",
        "anchor_valid_random",
        "empty_level_everywhere",
        "multi_anchor_3scales",
        "topk_larger_than_every_level",
        "c1_topk1_one_level",
        "signed_zeros",
        "huge_coordinates_overflow",
        "g0",
        "b0",
        "a0_empty_levels",
        "gt_counts_all_zero",
        "duplicate_gts",
        # Contract v2: 3-D boxes, ignored anchors, no centre test, step 8.
        "d3_everything",
        "d3_anchors_along_z",
        "d3_g0_ignore",
        "ignore_random_with_valid",
        "ignore_every_anchor_of_an_image",
        "ensure_positive_coco",
        "ensure_positive_no_center_test_ignore",
    ]
    for name in named:
        yield name, make_case(name), {}
    yield "k4_topk3_counts", random_case(6, 2, 9, 256, 320, (8, 16, 32), 3, counts=True), {}
    yield "chunks_topk13_valid", random_case(1, 2, 5, 512, 640, (8, 16, 32), 13, counts=True, valid=0.7), {}
    yield "chunks_topk40", random_case(2, 1, 9, 384, 512, (8, 16), 40, valid=0.9), {}
    yield (
        "d3_chunks_topk12_everything",
        random_case_3d(
            10, 2, 8, (96, 96, 48), (4, 8, 16), 12, counts=True, valid=0.9, ignore=0.1, ensure_positive=True
        ),
        {},
    )
    yield "chunks_topk100", random_case(3, 1, 3, 256, 384, (8, 16), 100), {}
    yield "global_score_buffers_topk200", random_case(5, 1, 4, 384, 512, (8, 16, 32), 200, counts=True, valid=0.8), {}
    # 3 tiles of rows and 1 SM seen: 8192-anchor chunks, the 3,072-anchor level staged through 2 tiles.
    yield "multi_tile_chunk", random_case(9, 2, 10, 384, 512, (8, 16), 9, valid=0.9), {"ATSS_NUM_SMS": 1}
    yield "capped_grid", random_case(7, 2, 12, 256, 320, (8, 16, 32), 9, counts=True, valid=0.7), {"ATSS_MAX_BLOCKS": 2}
    yield "capped_grid_topk40", random_case(8, 1, 9, 256, 320, (8, 16), 40), {"ATSS_MAX_BLOCKS": 1}
    if not emu:
        yield "many_rows_8192_chunks", random_case(4, 8, 300, 800, 1344, (8, 16, 32, 64, 128), 9, counts=True), {}


def tal_workload(emu: bool):
    """(name, case, environment) triples of tal_assign; the emulated run keeps to small sizes."""
    for name in ("crowded", "topk2_3", "huge_topk", "random_b3_g20_min_side", "empty_images", "all_padding", "g0"):
        yield name, make_tal_case(name), {}
    yield "capped_grid_topk2_above_topk", make_tal_case("topk2_above_topk"), {"ATSS_MAX_BLOCKS": 1}
    if not emu:
        case = random_tal_case(30, B=8, G=60, size=640, topk2=7, min_side=16.0)
        yield "b8_g60_640_topk2", dict(TAL_DEFAULTS, **case), {}


def tal_bad_values(case: dict):
    """The case with labels outside [0, C) and gt_counts outside [0, G] (CUDA checks no value), and the
    input the CPU kernel takes for the same result: an all-zero class C for those labels, clamped counts."""
    labels, C = case["gt_labels"].clone(), case["pred_scores"].shape[2]
    B, G = labels.shape
    labels[:, ::2] = torch.tensor([-1, C, -(2**40), C + 5])[torch.arange(0, G, 2) % 4]
    counts = torch.tensor([G + 3] + [-2] * (B - 1))
    bad = dict(case, gt_labels=labels, gt_counts=counts)
    zero_class = torch.cat([case["pred_scores"], torch.zeros_like(case["pred_scores"][..., :1])], dim=-1)
    return bad, dict(
        bad,
        pred_scores=zero_class,
        gt_labels=torch.where((labels < 0) | (labels >= C), C, labels),
        gt_counts=counts.clamp(0, G),
    )


def finite_padding(case: dict) -> dict:
    """The case with its padding rows (NaN) replaced by a finite box, for runs whose gt_counts count them."""
    gt = case["gt_boxes"]
    box = torch.tensor([8.0, 8.0, 40.0, 56.0] if gt.shape[-1] == 4 else [8.0, 8.0, 4.0, 40.0, 56.0, 20.0])
    return dict(case, gt_boxes=torch.where(gt.isnan(), box, gt))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emu", metavar="LIBRARY", help="run the emulated kernels of this library (CPU tensors)")
    parser.add_argument("--dry-run", action="store_true", help="the CPU kernels stand in for CUDA (checks this script)")
    args = parser.parse_args()
    if args.emu:
        torch.ops.load_library(args.emu)
        ops, device, sync = torch.ops.atss_ops_emu, "cpu", (lambda: None)
    elif args.dry_run:
        ops, device, sync = torch.ops.atss_ops, "cpu", (lambda: None)
    else:
        if not (torch.cuda.is_available() and atss_ops.has_kernel("atss_assign", "cuda")):
            print("sanitizer workload: no CUDA device or no CUDA kernels")
            return 2
        ops, device, sync = torch.ops.atss_ops, "cuda", torch.cuda.synchronize
    checks_values = args.dry_run  # the CPU kernels reject out-of-range values instead of clamping them

    failures = []
    n = 0
    for name, case, env in workload(emu=bool(args.emu)):
        with env_vars(**env):
            expected = compute_stages(case, torch.ops.atss_ops)
            dev_case, dev_stages = move(case, device), move(expected, device)
            for op in OPS:
                out = getattr(ops, op)(*op_args(op, dev_case, dev_stages))
                sync()
                n += 1
                if not same(out, expected[op]):
                    failures.append(f"{name}: {op}")
            B, G = case["gt_boxes"].shape[:2]
            # gt_counts out of range: clamped (no value check on CUDA; the CPU kernels raise).
            if not checks_values and B > 0 and G > 0:
                bad = torch.tensor([G + 3] + [-2] * (B - 1), dtype=torch.int64)
                padded = finite_padding(case)
                ok = torch.ops.atss_ops.atss_assign(*op_args("atss_assign", dict(padded, gt_counts=bad.clamp(0, G))))
                out = ops.atss_assign(*op_args("atss_assign", move(dict(padded, gt_counts=bad), device)))
                sync()
                n += 1
                if not same(out, ok):
                    failures.append(f"{name}: atss_assign with gt_counts out of range")
            # Misaligned anchors: the scalar-load path.
            if case["anchors"].shape[0] > 0:
                a = case["anchors"]
                buf = torch.empty(a.numel() + 1, device=device)
                buf[1:] = a.flatten().to(device)
                shifted = dict(dev_case, anchors=buf[1:].view(-1, a.shape[1]))
                out = ops.atss_assign(*op_args("atss_assign", shifted))
                sync()
                n += 1
                if not same(out, expected["atss_assign"]):
                    failures.append(f"{name}: atss_assign with misaligned anchors")
            # Candidate indices out of range: empty slots (the CPU kernels raise).
            cand = dev_stages["topk_per_level"]
            if not checks_values and cand.numel() > 0:
                A = case["anchors"].shape[0]
                junk = cand.clone()
                junk[..., ::2] = A + 5
                junk[..., 1::3] = -9
                ops.iou_statistics(
                    dev_case["anchors"], dev_case["gt_boxes"], junk, dev_case["gt_counts"], case["center_eps"]
                )
                cand_iou, _, pos = dev_stages["iou_statistics"]
                ops.resolve_multi_gt(junk, cand_iou, pos, A)
                # ... with ignored anchors and step 8, which reads gt_index through the candidates too.
                ignore = torch.arange(B * A, device=device).view(B, A) % 3 == 0
                ops.resolve_multi_gt(junk, cand_iou, pos, A, ignore, True)
                sync()
                n += 3
        print(f"  {name}: ok so far ({n} calls)", flush=True)
    for name, case, env in tal_workload(emu=bool(args.emu)):
        with env_vars(**env):
            out = ops.tal_assign(*tal_args(move(case, device)))
            sync()
            n += 1
            if not same(out, torch.ops.atss_ops.tal_assign(*tal_args(case))):
                failures.append(f"{name}: tal_assign")
        print(f"  tal {name}: ok so far ({n} calls)", flush=True)
    if not checks_values:
        bad, good = tal_bad_values(make_tal_case("duplicate_gts"))
        out = ops.tal_assign(*tal_args(move(bad, device)))
        sync()
        n += 1
        if not same(out, torch.ops.atss_ops.tal_assign(*tal_args(good))):
            failures.append("duplicate_gts: tal_assign with labels and gt_counts out of range")
    for f in failures:
        print("MISMATCH", f)
    where = "emulated CUDA" if args.emu else ("CPU (dry run)" if args.dry_run else "CUDA")
    print(f"sanitizer workload: {n} {where} calls, {len(failures)} mismatches with the CPU kernels")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
