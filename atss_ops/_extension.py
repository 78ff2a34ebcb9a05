"""Loading the compiled libraries, which op has a kernel for which device, and
the fallback policy: without a kernel, the wrappers use :mod:`atss_ops.reference`
(the same bits, slower) and say so once per device type.

The libraries are built (``CMakeLists.txt``) on the LibTorch stable ABI of
:data:`TORCH_MINIMUM` (pyproject.toml's ``torch>=``), so one build serves every torch
from that version on:

* ``atss_ops/_C.abi3.so``: the schemas and the CPU kernels (imported as a module);
* ``atss_ops/_C_cudaN.abi3.so``: the CUDA kernels built by a CUDA N.x toolkit, with
  that CUDA runtime linked in statically (no ``libcudart.so`` needed, so any CUDA build
  of torch will do: the kernels take torch's tensors and current stream). They need an
  NVIDIA driver for CUDA N (:data:`DRIVER_MINIMUM`). Under a CUDA build of torch, the
  newest library the driver can run is loaded with ``torch.ops.load_library``; with no
  driver at all (a machine without a GPU) the newest one is loaded, so that its kernels
  are registered.

Under an older torch, or a driver too old for every CUDA library, the reason is said in
one line (:data:`EXTENSION_ERROR`, :data:`CUDA_ERROR`) and the reference serves.
``python -m atss_ops`` prints what was found and chosen.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import warnings
from typing import Optional, Union

import torch

from . import _metadata

OPS = ("center_distance", "topk_per_level", "iou_statistics", "resolve_multi_gt", "atss_assign")

# The ops of the TAL contract (docs/contract.md): CPU and CUDA kernels like OPS, kept apart
# because the ATSS tests run every op of OPS on the ATSS case catalogue; with a library built
# before them, the reference serves.
TAL_OPS = ("tal_assign",)

# Every op with compiled kernels.
ALL_OPS = OPS + TAL_OPS

# The oldest torch whose stable ABI the libraries target: pyproject.toml's torch>=
# (tests/test_stable_abi.py checks it against the compiled library's own record).
TORCH_MINIMUM = _metadata.torch_minimum()

BUILD_HINT = (
    "install the prebuilt wheel (`make wheel` writes it to dist/), or build it with "
    "`pip install --no-build-isolation .` (in a clone, `make build`)"
)


def _version_tuple(version: str) -> tuple:
    parts = []
    for p in version.split("+")[0].split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


# The device types whose compiled library is there but does not fit this torch
# (too old a torch, another CUDA major version): said once, at import.
_MISMATCHED: set = set()


def _load() -> Optional[str]:
    """Loads ``atss_ops._C``; returns why it cannot be used, or None."""
    if importlib.util.find_spec("atss_ops._C") is None:
        return f"the compiled extension atss_ops._C is not built: {BUILD_HINT}"
    minimum = ".".join(map(str, TORCH_MINIMUM))
    if _version_tuple(torch.__version__) < TORCH_MINIMUM:
        # Loading would fail on symbols the older torch lacks: say why instead.
        _MISMATCHED.update(("cpu", "cuda"))
        return (
            f"the compiled extension atss_ops._C needs torch >= {minimum} (it is built on the "
            f"LibTorch stable ABI of torch {minimum}), but torch {torch.__version__} is installed: "
            f"upgrade torch"
        )
    try:
        from . import _C  # noqa: F401  (loading it registers torch.ops.atss_ops.*)
    except ImportError as exc:
        return f"the compiled extension atss_ops._C failed to load ({exc}): rebuild it, or {BUILD_HINT}"
    # A library built from older sources (contract version 1: no anchor_ignore,
    # no ensure_positive) would reject the wrappers' arguments.
    schema = str(torch.ops.atss_ops.atss_assign.default._schema)
    if "ensure_positive" not in schema:
        return (
            "the compiled extension atss_ops._C is older than the Python package "
            f"(contract version 1): rebuild it, or {BUILD_HINT}"
        )
    return None


# One reader per loaded library of its record of the last input error (checks.cpp).
_INPUT_ERROR_RECORDS: list = []


def _read_input_errors_of(path: str) -> None:
    try:
        reader = ctypes.CDLL(path).atss_ops_last_input_error  # the loaded library itself
    except (OSError, AttributeError):
        return
    reader.restype = ctypes.c_char_p
    reader.argtypes = []
    _INPUT_ERROR_RECORDS.append(reader)


EXTENSION_ERROR: Optional[str] = _load()
if EXTENSION_ERROR is None:
    from . import _C as _library

    _read_input_errors_of(_library.__file__)


def input_error(exc: BaseException) -> Optional[str]:
    """The message when ``exc`` is an input error raised by the compiled kernels (which
    throw ``std::invalid_argument``): torch 2.10 to 2.14 deliver it as ``ValueError``,
    torch 2.15 as ``RuntimeError`` with the same message. None for any other error."""
    text = str(exc)
    for reader in _INPUT_ERROR_RECORDS:
        last = reader()
        if last and text.startswith(last.decode("utf-8", "replace")):
            return last.decode("utf-8", "replace")
    return None


def cuda_libraries() -> dict:
    """{CUDA major version: path} of the CUDA kernel libraries beside the package."""
    here = os.path.dirname(os.path.abspath(__file__))
    found = {}
    for path in glob.glob(os.path.join(here, "_C_cuda*.so")):
        digits = os.path.basename(path)[len("_C_cuda") :].split(".")[0]
        if digits.isdigit():
            found[int(digits)] = path
    return found


# Per CUDA major version of a kernel library: the oldest driver that runs it, as
# cuDriverGetVersion reports it (1000 * major + 10 * minor), and its driver branch.
DRIVER_MINIMUM = {12: (12000, "R525"), 13: (13000, "R580")}

# For tests and diagnosis only: a driver CUDA version to assume instead of asking the
# driver ("13000"; "none": no driver).
FAKE_DRIVER_ENV = "ATSS_OPS_FAKE_DRIVER_VERSION"


def driver_version() -> Optional[int]:
    """The CUDA version the installed NVIDIA driver supports (``cuDriverGetVersion``:
    1000 * major + 10 * minor, e.g. 12080 for 12.8), or None without a driver. Asks
    ``libcuda.so.1`` directly: no CUDA context is created, no GPU is touched."""
    fake = os.environ.get(FAKE_DRIVER_ENV)
    if fake is not None:
        return None if fake.strip().lower() in ("", "none") else int(fake)
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return version.value


def driver_release() -> Optional[str]:
    """The loaded NVIDIA kernel module's version ("580.65.06"), or None."""
    try:
        with open("/sys/module/nvidia/version") as f:
            return f.read().strip() or None
    except OSError:
        return None


