"""Two builds of the compiled library side by side: ``bench_cpu`` and ``bench_index``
run once per build and round, alternating (A B, then B A, ...) so that a change of
the machine's load hits both, on one thread (``OMP_NUM_THREADS``, ``--threads``: on
a shared machine a parallel region waits for a descheduled worker). The table gives
each timed op's time per build, the smallest of the rounds' medians (the round the
machine's other load disturbed least), and the ratio B / A.

    python -m benchmarks.compare_builds --a /tmp/before --b atss_ops --rounds 3 \\
        --label-a "ATen build" --label-b "stable-ABI build"

``--a`` / ``--b`` are folders holding a compiled ``_C*.so`` of atss_ops (the package
directory of a build, or a folder with just the library); each is run with a copy
of this tree's Python package and that library, in a child process (two builds
register the same ops, so they cannot share one). Writes
``benchmarks/results/compare_builds.json``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREADS = 1

RUNNER = r"""
import runpy, sys
# The editable install's finder would bring this tree's own atss_ops back.
sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in getattr(f, '__name__', type(f).__name__)]
sys.path.insert(0, sys.argv[1])
sys.argv = [sys.argv[2]] + sys.argv[3:]
import atss_ops
assert atss_ops.__file__.startswith(sys.path[0]), atss_ops.__file__
assert atss_ops.has_kernel("atss_assign", "cpu"), atss_ops._extension.EXTENSION_ERROR
runpy.run_module(sys.argv[0], run_name="__main__")
"""


def package_with(library_dir: str, dest: str) -> str:
    """A copy of this tree's atss_ops with the compiled libraries of ``library_dir``."""
    pkg = os.path.join(dest, "atss_ops")
    shutil.copytree(os.path.join(ROOT, "atss_ops"), pkg, ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    libs = glob.glob(os.path.join(library_dir, "_C*.so"))
    if not libs:
        raise SystemExit(f"no compiled atss_ops library (_C*.so) in {library_dir}")
    for lib in libs:
        shutil.copy2(lib, pkg)
    return dest


def run_bench(path: str, module: str, args: list, out: str) -> dict:
    cmd = [sys.executable, "-c", RUNNER, path, module, *args, "--out", out]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(THREADS))
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)
    name = "cpu.json" if module.endswith("bench_cpu") else "index.json"
    with open(os.path.join(out, name)) as f:
        return json.load(f)


def medians(result: dict, module: str) -> dict:
    """{(case, op): median ms} of one run."""
    out = {}
    if module.endswith("bench_cpu"):
        for r in result["rows"]:
            out[(r["case"], r["op"])] = r["kernel"]["median_ms"]
    else:
        for r in result["rows"]:
            for key in ("index", "index-rebuild", "scan", "chained"):
                if key in r:
                    out[(r["case"], f"atss_assign ({key})")] = r[key]["median_ms"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="folder with build A's _C*.so (the baseline)")
    p.add_argument("--b", required=True, help="folder with build B's _C*.so")
    p.add_argument("--label-a", default="A")
    p.add_argument("--label-b", default="B")
    p.add_argument("--rounds", type=int, default=2, help="alternating runs per build")
    p.add_argument("--threads", type=int, default=1, help="torch threads of both benchmarks")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = p.parse_args()
    global THREADS
    THREADS = args.threads
    benches = [
        ("benchmarks.bench_cpu", []),
        ("benchmarks.bench_index", ["--no-growth", "--no-mmdet", "--threads", str(args.threads)]),
    ]
    samples = {"a": {}, "b": {}}
    with tempfile.TemporaryDirectory(prefix="atss-compare-") as tmp:
        paths = {
            "a": package_with(os.path.abspath(args.a), os.path.join(tmp, "a")),
            "b": package_with(os.path.abspath(args.b), os.path.join(tmp, "b")),
        }
        for rnd in range(args.rounds):
            for side in ("a", "b") if rnd % 2 == 0 else ("b", "a"):
                for module, extra in benches:
                    out = os.path.join(tmp, f"out-{side}-{rnd}")
                    os.makedirs(out, exist_ok=True)
                    print(f"== round {rnd + 1}, build {side.upper()}: {module}", file=sys.stderr, flush=True)
                    for key, ms in medians(run_bench(paths[side], module, extra, out), module).items():
                        samples[side].setdefault(key, []).append(ms)
    rows = []
    for key in samples["a"]:
        if key not in samples["b"]:
            continue
        a, b = min(samples["a"][key]), min(samples["b"][key])
        rows.append({"case": key[0], "op": key[1], "a_ms": a, "b_ms": b, "b_over_a": b / a})
    print(f"\n| case | op | {args.label_a} ms | {args.label_b} ms | {args.label_b} / {args.label_a} |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['case']} | {r['op']} | {r['a_ms']:.3f} | {r['b_ms']:.3f} | {r['b_over_a']:.3f} |")
    worst = max(rows, key=lambda r: r["b_over_a"])
    print(f"\nslowest relative to {args.label_a}: {worst['case']} {worst['op']}: {worst['b_over_a']:.3f}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "compare_builds.json")
    with open(path, "w") as f:
        runs = {side: {f"{case} | {op}": ms for (case, op), ms in by_key.items()} for side, by_key in samples.items()}
        summary = {"a": args.label_a, "b": args.label_b, "rounds": args.rounds, "threads": args.threads}
        json.dump({**summary, "rows": rows, "medians_per_round_ms": runs}, f, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
