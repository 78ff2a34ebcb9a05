"""Plants known CUDA defects, one at a time, and records which check catches each.

For each defect: a copy of the repository's sources with the defect applied,
the emulated CUDA library built from it (plain, ASan+UBSan, TSan), then

* ``tests``: ``pytest -m emu`` of the emulated tests of the defect's file against that library
  (``tests/test_emulated_cuda.py``, ``tests/test_tal_cuda.py`` for the TAL kernel; see TESTS);
* ``workload``: the sanitizer workload through the plain library (bits vs the CPU kernels);
* ``asan`` / ``tsan``: the same workload through the sanitized libraries (any report);
* ``host_sim``: the former hand-copied host simulations (csrc/cuda/host_sim/, as of
  ``--host-sim-commit``), built against that commit's sources with the same defect.

    python scripts/planted_defects.py                 # every defect, every check
    python scripts/planted_defects.py --only missing_threadfence_last_block --checks tsan

Prints a table (defect, check -> caught / missed) and writes it as JSON to --out.
Slow (several builds per defect): an experiment, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (description, file, old text, new text)
DEFECTS = {
    "missing_syncthreads_before_scoring": (
        "the __syncthreads that lets every warp of the culled selection write its level's candidates before "
        "warp 0 scores the row",
        "csrc/cuda/select_culled.cuh",
        "    __syncthreads();         // every level's candidates are written\n",
        "",
    ),
    "shuffle_mask_leaves_lanes_out": (
        "warp_min's reduction with a mask that leaves lane 31 out",
        "csrc/cuda/cuda_common.cuh",
        "const uint32_t min_hi = __reduce_min_sync(kFullMask, hi);",
        "const uint32_t min_hi = __reduce_min_sync(0x7fffffffu, hi);",
    ),
    "off_by_one_chunk_bound": (
        "a chunk's length one anchor too long (the scan reads into the next chunk)",
        "csrc/cuda/select.cuh",
        "const int clen = lt.size[l] - offset < lt.chunk_len ? lt.size[l] - offset : lt.chunk_len;",
        "const int clen = lt.size[l] - offset < lt.chunk_len ? lt.size[l] - offset : lt.chunk_len + 1;",
    ),
    "missing_threadfence_last_block": (
        "the writers' __threadfence before the per-tile counter's atomicAdd",
        "csrc/cuda/select.cuh",
        "    __threadfence();\n    __syncthreads();\n    if (threadIdx.x == 0) {",
        "    __syncthreads();\n    if (threadIdx.x == 0) {",
    ),
    "dynamic_smem_one_element_short": (
        "iou_statistics' dynamic shared memory one float short of its per-warp score buffers",
        "csrc/cuda/iou_statistics.cu",
        "p.in_smem ? static_cast<size_t>(ScoreSmem::bytes(C)) : 0;",
        "p.in_smem ? static_cast<size_t>(ScoreSmem::bytes(C)) - sizeof(float) : 0;",
    ),
    "key_truncated_to_32_bits": (
        "warp_min's 64-bit (distance, index) key truncated to its low 32 bits",
        "csrc/cuda/cuda_common.cuh",
        "return (static_cast<u64>(min_hi) << 32) | min_lo;",
        "return static_cast<uint32_t>((static_cast<u64>(min_hi) << 32) | min_lo);",
    ),
    "culling_skips_an_equal_bound": (
        "the culled selection skips a block whose lower bound equals the k-th key's distance (>= for >): a member "
        "at that distance with a lower anchor index is lost",
        "csrc/cuda/select_culled.cuh",
        "} else if (key_bits(next) > key_bits(threshold)) {",
        "} else if (key_bits(next) >= key_bits(threshold)) {",
    ),
    # The TAL kernel (csrc/cuda/tal_assign.cu).
    "tal_list_shift_missing_syncwarp": (
        "the __syncwarp between the reads and the writes of a WarpList shift: a lane writes the key its "
        "neighbour has yet to read",
        "csrc/cuda/tal_assign.cu",
        "        const u64 v = i < end ? keys[i] : 0;\n        __syncwarp();\n",
        "        const u64 v = i < end ? keys[i] : 0;\n",
    ),
    "tal_list_stale_floor": (
        "a WarpList key that passed the ballot but fell to or below the floor since is inserted anyway: one "
        "place past the full list (the next GT row's first key)",
        "csrc/cuda/tal_assign.cu",
        "      if (k <= floor) continue;  // the floor rose since the ballot\n",
        "",
    ),
    "tal_claim_ties_to_higher_gt": (
        "the claim keys order equal overlaps by GT index ascending (g for ~g): the higher GT index wins a tie",
        "csrc/cuda/tal_assign.cu",
        "u64 claim_key_of(float overlap, int64_t g) {\n  return value_key(overlap, ~static_cast<uint32_t>(g));\n}\n"
        "__device__ __forceinline__ int64_t claim_key_gt(u64 key) {\n"
        "  return static_cast<int64_t>(~static_cast<uint32_t>(key));\n}",
        "u64 claim_key_of(float overlap, int64_t g) {\n  return value_key(overlap, static_cast<uint32_t>(g));\n}\n"
        "__device__ __forceinline__ int64_t claim_key_gt(u64 key) {\n"
        "  return static_cast<int64_t>(static_cast<uint32_t>(key));\n}",
    ),
    "tal_culling_wrong_side": (
        "block_may_hold tests the GT's right side against the block's highest x instead of its lowest: a block "
        "that straddles the right side is skipped",
        "csrc/cuda/tal_assign.cu",
        "(t.x2 - box[0]) > eps &&",
        "(t.x2 - box[2]) > eps &&",
    ),
    "tal_cut_drops_the_last_kept": (
        "tal_target_kernel's step 4b cut with <= for <: the last anchor a full second list keeps is dropped",
        "csrc/cuda/tal_assign.cu",
        "if (metric_key(m, ba - b * A) < p.cut[row]) {",
        "if (metric_key(m, ba - b * A) <= p.cut[row]) {",
    ),
    "tal_owner_picker_for_several_picks": (
        "tal_owner_kernel gives an anchor picked by several GTs to its highest picker instead of the claim's GT",
        "csrc/cuda/tal_assign.cu",
        "const int64_t g = picks == 1 ? static_cast<int64_t>(p.picker[ba]) : claim_key_gt(p.best[ba]);",
        "const int64_t g = static_cast<int64_t>(p.picker[ba]);",
    ),
    "tal_inside_counts_the_left_side": (
        "step 1's inside test with >= for > on the left side (the helper both TAL kernels use; only the emulated "
        "library is rebuilt with it): with eps = 0 a point on a GT's left side counts as inside",
        "csrc/common/tal_math.h",
        "return (px - t.x1) > eps && (py - t.y1) > eps",
        "return (px - t.x1) >= eps && (py - t.y1) > eps",
    ),
}

# The emulated tests of the ``tests`` check, by the file a defect is planted in (others:
# DEFAULT_TESTS): the TAL kernel has its own, and the header both kernels use runs both.
DEFAULT_TESTS = ("tests/test_emulated_cuda.py",)
TESTS = {
    "csrc/cuda/tal_assign.cu": ("tests/test_tal_cuda.py",),
    "csrc/common/tal_math.h": ("tests/test_tal_cuda.py",),
    "csrc/cuda/cuda_common.cuh": ("tests/test_emulated_cuda.py", "tests/test_tal_cuda.py"),
}

CHECKS = ("tests", "workload", "asan", "tsan", "host_sim")
SOURCES = (
    "csrc",
    "atss_ops",
    "tests",
    "scripts",
    "benchmarks",
    "setup.py",
    "CMakeLists.txt",
    "build_config.py",
    "pyproject.toml",
)


def run(cmd, cwd, env=None, timeout=1800):
    t = time.time()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.time() - t


def copy_tree(dst: str) -> None:
    for name in SOURCES:
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dst, name), ignore=shutil.ignore_patterns("__pycache__", "*.o"))
        else:
            shutil.copy2(src, dst)


def plant(tree: str, file: str, old: str, new: str) -> None:
    path = os.path.join(tree, file)
    text = open(path).read()
    if text.count(old) != 1:
        raise SystemExit(f"{file}: the text to replace occurs {text.count(old)} times")
    open(path, "w").write(text.replace(old, new))


def check(name: str, tree: str, py: str) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{tree}:{os.path.join(tree, 'tests')}", PYTHONUNBUFFERED="1")
    results = {}
    for what in ARGS.checks:
        if what == "host_sim":
            results[what] = host_sim(name)
            continue
        variant = {"tests": "plain", "workload": "plain", "asan": "asan", "tsan": "tsan"}[what]
        build_dir = "build-emu" if variant == "plain" else f"build-emu-{variant}"
        sanitizer = "none" if variant == "plain" else variant
        configure = ["cmake", "-S", ".", "-B", build_dir, "-G", "Ninja", f"-DPython3_EXECUTABLE={py}"]
        configure += ["-DATSS_PYTHON_MODULE=OFF", "-DATSS_EMU=ON", f"-DATSS_SANITIZER={sanitizer}"]
        rc, out, _ = run(configure, tree, env)
        if rc == 0:
            rc, out, _ = run(["cmake", "--build", build_dir], tree, env)
        if rc != 0:
            results[what] = {"caught": True, "how": "build failed: " + out[-300:]}
            continue
        lib = os.path.join(tree, build_dir, "libatss_ops_emu.so")
        if what == "tests":
            tests = TESTS.get(DEFECTS[name][1], DEFAULT_TESTS)
            rc, out, t = run(
                [py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "emu", *tests],
                tree,
                dict(env, ATSS_EMU_LIBRARY=lib),
            )
            tail = [ln for ln in out.splitlines() if ln.startswith(("FAILED", "E  "))][:2] or out.splitlines()[-1:]
            results[what] = {"caught": rc != 0, "how": " | ".join(tail)[:300], "seconds": round(t)}
        elif what == "workload":
            rc, out, t = run([py, "scripts/sanitizer_workload.py", "--emu", lib], tree, env)
            tail = [ln for ln in out.splitlines() if "MISMATCH" in ln or "Error" in ln][:2] or out.splitlines()[-1:]
            results[what] = {"caught": rc != 0, "how": " | ".join(tail)[:300], "seconds": round(t)}
        else:
            rc, out, t = run(["bash", "scripts/emu_sanitize.sh", variant], tree, dict(env, PYTHON=py))
            lines = [ln for ln in out.splitlines() if not ln.startswith("W1")]
            first = [
                ln
                for ln in lines
                if "ERROR: AddressSanitizer" in ln
                or "WARNING: ThreadSanitizer" in ln
                or "runtime error" in ln
                or "MISMATCH" in ln
                or "CUDA emulation" in ln
                or "Error" in ln
            ][:1]
            reports = [ln for ln in lines if ln.startswith("== ") and "sanitizer reports" in ln]
            how = " | ".join(first + reports) or " | ".join(lines[-3:])
            results[what] = {"caught": rc != 0, "how": how[:400], "seconds": round(t), "tail": "\n".join(lines[-80:])}
        print(
            f"  {name}: {what}: {'caught' if results[what]['caught'] else 'missed'} ({results[what]['how'][:120]})",
            flush=True,
        )
    return results


def host_sim(name: str) -> dict:
    """The former host_sim test at --host-sim-commit, its sources carrying the same defect."""
    _, file, old, new = DEFECTS[name]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                "git",
                "-C",
                ROOT,
                "archive",
                ARGS.host_sim_commit,
                "csrc",
                "tests/test_cuda_host_sim.py",
                "-o",
                os.path.join(tmp, "src.tar"),
            ],
            check=True,
        )
        subprocess.run(["tar", "-xf", "src.tar"], cwd=tmp, check=True)
        path = os.path.join(tmp, file)
        text = open(path).read() if os.path.exists(path) else ""
        planted = text.count(old) == 1
        if planted:
            open(path, "w").write(text.replace(old, new))
        sim_files = " ".join(sorted(os.listdir(os.path.join(tmp, "csrc", "cuda", "host_sim"))))
        rc, out, _ = run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--rootdir",
                tmp,
                os.path.join(tmp, "tests", "test_cuda_host_sim.py"),
            ],
            tmp,
        )
        how = (
            f"defect {'planted in' if planted else 'not found in'} {file} there; host_sim ({sim_files}) "
            f"{'failed' if rc else 'passed'}"
        )
        print(f"  {name}: host_sim: {'caught' if rc else 'missed'} ({how})", flush=True)
        return {"caught": rc != 0, "how": how}


def main() -> int:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=list(DEFECTS), choices=list(DEFECTS))
    parser.add_argument("--checks", nargs="*", default=list(CHECKS), choices=CHECKS)
    parser.add_argument("--host-sim-commit", default="32dc794")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "planted_defects.json"))
    ARGS = parser.parse_args()
    table = {}
    for name in ARGS.only:
        desc, file, old, new = DEFECTS[name]
        print(f"== {name}: {desc} ({file})", flush=True)
        with tempfile.TemporaryDirectory(prefix="atss-defect-") as tree:
            copy_tree(tree)
            # The CPU kernels (the expected values) from this tree's build.
            for so in os.listdir(os.path.join(ROOT, "atss_ops")):
                if so.startswith("_C") and so.endswith(".so"):
                    shutil.copy2(os.path.join(ROOT, "atss_ops", so), os.path.join(tree, "atss_ops", so))
            plant(tree, file, old, new)
            table[name] = {"description": desc, "file": file, "checks": check(name, tree, ARGS.python)}
    os.makedirs(os.path.dirname(ARGS.out), exist_ok=True)
    with open(ARGS.out, "w") as f:
        json.dump(table, f, indent=2)
    print()
    print(f"| defect | {' | '.join(ARGS.checks)} |")
    print(f"| --- | {' | '.join('---' for _ in ARGS.checks)} |")
    for name, row in table.items():
        cells = ["caught" if row["checks"][c]["caught"] else "missed" for c in ARGS.checks]
        print(f"| {name} | {' | '.join(cells)} |")
    print(f"\nwrote {ARGS.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