def format_cuda_version(version: int) -> str:
    """12080 -> "12.8"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def choose_cuda_library(majors, driver: Optional[int]) -> tuple:
    """Which CUDA kernel library to load, given the CUDA major versions of those found
    and the driver's CUDA version (None: no driver). Returns ``(major, None)``, or
    ``(None, why)`` when none can run. With no driver the newest is chosen (its kernels
    are registered; no CUDA tensor can exist to reach them)."""
    majors = sorted(majors)
    if not majors:
        return None, "the compiled extension has no CUDA kernels (built without the CUDA toolkit: FORCE_CUDA=1)"
    if driver is None:
        return majors[-1], None
    fitting = [m for m in majors if driver >= DRIVER_MINIMUM.get(m, (m * 1000, "?"))[0]]
    if fitting:
        return fitting[-1], None
    oldest = majors[0]
    need, branch = DRIVER_MINIMUM.get(oldest, (oldest * 1000, "?"))
    release = driver_release()
    return None, (
        f"the NVIDIA driver{' ' + release if release else ''} supports CUDA {format_cuda_version(driver)}, but the "
        f"CUDA kernels of atss_ops need CUDA {format_cuda_version(need)} (driver {branch} or newer)"
    )


# What was decided, for `python -m atss_ops`: the driver seen and the library loaded.
DRIVER_VERSION: Optional[int] = None
CUDA_LIBRARY: Optional[str] = None


def _load_cuda() -> Optional[str]:
    """Loads the CUDA kernels that fit the driver; returns why none serve CUDA tensors, or None."""
    global DRIVER_VERSION, CUDA_LIBRARY
    if EXTENSION_ERROR is not None:
        return EXTENSION_ERROR
    libraries = cuda_libraries()
    if libraries and torch.version.cuda is None:
        # (the CUDA libraries link libtorch_cuda, which a CPU-only torch does not have)
        return f"torch {torch.__version__} is a CPU-only build"
    DRIVER_VERSION = driver_version()
    major, why = choose_cuda_library(libraries, DRIVER_VERSION)
    if major is None:
        if libraries:
            _MISMATCHED.add("cuda")
        return why
    try:
        torch.ops.load_library(libraries[major])
    except OSError as exc:
        name = os.path.basename(libraries[major])
        return f"the CUDA kernels of atss_ops ({name}) failed to load ({exc.__cause__ or exc})"
    CUDA_LIBRARY = libraries[major]
    _read_input_errors_of(libraries[major])
    return None


CUDA_ERROR: Optional[str] = _load_cuda()


def extension_available() -> bool:
    """True when the compiled library is loaded (``atss_ops._C``)."""
    return EXTENSION_ERROR is None


def _has_kernel_for(op: str, key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"atss_ops::{op}", key)
    except RuntimeError:  # no such op: a library built before it
        return False


def _kernel_table() -> dict:
    if not extension_available():  # (a library of another torch may have registered ops: never used)
        return {}
    return {
        (op, device): _has_kernel_for(op, key) for op in ALL_OPS for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
    }


# Looked up once: a plain dict read stays traceable under torch.compile.
_KERNELS = _kernel_table()


def has_kernel(op: str, device: Union[str, torch.device]) -> bool:
    """True when ``torch.ops.atss_ops.<op>`` has a compiled kernel for ``device``'s type."""
    return _KERNELS.get((op, torch.device(device).type), False)


