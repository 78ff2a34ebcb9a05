"""Bit-for-bit comparison of tensors: NaN payloads, signed zeros and int64 sentinels
included (the contract promises the same bits, not close values)."""

from __future__ import annotations

import torch
from torch import Tensor

_INT_VIEW = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def _bits(t: Tensor) -> Tensor:
    t = t.detach().cpu().contiguous()
    view = _INT_VIEW.get(t.dtype)
    return t.view(view) if view is not None else t


def bits_equal(a: Tensor, b: Tensor) -> bool:
    """True when ``a`` and ``b`` have the same dtype, shape and bits.

    Floats are compared through an integer view, so NaN equals NaN (same
    payload) and -0.0 differs from +0.0. Tensors on different devices are
    compared on the CPU.
    """
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
        return False
    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    return torch.equal(_bits(a), _bits(b))


def describe_difference(a: Tensor, b: Tensor) -> str:
    """A short human-readable account of why ``bits_equal(a, b)`` is False."""
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} != {b.dtype}"
    if tuple(a.shape) != tuple(b.shape):
        return f"shape {list(a.shape)} != {list(b.shape)}"
    diff = (_bits(a) != _bits(b)).nonzero()
    first = tuple(diff[0].tolist())
    return (
        f"{len(diff)} of {a.numel()} elements differ; first at {list(first)}: "
        f"{a.detach().cpu()[first].item()!r} != {b.detach().cpu()[first].item()!r}"
    )


def assert_bits_equal(a, b, what: str = "") -> None:
    """``bits_equal`` over a tensor or a (named) tuple of tensors, with a useful message."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        assert bits_equal(a, b), f"{what}: {describe_difference(a, b)}"
        return
    a, b = tuple(a), tuple(b)
    assert len(a) == len(b), f"{what}: {len(a)} outputs != {len(b)}"
    fields = getattr(a, "_fields", None) or [str(i) for i in range(len(a))]
    for name, x, y in zip(fields, a, b):
        assert_bits_equal(x, y, f"{what}[{name}]" if what else name)
