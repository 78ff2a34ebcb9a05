"""Builds the test-only library atss_ops_emu: the CUDA kernel sources of csrc/cuda/
compiled as C++ against the host execution model of csrc/cuda/emu/ (-DATSS_EMU).

    python scripts/build_emu.py                 # build-emu/libatss_ops_emu.so
    python scripts/build_emu.py --variant asan  # build-emu-asan/: AddressSanitizer + UBSan
    python scripts/build_emu.py --variant tsan  # build-emu-tsan/: ThreadSanitizer

Loaded with ``torch.ops.load_library`` after ``import atss_ops``, the library
registers the five atss_ops schemas under the namespace ``atss_ops_emu`` for
CPU tensors (``torch.ops.atss_ops_emu.atss_assign(...)``). A sanitized library
needs its runtime preloaded into Python: ``LD_PRELOAD=$(gcc
-print-file-name=libasan.so)`` (or ``libtsan.so``); ``--print-preload`` prints
that path. Incremental: a source is recompiled when it or a header it includes
changed (compiler dependency files). Never downloads anything; needs a C++
compiler and torch's headers only (no CUDA toolkit, no GPU).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shlex
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = {
    # -ffp-contract=off: every float operation rounded on its own, as the
    # contract, the CPU kernels' build and the GPU build (-fmad=false) require.
    "plain": (["-O2", "-g"], [], None),
    "asan": (
        ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"],
        ["-fsanitize=address,undefined"],
        "libasan.so",
    ),
    "tsan": (["-O1", "-g", "-fsanitize=thread"], ["-fsanitize=thread"], "libtsan.so"),
}


def out_dir(variant: str) -> str:
    return os.path.join(ROOT, "build-emu" if variant == "plain" else f"build-emu-{variant}")


def library_path(variant: str = "plain") -> str:
    return os.path.join(out_dir(variant), "libatss_ops_emu.so")


def sources() -> list:
    cuda = sorted(f for f in os.listdir(os.path.join(ROOT, "csrc", "cuda")) if f.endswith(".cu"))
    return [
        os.path.join("csrc", "cuda", "emu", "cuda_emu.cpp"),
        os.path.join("csrc", "cuda", "emu", "emu_library.cpp"),
        os.path.join("csrc", "cuda", "emu", "selftest.cu"),
        os.path.join("csrc", "cuda", "emu", "work_counters.cpp"),
        os.path.join("csrc", "common", "checks.cpp"),
    ] + [os.path.join("csrc", "cuda", f) for f in cuda]


def stable_abi_flags() -> list:
    """The LibTorch stable-ABI target every build of the sources uses (setup.py's, from
    pyproject.toml's torch requirement): an API newer than it fails to compile."""
    sys.path.insert(0, ROOT)
    try:
        from build_config import stable_abi_define
    finally:
        sys.path.pop(0)
    return [stable_abi_define()]


def compiler() -> str:
    return os.environ.get("CXX") or "g++"


def preload(variant: str) -> str:
    """The sanitizer runtime a Python process must preload for ``variant`` ('' for plain)."""
    lib = VARIANTS[variant][2]
    if lib is None:
        return ""
    return subprocess.run(
        [compiler(), f"-print-file-name={lib}"], capture_output=True, text=True, check=True
    ).stdout.strip()


def _stale(obj: str, dep: str, flags_file: str) -> bool:
    if not os.path.exists(obj) or not os.path.exists(dep):
        return True
    t = os.path.getmtime(obj)
    if os.path.getmtime(flags_file) > t:
        return True
    with open(dep) as f:
        text = f.read().replace("\\\n", " ")
    deps = text.split(":", 1)[1].split() if ":" in text else []
    return any(not os.path.exists(d) or os.path.getmtime(d) > t for d in deps)


def build(variant: str = "plain", jobs: int = 0, verbose: bool = False) -> str:
    """Builds the variant's library (incrementally) and returns its path."""
    from torch.utils.cpp_extension import include_paths, library_paths

    cflags, ldflags, _ = VARIANTS[variant]
    build_dir = out_dir(variant)
    os.makedirs(os.path.join(build_dir, "obj"), exist_ok=True)
    includes = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    common = [
        "-std=c++20",
        "-fPIC",
        "-pthread",
        "-ffp-contract=off",
        "-DATSS_EMU",
        "-Wall",
        "-Wno-unused-function",
        "-Wno-unknown-pragmas",
        *stable_abi_flags(),
        *cflags,
        *includes,
    ]
    flags_file = os.path.join(build_dir, "flags.txt")
    flag_text = " ".join([compiler(), *common, *ldflags])
    if not os.path.exists(flags_file) or open(flags_file).read() != flag_text:
        with open(flags_file, "w") as f:
            f.write(flag_text)

    def compile_one(src: str) -> str:
        obj = os.path.join(build_dir, "obj", src.replace(os.sep, "_") + ".o")
        dep = obj[:-2] + ".d"
        if not _stale(obj, dep, flags_file):
            return obj
        lang = ["-x", "c++"] if src.endswith(".cu") else []
        cmd = [compiler(), *lang, *common, "-MMD", "-MF", dep, "-c", os.path.join(ROOT, src), "-o", obj]
        if verbose:
            print(shlex.join(cmd), flush=True)
        else:
            print(f"atss_ops_emu ({variant}): compiling {src}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"compiling {src} failed:\n{proc.stderr[-6000:]}")
        return obj

    jobs = jobs or int(os.environ.get("MAX_JOBS", "0") or 0) or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        objs = list(pool.map(compile_one, sources()))
    lib = library_path(variant)
    if not os.path.exists(lib) or any(os.path.getmtime(o) > os.path.getmtime(lib) for o in objs):
        lib_dir = library_paths()[0]
        cmd = [
            compiler(),
            "-shared",
            "-pthread",
            *ldflags,
            *objs,
            "-o",
            lib,
            f"-L{lib_dir}",
            "-ltorch_cpu",
            f"-Wl,-rpath,{lib_dir}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"linking {lib} failed:\n{proc.stderr[-6000:]}")
        print(f"atss_ops_emu ({variant}): built {os.path.relpath(lib, ROOT)}", flush=True)
    return lib


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="plain")
    parser.add_argument("--jobs", type=int, default=0, help="parallel compiles (default: MAX_JOBS or the CPU count)")
    parser.add_argument("--print-preload", action="store_true", help="print the sanitizer runtime to preload")
    parser.add_argument("--print-path", action="store_true", help="print the library's path")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    if args.print_preload:
        print(preload(args.variant))
        return 0
    if args.print_path:
        print(library_path(args.variant))
        return 0
    build(args.variant, args.jobs, args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
