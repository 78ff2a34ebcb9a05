"""The backends the kernel tests run on (the CPU kernels, the CUDA kernels on a GPU, the
CUDA kernels emulated on the host) and the ways of calling an op: raw, public, reference."""

from __future__ import annotations

import functools
import os

import pytest
import torch
from cases import ARG_NAMES
from subprocesses import ROOT
from torch import Tensor

import atss_ops
from atss_ops import reference


def move(x, device):
    """``x`` (a tensor, or a tuple / dict of them, or anything else) moved to ``device``."""
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, tuple):
        return tuple(move(v, device) for v in x)
    if isinstance(x, dict):
        return {k: move(v, device) for k, v in x.items()}
    return x


def kernel(op: str):
    """The compiled op ``torch.ops.atss_ops.<op>``."""
    return getattr(torch.ops.atss_ops, op)


def reference_op(op: str):
    return getattr(reference, op)


@functools.lru_cache(maxsize=None)
def raw_op_error() -> type:
    """The exception type of the compiled kernels' input errors when an op is called raw
    (``torch.ops.atss_ops.*``): the kernels throw ``std::invalid_argument``, which torch
    2.10 to 2.14 deliver as ``ValueError`` and torch 2.15 as ``RuntimeError`` (same
    message). The public functions raise ``ValueError`` on every version. Probed on
    first use, not at import: the sanitizer workload imports this module, and an
    exception thrown under AddressSanitizer before libstdc++ is loaded aborts it."""
    if not atss_ops.has_kernel("center_distance", "cpu"):
        return ValueError
    try:
        torch.ops.atss_ops.center_distance(torch.zeros(1, 4), torch.full((1, 1, 4), float("nan")))
    except (ValueError, RuntimeError) as exc:
        assert str(exc).startswith("gt_boxes[0, 0] = [nan, nan, nan, nan] is not finite"), exc
        return type(exc)
    raise AssertionError("center_distance accepted a NaN box")


def raw_op_error_for(path: str) -> type:
    """The exception type invalid input raises through entry point ``path``: raw ops
    ("op", "emu": the compiled kernels) give raw_op_error(), the public functions and the
    reference ValueError."""
    return raw_op_error() if path in ("op", "emu") else ValueError


def api_op(op: str):
    """The public ``atss_ops.<op>`` as a function of the op's positional arguments
    (``op_args``): ``atss_assign``'s wrapper takes its options by keyword."""
    if op == "atss_assign":
        return lambda a, levels, g, n, *rest: atss_ops.atss_assign(a, levels, g, n, **dict(zip(ARG_NAMES[4:], rest)))
    return getattr(atss_ops, op)


def has_cuda_kernels() -> bool:
    return torch.cuda.is_available() and atss_ops.has_kernel("atss_assign", "cuda")


# The test-only library of the CUDA kernel sources run through the host execution
# model (``make emu``; csrc/cuda/emu/): ops ``torch.ops.atss_ops_emu.<op>`` on CPU
# tensors. ATSS_EMU_LIBRARY points at another build (the sanitized ones).
EMU_LIBRARY = os.environ.get("ATSS_EMU_LIBRARY") or os.path.join(ROOT, "build-emu", "libatss_ops_emu.so")


_emu_state: dict = {}


def emu_available() -> bool:
    """True once the emulated library is loaded (loads it on first call)."""
    if "ok" not in _emu_state:
        _emu_state["ok"] = False
        if os.path.exists(EMU_LIBRARY):
            torch.ops.load_library(EMU_LIBRARY)
            _emu_state["ok"] = True
    return _emu_state["ok"]


# The backend axis of the kernel tests: the CPU kernels, the CUDA kernels on a GPU
# (marker ``cuda``) and the CUDA kernels emulated on the host (marker ``emu``).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda), pytest.param("emu", marks=pytest.mark.emu)]


# The public API runs on real devices only.
API_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def tensor_device(backend: str) -> str:
    """The device of a backend's tensors (the emulated kernels take CPU tensors)."""
    return "cpu" if backend == "emu" else backend


def ops_of(backend: str):
    """The op namespace of a backend: ``torch.ops.atss_ops`` or ``torch.ops.atss_ops_emu``."""
    return torch.ops.atss_ops_emu if backend == "emu" else torch.ops.atss_ops


def backend_kernel(op: str, backend: str):
    return getattr(ops_of(backend), op)
