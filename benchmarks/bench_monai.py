"""atss_ops against MONAI's ATSSMatcher on a LUNA16-like 3-D batch, and what v2's options cost in 2-D.

    python -m benchmarks.bench_monai [--device cpu|cuda|all] [--threads N] [--out benchmarks/results]

Needs MONAI (``pip install atss-ops[monai]``).

* ``luna16-3d``: MONAI's LUNA16 detection setting. A 192x192x80 patch, feature
  maps of 48x48x40, 24x24x20 and 12x12x10 locations, three anchor shapes per
  location (6x8x4, 8x6x5 and 10x10x6 voxels, times 1, 2, 4 by level), made by
  MONAI's own ``AnchorGeneratorWithAnchorShape``: A = 315,360 anchors. B = 4
  images, G = 8 nodule-like boxes each (``cases.random_nodules``: 3-30 voxels
  per axis). The case's sizes are those of ``benchmarks.cases``.
  ``MONAI ATSSMatcher`` is MONAI's matcher (num_candidates 4, no centre test,
  as in MONAI's LUNA16 tutorial) called once per image, as its
  ``RetinaNetDetector`` does; ``atss_assign`` is one call for the batch with
  ``topk = 4 * 3 = 12`` and ``center_eps=None``, what
  ``atss_ops.integrations.monai`` runs. The matches are compared and the number
  of anchors that differ is printed (see docs/monai.md for why some may). On
  the CPU, ``atss_assign (scan)`` is the same call with ``ATSS_CPU_SELECT=scan``:
  every anchor scanned, without the spatial index that the kernel otherwise
  builds once and reuses while the anchors stay the same.
* ``coco-2d``: B = 2, G = 20, 800x1344, one anchor per location on strides
  8-128 (A = 22,400), ``atss_assign`` plain, with ``ensure_positive=True``, with
  an ``anchor_ignore`` mask (from ``ignore_mask`` with 3 ignore boxes per image)
  and with both; plus ``ignore_mask`` alone. The ratio is against the plain call.

Timing: the functions of one case run alternately (ABAB..., the order
reversed every other round) after two warm-up runs each, in one process on the
same inputs, until ``--budget`` seconds or ``--max-runs`` rounds; median and
10th-90th percentile in milliseconds. On CUDA each run is synchronised.
Results: a table printed last and ``monai.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

import atss_ops
from benchmarks.cases import LUNA16_LEVELS, LUNA16_PATCH, LUNA16_SHAPES, grid_anchors, random_gt, random_nodules

try:
    import monai
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher as MonaiATSSMatcher
    from monai.data.box_utils import box_iou
except ImportError as error:  # the script says what it needs instead of a traceback
    sys.exit(f"bench_monai needs MONAI ({error}): pip install monai  (or pip install atss-ops[monai])")

NUM_CANDIDATES = 4


def luna16_anchors_from_monai(device: torch.device):
    """The LUNA16 case's anchors as MONAI's detector sees them, made by MONAI's own
    ``AnchorGeneratorWithAnchorShape`` (its order and rounding, not ``cases.luna16_anchors``'):
    ``(Tensor[315360, 6], locations per level)``."""
    scales = [2**level for level in range(len(LUNA16_LEVELS))]
    generator = AnchorGeneratorWithAnchorShape(feature_map_scales=scales, base_anchor_shapes=LUNA16_SHAPES)
    images = torch.zeros(1, 1, *LUNA16_PATCH, device=device)
    anchors = generator(images, [torch.zeros(1, 1, *f, device=device) for f in LUNA16_LEVELS])[0]
    return anchors, [math.prod(f) for f in LUNA16_LEVELS]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(samples: List[float]) -> Dict:
    s = sorted(samples)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
    return {"median_ms": statistics.median(s), "p10_ms": q(0.1), "p90_ms": q(0.9), "runs": len(s)}


def time_alternating(
    fns: Dict[str, Callable[[], object]], device: torch.device, budget_s: float, max_runs: int, min_runs: int = 5
) -> Dict[str, Dict]:
    """Runs the functions in turn (order reversed every other round); per function a timing summary."""
    for fn in fns.values():
        for _ in range(2):
            fn()
    synchronize(device)
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    names = list(fns)
    start = time.perf_counter()
    rounds = 0
    while rounds < max_runs and (rounds < min_runs or time.perf_counter() - start < budget_s):
        for name in names if rounds % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[name]()
            synchronize(device)
            samples[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return {name: summary(s) for name, s in samples.items()}


def bench_luna16(device: torch.device, budget_s: float, max_runs: int) -> List[Dict]:
    anchors, locations = luna16_anchors_from_monai(device)
    per_loc = len(LUNA16_SHAPES)
    levels = [n * per_loc for n in locations]
    B, G = 4, 8
    gt = random_nodules(B, G, seed=0, device=str(device))
    monai_matcher = MonaiATSSMatcher(NUM_CANDIDATES, box_iou, center_in_gt=False)
    topk = NUM_CANDIDATES * per_loc

    def ours():
        return atss_ops.atss_assign(anchors, levels, gt, topk=topk, center_eps=None)

    def theirs():
        return [monai_matcher(gt[b], anchors, locations, per_loc)[1] for b in range(B)]

    def ours_scan():
        # The CPU kernel's scan of every anchor (O(B·G·A)) instead of its spatial index, which it
        # builds once and reuses while the anchors stay the same (as they do in training).
        os.environ["ATSS_CPU_SELECT"] = "scan"
        try:
            return ours()
        finally:
            os.environ.pop("ATSS_CPU_SELECT")

    print(f"timing luna16-3d on {device} (B={B}, G={G}, A={anchors.shape[0]}) ...", file=sys.stderr)
    differ = int((ours().gt_index != torch.stack(theirs())).sum())
    t = time_alternating({"atss_assign": ours, "MONAI ATSSMatcher": theirs}, device, budget_s, max_runs)
    if device.type == "cpu" and "ATSS_CPU_SELECT" not in os.environ:
        # Timed on its own: a scan between two indexed calls would make the second rebuild its index.
        t.update(time_alternating({"atss_assign (scan)": ours_scan}, device, budget_s / 4, max_runs))
    base = t["MONAI ATSSMatcher"]["median_ms"]
    common = {"case": "luna16-3d", "device": str(device), "B": B, "G": G, "A": anchors.shape[0], "topk": topk}
    return [
        dict(common, what=name, timing=timing, ratio=base / timing["median_ms"], differing_anchors=differ)
        for name, timing in t.items()
    ]


def bench_options_2d(device: torch.device, budget_s: float, max_runs: int) -> List[Dict]:
    B, G, H, W = 2, 20, 800, 1344
    anchors, levels = grid_anchors(H, W, device=str(device))
    gt = random_gt(B, G, H, W, seed=1, device=str(device))
    ignore_boxes = random_gt(B, 3, H, W, seed=2, device=str(device))
    ignore = atss_ops.ignore_mask(anchors, ignore_boxes)
    fns = {
        "atss_assign": lambda: atss_ops.atss_assign(anchors, levels, gt),
        "ensure_positive=True": lambda: atss_ops.atss_assign(anchors, levels, gt, ensure_positive=True),
        "anchor_ignore": lambda: atss_ops.atss_assign(anchors, levels, gt, anchor_ignore=ignore),
        "both": lambda: atss_ops.atss_assign(anchors, levels, gt, anchor_ignore=ignore, ensure_positive=True),
        "ignore_mask (3 boxes)": lambda: atss_ops.ignore_mask(anchors, ignore_boxes),
    }
    print(f"timing coco-2d on {device} (B={B}, G={G}, A={anchors.shape[0]}) ...", file=sys.stderr)
    t = time_alternating(fns, device, budget_s, max_runs)
    base = t["atss_assign"]["median_ms"]
    ignored = float(ignore.float().mean())
    common = {"case": "coco-2d", "device": str(device), "B": B, "G": G, "A": anchors.shape[0], "topk": 9}
    return [
        dict(common, what=name, timing=timing, ratio=base / timing["median_ms"], ignored_fraction=ignored)
        for name, timing in t.items()
    ]


def environment(devices: List[torch.device]) -> Dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "atss_ops_cpu_kernel": atss_ops.has_kernel("atss_assign", "cpu"),
    }
    if any(d.type == "cuda" for d in devices):
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["atss_ops_cuda_kernel"] = atss_ops.has_kernel("atss_assign", "cuda")
    return env


def _timing(t: Dict) -> str:
    return f"{t['median_ms']:.2f} ({t['p10_ms']:.2f}-{t['p90_ms']:.2f})"


def print_table(rows: List[Dict]) -> None:
    header = (
        f"{'case':<10} {'device':<6} {'B':>2} {'G':>3} {'A':>7}  {'what':<22} {'ms, median (p10-p90)':>26} {'ratio':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = f"{r['ratio']:>7.2f}x"
        if "differing_anchors" in r:
            ratio += f"   ({r['differing_anchors']} anchors differ)"
        if r["what"] == "atss_assign" and r["case"] == "coco-2d":
            ratio += "   (the base)"
        elif r["what"] == "MONAI ATSSMatcher":
            ratio = f"{'':>8}   (the base, one call per image)"
        elif r["what"].startswith("ignore_mask"):
            ratio = f"{'':>8}   (building the mask)"
        print(
            f"{r['case']:<10} {r['device']:<6} {r['B']:>2} {r['G']:>3} {r['A']:>7}  {r['what']:<22} "
            f"{_timing(r['timing']):>26} {ratio}"
        )
    print(
        "ratio: luna16-3d, MONAI's time over this row's (above 1: faster than MONAI); "
        "coco-2d, the plain atss_assign's time over this row's (below 1: the option costs)."
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="all", choices=["cpu", "cuda", "all"], help="all: cpu, and cuda if present")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--budget", type=float, default=10.0, help="seconds of timing per case and device")
    p.add_argument("--max-runs", type=int, default=50, help="rounds per case at most")
    p.add_argument("--out", default="benchmarks/results", help="folder for monai.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device == "cuda" or (args.device == "all" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device")
        devices.append(torch.device("cuda"))
    env = environment(devices)
    rows: List[Dict] = []
    for device in devices:
        rows += bench_luna16(device, args.budget, args.max_runs)
        rows += bench_options_2d(device, args.budget, args.max_runs)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "monai.json")
    with open(path, "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=2)
    kernels = f"atss_ops CPU kernel: {env['atss_ops_cpu_kernel']}" + (
        f", CUDA kernel: {env['atss_ops_cuda_kernel']} on {env['gpu']}" if "gpu" in env else ""
    )
    print(
        f"\nCPU: {env['cpu']}, {env['threads']} threads; torch {env['torch']}, MONAI {env['monai']}; {kernels}"
        f" (written to {path})"
    )
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
