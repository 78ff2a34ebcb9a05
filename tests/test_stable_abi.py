"""The compiled libraries stay on the LibTorch stable ABI and within the wheel's
manylinux_2_28 / cp310-abi3 promises, and atss_ops says in one line why a library
that does not fit the installed torch is not used.

The symbol checks read the built libraries with binutils' ``nm`` and ``readelf``
(skipped without them, or without a built library)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from subprocesses import run_import

import atss_ops
from atss_ops import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.dirname(atss_ops.__file__)

# What a library of the wheel may ask of the system (manylinux_2_28's whitelist) and of torch:
# no CUDA runtime (the CUDA libraries carry theirs; its pthread, dl and shm calls keep
# glibc 2.28's libraries: CMakeLists.txt's ATSS_GLIBC_STUBS).
ALLOWED_NEEDED = re.compile(
    r"^(libtorch_cpu\.so|libtorch_cuda\.so|libstdc\+\+\.so\.6|libm\.so\.6|libgcc_s\.so\.1"
    r"|libc\.so\.6|ld-linux-x86-64\.so\.2|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1)$"
)
MANYLINUX_2_28 = {"GLIBC": (2, 28), "GLIBCXX": (3, 4, 25), "CXXABI": (1, 3, 11), "GCC": (7, 0, 0)}
IOSTREAM = re.compile(r"basic_ostream|basic_istream|basic_[io]?stringstream|basic_stringbuf|ios_base|\bcerr\b|\bcout\b")


def libraries():
    return sorted(os.path.join(PACKAGE, f) for f in os.listdir(PACKAGE) if f.startswith("_C") and f.endswith(".so"))


def tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"needs binutils' {name}")
    return path


def undefined_symbols(lib):
    out = subprocess.run([tool("nm"), "-D", "--undefined-only", lib], capture_output=True, text=True, check=True).stdout
    return [line.split()[-1] for line in out.splitlines() if line.split()]


@pytest.fixture(params=libraries() or [None], ids=lambda p: os.path.basename(p) if p else "none")
def library(request):
    if request.param is None:
        pytest.skip("atss_ops is not built")
    return request.param


def test_torch_minimum_has_one_value():
    if not os.path.exists(os.path.join(ROOT, "build_config.py")):
        pytest.skip("runs in the source tree (build_config.py)")
    sys.path.insert(0, ROOT)
    try:
        import build_config
    finally:
        sys.path.pop(0)
    assert _extension.TORCH_MINIMUM == build_config.torch_minimum()
    if atss_ops.extension_available():
        assert atss_ops._C.torch_target == build_config.torch_target()


def test_library_uses_the_stable_abi_only(library):
    """Only C symbols of torch's shim (aoti_torch_*, torch_*), CPython's limited API and
    the C/C++ runtimes: no mangled ATen, c10 or torch C++ symbol, and no libcudart."""
    symbols = undefined_symbols(library)
    cxx_torch = [s for s in symbols if re.match(r"_ZN?K?(2at|3c10|5torch|8pybind11)", s)]
    assert not cxx_torch, cxx_torch
    python = [s.split("@")[0] for s in symbols if re.match(r"_?Py", s)]
    assert not python or os.path.basename(library).startswith("_C.abi3"), python
    needed = subprocess.run([tool("readelf"), "-d", library], capture_output=True, text=True, check=True).stdout
    libs = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", needed)
    assert all(ALLOWED_NEEDED.match(n) for n in libs), libs
    assert not [n for n in libs if n.startswith("libcudart")], libs  # the CUDA runtime is inside
    assert "libc10.so" not in libs and "libtorch_python.so" not in libs and "libgomp.so.1" not in libs


def test_library_has_no_iostreams(library):
    """No iostream code in the library: its messages are built from strings (text.h),
    and torch's header-only error paths are redirected (common/stable.h). (torch's
    stable headers include <iostream>, whose static std::ios_base::Init object is the
    one stream symbol left: it formats nothing.)"""
    symbols = subprocess.run([tool("nm"), "-D", "-C", library], capture_output=True, text=True, check=True).stdout
    found = sorted(
        {line for line in symbols.splitlines() if IOSTREAM.search(line) and "std::ios_base::Init::" not in line}
    )
    assert not found, found


def test_library_fits_manylinux_2_28(library):
    """Every versioned symbol the library asks the system for exists in glibc 2.28 and
    GCC 8's libstdc++ (the manylinux_2_28 baseline)."""
    too_new = []
    for sym in undefined_symbols(library):
        m = re.search(r"@(GLIBC|GLIBCXX|CXXABI|GCC)_([\d.]+)$", sym)
        if m is None:
            continue
        version = tuple(int(x) for x in m.group(2).split("."))
        if version > MANYLINUX_2_28[m.group(1)]:
            too_new.append(sym)
    assert not too_new, too_new


