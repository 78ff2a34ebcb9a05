"""A small workload that runs every CUDA op through every kernel path, for compute-sanitizer.

    compute-sanitizer --tool memcheck  --error-exitcode 1 python scripts/sanitizer_workload.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python scripts/sanitizer_workload.py

Covers: the four stage ops and the fused atss_assign; padding GTs and
gt_counts out of [0, G] (clamped); anchor_valid; empty levels; topk 1 (4-key
lists), 9, 13 (16-key lists), 27 and 40 / 100 (32-key lists, several passes
per chunk and per merge); one level cut into several chunks; a batch with
enough rows for 8192-anchor chunks staged through several shared-memory tiles;
misaligned anchors (scalar loads); candidate indices out of range; signed
zeros; G == 0, B == 0, A == 0. Each result is also compared with the CPU
kernel (bits), so a run that the sanitizer passes is a correct run too.
Exit status 0 when every comparison holds.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402

import atss_ops  # noqa: E402
from cases import OPS, bits_equal, compute_stages, make_case, move, op_args, random_case  # noqa: E402


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return bits_equal(a, b)
    return all(bits_equal(x, y) for x, y in zip(a, b))


def workload():
    named = ["coco_s1_b2_g7", "nan_padding", "anchor_valid_random", "empty_level_everywhere",
             "multi_anchor_3scales", "topk_larger_than_every_level", "c1_topk1_one_level", "signed_zeros",
             "huge_coordinates_overflow", "g0", "b0", "a0_empty_levels", "gt_counts_all_zero", "duplicate_gts"]
    for name in named:
        yield name, make_case(name)
    yield "chunks_topk13_valid", random_case(1, 2, 5, 512, 640, (8, 16, 32), 13, counts=True, valid=0.7)
    yield "chunks_topk40", random_case(2, 1, 9, 384, 512, (8, 16), 40, valid=0.9)
    yield "chunks_topk100", random_case(3, 1, 3, 256, 384, (8, 16), 100)
    yield "global_score_buffers_topk200", random_case(5, 1, 4, 384, 512, (8, 16, 32), 200, counts=True, valid=0.8)
    yield "many_rows_8192_chunks", random_case(4, 8, 300, 800, 1344, (8, 16, 32, 64, 128), 9, counts=True)


def main() -> int:
    # --dry-run: the same calls with the CPU kernels standing in for CUDA (checks this script itself).
    dry_run = "--dry-run" in sys.argv[1:]
    device = "cpu" if dry_run else "cuda"
    if not dry_run and not (torch.cuda.is_available() and atss_ops.has_kernel("atss_assign", "cuda")):
        print("sanitizer workload: no CUDA device or no CUDA kernels")
        return 2

    def sync():
        if not dry_run:
            torch.cuda.synchronize()

    failures = []
    n = 0
    for name, case in workload():
        expected = compute_stages(case, torch.ops.atss_ops)
        cuda_case, cuda_stages = move(case, device), move(expected, device)
        for op in OPS:
            out = getattr(torch.ops.atss_ops, op)(*op_args(op, cuda_case, cuda_stages))
            sync()
            n += 1
            if not same(out, expected[op]):
                failures.append(f"{name}: {op}")
        # gt_counts out of range (clamped, no value check on CUDA; the CPU kernels raise).
        if not dry_run and case["gt_boxes"].shape[0] > 0 and case["gt_boxes"].shape[1] > 0:
            B, G = case["gt_boxes"].shape[:2]
            bad = torch.tensor([G + 3] + [-2] * (B - 1), dtype=torch.int64)
            ok_case = dict(case, gt_counts=bad.clamp(0, G))
            out = torch.ops.atss_ops.atss_assign(*op_args("atss_assign", move(dict(case, gt_counts=bad), device)))
            sync()
            n += 1
            if not same(out, torch.ops.atss_ops.atss_assign(*op_args("atss_assign", ok_case))):
                failures.append(f"{name}: atss_assign with gt_counts out of range")
        # Misaligned anchors: the scalar-load path.
        if case["anchors"].shape[0] > 0:
            a = case["anchors"]
            buf = torch.empty(a.numel() + 1, device=device)
            buf[1:] = a.flatten().to(device)
            shifted = dict(cuda_case, anchors=buf[1:].view(-1, 4))
            out = torch.ops.atss_ops.atss_assign(*op_args("atss_assign", shifted))
            sync()
            n += 1
            if not same(out, expected["atss_assign"]):
                failures.append(f"{name}: atss_assign with misaligned anchors")
        # Candidate indices out of range: empty slots (the CPU kernels raise).
        cand = cuda_stages["topk_per_level"]
        if not dry_run and cand.numel() > 0:
            A = case["anchors"].shape[0]
            junk = cand.clone()
            junk[..., ::2] = A + 5
            junk[..., 1::3] = -9
            torch.ops.atss_ops.iou_statistics(cuda_case["anchors"], cuda_case["gt_boxes"], junk,
                                              cuda_case["gt_counts"], case["center_eps"])
            cand_iou, _, pos = cuda_stages["iou_statistics"]
            torch.ops.atss_ops.resolve_multi_gt(junk, cand_iou, pos, A)
            sync()
            n += 2
    for f in failures:
        print("MISMATCH", f)
    print(f"sanitizer workload: {n} CUDA calls, {len(failures)} mismatches with the CPU kernels")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
