"""CPU benchmark of the fused ``atss_assign``'s candidate search: spatial index against scan.

    python -m benchmarks.bench_index [--cases coco-b2-g20,...] [--no-growth] [--out benchmarks/results]

For each case, in one process and on the same inputs, it times, alternating
run by run so that machine load hits every path alike:

* ``index``: the fused CPU ``atss_assign`` as shipped (``ATSS_CPU_SELECT=auto``),
  in the steady state of training: the same anchors as the previous call, so
  the op finds its grids unchanged and reuses them;
* ``index-rebuild``: the same, but the previous call had other anchors, so the
  grids are rebuilt (O(A)) in the timed call (multi-scale training, a new image size);
* ``scan``: the same op scanning every anchor (``ATSS_CPU_SELECT=scan``);
* ``chained``: the four CPU stage ops chained (a fused op must never be slower);
* ``mmdet``: MMDetection's ``ATSSAssigner`` (one call per image), when installed.

Medians and the 10th-90th percentiles; ratios are of medians. The index and
the scan are checked bit for bit against each other on every case first
(exit status 1 otherwise). ``--growth`` (on by default) also times B=2 G=100
over image sizes from 640x640 to 1600x2560, and writes a log-log plot of time
against image size (``index.png``, needs matplotlib) next to ``index.json``.

MMDetection is an optional extra of this benchmark only. Install it with:

    pip install mmdet==3.3.0 mmengine==0.10.7 mmcv-lite==2.1.0 --no-deps

``mmdet``'s package ``__init__`` wants compiled ``mmcv`` ops that ``mmcv-lite``
lacks, so :func:`load_mmdet_atss_assigner` loads only the assigner's own files
(``atss_assigner.py``, ``assign_result.py``, ``base_assigner.py``,
``iou2d_calculator.py``, ``bbox_overlaps.py``, ``util_mixins.py``), with stubs
for the registry, the config type, ``get_box_tensor`` and mmengine's
``InstanceData``: the timed code is MMDetection's, unchanged.

The 3-D LUNA16-like case (B=4, G=8, A=315,360, topk 12) is not
here: the kernels are 2-D only until contract version 2's 3-D boxes exist.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import types
from typing import Callable, Dict, List, Optional

import torch

import atss_ops

from .bench_cpu import bits_equal, environment
from .cases import grid_anchors, luna16_anchors, random_gt, random_nodules

ENV = "ATSS_CPU_SELECT"
STRIDES = (8, 16, 32, 64, 128)

# name: (B, G, height, width)
CASES = {
    "coco-b2-g20": (2, 20, 800, 1344),
    "coco-b8-g50": (8, 50, 800, 1344),
    "crowd-b2-g500": (2, 500, 800, 1344),
    "aerial-b2-g1000": (2, 1000, 1600, 2560),
    # 3-D (MONAI's LUNA16 setting, benchmarks/cases.py): B = 4, G = 8, A = 315,360, topk 12. No
    # MMDetection row: its assigner is 2-D only.
    "luna16-3d-b4-g8": (4, 8, None, None),
}
# Image sizes of the growth curve (B=2, G=100).
GROWTH_SIZES = [(640, 640), (800, 800), (1024, 1024), (800, 1344), (1280, 1280), (1333, 2000), (1600, 2560)]


# --------------------------------------------------------------------------- MMDetection


def load_mmdet_atss_assigner():
    """MMDetection's ``ATSSAssigner`` class, loaded without ``mmdet/__init__.py``; None when absent."""
    spec = importlib.util.find_spec("mmdet")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]

    def package(name: str, path: Optional[str] = None) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__path__ = [path] if path else []
        sys.modules[name] = mod
        return mod

    def load(name: str, path: str) -> types.ModuleType:
        s = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(s)
        sys.modules[name] = mod
        s.loader.exec_module(mod)
        return mod

    stubbed = ("mmdet", "mmengine")
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in stubbed}
    try:
        # The assigner only reads attributes of mmengine's InstanceData (and asks
        # `"scores" in ...`): a plain namespace stands in, so mmengine's own
        # dependencies (yapf, addict, ...) are not needed.
        package("mmengine")
        structures = types.ModuleType("mmengine.structures")
        structures.InstanceData = InstanceData
        sys.modules["mmengine.structures"] = structures
        package("mmdet", root)
        calculators = {}

        class Registry:  # mmdet.registry.TASK_UTILS, reduced to what the assigner uses
            def register_module(self):
                def deco(cls):
                    calculators[cls.__name__] = cls
                    return cls

                return deco

            def build(self, cfg):
                cfg = dict(cfg)
                return calculators[cfg.pop("type")](**cfg)

        registry = types.ModuleType("mmdet.registry")
        registry.TASK_UTILS = Registry()
        sys.modules["mmdet.registry"] = registry
        utils = package("mmdet.utils", os.path.join(root, "utils"))
        utils.ConfigType = dict
        utils.util_mixins = load("mmdet.utils.util_mixins", os.path.join(root, "utils", "util_mixins.py"))
        package("mmdet.structures", os.path.join(root, "structures"))
        bbox = package("mmdet.structures.bbox", os.path.join(root, "structures", "bbox"))
        bbox.bbox_overlaps = load(
            "mmdet.structures.bbox.bbox_overlaps", os.path.join(root, "structures", "bbox", "bbox_overlaps.py")
        ).bbox_overlaps
        bbox.get_box_tensor = lambda boxes: boxes  # plain tensors only here
        assigners = os.path.join(root, "models", "task_modules", "assigners")
        package("mmdet.models", os.path.join(root, "models"))
        package("mmdet.models.task_modules", os.path.join(root, "models", "task_modules"))
        package("mmdet.models.task_modules.assigners", assigners)
        load("mmdet.models.task_modules.assigners.iou2d_calculator", os.path.join(assigners, "iou2d_calculator.py"))
        return load(
            "mmdet.models.task_modules.assigners.atss_assigner", os.path.join(assigners, "atss_assigner.py")
        ).ATSSAssigner
    except Exception as exc:  # a different mmdet layout: run without it
        print(f"mmdet found but its ATSSAssigner could not be loaded: {exc!r}", file=sys.stderr)
        return None
    finally:  # the loaded classes keep their modules; sys.modules is left as found
        for k in [k for k in sys.modules if k.split(".")[0] in stubbed]:
            sys.modules.pop(k, None)
        sys.modules.update(saved)