def test_an_older_torch_is_refused_in_one_line(tmp_path):
    """Under a torch older than the stable-ABI target the library is not loaded (its
    symbols would be missing): one warning line at import, then the reference serves
    without a second warning."""
    if not atss_ops.extension_available():
        pytest.skip("needs the compiled extension")
    script = (
        "import warnings, torch\n"
        "torch.__version__ = '2.9.1+cu128'\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import atss_ops\n"
        "    assert not atss_ops.extension_available()\n"
        "    anchors, levels = atss_ops.grid_anchors(32, 32, strides=(8,))\n"
        "    atss_ops.atss_assign(anchors, levels, torch.tensor([[[0.0, 0.0, 9.0, 9.0]]]))\n"
        "print(len(w))\n"
        "print(w[0].message)\n"
    )
    proc = run_import(script, ROOT)
    assert proc.returncode == 0, proc.stderr
    count, message = proc.stdout.splitlines()[:2]
    assert count == "1", proc.stdout
    minimum = ".".join(map(str, _extension.TORCH_MINIMUM))
    assert message == (
        f"atss_ops: the compiled extension atss_ops._C needs torch >= {minimum} (it is built on the LibTorch "
        f"stable ABI of torch {minimum}), but torch 2.9.1+cu128 is installed: upgrade torch; the pure-PyTorch "
        "reference serves cpu and cuda tensors (identical results, slower; `python -m atss_ops` says more)."
    ), message


@pytest.mark.parametrize(
    "majors, driver, chosen",
    [
        ((13,), None, 13),  # no driver (no GPU): the newest, so that its kernels are registered
        ((12, 13), None, 13),
        ((13,), 13000, 13),
        ((13,), 13020, 13),
        ((12, 13), 13000, 13),
        ((12, 13), 12080, 12),  # an R570 driver: the CUDA 12 library
        ((12, 13), 12000, 12),
        ((13,), 12090, None),
        ((12, 13), 11080, None),
        ((), 13000, None),
    ],
)
def test_the_cuda_library_is_chosen_by_the_driver(majors, driver, chosen):
    major, why = _extension.choose_cuda_library(majors, driver)
    assert major == chosen
    assert (why is None) == (chosen is not None)
    if chosen is None and majors:
        oldest = min(majors)
        assert f"supports CUDA {driver // 1000}.{driver % 1000 // 10}, but the CUDA kernels" in why
        assert f"need CUDA {oldest}.0 (driver {_extension.DRIVER_MINIMUM[oldest][1]} or newer)" in why


def _package_with_cuda_libraries(tmp_path, majors):
    """A copy of the package whose CUDA libraries are empty files named for ``majors``
    (only their names are read until one is loaded)."""
    shutil.copytree(PACKAGE, tmp_path / "atss_ops", ignore=shutil.ignore_patterns("_C_cuda*.so", "__pycache__"))
    for major in majors:
        (tmp_path / "atss_ops" / f"_C_cuda{major}.abi3.so").write_bytes(b"")
    return str(tmp_path)


IMPORT_AND_REPORT = (
    "import warnings, torch\n"
    "torch.version.cuda = torch.version.cuda or '12.8'\n"  # (a CPU-only torch here: the choice is the same)
    "with warnings.catch_warnings(record=True) as w:\n"
    "    warnings.simplefilter('always')\n"
    "    import atss_ops\n"
    "print(atss_ops.extension_available(), atss_ops.has_kernel('atss_assign', 'cpu'),"
    " atss_ops.has_kernel('atss_assign', 'cuda'), len(w))\n"
    "print(w[0].message if w else atss_ops._extension.CUDA_ERROR)\n"
)


