"""Loading the compiled extension, which op has a kernel for which device, and
the fallback policy: without a kernel, the wrappers use :mod:`atss_ops.reference`
(the same bits, slower) and say so once per device type."""

from __future__ import annotations

import importlib.util
import warnings
from typing import Optional, Union

import torch

OPS = ("center_distance", "topk_per_level", "iou_statistics", "resolve_multi_gt", "atss_assign")

BUILD_HINT = (
    "build it with `pip install --no-build-isolation .` (or, in a clone, "
    "`python setup.py build_ext --inplace` / `make build`)"
)


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def _load() -> Optional[str]:
    """Loads ``atss_ops._C``; returns why it cannot be used, or None."""
    if importlib.util.find_spec("atss_ops._C") is None:
        return f"the compiled extension atss_ops._C is not built: {BUILD_HINT}"
    try:
        from . import _C  # (loading it registers torch.ops.atss_ops.*)
    except ImportError as exc:  # e.g. built against another torch
        return f"the compiled extension atss_ops._C failed to load ({exc}): rebuild it, {BUILD_HINT}"
    # Another torch minor version has another ABI: its kernels could misbehave.
    built, installed = getattr(_C, "torch_version", None), _major_minor(torch.__version__)
    if built is not None and built != installed:
        return (
            f"the compiled extension atss_ops._C was built against torch {built}, but torch "
            f"{torch.__version__} is installed: rebuild it, {BUILD_HINT}"
        )
    # A library built from older sources (contract version 1: no anchor_ignore,
    # no ensure_positive) would reject the wrappers' arguments.
    schema = str(torch.ops.atss_ops.atss_assign.default._schema)
    if "ensure_positive" not in schema:
        return (
            "the compiled extension atss_ops._C is older than the Python package "
            f"(contract version 1): rebuild it, {BUILD_HINT}"
        )
    return None


EXTENSION_ERROR: Optional[str] = _load()


def extension_available() -> bool:
    """True when the compiled library is loaded (``atss_ops._C``)."""
    return EXTENSION_ERROR is None


def _kernel_table() -> dict:
    if not extension_available():  # (a library of another torch may have registered ops: never used)
        return {}
    return {
        (op, device): torch._C._dispatch_has_kernel_for_dispatch_key(f"atss_ops::{op}", key)
        for op in OPS
        for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
    }


# Looked up once: a plain dict read stays traceable under torch.compile.
_KERNELS = _kernel_table()


def has_kernel(op: str, device: Union[str, torch.device]) -> bool:
    """True when ``torch.ops.atss_ops.<op>`` has a compiled kernel for ``device``'s type."""
    return _KERNELS.get((op, torch.device(device).type), False)


_warned_fallback: set = set()


def use_kernel(op: str, device: torch.device) -> bool:
    """True when ``op`` has a kernel for ``device``; otherwise warns (once per device
    type) that the reference serves the call, and returns False."""
    if _KERNELS.get((op, device.type), False):
        return True
    if device.type not in _warned_fallback:
        _warned_fallback.add(device.type)
        why = EXTENSION_ERROR or f"the compiled extension has no {device.type} kernels"
        warnings.warn(
            f"atss_ops: using the pure-PyTorch reference on {device.type}: {why}. Results are identical, only slower.",
            stacklevel=3,
        )
    return False
