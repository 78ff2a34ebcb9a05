"""What the public functions accept and how they refuse the rest: box dtypes converted
to float32, ValueErrors naming the argument for common mistakes, and the warning
that says the extension is not built (and how to build it)."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import torch
from bits import assert_bits_equal
from subprocesses import run_import
from test_errors import base_case, stage_inputs

import atss_ops
from atss_ops import reference


def assign(case: dict, **changes):
    c = dict(case, **changes)
    return atss_ops.atss_assign(
        c["anchors"],
        c["num_anchors_per_level"],
        c["gt_boxes"],
        c["gt_counts"],
        topk=c["topk"],
        anchor_valid=c["anchor_valid"],
        center_eps=c["center_eps"],
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_box_dtypes_are_converted_to_float32(dtype):
    """float64/float16/bfloat16 anchors and GT boxes: the result of their float32 values."""
    case = base_case()
    case["gt_boxes"] = torch.nan_to_num(case["gt_boxes"])
    anchors, gt = case["anchors"].to(dtype), case["gt_boxes"].to(dtype)
    want = assign(case, anchors=anchors.float(), gt_boxes=gt.float())
    assert_bits_equal(assign(case, anchors=anchors, gt_boxes=gt), want, str(dtype))
    listed = [gt[0], gt[1, :2]]
    assert_bits_equal(
        atss_ops.atss_assign(anchors, case["num_anchors_per_level"], listed, topk=2),
        atss_ops.atss_assign(anchors.float(), case["num_anchors_per_level"], [g.float() for g in listed], topk=2),
    )
    assert_bits_equal(
        atss_ops.center_distance(anchors, gt, case["gt_counts"]),
        atss_ops.center_distance(anchors.float(), gt.float(), case["gt_counts"]),
    )


def test_the_ops_themselves_stay_float32_only():
    case = base_case()
    with pytest.raises(ValueError, match="^anchors must be float32, got torch.float64$"):
        reference.atss_assign(case["anchors"].double(), [4, 1], case["gt_boxes"], case["gt_counts"], 2)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(gt_counts=[3, 2]), "gt_counts must be a Tensor[B] of int64 or None, got list [3, 2]"),
        (dict(topk=9.0), "topk must be an int, got float 9.0"),
        (dict(topk=True), "topk must be an int, got bool True"),
    ],
    ids=["gt_counts_list", "topk_float", "topk_bool"],
)
def test_common_mistakes_name_the_argument(changes, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        assign(base_case(), **changes)


def test_stage_wrappers_name_the_argument_too():
    s = stage_inputs()
    with pytest.raises(ValueError, match="^gt_counts must be a Tensor"):
        atss_ops.center_distance(s["anchors"], s["gt_boxes"], [3, 2])
    with pytest.raises(ValueError, match="^topk must be an int, got float 2.0$"):
        atss_ops.topk_per_level(s["distances"], [4, 1], 2.0, s["gt_counts"])


def test_numpy_integer_topk_is_fine():
    np = pytest.importorskip("numpy")
    case = base_case()
    assert_bits_equal(assign(case, topk=np.int64(2)), assign(case))


def test_assign_targets_labels_of_another_shape():
    case = base_case()
    res = assign(case)
    labels = torch.zeros(2, 2, dtype=torch.int64)
    message = "gt_labels must have shape [B, G] = [2, 3] (one label per box of gt_boxes), got shape [2, 2]"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        atss_ops.assign_targets(res, case["gt_boxes"], labels)
    with pytest.raises(ValueError, match="^gt_labels must hold integer class ids, got torch.float32$"):
        atss_ops.assign_targets(res, case["gt_boxes"], torch.zeros(2, 3))


def test_warning_without_the_extension_says_how_to_build_it(tmp_path):
    """A copy of the package without the compiled library: the reference serves, and the
    warning says the extension is not built and how to build it (no 'circular import')."""
    shutil.copytree(
        os.path.dirname(atss_ops.__file__),
        tmp_path / "atss_ops",
        ignore=shutil.ignore_patterns("_C*.so", "__pycache__"),
    )
    script = (
        "import warnings, torch, atss_ops\n"
        "assert not atss_ops.extension_available(), atss_ops.__file__\n"
        "anchors, levels = atss_ops.grid_anchors(32, 32, strides=(8,))\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    atss_ops.atss_assign(anchors, levels, torch.tensor([[[0.0, 0.0, 9.0, 9.0]]]))\n"
        "print(w[0].message)\n"
    )
    proc = run_import(script, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout
    assert "the compiled extension atss_ops._C is not built" in printed, printed
    assert "pip install --no-build-isolation ." in printed, printed
    assert "circular" not in printed, printed