def test_an_old_driver_is_refused_in_one_line(tmp_path, monkeypatch):
    """With a driver older than every CUDA library needs, none is loaded: one warning
    line at import names the driver's CUDA version and the one needed; the CPU kernels
    still serve, the reference serves CUDA tensors."""
    if not atss_ops.extension_available():
        pytest.skip("needs the compiled extension")
    monkeypatch.setenv(_extension.FAKE_DRIVER_ENV, "12080")
    proc = run_import(IMPORT_AND_REPORT, _package_with_cuda_libraries(tmp_path, [13]))
    assert proc.returncode == 0, proc.stderr
    flags, message = proc.stdout.splitlines()[:2]
    assert flags == "True True False 1", proc.stdout
    assert message.startswith("atss_ops: the NVIDIA driver") and message.endswith(
        "supports CUDA 12.8, but the CUDA kernels of atss_ops need CUDA 13.0 (driver R580 or newer); the "
        "pure-PyTorch reference serves cuda tensors (identical results, slower; `python -m atss_ops` says more)."
    ), message


@pytest.mark.parametrize("driver, loads", [("12080", "_C_cuda12"), ("13000", "_C_cuda13"), ("none", "_C_cuda13")])
def test_import_loads_the_newest_library_the_driver_runs(tmp_path, monkeypatch, driver, loads):
    """The library chosen is the one import tries to load (here an empty file, so the
    load fails and says which file it was), whatever torch's own CUDA version."""
    if not atss_ops.extension_available():
        pytest.skip("needs the compiled extension")
    monkeypatch.setenv(_extension.FAKE_DRIVER_ENV, driver)
    proc = run_import(IMPORT_AND_REPORT, _package_with_cuda_libraries(tmp_path, [12, 13]))
    assert proc.returncode == 0, proc.stderr
    flags, message = proc.stdout.splitlines()[:2]
    assert flags == "True True False 0", proc.stdout
    assert message.startswith(f"the CUDA kernels of atss_ops ({loads}.abi3.so) failed to load"), message


def test_python_m_atss_ops_reports_what_serves_each_op(tmp_path, monkeypatch):
    """``python -m atss_ops``: torch and its build, the driver, each library and its
    state, and per op and device a compiled kernel or the reference, as text and JSON."""
    monkeypatch.setenv(_extension.FAKE_DRIVER_ENV, "12080")
    package = _package_with_cuda_libraries(tmp_path, [13]) if atss_ops.extension_available() else ROOT
    script = (
        "import runpy, sys\nsys.argv = ['atss_ops'] + {args!r}\nrunpy.run_module('atss_ops', run_name='__main__')\n"
    )
    text = run_import(script.format(args=[]), package)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert f"torch {torch.__version__} (" in out
    assert "NVIDIA driver: " in out and "supports CUDA 12.8" in out
    for op in _extension.OPS:
        assert re.search(rf"^  {op} +(compiled|reference) +reference$", out, re.M), out
    info = run_import(script.format(args=["--json"]), package)
    assert info.returncode == 0, info.stderr
    report = json.loads(info.stdout)
    assert report["torch"] == torch.__version__ and report["driver_cuda"] == "12.8"
    states = {lib["file"]: lib["state"] for lib in report["libraries"]}
    if atss_ops.extension_available():
        assert set(states) == {os.path.basename(atss_ops._C.__file__), "_C_cuda13.abi3.so"}, states
        assert states[os.path.basename(atss_ops._C.__file__)] == "loaded"
        assert states["_C_cuda13.abi3.so"].startswith("not loaded: the NVIDIA driver"), states
        assert all(report["ops"][op] == {"cpu": "compiled", "cuda": "reference"} for op in _extension.OPS)
    if atss_ops.extension_available():
        assert report["import_warning"].startswith("atss_ops: the NVIDIA driver supports CUDA 12.8"), report


def test_cuda_library_names_its_major_version():
    for major, path in _extension.cuda_libraries().items():
        assert os.path.basename(path).startswith(f"_C_cuda{major}.")
    if torch.version.cuda is not None and _extension.cuda_libraries():
        # Whatever torch's CUDA version: a library loads unless the driver is too old for all.
        major, _ = _extension.choose_cuda_library(_extension.cuda_libraries(), _extension.driver_version())
        if major is not None:
            assert _extension.CUDA_ERROR is None, _extension.CUDA_ERROR
            assert _extension.CUDA_LIBRARY == _extension.cuda_libraries()[major]
            assert all(atss_ops.has_kernel(op, "cuda") for op in _extension.OPS)