class InstanceData(types.SimpleNamespace):
    """What MMDetection's assigner reads of ``mmengine.structures.InstanceData``."""

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__


def mmdet_runner(assigner_cls, anchors, levels, gt, topk: int) -> Callable[[], object]:
    assigner = assigner_cls(topk=topk)
    priors = InstanceData(priors=anchors)
    gts = [InstanceData(bboxes=gt[b], labels=torch.zeros(gt.shape[1], dtype=torch.long)) for b in range(gt.shape[0])]
    return lambda: [assigner.assign(priors, levels, g) for g in gts]


# --------------------------------------------------------------------------- timing


def fused(anchors, levels, gt, topk: int, mode: str) -> Callable[[], object]:
    op = torch.ops.atss_ops.atss_assign

    def run():
        os.environ[ENV] = mode
        return op(anchors, levels, gt, None, topk, None, 0.01)

    return run


class Prepared:
    """``fn`` timed right after an untimed ``prepare()`` (the state the timed call finds)."""

    def __init__(self, prepare: Callable[[], object], fn: Callable[[], object]):
        self.prepare, self.fn = prepare, fn


def chained(anchors, levels, gt, topk: int) -> Callable[[], object]:
    ops = torch.ops.atss_ops
    A = anchors.shape[0]

    def run():
        d = ops.center_distance(anchors, gt)
        cand = ops.topk_per_level(d, levels, topk)
        cand_iou, thr, pos = ops.iou_statistics(anchors, gt, cand)
        return ops.resolve_multi_gt(cand, cand_iou, pos, A)

    return run


