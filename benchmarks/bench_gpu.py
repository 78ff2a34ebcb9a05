"""GPU benchmark of atss_ops: reference vs kernels on the contract's COCO-like cases.

For each case of ``benchmarks.cases.GPU_CASES`` (B images, G boxes each, one
8S anchor per location on strides 8..128):

* ``reference``: ``atss_ops.reference.atss_assign``, eager PyTorch;
* ``reference (compiled)``: the same under ``torch.compile``;
* each op alone (``center_distance``, ``topk_per_level``, ``iou_statistics``,
  ``resolve_multi_gt``), fed the previous stage's output;
* ``atss_assign``: the fused kernel, called as an op from Python;
* ``atss_assign (graph)``: the fused kernel replayed from a CUDA graph (no
  Python or launch overhead: the GPU time alone).

Timing: CUDA events around each call, after warm-up (compilation included
there), median and 10th-90th percentile over many calls. Memory: peak extra
bytes (``torch.cuda.max_memory_allocated`` minus what was allocated before the
call) of the reference and of each kernel. The device name, torch, CUDA and
driver versions are recorded with the numbers. Results: a table printed last,
``bench_gpu.json`` and ``bench_gpu.png`` (latency against G, log-log) in
``--out`` (default ``benchmarks/results/``).

    python -m benchmarks.bench_gpu                       # the GPU cases, on CUDA
    python -m benchmarks.bench_gpu --device cpu --quick  # small sizes on the CPU (exercises the code)
    python -m benchmarks.bench_gpu --work                # work counters of the emulated kernels (no GPU)

``--work`` needs no GPU: it runs the same cases through the CUDA kernel sources on the
host execution model (the emulated library, ``make emu``; ``ATSS_EMU_LIBRARY`` points at
another build), reads the selection's work counters (``csrc/cuda/work_counters.h``:
distances computed, keys inserted, insert rounds, bound updates, tiles staged, passes, ...)
and prints their mean per GT row, checks the bits against the CPU kernels, and writes
``gpu_work.json`` (``{case: {counter: per-row mean}}``) in ``--out``. The emulation is slow,
so each case runs with a smaller batch (``WORK_BATCH``); the multiprocessor count the launch
heuristics see (``ATSS_NUM_SMS``) is scaled down with it so that the kernels plan the same
chunk length as for the full batch (the ``chunks`` column shows it): per-row figures do not
depend on the batch otherwise (every row is scanned alone). Images are drawn with the case's
seed, so the smaller batch holds the full batch's first images.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

import atss_ops
from atss_ops import reference
from benchmarks.cases import GPU_CASES, grid_anchors, luna16_anchors, random_gt, random_nodules

# Latency goals for atss_assign on an H100 (microseconds).
GOALS_US = {"coco-g20": 30.0, "coco-g100": 50.0, "yolo-640": 60.0, "crowd": 200.0, "aerial": 400.0}

# Small sizes for --quick (what the CPU can run in seconds).
QUICK_CASES = {
    "quick-g4": (2, 4, 256, 384, (8, 16, 32, 64, 128)),
    "quick-g16": (2, 16, 256, 384, (8, 16, 32, 64, 128)),
    "quick-g64": (2, 64, 256, 384, (8, 16, 32, 64, 128)),
}

TOPK = 9
CENTER_EPS = 0.01

# --work: images per case run through the emulated kernels (the full batch is GPU_CASES').
WORK_BATCH = {"coco-g20": 4, "coco-g100": 1, "yolo-640": 4, "crowd": 1, "aerial": 1}
# The counters --work reports, in table order (work_counters.h's names).
WORK_COUNTERS = (
    "distances_computed",
    "keys_inserted",
    "insert_rounds",
    "bound_updates",
    "passes",
    "chunks",
    "merge_keys_inserted",
    "block_bounds",
    "blocks_visited",
    "blocks_skipped",
    "keys_considered",
)
# The multiprocessor count of the GPU the launch heuristics plan for (an H100's).
WORK_SMS = 132


# --------------------------------------------------------------------------- environment


def environment(device: torch.device) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
        "atss_ops_cuda_kernels": atss_ops.has_kernel("atss_assign", "cuda"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            card=torch.cuda.get_device_name(device),
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
        )
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError):
            env["driver"] = None
    else:
        env.update(card=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return env


# --------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], object],
    device: torch.device,
    warmup: int,
    min_runs: int,
    max_runs: int,
    min_seconds: float,
    max_seconds: float = 5.0,
) -> dict:
    """Median and spread of fn's latency in microseconds (CUDA events on a GPU, a wall clock on the CPU).

    Runs until both min_runs calls and min_seconds have passed, or max_runs calls, or (slow
    variants) max_seconds once at least 10 calls are in."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: List[float] = []
    start_wall = time.perf_counter()

    def more(n: int) -> bool:
        elapsed = time.perf_counter() - start_wall
        if n >= max_runs or (n >= 10 and elapsed > max_seconds):
            return False
        return n < min_runs or elapsed < min_seconds

    if device.type == "cuda":
        events = []
        while more(len(events)):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) * 1e3 for s, e in events]
    else:
        while more(len(times)):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
    times.sort()

    def pct(q: float) -> float:
        return times[min(len(times) - 1, max(0, int(round(q * (len(times) - 1)))))]

    return {
        "median_us": statistics.median(times),
        "p10_us": pct(0.1),
        "p90_us": pct(0.9),
        "min_us": times[0],
        "runs": len(times),
    }


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak memory a call allocates beyond what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return int(peak)


