"""Meta tensors through the public API: shape inference by the fake kernels, with or without the extension.

All-meta inputs to ``atss_assign`` and to the four stage wrappers must return meta
outputs of the shapes and dtypes the real call returns, read no data (no
``.item()``), and raise no fallback warning: the wrappers send meta inputs to
``atss_ops._fake`` directly, so this holds whether or not the compiled extension
is loaded (``kernels="none"`` hides it).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from backends import api_op, move
from cases import make_case, op_args, reference_stages

import atss_ops
from atss_ops import _extension
from atss_ops._extension import OPS

META_CASES = ["coco_s1_b2_g7", "ignore_random_with_valid", "d3_everything", "d3_g0_ignore", "g0", "b0"]


@pytest.fixture(params=["as built", "none"])
def kernels(request, monkeypatch):
    """The kernel table as loaded, or empty (the extension missing); the fallback warning re-armed."""
    if request.param == "none":
        monkeypatch.setattr(_extension, "_KERNELS", {})
    monkeypatch.setattr(_extension, "_warned_fallback", set())
    return request.param


def _shapes(out):
    outs = out if isinstance(out, tuple) else (out,)
    return [(tuple(t.shape), t.dtype) for t in outs]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", META_CASES)
def test_meta_inputs_give_the_real_shapes(name, op, kernels):
    """Every public op on all-meta inputs: meta outputs with the CPU call's shapes and dtypes, no warning."""
    case = make_case(name)
    stages = reference_stages(name)
    args = op_args(op, case, stages)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CPU call may fall back to the reference: not what is tested
        expected = _shapes(api_op(op)(*args))
    meta_args = move(args, "meta")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "using the pure-PyTorch reference on meta"
        out = api_op(op)(*meta_args)
    outs = out if isinstance(out, tuple) else (out,)
    assert all(t.device.type == "meta" for t in outs)
    assert _shapes(out) == expected
    if op == "atss_assign":
        assert isinstance(out, atss_ops.AssignResult)


def test_meta_atss_assign_with_options_and_lists(kernels):
    """Keyword options, a list of per-image boxes and 3-D boxes: shapes only, on meta."""
    anchors, levels = atss_ops.grid_anchors(64, 96, strides=(8, 16))
    A = anchors.shape[0]
    boxes = [torch.empty(3, 4, device="meta"), torch.empty(0, 4, device="meta")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = atss_ops.atss_assign(
            anchors.to("meta"),
            levels,
            boxes,
            topk=4,
            anchor_valid=torch.empty(2, A, dtype=torch.bool, device="meta"),
            anchor_ignore=torch.empty(2, A, dtype=torch.bool, device="meta"),
            center_eps=None,
            ensure_positive=True,
        )
    assert [tuple(t.shape) for t in res] == [(2, A), (2, A), (2, 3), (2, 3)]
    assert [t.dtype for t in res] == [torch.int64, torch.float32, torch.float32, torch.int64]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(gt_boxes=torch.empty(2, 3, 5)), r"gt_boxes must have shape \[B, G, 4\] \(2-D\) or \[B, G, 6\]"),
        (dict(levels=[10, 10]), r"num_anchors_per_level must sum to A = 96"),
        (dict(gt_counts=torch.empty(3, dtype=torch.int64)), r"gt_counts must have shape \[B\] = \[2\]"),
        (dict(levels=torch.tensor([96])), r"num_anchors_per_level must be a list of ints .* got a meta tensor"),
    ],
)
def test_meta_inputs_are_checked(change, message, kernels):
    """The structural checks still run on meta inputs, with the usual messages."""
    args = dict(
        anchors=torch.empty(96, 4),
        levels=[96],
        gt_boxes=torch.empty(2, 3, 4),
        gt_counts=torch.empty(2, dtype=torch.int64),
    )
    args.update(change)
    args = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    with pytest.raises(ValueError, match=message):
        atss_ops.atss_assign(args["anchors"], args["levels"], args["gt_boxes"], args["gt_counts"])
