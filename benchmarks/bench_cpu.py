"""CPU benchmark: the compiled ops against the pure-PyTorch reference.

    python -m benchmarks.bench_cpu [--check] [--cases coco-b2-g20,...] [--out benchmarks/results]

``--check`` first verifies, on a random COCO-like batch, that every op's kernel
equals the reference bit for bit (exit status 1 otherwise). Then, for each case,
it times each stage op against the reference's same stage (same inputs), and the
fused ``atss_assign`` kernel against the reference's whole function: median and
10th-90th percentile over repeated runs after warm-up. The table is printed once,
at the end, and written as JSON with the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

import atss_ops
from atss_ops import reference
from atss_ops._extension import OPS

from .cases import CPU_CASES, grid_anchors, random_gt


def time_call(fn: Callable[[], object], min_runs: int = 5, max_runs: int = 200, budget_s: float = 2.0) -> Dict:
    """Times ``fn``: warm-up, then runs until ``budget_s`` or ``max_runs`` (at least ``min_runs``)."""
    for _ in range(2):
        fn()
    samples: List[float] = []
    start = time.perf_counter()
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    q = lambda p: samples[min(len(samples) - 1, int(p * len(samples)))]  # noqa: E731
    return {"median_ms": statistics.median(samples), "p10_ms": q(0.1), "p90_ms": q(0.9), "runs": len(samples)}


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.float32:
        return torch.equal(a.view(torch.int32), b.view(torch.int32))
    return torch.equal(a, b)


def check_ops(seed: int = 0) -> bool:
    """Every op's CPU kernel against the reference on one random batch; prints a line per op."""
    anchors, levels = grid_anchors(800, 1344)
    gt = random_gt(2, 20, 800, 1344, seed=seed)
    counts = torch.tensor([20, 13])
    gt[1, 13:] = float("nan")  # padding is never read
    valid = torch.ones(2, anchors.shape[0], dtype=torch.bool)
    valid[1, anchors[:, 2] > 1100] = False
    ops = torch.ops.atss_ops
    d_k = ops.center_distance(anchors, gt, counts)
    d_r = reference.center_distance(anchors, gt, counts)
    cand = ops.topk_per_level(d_k, levels, 9, counts, valid)
    stats = ops.iou_statistics(anchors, gt, cand, counts, 0.01)
    rows = [
        ("center_distance", [d_k], [d_r]),
        ("topk_per_level", [cand], [reference.topk_per_level(d_k, levels, 9, counts, valid)]),
        ("iou_statistics", list(stats), list(reference.iou_statistics(anchors, gt, cand, counts, 0.01))),
        (
            "resolve_multi_gt",
            list(ops.resolve_multi_gt(cand, stats[0], stats[2], anchors.shape[0])),
            list(reference.resolve_multi_gt(cand, stats[0], stats[2], anchors.shape[0])),
        ),
        (
            "atss_assign",
            list(ops.atss_assign(anchors, levels, gt, counts, 9, valid, 0.01)),
            list(reference.atss_assign(anchors, levels, gt, counts, 9, valid, 0.01)),
        ),
    ]
    ok = True
    print("bit-exact check, kernel vs reference (B=2, G=20 with padding and an anchor mask, A=22,400):")
    for name, got, want in rows:
        same = all(bits_equal(g, w) for g, w in zip(got, want))
        ok &= same
        print(f"  {name:<17} {'identical' if same else 'MISMATCH'}")
    return ok


STAGES = OPS  # every op, in the order the fused op chains them


def bench_case(name: str, spec, topk: int = 9) -> List[Dict]:
    """One row per op: the kernel and the reference's same function, on the same inputs."""
    B, G, H, W, strides = spec
    anchors, levels = grid_anchors(H, W, strides)
    gt = random_gt(B, G, H, W, seed=1)
    A = anchors.shape[0]
    ops = torch.ops.atss_ops
    dist = ops.center_distance(anchors, gt)
    cand = ops.topk_per_level(dist, levels, topk)
    cand_iou, _, positive = ops.iou_statistics(anchors, gt, cand)
    args = {
        "center_distance": (anchors, gt),
        "topk_per_level": (dist, levels, topk),
        "iou_statistics": (anchors, gt, cand),
        "resolve_multi_gt": (cand, cand_iou, positive, A),
        "atss_assign": (anchors, levels, gt, None, topk),
    }
    rows = []
    print(f"timing {name} (B={B}, G={G}, A={A}) ...", file=sys.stderr)
    for op in STAGES:
        ref = time_call(lambda op=op: getattr(reference, op)(*args[op]), budget_s=2.0)
        kern = time_call(lambda op=op: getattr(ops, op)(*args[op]), budget_s=1.0)
        rows.append(
            {
                "case": name,
                "B": B,
                "G": G,
                "A": A,
                "op": op,
                "reference": ref,
                "kernel": kern,
                "speedup": ref["median_ms"] / kern["median_ms"],
            }
        )
    return rows


def _timing(t: Dict) -> str:
    return f"{t['median_ms']:.3f} ({t['p10_ms']:.3f}-{t['p90_ms']:.3f})"


def print_table(rows: List[Dict]) -> None:
    """Each stage op against the reference's same stage; the fused atss_assign against the
    reference's whole atss_assign (its four stages chained)."""
    header = (
        f"{'case':<15} {'B':>3} {'G':>4} {'A':>6}  {'op':<17} {'reference ms (p10-p90)':>28} "
        f"{'kernel ms (p10-p90)':>28} {'speed-up':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['case']:<15} {r['B']:>3} {r['G']:>4} {r['A']:>6}  {r['op']:<17} {_timing(r['reference']):>28} "
            f"{_timing(r['kernel']):>28} {r['speedup']:>8.1f}x"
        )


def environment() -> Dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "device": "cpu",
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="verify kernel == reference bit for bit first")
    p.add_argument("--cases", default=",".join(CPU_CASES), help="comma-separated case names")
    p.add_argument("--out", default="benchmarks/results", help="folder for cpu.json")
    args = p.parse_args(argv)
    if not atss_ops.has_kernel("atss_assign", "cpu"):
        print(f"atss_ops: {atss_ops._extension.EXTENSION_ERROR}", file=sys.stderr)
        return 1
    if args.check and not check_ops():
        return 1
    env = environment()
    print(f"\nCPU benchmark: {env['cpu']}, {env['threads']} threads, torch {env['torch']}", file=sys.stderr)
    rows: List[Dict] = []
    for name in args.cases.split(","):
        if name not in CPU_CASES:
            p.error(f"--cases: unknown case {name!r}; known: {', '.join(CPU_CASES)}")
        rows += bench_case(name, CPU_CASES[name])
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "cpu.json")
    with open(path, "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=2)
    print(f"\nCPU: {env['cpu']}, {env['threads']} threads, torch {env['torch']} (written to {path})")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