def test_kernel_input_errors_are_value_errors_in_the_public_api(monkeypatch):
    """The kernels' input errors (std::invalid_argument) reach Python as ValueError on
    torch 2.10 to 2.14 and as RuntimeError on 2.15; the public functions raise ValueError
    either way. Here (whatever torch): a real kernel error sets the library's record, a
    RuntimeError with that message is recognised, any other RuntimeError passes through."""
    if not atss_ops.has_kernel("center_distance", "cpu"):
        pytest.skip("needs the compiled extension")
    anchors, gt = torch.zeros(1, 4), torch.full((1, 1, 4), float("nan"))
    with pytest.raises((ValueError, RuntimeError)) as info:
        torch.ops.atss_ops.center_distance(anchors, gt)
    message = str(info.value)
    assert _extension.input_error(RuntimeError(message)) == message
    assert _extension.input_error(RuntimeError("CUDA error: out of memory")) is None

    real_op = torch.ops.atss_ops.atss_assign.default

    def as_torch_2_15(*args):  # what torch 2.15 makes of the kernel's std::invalid_argument
        try:
            return real_op(*args)
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None

    monkeypatch.setattr(torch.ops.atss_ops, "atss_assign", as_torch_2_15)
    anchors, levels = atss_ops.grid_anchors(32, 32, strides=(8,))
    monkeypatch.setenv("ATSS_CPU_SELECT", "grid")  # checked by the C++ kernel alone
    with pytest.raises(ValueError, match="^ATSS_CPU_SELECT must be auto, index, index:N"):
        atss_ops.atss_assign(anchors, levels, torch.tensor([[[0.0, 0.0, 9.0, 9.0]]]))

    def other_failure(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.ops.atss_ops, "atss_assign", other_failure)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        atss_ops.atss_assign(anchors, levels, torch.tensor([[[0.0, 0.0, 9.0, 9.0]]]))


def test_python_m_atss_ops_under_a_cpu_only_torch(tmp_path):
    """Under a CPU-only torch the CUDA libraries are not loaded (they need libtorch_cuda),
    and the report says why; the CPU kernels serve."""
    package = _package_with_cuda_libraries(tmp_path, [12, 13]) if atss_ops.extension_available() else ROOT
    script = (
        "import runpy, sys, torch\n"
        "torch.version.cuda = None\n"
        "sys.argv = ['atss_ops', '--json']\n"
        "runpy.run_module('atss_ops', run_name='__main__')\n"
    )
    proc = run_import(script, package)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["torch_cuda"] is None
    assert all(report["ops"][op]["cuda"] == "reference" for op in _extension.OPS)
    if atss_ops.extension_available():
        states = {lib["file"]: lib["state"] for lib in report["libraries"]}
        for name in ("_C_cuda12.abi3.so", "_C_cuda13.abi3.so"):
            assert states[name] == f"not loaded: torch {torch.__version__} is a CPU-only build", states
        assert all(report["ops"][op]["cpu"] == "compiled" for op in _extension.OPS)
        assert report["import_warning"] is None  # a CPU-only torch is no mismatch


def test_version_and_torch_minimum_have_one_home():
    """atss_ops.__version__ and the torch minimum are pyproject.toml's (read from it in a
    source tree, from the distribution's metadata when installed)."""
    import importlib.metadata

    from atss_ops import _metadata

    pyproject = os.path.join(os.path.dirname(PACKAGE), "pyproject.toml")
    if os.path.exists(pyproject):
        with open(pyproject) as f:
            text = f.read()
        version = re.search(r'^version\s*=\s*"([^"]*)"', text, re.M).group(1)
        minimum = tuple(int(x) for x in re.search(r'"torch>=(\d+)\.(\d+)"', text).groups())
    else:
        version = importlib.metadata.version("atss-ops")
        requires = " ".join(importlib.metadata.requires("atss-ops") or [])
        minimum = tuple(int(x) for x in re.search(r"torch\s*>=\s*(\d+)\.(\d+)", requires).groups())
    assert atss_ops.__version__ == _metadata.VERSION == version
    assert _extension.TORCH_MINIMUM == _metadata.torch_minimum() == minimum
    if atss_ops.extension_available():  # the compiled library's own record of its target
        assert atss_ops._C.torch_target == "{}.{}".format(*minimum)