_warned_fallback: set = set()


def _warn_mismatch_at_import() -> None:
    """A library that exists but cannot serve (too old a torch, a driver too old for
    every CUDA library) is said once, at import, in one line; the per-device fallback
    warning then stays silent for what it already covers."""
    if not _MISMATCHED:
        return
    devices = tuple(d for d in ("cpu", "cuda") if d in _MISMATCHED)
    why = EXTENSION_ERROR if "cpu" in _MISMATCHED else CUDA_ERROR
    _warned_fallback.update(devices)
    global IMPORT_WARNING
    IMPORT_WARNING = (
        f"atss_ops: {why}; the pure-PyTorch reference serves {' and '.join(devices)} tensors "
        "(identical results, slower; `python -m atss_ops` says more)."
    )
    warnings.warn(IMPORT_WARNING, stacklevel=4)


# The one line said at import, if any (python -m atss_ops repeats it).
IMPORT_WARNING: Optional[str] = None


_warn_mismatch_at_import()


def use_kernel(op: str, device: torch.device) -> bool:
    """True when ``op`` has a kernel for ``device``; otherwise warns (once per device
    type) that the reference serves the call, and returns False."""
    if _KERNELS.get((op, device.type), False):
        return True
    if op in TAL_OPS and _KERNELS.get((OPS[-1], device.type), False):
        # The device's library serves the ATSS ops but has no kernel of this op: a library
        # built before the op.
        if (op, device.type) not in _warned_fallback:
            _warned_fallback.add((op, device.type))
            warnings.warn(
                f"atss_ops: {op} has no {device.type} kernel in this build of the library (built before the op): "
                "the pure-PyTorch reference serves it "
                "(identical results, [B, G, A] memory).",
                stacklevel=3,
            )
        return False
    if device.type not in _warned_fallback:
        _warned_fallback.add(device.type)
        why = EXTENSION_ERROR or (CUDA_ERROR if device.type == "cuda" else None)
        why = why or f"the compiled extension has no {device.type} kernels"
        warnings.warn(
            f"atss_ops: using the pure-PyTorch reference on {device.type}: {why}. Results are identical, only "
            "slower (`python -m atss_ops` says more).",
            stacklevel=3,
        )
    return False