# --------------------------------------------------------------------------- one case


def outputs_equal(a, b) -> bool:
    a, b = tuple(a), tuple(b)
    return len(a) == len(b) and all(
        x.dtype == y.dtype
        and x.shape == y.shape
        and torch.equal(
            x.contiguous().view(torch.int32) if x.dtype == torch.float32 else x,
            y.contiguous().view(torch.int32) if y.dtype == torch.float32 else y,
        )
        for x, y in zip(a, b)
    )


def run_case(name: str, params, device: torch.device, args) -> List[dict]:
    B, G, height, width, strides = params
    anchors, levels = grid_anchors(height, width, strides, device=str(device))
    gt = random_gt(B, G, height, width, seed=0, device=str(device))
    A = anchors.shape[0]
    ops = torch.ops.atss_ops
    kernels = atss_ops.has_kernel("atss_assign", device)
    timing = dict(
        device=device, warmup=args.warmup, min_runs=args.min_runs, max_runs=args.max_runs, min_seconds=args.min_seconds
    )

    def ref():
        return reference.atss_assign(anchors, levels, gt, None, TOPK, None, CENTER_EPS)

    variants: Dict[str, Callable[[], object]] = {"reference": ref}
    if args.compile:
        compiled = torch.compile(reference.atss_assign, dynamic=False)
        variants["reference (compiled)"] = lambda: compiled(anchors, levels, gt, None, TOPK, None, CENTER_EPS)
    if kernels:
        d = ops.center_distance(anchors, gt, None)
        cand = ops.topk_per_level(d, levels, TOPK, None, None)
        cand_iou, _, is_positive = ops.iou_statistics(anchors, gt, cand, None, CENTER_EPS)
        variants["center_distance"] = lambda: ops.center_distance(anchors, gt, None)
        variants["topk_per_level"] = lambda: ops.topk_per_level(d, levels, TOPK, None, None)
        variants["iou_statistics"] = lambda: ops.iou_statistics(anchors, gt, cand, None, CENTER_EPS)
        variants["resolve_multi_gt"] = lambda: ops.resolve_multi_gt(cand, cand_iou, is_positive, A)
        variants["atss_assign"] = lambda: ops.atss_assign(anchors, levels, gt, None, TOPK, None, CENTER_EPS)
        if device.type == "cuda" and args.graph:
            fused = variants["atss_assign"]
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                fused()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                graph_out = fused()
            variants["atss_assign (graph)"] = lambda: (graph.replay(), graph_out)[1]

    # The kernel must give the reference's bits (a benchmark of a wrong kernel is worthless).
    check = None
    if kernels and args.check:
        check = outputs_equal(variants["atss_assign"](), ref())

    goal = GOALS_US.get(name)
    return time_variants(
        name, variants, dict(B=B, G=G, A=A, C=atss_ops.num_candidates(levels, TOPK)), timing, check, goal
    )


