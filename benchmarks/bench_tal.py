"""Task-aligned assignment: Ultralytics' ``TaskAlignedAssigner`` against ``atss_ops.tal_assign``.

    python -m benchmarks.bench_tal [--threads 1] [--cases g20,g100,dense] [--out benchmarks/results]
    python -m benchmarks.bench_tal --device cuda     # the CUDA kernel (tal_cuda.json)
    python -m benchmarks.bench_tal --work            # no GPU: the CUDA kernel's work per GT (emulated)

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

``--device cuda`` times the CUDA kernel on the same inputs moved to the GPU (CUDA events after
warm-up; memory: ``torch.cuda.max_memory_allocated`` during the call minus what was allocated
before), against Ultralytics' assigner when it imports there and always against the dense
pure-PyTorch reference (``atss_ops.reference_tal``: ``[B, G, A]`` tensors, like Ultralytics'),
and checks the kernel's outputs against the CPU kernel's, bit for bit. ``--device cpu`` runs the
same path on the CPU (``--quick``: small batches; the plumbing of ``scripts/gpu_check.sh --dry-run``).

``--work`` needs no GPU: it runs the cases (on ``WORK_BATCH`` images) through the CUDA kernel
sources on the host execution model (``make emu``; ``ATSS_EMU_LIBRARY`` points at another build),
checks their bits against the CPU kernel, and prints what the selection kernel's work counters
(``csrc/cuda/work_counters.h``) measured per GT: the blocks of 32 points whose box it tested and
those it visited, the points given the inside test, those inside, the inserts into its top-k list
(``tal_work.json`` in ``--out``).
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
from atss_ops import reference_tal

from .bench_cpu import environment, time_call
from .bench_gpu import environment as device_environment
from .bench_gpu import outputs_equal, peak_extra_bytes, time_fn
from .cases import anchor_points
from .rss import peak_extra_rss

# name: (B, G): the B = 16 at G = 20 and 100; the dense case (1,000 boxes per image) at B = 8,
# where Ultralytics' [B, G, A] tensors already take gigabytes.
CASES = {"g20": (16, 20), "g100": (16, 100), "dense": (8, 1000)}
# --quick (the device path's plumbing on a CPU): the same cases on smaller batches.
QUICK_CASES = {"g20": (2, 20), "g100": (2, 100), "dense": (1, 1000)}
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


def write_json(folder: str, name: str, obj) -> str:
    """Writes ``obj`` as ``folder/name`` (the folder made if needed) and returns the path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
    return path


def ultralytics_assigner():
    """Ultralytics' TaskAlignedAssigner class, or None when ultralytics does not import (the GPU
    machine has had no package registry)."""
    try:
        from ultralytics.utils.tal import TaskAlignedAssigner
    except ImportError:
        return None
    return TaskAlignedAssigner


