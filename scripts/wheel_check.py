"""``make wheel-check``: the built wheel, installed with no compiler, against several torch
releases, each in a fresh virtual environment.

For each torch version (default: the minimum the wheel supports, one in the middle,
the newest on the registry) this

1. creates ``~/.cache/atss-ops/wheel-check/venv-<version>`` and installs that torch from
   the registry, plus pytest, hypothesis and expecttest. The venvs hold nothing else and
   are kept between runs (reused when they still have that torch; the wheel is removed
   and installed anew every time): a CUDA build of torch is 3 to 5 GB to download, and
   this registry marks its files uncacheable, so pip's own cache keeps nothing;
2. installs the wheel and nothing else (``--no-deps --no-build-isolation``) with the
   compilers disabled: ``CC``/``CXX`` set to ``false`` and no ``nvcc`` on ``PATH``, so a
   source build could not happen unnoticed;
3. runs the op test suite against the INSTALLED package from a folder outside the
   source tree (a copy of the op tests and their helpers only), after asserting that
   ``atss_ops`` comes from site-packages, that ``import atss_ops`` warns nothing, and
   that every op has its compiled CPU kernel and, under any CUDA build of torch (12.x
   and 13.x alike: the CUDA libraries carry their own runtime), its compiled CUDA
   kernel registered (not the fallback). There is no GPU and no driver here: a CUDA
   kernel is registered, not run (``scripts/gpu_check.sh`` runs them).

Before that it checks the wheel itself: it holds the LICENSE file.

Prints a table (torch, its CUDA, kernels, tests passed/skipped/failed, seconds) and writes
``benchmarks/results/wheel_check.json``. Exit status 1 if any version fails.

    python scripts/wheel_check.py dist/atss_ops-0.2.0-cp310-abi3-manylinux_2_28_x86_64.whl
    python scripts/wheel_check.py WHEEL --torch 2.10.0@3.10 2.15.0 --tests quick
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The minimum (pyproject.toml's torch>=, as X.Y.0: PyPI's default build, CUDA 12.8 for
# 2.10) on the oldest Python the wheel supports, one in the middle, the newest on the
# registry on a newer Python: "TORCH[@PYTHON]". A Python that is not on this machine is
# replaced by the one running this script (and said).
sys.path.insert(0, ROOT)
import build_config  # noqa: E402

DEFAULT_TORCH = (f"{build_config.torch_target()}.0@3.10", "2.12.0", "2.15.0@3.12")

# The op tests: everything about the ops and the public API, nothing about the build,
# the emulated CUDA library, the detector or MONAI.
OP_TESTS = {
    "full": [
        "test_equivalence.py",
        "test_errors.py",
        "test_error_parity.py",
        "test_api_inputs.py",
        "test_opcheck_compile.py",
        "test_properties.py",
        "test_reference_by_hand.py",
        "test_spatial_index.py",
        "test_targets.py",
        "test_ignore_mask.py",
        "test_determinism.py",
        "test_cuda.py",
        "test_stable_abi.py",
        "test_tal_reference.py",
        "test_tal_equivalence.py",
    ],
}
# What the op tests import: the case catalogues and the helpers (they need nothing else
# of the source tree: the installed atss_ops, atss_ops.testing's inputs).
TEST_HELPERS = ["conftest.py", "cases.py", "cases_tal.py", "bits.py", "backends.py", "subprocesses.py"]
OP_TESTS["quick"] = ["test_equivalence.py", "test_errors.py", "test_error_parity.py", "test_stable_abi.py"]


def op_test_tools() -> list:
    """What the op tests need besides torch (numpy: torch warns without it): the part of
    requirements-test.txt above its "# Beyond the op tests" line."""
    tools = []
    with open(os.path.join(ROOT, "requirements-test.txt")) as f:
        for line in f:
            if line.startswith("# Beyond the op tests"):
                break
            if line.strip() and not line.startswith("#"):
                tools.append(line.strip())
    return tools


TEST_TOOLS = op_test_tools()

PROBE = r"""
import json, os, platform, site, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch, atss_ops
    from atss_ops import _extension
