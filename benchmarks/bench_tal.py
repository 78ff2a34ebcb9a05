"""Task-aligned assignment on the CPU: Ultralytics' ``TaskAlignedAssigner`` against ``atss_ops.tal_assign``.

    python -m benchmarks.bench_tal [--threads 1] [--cases g20,g100,dense] [--out benchmarks/results]

Both get the same inputs: YOLO's 8,400 anchor points of a 640 x 640 image (strides 8, 16, 32),
predicted class probabilities ``[B, A, 80]`` and boxes around each point, random GT boxes with
padding, Ultralytics' detection-loss settings (topk 10, alpha 0.5, beta 6, CIoU, its middle
stride as ``min_side``). ``tal_assign`` returns its own outputs and then Ultralytics' five
(``tal_targets``, which builds the ``[B, A, C]`` class targets): the timed call is the whole
replacement. Time: median and 10th-90th percentile over repeated calls after warm-up, on one
thread by default. Memory: peak extra resident memory of one call, measured in a fresh process
per (case, method) (``VmHWM`` after a reset, minus ``VmRSS`` before). The table says how many
anchors both call foreground and how many get the same GT (the documented differences of
docs/contract.md explain the rest). Needs ultralytics (imported, never copied: AGPL-3.0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List

import torch

import atss_ops

from .bench_cpu import environment, time_call
from .cases import anchor_points
from .rss import peak_extra_rss

# name: (B, G): the B = 16 at G = 20 and 100; the dense case (1,000 boxes per image) at B = 8,
# where Ultralytics' [B, G, A] tensors already take gigabytes.
CASES = {"g20": (16, 20), "g100": (16, 100), "dense": (8, 1000)}
NUM_CLASSES = 80
STRIDES = (8, 16, 32)


def inputs(B: int, G: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    """A YOLO-like batch: predictions around each point, GTs of all sizes, 3/4 of the slots valid on average."""
    g = torch.Generator().manual_seed(seed)
    points = anchor_points(640, STRIDES)
    A = points.shape[0]
    ltrb = torch.rand(B, A, 4, generator=g) * 60 + 0.5
    boxes = torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)
    centre = torch.rand(B, G, 2, generator=g) * 600 + 20
    side = G**-0.5 * 640
    wh = torch.rand(B, G, 2, generator=g) ** 2 * side + 2
    gt = torch.cat([centre - wh / 2, centre + wh / 2], dim=-1).clamp(0, 640)
    return dict(
        pred_scores=torch.rand(B, A, NUM_CLASSES, generator=g),
        pred_boxes=boxes,
        anchor_points=points,
        gt_boxes=gt,
        gt_labels=torch.randint(0, NUM_CLASSES, (B, G), generator=g),
        gt_counts=torch.randint(G // 2, G + 1, (B,), generator=g),
    )


def methods(x: Dict[str, torch.Tensor]):
    """name -> a call of no argument returning (fg_mask, target_gt_idx)-like outputs."""
    from ultralytics.utils.tal import TaskAlignedAssigner

    B, G = x["gt_boxes"].shape[:2]
    mask_gt = (torch.arange(G)[None, :] < x["gt_counts"][:, None]).float()[..., None]
    labels = x["gt_labels"].float()[..., None]
    assigner = TaskAlignedAssigner(topk=10, num_classes=NUM_CLASSES, alpha=0.5, beta=6.0, stride=list(STRIDES))
    min_side = float(assigner.stride_val)

    def ultralytics():
        return assigner(x["pred_scores"], x["pred_boxes"], x["anchor_points"], labels, x["gt_boxes"], mask_gt)

    def tal_assign():
        return atss_ops.tal_assign(
            x["pred_scores"],
            x["pred_boxes"],
            x["anchor_points"],
            x["gt_boxes"],
            x["gt_labels"],
            x["gt_counts"],
            min_side=min_side,
        )

    def tal_assign_targets():
        return atss_ops.tal_targets(tal_assign(), x["gt_boxes"], x["gt_labels"], NUM_CLASSES)

    buffer = torch.zeros(B, x["anchor_points"].shape[0], NUM_CLASSES)

    def tal_assign_targets_out():
        return atss_ops.tal_targets(tal_assign(), x["gt_boxes"], x["gt_labels"], NUM_CLASSES, out=buffer)

    return {
        "ultralytics": ultralytics,
        "tal_assign": tal_assign,
        "tal_assign+targets": tal_assign_targets,
        "+targets, out=": tal_assign_targets_out,
    }


def memory_child(case: str, method: str) -> int:
    """Peak extra RSS in bytes of one call, in this (fresh) process."""
    return peak_extra_rss(methods(inputs(*CASES[case]))[method])


def peak_memory(case: str, method: str, threads: int) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_tal",
        "--threads",
        str(threads),
        "--memory-child",
        f"{case},{method}",
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1])


def bench_case(case: str, threads: int) -> Dict:
    B, G = CASES[case]
    x = inputs(B, G)
    calls = methods(x)
    theirs, ours = calls["ultralytics"](), calls["tal_assign+targets"]()
    fg_t, fg_o = theirs[3], ours.fg_mask
    row = {"case": case, "B": B, "G": G, "A": x["anchor_points"].shape[0], "C": NUM_CLASSES}
    row["foreground_ultralytics"], row["foreground_tal_assign"] = int(fg_t.sum()), int(fg_o.sum())
    row["same_foreground_and_gt"] = int((fg_t & fg_o & (theirs[4] == ours.target_gt_idx)).sum())
    for name, fn in calls.items():
        row[name] = time_call(fn, min_runs=3, max_runs=50, budget_s=3.0)
        row[name]["peak_extra_bytes"] = peak_memory(case, name, threads)
    for name in ("tal_assign", "tal_assign+targets", "+targets, out="):
        row[name]["speedup"] = row["ultralytics"]["median_ms"] / row[name]["median_ms"]
        row[name]["memory_ratio"] = row["ultralytics"]["peak_extra_bytes"] / max(row[name]["peak_extra_bytes"], 1)
    return row


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f}"


def print_table(rows: List[Dict]) -> None:
    """One line per (case, method): the two tal_assign lines compare with the Ultralytics line above them.
    ``tal_assign`` returns its own outputs ([B, A] and [B, G]); ``+targets`` adds Ultralytics' five
    (the [B, A, C] class targets among them), what a drop-in replacement returns; ``out=`` writes
    the class targets into a buffer kept between calls (as a training loop can)."""
    header = (
        f"{'case':<6} {'B':>3} {'G':>5} {'A':>5}  {'method':<19} {'ms (p10-p90)':>24} {'speed-up':>8}  "
        f"{'peak extra MB':>13} {'memory':>7}  {'fg U / ours / same':>20}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        fg = f"{r['foreground_ultralytics']} / {r['foreground_tal_assign']} / {r['same_foreground_and_gt']}"
        for name in ("ultralytics", "tal_assign", "tal_assign+targets", "+targets, out="):
            m = r[name]
            timing = f"{m['median_ms']:.1f} ({m['p10_ms']:.1f}-{m['p90_ms']:.1f})"
            speedup = f"{m['speedup']:.1f}x" if "speedup" in m else ""
            ratio = f"{1 / m['memory_ratio']:.3f}" if "memory_ratio" in m else ""
            print(
                f"{r['case']:<6} {r['B']:>3} {r['G']:>5} {r['A']:>5}  {name:<19} {timing:>24} {speedup:>8}  "
                f"{_mb(m['peak_extra_bytes']):>13} {ratio:>7}  {fg if name == 'ultralytics' else '':>20}"
            )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    p.add_argument("--out", default="benchmarks/results", help="folder for tal.json")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        case, method = args.memory_child.split(",", 1)
        print(memory_child(case, method))
        return 0
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        print("bench_tal needs ultralytics: pip install ultralytics", file=sys.stderr)
        return 1
    if not atss_ops.has_kernel("tal_assign", "cpu"):
        print("atss_ops has no compiled tal_assign kernel: build it (make build)", file=sys.stderr)
        return 1
    env = environment()
    env["ultralytics"] = ultralytics.__version__
    rows = []
    for case in args.cases.split(","):
        if case not in CASES:
            p.error(f"--cases: unknown case {case!r}; known: {', '.join(CASES)}")
        print(f"bench_tal: {case} ...", file=sys.stderr)
        rows.append(bench_case(case, args.threads))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tal.json")
    with open(path, "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=2)
    print(
        f"\nCPU: {env['cpu']}, {env['threads']} thread(s), torch {env['torch']}, ultralytics {env['ultralytics']} "
        f"(written to {path})"
    )
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