# Variants whose peak extra memory is measured (not the CUDA-graph replay: its memory is the graph's).
MEMORY_VARIANTS = (
    "reference",
    "reference (compiled)",
    "center_distance",
    "topk_per_level",
    "iou_statistics",
    "resolve_multi_gt",
    "atss_assign",
)


def time_variants(
    name: str, variants: Dict[str, Callable[[], object]], shape: dict, timing: dict, check, goal_us
) -> List[dict]:
    """One row per variant: timing, peak extra memory, and for ``atss_assign`` whether it gave the
    reference's bits (``check``) and its latency goal."""
    rows = []
    for variant, fn in variants.items():
        print(f"  {name}: {variant} ...", flush=True)
        try:
            stats, error = time_fn(fn, **timing), None
        except Exception as exc:  # a failing variant (e.g. compile) must not lose the other numbers
            stats, error = {}, f"{type(exc).__name__}: {exc}"[:300]
            print(f"    failed: {error}", flush=True)
        memory = None
        if error is None and variant in MEMORY_VARIANTS:
            memory = peak_extra_bytes(fn, timing["device"])
        rows.append(
            dict(
                case=name,
                **shape,
                variant=variant,
                peak_extra_bytes=memory,
                error=error,
                matches_reference=check if variant == "atss_assign" else None,
                goal_us=goal_us if variant == "atss_assign" else None,
                **stats,
            )
        )
    return rows


# --------------------------------------------------------------------------- contract v2 rows


def v2_inputs(name: str, device: torch.device):
    """(anchors, levels, gt, topk, keyword arguments) of the contract v2 rows."""
    if name == "luna16-3d":  # MONAI's LUNA16 setting: B = 4, G = 8, A = 315,360, 3-D, no centre test
        anchors, levels = luna16_anchors(str(device))
        return anchors, levels, random_nodules(4, 8, seed=0, device=str(device)), 12, dict(center_eps=None)
    B, G, height, width, strides = GPU_CASES["coco-g20"]
    anchors, levels = grid_anchors(height, width, strides, device=str(device))
    gt = random_gt(B, G, height, width, seed=0, device=str(device))
    if name == "coco-g20 ensure_positive":
        return anchors, levels, gt, TOPK, dict(ensure_positive=True)
    # An ignore mask over a fifth of each image's anchors.
    ignore = torch.rand(B, anchors.shape[0], generator=torch.Generator().manual_seed(0)).to(device) < 0.2
    return anchors, levels, gt, TOPK, dict(anchor_ignore=ignore)


V2_CASES = ("luna16-3d", "coco-g20 ensure_positive", "coco-g20 anchor_ignore")


def run_v2_case(name: str, device: torch.device, args) -> List[dict]:
    """``atss_assign`` with the contract v2 arguments (and the reference, for the bits and the ratio)."""
    anchors, levels, gt, topk, kw = v2_inputs(name, device)
    B, G, A = gt.shape[0], gt.shape[1], anchors.shape[0]
    timing = dict(
        device=device, warmup=args.warmup, min_runs=args.min_runs, max_runs=args.max_runs, min_seconds=args.min_seconds
    )
    variants: Dict[str, Callable[[], object]] = {
        "reference": lambda: atss_ops.reference.atss_assign(anchors, levels, gt, topk=topk, **kw)
    }
    check = None
    if atss_ops.has_kernel("atss_assign", device):
        variants["atss_assign"] = lambda: atss_ops.atss_assign(anchors, levels, gt, topk=topk, **kw)
        if args.check:
            check = outputs_equal(variants["atss_assign"](), variants["reference"]())
    return time_variants(
        name, variants, dict(B=B, G=G, A=A, C=atss_ops.num_candidates(levels, topk)), timing, check, None
    )


# --------------------------------------------------------------------------- report


def fmt_us(v: Optional[float]) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v / 1000:.2f} ms" if v >= 10_000 else f"{v:.1f} us"


def fmt_mb(v: Optional[int]) -> str:
    return "-" if v is None else f"{v / 2**20:.2f} MB"