site_dirs = [os.path.realpath(p) for p in site.getsitepackages()]
print(json.dumps({
    "python": platform.python_version(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "file": os.path.realpath(atss_ops.__file__),
    "in_site_packages": any(os.path.realpath(atss_ops.__file__).startswith(p) for p in site_dirs),
    "extension_error": _extension.EXTENSION_ERROR,
    "cuda_error": _extension.CUDA_ERROR,
    "cpu_kernels": all(atss_ops.has_kernel(op, "cpu") for op in _extension.ALL_OPS),
    "cuda_kernels": all(atss_ops.has_kernel(op, "cuda") for op in _extension.ALL_OPS),
    "cuda_libraries": sorted(_extension.cuda_libraries()),
    "cuda_library": _extension.CUDA_LIBRARY and os.path.basename(_extension.CUDA_LIBRARY),
    "import_warnings": [str(w.message) for w in caught],
}))
"""


def run(cmd, env=None, cwd=None, check=True, capture=False):
    shown = [c if "\n" not in c else "<script>" for c in cmd]
    print("+", " ".join(shown), flush=True)
    return subprocess.run(cmd, env=env, cwd=cwd, check=check, text=True, capture_output=capture)


def no_compiler_env() -> dict:
    """The environment with the compilers disabled: CC/CXX fail, no nvcc on PATH."""
    env = dict(os.environ)
    env["CC"] = "false"
    env["CXX"] = "false"
    env.pop("CUDA_HOME", None)
    env.pop("CUDA_PATH", None)
    keep = []
    for d in env.get("PATH", "").split(os.pathsep):
        if d and not os.path.exists(os.path.join(d, "nvcc")):
            keep.append(d)
    env["PATH"] = os.pathsep.join(keep)
    # pip's global configuration here caps torch's version; the registry serves the rest.
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def find_python(wanted: str, default: str) -> str:
    """An interpreter of version ``wanted`` ("3.10"): on PATH, or in pyenv's versions;
    else ``default``."""
    candidates = [shutil.which(f"python{wanted}")]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{wanted}.*/bin/python{wanted}")))
    for c in candidates:
        if c and subprocess.run([c, "-c", "import venv"], capture_output=True).returncode == 0:
            return c
    print(f"wheel-check: no Python {wanted} here: using {default}", flush=True)
    return default


def make_venv(version: str, base: str, python: str, env: dict) -> str:
    pyver = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
    ).stdout.strip()
    venv = os.path.join(base, f"venv-{version}-py{pyver}")
    py = os.path.join(venv, "bin", "python")
    have = None
    if os.path.exists(py):
        probe = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
        have = probe.stdout.strip().split("+")[0] if probe.returncode == 0 else None
    if have != version:
        shutil.rmtree(venv, ignore_errors=True)
        run([python, "-m", "venv", venv])
        run([py, "-m", "pip", "install", "-q", f"torch=={version}", *TEST_TOOLS], env=env)
    else:  # (a no-op, with no download, when every tool is there)
        run([py, "-m", "pip", "install", "-q", *TEST_TOOLS], env=env)
    return py


def copy_tests(dest: str, files: list) -> None:
    """The op tests and their helpers, outside the source tree, with a pytest
    configuration of their own (the repository's would put the sources on the path)."""
    tests = os.path.join(dest, "tests")
    os.makedirs(tests)
    for name in files + TEST_HELPERS:
        shutil.copy2(os.path.join(ROOT, "tests", name), tests)
    with open(os.path.join(dest, "pytest.ini"), "w") as f:
        f.write(
            "[pytest]\n"
            "pythonpath = . tests\n"
            "markers =\n"
            "    cuda: needs a CUDA GPU and the atss_ops CUDA kernels\n"
            "    emu: runs the emulated CUDA kernels\n"
            "    slow: takes more than a few seconds\n"
        )


def wheel_has_license(wheel: str) -> bool:
    """The wheel carries the project's LICENSE file (in its .dist-info)."""
    with zipfile.ZipFile(wheel) as z:
        return any(re.search(r"\.dist-info/(licenses/)?LICENSE$", name) for name in z.namelist())


def check_version(spec: str, wheel: str, args, env: dict, tests: str) -> dict:
    start = time.time()
    version, _, wanted_python = spec.partition("@")
    python = find_python(wanted_python, args.python) if wanted_python else args.python
    row = {"torch_requested": version, "python_requested": wanted_python or None}
    py = make_venv(version, args.venvs, python, env)
    run([py, "-m", "pip", "uninstall", "-q", "-y", "atss-ops"], env=env, check=False)
    run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", wheel], env=env)
    with tempfile.TemporaryDirectory(prefix="atss-wheel-check-") as work:
        probe = run([py, "-c", PROBE], env=env, cwd=work, capture=True)
        info = json.loads(probe.stdout.strip().splitlines()[-1])
        row.update(info)
        problems = []
        if not info["in_site_packages"]:
            problems.append(f"atss_ops imported from {info['file']}, not site-packages")
        if info["extension_error"] is not None or not info["cpu_kernels"]:
            problems.append(f"CPU kernels not registered: {info['extension_error']}")
        if info["import_warnings"]:
            problems.append(f"import atss_ops warned: {info['import_warnings']}")
        if info["cuda"] and info["cuda_libraries"]:
            # Any CUDA build of torch: with no driver here the newest library is loaded.
            if info["cuda_error"] is not None or not info["cuda_kernels"]:
                problems.append(f"CUDA kernels not registered under CUDA {info['cuda']}: {info['cuda_error']}")
        copy_tests(work, OP_TESTS[tests])
        row["test_set"] = tests
        test_env = dict(env, ATSS_CHECK_INSTALLED="1")
        proc = run(
            [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
            env=test_env,
            cwd=work,
            check=False,
            capture=True,
        )
        tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n", flush=True)
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail)}
        row["tests"] = counts
        row["pytest_summary"] = tail
        if proc.returncode != 0:
            problems.append(f"tests failed: {tail}")
    row["problems"] = problems
    row["seconds"] = round(time.time() - start, 1)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", nargs="?", help="the wheel (default: the newest dist/atss_ops-*.whl)")
    parser.add_argument(
        "--torch", nargs="+", default=list(DEFAULT_TORCH), help="torch versions to check, TORCH[@PYTHON]"
    )
    parser.add_argument(
        "--tests",
        choices=["auto", *sorted(OP_TESTS)],
        default="auto",
        help="which op tests to run: auto (default) runs the full set on the first torch (the minimum), "
        "the quick set (bit-exactness on every case, every error and its type, the library checks) on the others",
    )
    parser.add_argument(
        "--venvs",
        default=os.environ.get("ATSS_WHEEL_CHECK_VENVS", os.path.expanduser("~/.cache/atss-ops/wheel-check")),
        help="where the venvs live (kept between runs; env ATSS_WHEEL_CHECK_VENVS)",
    )
    parser.add_argument("--python", default=sys.executable, help="the interpreter that creates the venvs")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "wheel_check.json"))
    args = parser.parse_args()
    built = glob.glob(os.path.join(ROOT, "dist", "atss_ops-*.whl"))
    wheel = args.wheel or max(built, key=os.path.getmtime, default=None)
    if wheel is None or not os.path.exists(wheel):
        parser.error("no wheel: run `make wheel` first, or name one")
    wheel = os.path.abspath(wheel)
    if not wheel_has_license(wheel):
        print(f"wheel-check: {os.path.basename(wheel)} holds no LICENSE file", file=sys.stderr)
        return 1
    env = no_compiler_env()
    os.makedirs(args.venvs, exist_ok=True)
    rows = []
    for i, spec in enumerate(args.torch):
        tests = args.tests if args.tests != "auto" else ("full" if i == 0 else "quick")
        rows.append(check_version(spec, wheel, args, env, tests))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"wheel": os.path.basename(wheel), "results": rows}, f, indent=2)
    print(f"\nwheel: {os.path.basename(wheel)}")
    print("| torch | Python | CUDA | CPU kernels | CUDA kernels | test set | tests | seconds | problems |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cuda_state = "registered" if r.get("cuda_kernels") else (r.get("cuda_error") or "-")
        t = r.get("tests", {})
        tests = f"{t.get('passed', 0)} passed, {t.get('skipped', 0)} skipped, {t.get('failed', 0)} failed"
        cpu_state = "registered" if r.get("cpu_kernels") else "NO"
        print(
            f"| {r.get('torch')} | {r.get('python')} | {r.get('cuda')} | {cpu_state} "
            f"| {cuda_state} | {r.get('test_set')} | {tests} | {r['seconds']} | {'; '.join(r['problems']) or 'none'} |"
        )
    print(f"wrote {args.out}")
    return 1 if any(r["problems"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