def device_methods(x: Dict[str, torch.Tensor]):
    """The --device path's calls (inputs already on the device): name -> call of no argument."""
    B, G = x["gt_boxes"].shape[:2]
    min_side = float(STRIDES[len(STRIDES) // 2])  # Ultralytics' stride_val: its middle stride
    args = (x["pred_scores"], x["pred_boxes"], x["anchor_points"], x["gt_boxes"], x["gt_labels"], x["gt_counts"])
    calls = {}
    assigner_class = ultralytics_assigner()
    if assigner_class is not None:
        assigner = assigner_class(topk=10, num_classes=NUM_CLASSES, alpha=0.5, beta=6.0, stride=list(STRIDES))
        slots = torch.arange(G, device=x["gt_boxes"].device)
        mask_gt = (slots[None, :] < x["gt_counts"][:, None]).float()[..., None]
        labels = x["gt_labels"].float()[..., None]
        calls["ultralytics"] = lambda: assigner(
            x["pred_scores"], x["pred_boxes"], x["anchor_points"], labels, x["gt_boxes"], mask_gt
        )
    calls["reference"] = lambda: reference_tal.tal_assign(*args, 10, 0.5, 6.0, True, min_side, None, 1e-9)
    calls["tal_assign"] = lambda: atss_ops.tal_assign(*args, min_side=min_side)
    calls["tal_assign+targets"] = lambda: atss_ops.tal_targets(
        calls["tal_assign"](), x["gt_boxes"], x["gt_labels"], NUM_CLASSES
    )
    return calls


def bench_case_device(case: str, device: torch.device, quick: bool) -> Dict:
    """One case on ``device``: every call's time and peak extra device memory, the kernel's bits
    against the CPU kernel's, and the speed and memory ratios against Ultralytics' assigner (or,
    where it does not import, the reference)."""
    B, G = (QUICK_CASES if quick else CASES)[case]
    cpu_inputs = inputs(B, G)
    x = {k: v.to(device) for k, v in cpu_inputs.items()}
    calls = device_methods(x)
    baseline = "ultralytics" if "ultralytics" in calls else "reference"
    ours = calls["tal_assign"]()
    cpu_args = [cpu_inputs[k] for k in ("pred_scores", "pred_boxes", "anchor_points", "gt_boxes", "gt_labels")]
    expected = torch.ops.atss_ops.tal_assign(
        *cpu_args, cpu_inputs["gt_counts"], 10, 0.5, 6.0, True, float(STRIDES[1]), None, 1e-9
    )
    same_bits = outputs_equal([t.cpu() for t in ours], expected)
    row = {"case": case, "B": B, "G": G, "A": x["anchor_points"].shape[0], "C": NUM_CLASSES}
    row.update(device=str(device), baseline=baseline, bits_equal_cpu_kernel=same_bits)
    row["foreground_tal_assign"] = int((ours.gt_index >= 0).sum())
    if "ultralytics" in calls:
        theirs = calls["ultralytics"]()
        row["foreground_ultralytics"] = int(theirs[3].sum())
        row["same_foreground_and_gt"] = int((theirs[3] & (ours.gt_index >= 0) & (theirs[4] == ours.gt_index)).sum())
    for name, fn in calls.items():
        t = time_fn(fn, device, warmup=2, min_runs=5, max_runs=200, min_seconds=0.5 if quick else 1.5)
        row[name] = {k.replace("_us", "_ms"): v / 1e3 for k, v in t.items() if k.endswith("_us")}
        row[name]["runs"] = t["runs"]
        row[name]["peak_extra_bytes"] = peak_extra_bytes(fn, device)
    for name in calls:
        if name == baseline:
            continue
        row[name]["speedup"] = row[baseline]["median_ms"] / row[name]["median_ms"]
        theirs_bytes, ours_bytes = row[baseline]["peak_extra_bytes"], row[name]["peak_extra_bytes"]
        if theirs_bytes is not None and ours_bytes is not None:
            row[name]["memory_ratio"] = theirs_bytes / max(ours_bytes, 1)
    return row


def print_device_table(rows: List[Dict]) -> None:
    """One line per (case, method); speed-up and memory against the case's baseline line."""
    header = (
        f"{'case':<6} {'B':>3} {'G':>5} {'A':>5}  {'method':<19} {'ms (p10-p90)':>26} {'speed-up':>9}  "
        f"{'peak extra MB':>13} {'memory':>7}  bits = CPU kernel"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        for name in ("ultralytics", "reference", "tal_assign", "tal_assign+targets"):
            if name not in r:
                continue
            m = r[name]
            timing = f"{m['median_ms']:.3f} ({m['p10_ms']:.3f}-{m['p90_ms']:.3f})"
            speedup = f"{m['speedup']:.1f}x" if "speedup" in m else "baseline"
            peak = "" if m["peak_extra_bytes"] is None else _mb(m["peak_extra_bytes"])
            ratio = f"{1 / m['memory_ratio']:.4f}" if "memory_ratio" in m else ""
            bits = str(r["bits_equal_cpu_kernel"]) if name == "tal_assign" else ""
            print(
                f"{r['case']:<6} {r['B']:>3} {r['G']:>5} {r['A']:>5}  {name:<19} {timing:>26} {speedup:>9}  "
                f"{peak:>13} {ratio:>7}  {bits}"
            )


def main_device(args, device: torch.device) -> int:
    if not atss_ops.has_kernel("tal_assign", device.type):
        print(f"atss_ops has no compiled tal_assign kernel for {device.type}", file=sys.stderr)
        return 1
    env = device_environment(device)
    assigner_class = ultralytics_assigner()
    if assigner_class is None:
        env["ultralytics"] = None
        print("bench_tal: ultralytics does not import here: the baseline is the dense reference", file=sys.stderr)
    else:
        import ultralytics

        env["ultralytics"] = ultralytics.__version__
    rows = []
    for case in args.cases.split(","):
        print(f"bench_tal: {case} on {device} ...", file=sys.stderr)
        rows.append(bench_case_device(case, device, args.quick))
    path = write_json(args.out, f"tal_{device.type}.json", {"environment": env, "quick": args.quick, "rows": rows})
    print(
        f"\natss_ops TAL benchmark on {env.get('card')}: torch {env['torch']}, CUDA {env['cuda']}, "
        f"ultralytics {env['ultralytics']} (written to {path})"
    )
    print_device_table(rows)
    return 0 if all(r["bits_equal_cpu_kernel"] for r in rows) else 1


# --work: images per case through the emulated kernels (slow: every thread is an OS thread).
WORK_BATCH = {"g20": 2, "g100": 2, "dense": 1}
WORK_COUNTERS = ("block_bounds", "blocks_visited", "points_tested", "points_inside", "keys_inserted")


def work_case(case: str) -> Dict:
    """Per-GT means of tal_select_kernel's work counters on ``case`` (its first WORK_BATCH images),
    over the valid GTs, and whether the emulated kernels' bits equal the CPU kernel's."""
    B, G = CASES[case]
    x = inputs(B, G)
    batch = WORK_BATCH[case]
    names = ("pred_scores", "pred_boxes", "anchor_points", "gt_boxes", "gt_labels", "gt_counts")
    args = [x[k] if k == "anchor_points" else x[k][:batch].contiguous() for k in names]
    options = (10, 0.5, 6.0, True, float(STRIDES[1]), None, 1e-9)
    out = torch.ops.atss_ops_emu.tal_assign(*args, *options)
    counters = {c: torch.ops.atss_ops_emu._work_counters(c).view(batch, G) for c in WORK_COUNTERS}
    expected = torch.ops.atss_ops.tal_assign(*args, *options)
    same = outputs_equal(out, expected)
    valid = torch.arange(G)[None, :] < args[5][:, None]
    row = {c: round(v[valid].double().mean().item(), 1) for c, v in counters.items()}
    row.update(case=case, B=batch, G=G, A=x["anchor_points"].shape[0], valid_gts=int(valid.sum()), bits_equal_cpu=same)
    return row


def main_work(args) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    library = os.environ.get("ATSS_EMU_LIBRARY") or os.path.join(root, "build-emu", "libatss_ops_emu.so")
    if not os.path.exists(library):
        print(f"bench_tal --work: no emulated library at {library} (build it with `make emu`)", file=sys.stderr)
        return 2
    torch.ops.load_library(library)
    rows = []
    for case in args.cases.split(","):
        print(
            f"bench_tal --work: {case}, {WORK_BATCH[case]} image(s) through the emulated kernels ...", file=sys.stderr
        )
        rows.append(work_case(case))
    path = write_json(args.out, "tal_work.json", rows)
    print(f"tal_assign's CUDA selection (emulated): work per valid GT, mean (written to {path})")
    header = f"{'case':<6} {'B run':>5} {'G':>5} {'A':>5}  " + "  ".join(f"{c:>14}" for c in WORK_COUNTERS) + "  bits"
    print(header)
    print("-" * len(header))
    for r in rows:
        figures = "  ".join(f"{r[c]:>14.1f}" for c in WORK_COUNTERS)
        bits = "= CPU" if r["bits_equal_cpu"] else "WRONG"
        print(f"{r['case']:<6} {r['B']:>5} {r['G']:>5} {r['A']:>5}  {figures}  {bits}")
    return 0 if all(r["bits_equal_cpu"] for r in rows) else 1


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
    p.add_argument(
        "--device",
        help="run the device path on this device (cuda; cpu: the same path on the CPU) instead of the CPU comparison",
    )
    p.add_argument("--quick", action="store_true", help="with --device: small batches (B <= 2)")
    p.add_argument("--work", action="store_true", help="the emulated CUDA kernel's work per GT (no GPU needed)")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        case, method = args.memory_child.split(",", 1)
        print(memory_child(case, method))
        return 0
    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown:
        p.error(f"--cases: unknown case {unknown[0]!r}; known: {', '.join(CASES)}")
    if args.work:
        return main_work(args)
    if args.device is not None:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device here")
        return main_device(args, device)
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
        print(f"bench_tal: {case} ...", file=sys.stderr)
        rows.append(bench_case(case, args.threads))
    path = write_json(args.out, "tal.json", {"environment": env, "rows": rows})
    print(
        f"\nCPU: {env['cpu']}, {env['threads']} thread(s), torch {env['torch']}, ultralytics {env['ultralytics']} "
        f"(written to {path})"
    )
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