def time_alternating(
    runs: Dict[str, Callable[[], object]], budget_s: float, min_runs: int = 5, max_runs: int = 300
) -> Dict[str, Dict]:
    """Times every entry of ``runs`` in turn, round after round, until ``budget_s`` or ``max_runs``."""
    for fn in runs.values():  # warm-up
        (fn.fn if isinstance(fn, Prepared) else fn)()
    samples: Dict[str, List[float]] = {k: [] for k in runs}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_runs and (rounds < min_runs or time.perf_counter() - start < budget_s):
        for name, fn in runs.items():
            if isinstance(fn, Prepared):
                fn.prepare()
                fn = fn.fn
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    out = {}
    for name, s in samples.items():
        s.sort()
        q = lambda p, s=s: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
        out[name] = {"median_ms": statistics.median(s), "p10_ms": q(0.1), "p90_ms": q(0.9), "runs": len(s)}
    return out


def bench(
    name: str, B: int, G: int, H: int, W: int, mmdet_cls, budget_s: float, topk: int = 9, with_chain: bool = True
) -> Dict:
    if H is None:  # the 3-D case
        anchors, levels = luna16_anchors()
        gt, topk, mmdet_cls = random_nodules(B, G, seed=1), 12, None
    else:
        anchors, levels = grid_anchors(H, W, STRIDES)
        gt = random_gt(B, G, H, W, seed=1)
    index, scan = fused(anchors, levels, gt, topk, "auto"), fused(anchors, levels, gt, topk, "scan")
    same = all(bits_equal(x, y) for x, y in zip(index(), scan()))
    other = fused(anchors + 0.5, levels, gt, topk, "auto")  # other bits: the grids must be rebuilt
    runs = {"index": Prepared(index, index), "index-rebuild": Prepared(other, index), "scan": Prepared(scan, scan)}
    if with_chain:
        runs["chained"] = chained(anchors, levels, gt, topk)
    if mmdet_cls is not None:
        runs["mmdet"] = mmdet_runner(mmdet_cls, anchors, levels, gt, topk)
    times = time_alternating(runs, budget_s, min_runs=3 if mmdet_cls is not None and G >= 500 else 5)
    os.environ.pop(ENV, None)
    row = {
        "case": name,
        "B": B,
        "G": G,
        "height": H,
        "width": W,
        "A": anchors.shape[0],
        "topk": topk,
        "index_equals_scan": same,
        **{f"{k}": v for k, v in times.items()},
    }
    med = {k: v["median_ms"] for k, v in times.items()}
    row["scan_over_index"] = med["scan"] / med["index"]
    row["scan_over_index_rebuild"] = med["scan"] / med["index-rebuild"]
    if "chained" in med:
        row["chained_over_index"] = med["chained"] / med["index"]
    if "mmdet" in med:
        row["mmdet_over_index"] = med["mmdet"] / med["index"]
        row["mmdet_over_index_rebuild"] = med["mmdet"] / med["index-rebuild"]
        row["mmdet_over_scan"] = med["mmdet"] / med["scan"]
    line = "  ".join(f"{k} {v:.3f} ms" for k, v in med.items())
    print(f"  {name:<16} A={row['A']:>6}  {line}  {'identical' if same else 'MISMATCH'}", file=sys.stderr)
    return row