def table(rows: List[dict], env: dict) -> str:
    head = ["case", "B", "G", "A", "variant", "median", "p10-p90", "runs", "peak extra mem", "goal", "ok"]
    lines = []
    for r in rows:
        goal = r.get("goal_us")
        ok = "-"
        if goal is not None and r.get("median_us") is not None:
            ok = "yes" if r["median_us"] <= goal else "NO"
        if r.get("matches_reference") is False:
            ok = "WRONG"
        spread = "-" if r.get("p10_us") is None else f"{fmt_us(r['p10_us'])} - {fmt_us(r['p90_us'])}"
        lines.append(
            [
                r["case"],
                str(r["B"]),
                str(r["G"]),
                str(r["A"]),
                r["variant"],
                "error" if r.get("error") else fmt_us(r.get("median_us")),
                spread,
                str(r.get("runs", "-")),
                fmt_mb(r.get("peak_extra_bytes")),
                "-" if goal is None else fmt_us(goal),
                ok,
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = [
        f"atss_ops GPU benchmark on {env.get('card')} ({env['device']}), torch {env['torch']}, "
        f"CUDA {env['cuda']}, driver {env.get('driver', '-')}, {env['date']}",
        "  ".join(h.ljust(w) for h, w in zip(head, widths)),
        "  ".join("-" * w for w in widths),
    ]
    prev = None
    for line in lines:
        if prev is not None and line[0] != prev:
            out.append("")
        prev = line[0]
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    return "\n".join(out)


def plot(rows: List[dict], env: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["case"] not in V2_CASES]  # the curve over G of the 2-D cases
    fig, ax = plt.subplots(figsize=(7.5, 5))
    styles = {
        "reference": ("o-", "tab:red"),
        "reference (compiled)": ("s--", "tab:orange"),
        "atss_assign": ("^-", "tab:blue"),
        "atss_assign (graph)": ("v:", "tab:cyan"),
    }
    for variant, (marker, color) in styles.items():
        pts = sorted(
            (r["G"], r["median_us"], r["case"])
            for r in rows
            if r["variant"] == variant and r.get("median_us") is not None
        )
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, color=color, label=variant)
        if variant == "reference":
            for g, t, case in pts:
                ax.annotate(case, (g, t), textcoords="offset points", xytext=(4, 4), fontsize=7)
    goals = sorted((r["G"], r["goal_us"]) for r in rows if r.get("goal_us") is not None)
    if goals:
        ax.plot([g for g, _ in goals], [t for _, t in goals], "k_", markersize=14, label="goal")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("G (boxes per image)")
    ax.set_ylabel("latency per call (us, median)")
    ax.set_title(
        f"ATSS assignment: reference vs kernels\n{env.get('card')}, torch {env['torch']}, CUDA {env['cuda']}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- --work


def emu_library_path() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.environ.get("ATSS_EMU_LIBRARY") or os.path.join(root, "build-emu", "libatss_ops_emu.so")


def work_case(name: str, params, batch: int) -> dict:
    """Per-row means of the work counters of ``atss_assign`` on case ``name`` with ``batch`` images,
    through the emulated kernels; also whether the bits equal the CPU kernels'."""
    B, G, height, width, strides = params
    anchors, levels = grid_anchors(height, width, strides)
    gt = random_gt(B, G, height, width, seed=0)[:batch].contiguous()
    # Same chunk length as the full batch: the launch heuristics aim at 4 work items per
    # multiprocessor over ceil(rows / 8) tiles of rows, so scale the multiprocessors with the tiles.
    tiles_full, tiles = math.ceil(B * G / 8), math.ceil(batch * G / 8)
    sms = max(1, (WORK_SMS * tiles) // tiles_full)
    previous = os.environ.get("ATSS_NUM_SMS")
    os.environ["ATSS_NUM_SMS"] = str(sms)
    try:
        t0 = time.perf_counter()
        out = torch.ops.atss_ops_emu.atss_assign(anchors, levels, gt, None, TOPK, None, CENTER_EPS)
        seconds = time.perf_counter() - t0
        counters = {c: torch.ops.atss_ops_emu._work_counters(c) for c in WORK_COUNTERS}
    finally:
        if previous is None:
            os.environ.pop("ATSS_NUM_SMS")
        else:
            os.environ["ATSS_NUM_SMS"] = previous
    expected = torch.ops.atss_ops.atss_assign(anchors, levels, gt, None, TOPK, None, CENTER_EPS)
    row = {c: round(v.double().mean().item(), 2) for c, v in counters.items()}
    row.update(anchors=anchors.shape[0], batch=batch, rows=batch * G, num_sms=sms)
    return dict(figures=row, matches_cpu=outputs_equal(out, expected), seconds=seconds)


def work_table(results: Dict[str, dict]) -> str:
    head = ["case", "B run", "A", *WORK_COUNTERS, "bits"]
    lines = []
    for name, r in results.items():
        f = r["figures"]
        lines.append(
            [name, str(f["batch"]), str(f["anchors"]), *(f"{f[c]:.1f}" for c in WORK_COUNTERS)]
            + ["ok" if r["matches_cpu"] else "WRONG"]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    out = ["atss_assign's selection, emulated CUDA kernels: work per GT row (mean)"]
    out.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def run_work(args) -> int:
    library = emu_library_path()
    if not os.path.exists(library):
        print(f"bench_gpu --work: no emulated library at {library} (build it with `make emu`)")
        return 2
    torch.ops.load_library(library)
    cases = {c: GPU_CASES[c] for c in (args.cases or GPU_CASES)}
    results = {}
    for name, params in cases.items():
        batch = args.work_batch or WORK_BATCH[name]
        print(f"  {name}: {batch} image(s) through the emulated kernels ...", flush=True)
        results[name] = work_case(name, params, batch)
        print(f"    {results[name]['seconds']:.1f} s", flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_work.json")
    with open(path, "w") as f:
        json.dump({name: r["figures"] for name, r in results.items()}, f, indent=1)
    print(f"\nwrote {path}\n")
    print(work_table(results))
    return 0 if all(r["matches_cpu"] for r in results.values()) else 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (QUICK_CASES) and few runs")
    parser.add_argument("--cases", nargs="*", help="case names to run (default: all)")
    parser.add_argument(
        "--no-v2", dest="v2", action="store_false", help="skip the contract v2 rows (3-D LUNA16, step 8, ignore)"
    )
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled reference")
    parser.add_argument("--no-graph", dest="graph", action="store_false", help="skip the CUDA graph replay")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the kernel == reference check")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--min-runs", type=int, default=None)
    parser.add_argument("--max-runs", type=int, default=None)
    parser.add_argument("--min-seconds", type=float, default=None)
    parser.add_argument(
        "--work", action="store_true", help="work counters of the emulated kernels (no GPU): gpu_work.json"
    )
    parser.add_argument("--work-batch", type=int, default=None, help="--work: images per case (default WORK_BATCH)")
    args = parser.parse_args(argv)
    if args.work:
        unknown = [c for c in args.cases or () if c not in GPU_CASES]
        if unknown:
            parser.error(f"unknown cases {unknown}; choose from {list(GPU_CASES)}")
        return run_work(args)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device (use --device cpu --quick to exercise the benchmark on the CPU)")
        return 2
    quick = args.quick
    args.warmup = args.warmup if args.warmup is not None else (2 if quick else 10)
    args.min_runs = args.min_runs if args.min_runs is not None else (5 if quick else 50)
    args.max_runs = args.max_runs if args.max_runs is not None else (20 if quick else 2000)
    args.min_seconds = args.min_seconds if args.min_seconds is not None else (0.05 if quick else 1.0)
    cases = QUICK_CASES if quick else GPU_CASES
    if args.cases:
        unknown = [c for c in args.cases if c not in cases]
        if unknown:
            parser.error(f"unknown cases {unknown}; choose from {list(cases)}")
        cases = {c: cases[c] for c in args.cases}
    if device.type == "cuda" and not atss_ops.has_kernel("atss_assign", "cuda"):
        print("bench_gpu: WARNING: atss_ops has no CUDA kernels: only the reference is timed", flush=True)

    env = environment(device)
    print(json.dumps(env), flush=True)
    rows: List[dict] = []
    for name, params in cases.items():
        rows.extend(run_case(name, params, device, args))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.v2 and not quick and not args.cases:
        for name in V2_CASES:
            rows.extend(run_v2_case(name, device, args))

    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "bench_gpu.json")
    png_path = os.path.join(args.out, "bench_gpu.png")
    with open(json_path, "w") as f:
        json.dump({"environment": env, "topk": TOPK, "center_eps": CENTER_EPS, "results": rows}, f, indent=1)
    plot(rows, env, png_path)
    print(f"\nwrote {json_path} and {png_path}\n")
    print(table(rows, env))
    wrong = [r for r in rows if r.get("matches_reference") is False]
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
