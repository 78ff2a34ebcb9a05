"""The Python checks (``atss_ops._validation``, called by the reference, the fake
kernels and the wrappers) and the C++ checks (``csrc/common/checks.cpp``) give the
same message for the same bad input: every bad input of ``test_errors.py`` goes
through the reference and through the CPU kernel, and the two messages must be equal.
Also the two checks that once existed only in C++ (A < 2^31; num_anchors >= 0)."""

from __future__ import annotations

import pytest
import torch
from backends import raw_op_error
from test_errors import ANCHOR_COUNT, ASSIGN_ARGS, INVALID, OP_ARGS, STAGE_INVALID, base_case, stage_inputs

import atss_ops
from atss_ops import reference

pytestmark = pytest.mark.skipif(not atss_ops.has_kernel("atss_assign", "cpu"), reason="needs the compiled CPU kernels")


def message(fn, *args) -> str:
    """The message of the error ``fn`` raises: ValueError from the reference and from a raw
    op on meta tensors (the Python fake kernel), the type torch gives the compiled kernels'
    errors from a raw op on real tensors (cases.raw_op_error)."""
    raw = isinstance(fn, (torch._ops.OpOverloadPacket, torch._ops.OpOverload))
    meta = any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args)
    with pytest.raises(raw_op_error() if raw and not meta else ValueError) as info:
        fn(*args)
    return str(info.value)


ASSIGN_PARAMS = [
    pytest.param(changes, id=name)
    for name, (changes, _, *paths) in INVALID.items()
    if not paths or ("op" in paths[0] and "reference" in paths[0])
]


@pytest.mark.parametrize("changes", ASSIGN_PARAMS)
def test_atss_assign_messages_agree(changes):
    case = base_case()
    case.update(changes(case))
    args = [case[k] for k in ASSIGN_ARGS]
    assert message(torch.ops.atss_ops.atss_assign, *args) == message(reference.atss_assign, *args)


@pytest.mark.parametrize(
    "op, changes", [pytest.param(op, ch, id=f"{op}-{name}") for (op, name), (ch, _) in STAGE_INVALID.items()]
)
def test_stage_op_messages_agree(op, changes):
    s = stage_inputs()
    s["num_anchors"] = ANCHOR_COUNT
    s.update(changes(s))
    args = [s[name] for name in OP_ARGS[op]]
    assert message(getattr(torch.ops.atss_ops, op), *args) == message(getattr(reference, op), *args)


# Inputs for the checks that read no data: an expanded view holds 2^31 anchors in 16 bytes.
TOO_MANY = 2**31


def _too_many_anchors(op: str) -> tuple:
    s = stage_inputs()
    many = s["anchors"][:1].expand(TOO_MANY, 4)
    if op == "center_distance":
        return many, s["gt_boxes"], s["gt_counts"]
    if op == "topk_per_level":
        return s["distances"][:, :, :1].expand(2, 3, TOO_MANY), [TOO_MANY], 2, s["gt_counts"], None
    if op == "iou_statistics":
        return many, s["gt_boxes"], s["candidates"], s["gt_counts"], 0.01
    if op == "resolve_multi_gt":
        return s["candidates"], s["candidate_iou"], s["is_positive"], TOO_MANY
    return many, [TOO_MANY], s["gt_boxes"], s["gt_counts"], 2, None, 0.01


@pytest.mark.parametrize("op", list(OP_ARGS))
def test_more_than_2_31_anchors_is_refused_alike(op):
    args = _too_many_anchors(op)
    expected = f"anchors must hold at most 2^31 - 1 anchors, got A = {TOO_MANY}"
    assert message(getattr(reference, op), *args) == expected
    assert message(getattr(torch.ops.atss_ops, op), *args) == expected
    # The fake kernel (meta tensors) runs the same check.
    meta = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
    assert message(getattr(torch.ops.atss_ops, op), *meta) == expected


def test_negative_num_anchors_is_refused_alike():
    s = stage_inputs()
    args = (s["candidates"], s["candidate_iou"], s["is_positive"], -1)
    expected = "num_anchors must be >= 0, got -1"
    assert message(reference.resolve_multi_gt, *args) == expected
    assert message(torch.ops.atss_ops.resolve_multi_gt, *args) == expected
    meta = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
    assert message(torch.ops.atss_ops.resolve_multi_gt, *meta) == expected