def print_table(rows: List[Dict]) -> None:
    header = (
        f"{'case':<16} {'B':>2} {'G':>5} {'A':>6}  {'index ms':>9} {'rebuild ms':>10} {'scan ms':>9} "
        f"{'chained ms':>10} {'mmdet ms':>9}  {'scan/index':>10} {'scan/rebuild':>12} {'chained/index':>13} "
        f"{'mmdet/index':>11} {'mmdet/rebuild':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        get = lambda k, r=r: r[k]["median_ms"] if k in r else float("nan")  # noqa: E731
        ratio = lambda k, r=r: f"{r[k]:.1f}x" if k in r else "-"  # noqa: E731
        mm = f"{get('mmdet'):9.2f}" if "mmdet" in r else f"{'-':>9}"
        ch = f"{get('chained'):10.3f}" if "chained" in r else f"{'-':>10}"
        print(
            f"{r['case']:<16} {r['B']:>2} {r['G']:>5} {r['A']:>6}  {get('index'):9.3f} {get('index-rebuild'):10.3f} "
            f"{get('scan'):9.3f} {ch} {mm}  {ratio('scan_over_index'):>10} {ratio('scan_over_index_rebuild'):>12} "
            f"{ratio('chained_over_index'):>13} {ratio('mmdet_over_index'):>11} {ratio('mmdet_over_index_rebuild'):>13}"
        )


def plot_growth(rows: List[Dict], path: str, threads: int) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    pixels = [r["height"] * r["width"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for key, label in (
        ("scan", "scan"),
        ("index-rebuild", "index, grids rebuilt"),
        ("index", "index, grids reused (default, steady state)"),
    ):
        ax.plot(pixels, [r[key]["median_ms"] for r in rows], "o-", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("image size (pixels, 640x640 to 1600x2560)")
    ax.set_ylabel("fused atss_assign, median ms")
    ax.set_title(f"CPU atss_assign, B=2 G=100, strides 8-128, {threads} thread{'s' if threads > 1 else ''}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    p.add_argument("--no-growth", dest="growth", action="store_false", help="skip the image-size sweep")
    p.add_argument("--no-mmdet", dest="mmdet", action="store_false", help="leave MMDetection out even if installed")
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timing per case")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's). On a shared machine, 1 keeps other "
        "processes' load from stalling every parallel region on a descheduled worker",
    )
    p.add_argument("--out", default="benchmarks/results", help="folder for index.json and index.png")
    args = p.parse_args(argv)
    if not atss_ops.has_kernel("atss_assign", "cpu"):
        print(f"the compiled extension is not available: {atss_ops.ops.EXTENSION_ERROR}", file=sys.stderr)
        return 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    mmdet_cls = load_mmdet_atss_assigner() if args.mmdet else None
    env = environment()
    env["mmdet"] = None
    if mmdet_cls is not None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            env["mmdet"] = version("mmdet")
        except PackageNotFoundError:
            env["mmdet"] = "unknown version"
    print(
        f"\nCPU index benchmark: {env['cpu']}, {env['threads']} threads, torch {env['torch']}, "
        f"mmdet {env['mmdet'] or 'not installed'}",
        file=sys.stderr,
    )
    rows = []
    for name in args.cases.split(","):
        if name not in CASES:
            p.error(f"--cases: unknown case {name!r}; known: {', '.join(CASES)}")
        rows.append(bench(name, *CASES[name], mmdet_cls, args.budget))
    growth = []
    if args.growth:
        print("growth, B=2 G=100:", file=sys.stderr)
        for H, W in GROWTH_SIZES:
            growth.append(bench(f"{H}x{W}", 2, 100, H, W, None, args.budget / 2, with_chain=False))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "index.json")
    result = {"environment": env, "rows": rows, "growth": growth}
    if growth:
        first, last = growth[0], growth[-1]
        result["growth_summary"] = {
            "from": f"{first['height']}x{first['width']}",
            "to": f"{last['height']}x{last['width']}",
            "anchors_ratio": last["A"] / first["A"],
            "index_slowdown": last["index"]["median_ms"] / first["index"]["median_ms"],
            "index_rebuild_slowdown": last["index-rebuild"]["median_ms"] / first["index-rebuild"]["median_ms"],
            "scan_slowdown": last["scan"]["median_ms"] / first["scan"]["median_ms"],
        }
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(
        f"\nCPU: {env['cpu']}, {env['threads']} threads, torch {env['torch']}, mmdet {env['mmdet'] or '-'} "
        f"(written to {path})"
    )
    print_table(rows)
    if growth:
        print("\ntime against image size, B=2 G=100:")
        print_table(growth)
        g = result["growth_summary"]
        print(
            f"{g['from']} -> {g['to']} ({g['anchors_ratio']:.1f}x the anchors): index {g['index_slowdown']:.1f}x "
            f"slower (grids rebuilt: {g['index_rebuild_slowdown']:.1f}x), scan {g['scan_slowdown']:.1f}x slower"
        )
        png = os.path.join(args.out, "index.png")
        if plot_growth(growth, png, env["threads"]):
            print(f"plot: {png}")
    ok = all(r["index_equals_scan"] for r in rows + growth)
    if not ok:
        print("MISMATCH: the index and the scan disagree on some case", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
