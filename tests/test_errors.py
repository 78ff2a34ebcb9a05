"""Invalid inputs raise a ``ValueError`` naming the argument and the offending value, on every path
(the CPU kernel op, the public API and the reference, with the same words); the valid edge cases
return the documented sentinels instead."""

from __future__ import annotations

import re

import pytest
import torch
from backends import api_op, emu_available, raw_op_error_for
from bits import assert_bits_equal, bits_equal
from cases import ARG_NAMES, EMPTY_CASE_NAMES, make_case
from subprocesses import isolated_results, run_isolated

import atss_ops
from atss_ops import reference

NAN, INF = float("nan"), float("inf")


def base_case() -> dict:
    """A small valid batch: 5 anchors in levels [4, 1]; 2 images, G = 3, counts [3, 2], a NaN padding row."""
    anchors = torch.tensor(
        [[0, 0, 8, 8], [8, 0, 16, 8], [0, 8, 8, 16], [8, 8, 16, 16], [0, 0, 16, 16]], dtype=torch.float32
    )
    gt = torch.tensor(
        [[[1, 1, 9, 9], [2, 2, 4, 4], [0, 0, 16, 16]], [[4, 4, 12, 12], [0, 0, 2, 2], [NAN, NAN, NAN, NAN]]],
        dtype=torch.float32,
    )
    return dict(
        anchors=anchors,
        num_anchors_per_level=[4, 1],
        gt_boxes=gt,
        gt_counts=torch.tensor([3, 2]),
        topk=2,
        anchor_valid=None,
        center_eps=0.01,
        anchor_ignore=None,
        ensure_positive=False,
    )


def as_3d(c: dict) -> dict:
    """The base case lifted to 3-D: every box gets z extent [0, 8] (NaN rows stay NaN)."""

    def lift(boxes):
        z_lo = torch.zeros(boxes.shape[:-1] + (1,)) + boxes[..., :1] * 0
        return torch.cat([boxes[..., :2], z_lo, boxes[..., 2:], z_lo + 8], dim=-1)

    return dict(anchors=lift(c["anchors"]), gt_boxes=lift(c["gt_boxes"]))


def put(t: torch.Tensor, index, value) -> torch.Tensor:
    """A copy of ``t`` with ``t[index] = value``."""
    t = t.clone()
    t[index] = torch.as_tensor(value, dtype=t.dtype)
    return t


PATHS = ("op", "api", "reference")
# The emulated CUDA kernels (``make emu``) run the structural checks of every
# backend but, like the CUDA kernels, no value check (those would sync on a GPU).
EMU = pytest.param("emu", marks=pytest.mark.emu)


def entry_point(path: str, op: str):
    """``op`` through one of the three entry points, as a function of the op's positional arguments."""
    if path in ("op", "emu"):
        if path == "emu":
            assert emu_available()
        fn = getattr(torch.ops.atss_ops_emu if path == "emu" else torch.ops.atss_ops, op)
        return (lambda *a: atss_ops.AssignResult(*fn(*a))) if op == "atss_assign" else fn
    return api_op(op) if path == "api" else getattr(reference, op)


ASSIGN_ARGS = ARG_NAMES  # atss_assign's arguments in schema order


def call(path: str, c: dict):
    """``atss_assign`` through one of the three entry points."""
    return entry_point(path, "atss_assign")(*(c[k] for k in ASSIGN_ARGS))


ANCHORS_SHAPE = "anchors must have shape [A, 4] (2-D) or [A, 6] (3-D)"
GT_SHAPE = "gt_boxes must have shape [B, G, 4] (2-D) or [B, G, 6] (3-D)"
CENTER_EPS = "center_eps must be finite and >= 0 (or None: no centre test)"

# id: (changes to the base case, expected message, paths where it applies)
A = lambda c: c["anchors"]  # noqa: E731
GT = lambda c: c["gt_boxes"]  # noqa: E731
META = torch.device("meta")

INVALID = {
    # Non-finite or misordered boxes.
    "anchors_nan": (lambda c: dict(anchors=put(A(c), (1, 0), NAN)), "anchors[1] = [nan, 0, 16, 8] is not finite"),
    "anchors_inf": (lambda c: dict(anchors=put(A(c), (2, 3), INF)), "anchors[2] = [0, 8, 8, inf] is not finite"),
    "anchors_neg_inf": (lambda c: dict(anchors=put(A(c), (0, 0), -INF)), "anchors[0] = [-inf, 0, 8, 8] is not finite"),
    "anchors_x2_lt_x1": (
        lambda c: dict(anchors=put(A(c), 3, [16, 8, 8, 16])),
        "anchors[3] = [16, 8, 8, 16] has x2 < x1 or y2 < y1",
    ),
    "anchors_y2_lt_y1": (
        lambda c: dict(anchors=put(A(c), 4, [0, 16, 16, 0])),
        "anchors[4] = [0, 16, 16, 0] has x2 < x1 or y2 < y1",
    ),
    "gt_nan": (lambda c: dict(gt_boxes=put(GT(c), (0, 1, 2), NAN)), "gt_boxes[0, 1] = [2, 2, nan, 4] is not finite"),
    "gt_inf": (lambda c: dict(gt_boxes=put(GT(c), (1, 1, 0), INF)), "gt_boxes[1, 1] = [inf, 0, 2, 2] is not finite"),
    "gt_neg_inf": (
        lambda c: dict(gt_boxes=put(GT(c), (0, 2, 1), -INF)),
        "gt_boxes[0, 2] = [0, -inf, 16, 16] is not finite",
    ),
    "gt_x2_lt_x1": (
        lambda c: dict(gt_boxes=put(GT(c), (1, 0), [12, 4, 4, 12])),
        "gt_boxes[1, 0] = [12, 4, 4, 12] has x2 < x1 or y2 < y1",
    ),
    "gt_y2_lt_y1": (
        lambda c: dict(gt_boxes=put(GT(c), (0, 2), [0, 16, 16, 0])),
        "gt_boxes[0, 2] = [0, 16, 16, 0] has x2 < x1 or y2 < y1",
    ),
    "gt_nan_row_without_counts": (
        lambda c: dict(gt_counts=None),
        "gt_boxes[1, 2] = [nan, nan, nan, nan] is not finite",
    ),
    "gt_nan_row_inside_counts": (
        lambda c: dict(gt_counts=torch.tensor([3, 3])),
        "gt_boxes[1, 2] = [nan, nan, nan, nan] is not finite",
    ),
    # Shapes.
    "anchors_shape_a3": (lambda c: dict(anchors=A(c)[:, :3]), f"{ANCHORS_SHAPE}, got shape [5, 3]"),
    "anchors_shape_a5": (lambda c: dict(anchors=torch.zeros(5, 5)), f"{ANCHORS_SHAPE}, got shape [5, 5]"),
    "anchors_shape_1d": (lambda c: dict(anchors=A(c).flatten()), f"{ANCHORS_SHAPE}, got shape [20]"),
    "anchors_shape_3d": (lambda c: dict(anchors=A(c)[None]), f"{ANCHORS_SHAPE}, got shape [1, 5, 4]"),
    "gt_shape_2d": (lambda c: dict(gt_boxes=GT(c)[0]), f"{GT_SHAPE}, got shape [3, 4]"),
    "gt_shape_g5": (lambda c: dict(gt_boxes=torch.zeros(2, 3, 5)), f"{GT_SHAPE}, got shape [2, 3, 5]"),
    # 2-D and 3-D boxes mixed.
    "anchors_3d_gt_2d": (
        lambda c: dict(anchors=as_3d(c)["anchors"]),
        "anchors and gt_boxes must have the same number of axes: anchors are 3-D ([A, 6]), gt_boxes are 2-D "
        "([B, G, 4])",
    ),
    "anchors_2d_gt_3d": (
        lambda c: dict(gt_boxes=as_3d(c)["gt_boxes"]),
        "anchors and gt_boxes must have the same number of axes: anchors are 2-D ([A, 4]), gt_boxes are 3-D "
        "([B, G, 6])",
    ),
    # 3-D value checks.
    "d3_anchors_z2_lt_z1": (
        lambda c: dict(as_3d(c), anchors=put(as_3d(c)["anchors"], (2, 5), -1.0)),
        "anchors[2] = [0, 8, 0, 8, 16, -1] has x2 < x1, y2 < y1 or z2 < z1",
    ),
    "d3_gt_nan": (
        lambda c: dict(as_3d(c), gt_boxes=put(as_3d(c)["gt_boxes"], (1, 0, 2), NAN)),
        "gt_boxes[1, 0] = [4, 4, nan, 12, 12, 8] is not finite",
    ),
    "d3_gt_x2_lt_x1": (
        lambda c: dict(as_3d(c), gt_boxes=put(as_3d(c)["gt_boxes"], (0, 1, 3), 1.0)),
        "gt_boxes[0, 1] = [2, 2, 0, 1, 4, 8] has x2 < x1, y2 < y1 or z2 < z1",
    ),
    "gt_counts_shape_b3": (
        lambda c: dict(gt_counts=torch.tensor([3, 2, 1])),
        "gt_counts must have shape [B] = [2], got shape [3]",
    ),
    "gt_counts_shape_2d": (
        lambda c: dict(gt_counts=torch.tensor([[3], [2]])),
        "gt_counts must have shape [B] = [2], got shape [2, 1]",
    ),
    "anchor_valid_shape_1d": (
        lambda c: dict(anchor_valid=torch.ones(5, dtype=torch.bool)),
        "anchor_valid must have shape [B, A] = [2, 5], got shape [5]",
    ),
    "anchor_valid_shape_a4": (
        lambda c: dict(anchor_valid=torch.ones(2, 4, dtype=torch.bool)),
        "anchor_valid must have shape [B, A] = [2, 5], got shape [2, 4]",
    ),
    # Dtypes.
    "anchors_float64": (
        lambda c: dict(anchors=A(c).double()),
        "anchors must be float32, got torch.float64",
        ("op", "reference", EMU),
    ),  # the public API converts them to float32
    "anchors_float16": (
        lambda c: dict(anchors=A(c).half()),
        "anchors must be float32, got torch.float16",
        ("op", "reference", EMU),
    ),  # the public API converts them to float32
    "anchors_int64": (lambda c: dict(anchors=A(c).long()), "anchors must be float32, got torch.int64"),
    "gt_float64": (
        lambda c: dict(gt_boxes=GT(c).double()),
        "gt_boxes must be float32, got torch.float64",
        ("op", "reference", EMU),
    ),  # the public API converts them to float32
    "gt_counts_float32": (
        lambda c: dict(gt_counts=torch.tensor([3.0, 2.0])),
        "gt_counts must be int64, got torch.float32",
    ),
    # The public API converts other integer dtypes; the op and the reference take int64 only.
    "gt_counts_int32": (
        lambda c: dict(gt_counts=torch.tensor([3, 2], dtype=torch.int32)),
        "gt_counts must be int64, got torch.int32",
        ("op", "reference"),
    ),
    "anchor_valid_uint8": (
        lambda c: dict(anchor_valid=torch.ones(2, 5, dtype=torch.uint8)),
        "anchor_valid must be bool, got torch.uint8",
    ),
    "anchor_ignore_shape_a4": (
        lambda c: dict(anchor_ignore=torch.zeros(2, 4, dtype=torch.bool)),
        "anchor_ignore must have shape [B, A] = [2, 5], got shape [2, 4]",
    ),
    "anchor_ignore_int64": (
        lambda c: dict(anchor_ignore=torch.zeros(2, 5, dtype=torch.int64)),
        "anchor_ignore must be bool, got torch.int64",
    ),
    # Scalars and level sizes.
    "levels_sum_too_big": (
        lambda c: dict(num_anchors_per_level=[4, 2]),
        "num_anchors_per_level must sum to A = 5 (anchors.shape[0]), got [4, 2] summing to 6",
    ),
    "levels_sum_too_small": (
        lambda c: dict(num_anchors_per_level=[3]),
        "num_anchors_per_level must sum to A = 5 (anchors.shape[0]), got [3] summing to 3",
    ),
    "levels_empty_list": (
        lambda c: dict(num_anchors_per_level=[]),
        "num_anchors_per_level must sum to A = 5 (anchors.shape[0]), got [] summing to 0",
    ),
    "levels_sum_overflows_int64": (
        lambda c: dict(num_anchors_per_level=[2**62] * 4 + [5]),
        f"num_anchors_per_level must sum to A = 5 (anchors.shape[0]), got {[2**62] * 4 + [5]} summing to {2**64 + 5}",
        ("reference",),
    ),  # kernels: see test_level_sizes_overflowing_int64
    "level_negative": (
        lambda c: dict(num_anchors_per_level=[6, -1]),
        "num_anchors_per_level entries must be >= 0, got [6, -1]",
    ),
    "topk_zero": (lambda c: dict(topk=0), "topk must be >= 1, got 0"),
    "topk_negative": (lambda c: dict(topk=-3), "topk must be >= 1, got -3"),
    "gt_counts_above_g": (
        lambda c: dict(gt_counts=torch.tensor([4, 2])),
        "gt_counts[0] = 4 is out of range [0, G = 3]",
    ),
    "gt_counts_negative": (
        lambda c: dict(gt_counts=torch.tensor([3, -1])),
        "gt_counts[1] = -1 is out of range [0, G = 3]",
    ),
    "center_eps_nan": (lambda c: dict(center_eps=NAN), f"{CENTER_EPS}, got nan"),
    "center_eps_inf": (lambda c: dict(center_eps=INF), f"{CENTER_EPS}, got inf"),
    "center_eps_neg_inf": (lambda c: dict(center_eps=-INF), f"{CENTER_EPS}, got -inf"),
    "center_eps_negative": (lambda c: dict(center_eps=-0.5), f"{CENTER_EPS}, got -0.5"),
    # Public API only: Python types of the keyword arguments.
    "center_eps_string": (
        lambda c: dict(center_eps="0.01"),
        "center_eps must be a number or None, got str '0.01'",
        ("api",),
    ),
    "ensure_positive_int": (
        lambda c: dict(ensure_positive=1),
        "ensure_positive must be a bool, got int 1",
        ("api",),
    ),
    # Public API only: the list form of gt_boxes.
    "list_gt_with_counts": (
        lambda c: dict(gt_boxes=[GT(c)[0], GT(c)[1, :2]]),
        "gt_counts must be None when gt_boxes is a list: the counts come from the list",
        ("api",),
    ),
    "list_gt_empty": (
        lambda c: dict(gt_boxes=[], gt_counts=None),
        "gt_boxes is an empty list: pass a Tensor[0, G, 4] for an empty batch",
        ("api",),
    ),
    "list_gt_bad_item": (
        lambda c: dict(gt_boxes=[GT(c)[0], torch.zeros(3)], gt_counts=None),
        "gt_boxes[1] must be a Tensor[G_i, 4] or Tensor[G_i, 6], got [3]",
        ("api",),
    ),
    "list_gt_mixed_dims": (
        lambda c: dict(gt_boxes=[GT(c)[0], torch.zeros(2, 6)], gt_counts=None),
        "gt_boxes[1] has 6 coordinates per box but gt_boxes[0] has 4: every image must use the same layout",
        ("api",),
    ),
}

# Messages of the value checks (they read tensor data): not run by the CUDA kernels.
VALUE_CHECKS = ("is not finite", "has x2 < x1", "is out of range")


def _paths(message: str, paths: tuple) -> list:
    if paths:
        return list(paths[0])
    return list(PATHS) + ([] if any(v in message for v in VALUE_CHECKS) else [EMU])


INVALID_PARAMS = [
    pytest.param(
        changes,
        message,
        getattr(path, "values", (path,))[0],
        id=f"{name}-{getattr(path, 'values', (path,))[0]}",
        marks=getattr(path, "marks", ()),
    )
    for name, (changes, message, *paths) in INVALID.items()
    for path in _paths(message, paths)
]


@pytest.mark.filterwarnings("ignore:atss_ops. using the pure-PyTorch reference")
@pytest.mark.parametrize("changes, message, path", INVALID_PARAMS)
def test_invalid_input_raises(changes, message, path):
    """Each invalid input of the contract's list raises ValueError with the argument and the value."""
    case = base_case()
    case.update(changes(case))
    with pytest.raises(raw_op_error_for(path), match=f"^{re.escape(message)}$"):
        call(path, case)


@pytest.mark.parametrize("path", PATHS)
def test_nan_in_padding_rows_is_fine(path):
    """NaN (never read) beyond gt_counts is no error, and every path gives the same bits."""
    assert_bits_equal(call(path, base_case()), call("reference", base_case()), path)


# --------------------------------------------------------------------------- stage ops

ANCHOR_COUNT = 5


def stage_inputs() -> dict:
    """Valid inputs of every stage op, from the base case (B = 2, G = 3, A = 5, C = 3)."""
    c = base_case()
    d = reference.center_distance(c["anchors"], c["gt_boxes"], c["gt_counts"])
    cand = reference.topk_per_level(d, c["num_anchors_per_level"], c["topk"], c["gt_counts"])
    cand_iou, _, is_positive = reference.iou_statistics(c["anchors"], c["gt_boxes"], cand, c["gt_counts"])
    return dict(c, distances=d, candidates=cand, candidate_iou=cand_iou, is_positive=is_positive)


# Positional arguments of each op, in schema order.
OP_ARGS = {
    "atss_assign": ASSIGN_ARGS,
    "center_distance": ("anchors", "gt_boxes", "gt_counts"),
    "topk_per_level": ("distances", "num_anchors_per_level", "topk", "gt_counts", "anchor_valid", "anchor_ignore"),
    "iou_statistics": ("anchors", "gt_boxes", "candidates", "gt_counts", "center_eps"),
    "resolve_multi_gt": (
        "candidates",
        "candidate_iou",
        "is_positive",
        "num_anchors",
        "anchor_ignore",
        "ensure_positive",
    ),
}

# (op, id): (changes, expected message)
STAGE_INVALID = {
    ("center_distance", "anchors_nan"): (
        lambda s: dict(anchors=put(s["anchors"], (4, 2), NAN)),
        "anchors[4] = [0, 0, nan, 16] is not finite",
    ),
    ("center_distance", "gt_x2_lt_x1"): (
        lambda s: dict(gt_boxes=put(s["gt_boxes"], (0, 0, 2), 0.0)),
        "gt_boxes[0, 0] = [1, 1, 0, 9] has x2 < x1 or y2 < y1",
    ),
    ("center_distance", "anchors_shape"): (
        lambda s: dict(anchors=s["anchors"].t()),
        f"{ANCHORS_SHAPE}, got shape [4, 5]",
    ),
    ("center_distance", "gt_counts_above_g"): (
        lambda s: dict(gt_counts=torch.tensor([3, 5])),
        "gt_counts[1] = 5 is out of range [0, G = 3]",
    ),
    ("topk_per_level", "distances_2d"): (
        lambda s: dict(distances=s["distances"][0]),
        "distances must have shape [B, G, A], got shape [3, 5]",
    ),
    ("topk_per_level", "distances_float64"): (
        lambda s: dict(distances=s["distances"].double()),
        "distances must be float32, got torch.float64",
    ),
    ("topk_per_level", "levels_sum"): (
        lambda s: dict(num_anchors_per_level=[4, 4]),
        "num_anchors_per_level must sum to A = 5 (anchors.shape[0]), got [4, 4] summing to 8",
    ),
    ("topk_per_level", "topk_zero"): (lambda s: dict(topk=0), "topk must be >= 1, got 0"),
    ("topk_per_level", "gt_counts_negative"): (
        lambda s: dict(gt_counts=torch.tensor([-2, 0])),
        "gt_counts[0] = -2 is out of range [0, G = 3]",
    ),
    ("topk_per_level", "anchor_valid_shape"): (
        lambda s: dict(anchor_valid=torch.ones(1, 5, dtype=torch.bool)),
        "anchor_valid must have shape [B, A] = [2, 5], got shape [1, 5]",
    ),
    ("topk_per_level", "anchor_ignore_dtype"): (
        lambda s: dict(anchor_ignore=torch.zeros(2, 5, dtype=torch.uint8)),
        "anchor_ignore must be bool, got torch.uint8",
    ),
    ("center_distance", "dims_mixed"): (
        lambda s: dict(gt_boxes=as_3d(s)["gt_boxes"]),
        "anchors and gt_boxes must have the same number of axes: anchors are 2-D ([A, 4]), gt_boxes are 3-D "
        "([B, G, 6])",
    ),
    ("iou_statistics", "dims_mixed"): (
        lambda s: dict(anchors=as_3d(s)["anchors"]),
        "anchors and gt_boxes must have the same number of axes: anchors are 3-D ([A, 6]), gt_boxes are 2-D "
        "([B, G, 4])",
    ),
    ("iou_statistics", "center_eps_negative"): (lambda s: dict(center_eps=-1.0), f"{CENTER_EPS}, got -1"),
    ("resolve_multi_gt", "anchor_ignore_shape"): (
        lambda s: dict(anchor_ignore=torch.zeros(2, 4, dtype=torch.bool)),
        "anchor_ignore must have shape [B, A] = [2, 5], got shape [2, 4]",
    ),
    ("iou_statistics", "candidate_too_big"): (
        lambda s: dict(candidates=put(s["candidates"], (1, 0, 2), 5)),
        "candidates[1, 0, 2] = 5 is out of range [-1, A) with A = 5",
    ),
    ("iou_statistics", "candidate_below_minus_one"): (
        lambda s: dict(candidates=put(s["candidates"], (0, 2, 1), -2)),
        "candidates[0, 2, 1] = -2 is out of range [-1, A) with A = 5",
    ),
    ("iou_statistics", "candidate_int64_max"): (
        lambda s: dict(candidates=put(s["candidates"], (1, 2, 0), 2**63 - 1)),
        f"candidates[1, 2, 0] = {2**63 - 1} is out of range [-1, A) with A = 5",
    ),
    ("iou_statistics", "candidate_int64_min"): (
        lambda s: dict(candidates=put(s["candidates"], (1, 1, 1), -(2**63))),
        f"candidates[1, 1, 1] = {-(2**63)} is out of range [-1, A) with A = 5",
    ),
    ("resolve_multi_gt", "candidate_int64_max"): (
        lambda s: dict(candidates=put(s["candidates"], (0, 0, 0), 2**63 - 1)),
        f"candidates[0, 0, 0] = {2**63 - 1} is out of range [-1, A) with A = 5",
    ),
    ("iou_statistics", "candidates_shape"): (
        lambda s: dict(candidates=s["candidates"][:, :2]),
        "candidates must have shape [B, G, C] with B = 2, G = 3, got shape [2, 2, 3]",
    ),
    ("iou_statistics", "candidates_int32"): (
        lambda s: dict(candidates=s["candidates"].int()),
        "candidates must be int64, got torch.int32",
    ),
    ("iou_statistics", "center_eps_nan"): (lambda s: dict(center_eps=NAN), f"{CENTER_EPS}, got nan"),
    ("iou_statistics", "gt_inf"): (
        lambda s: dict(gt_boxes=put(s["gt_boxes"], (1, 0, 3), INF)),
        "gt_boxes[1, 0] = [4, 4, 12, inf] is not finite",
    ),
    ("resolve_multi_gt", "candidate_too_big"): (lambda s: dict(num_anchors=3), "is out of range [-1, A) with A = 3"),
    ("resolve_multi_gt", "num_anchors_negative"): (lambda s: dict(num_anchors=-1), "num_anchors must be >= 0, got -1"),
    ("resolve_multi_gt", "candidate_iou_shape"): (
        lambda s: dict(candidate_iou=s["candidate_iou"][..., :2]),
        "candidate_iou must have the shape of candidates [2, 3, 3], got shape [2, 3, 2]",
    ),
    ("resolve_multi_gt", "candidate_iou_float64"): (
        lambda s: dict(candidate_iou=s["candidate_iou"].double()),
        "candidate_iou must be float32, got torch.float64",
    ),
    ("resolve_multi_gt", "is_positive_uint8"): (
        lambda s: dict(is_positive=s["is_positive"].to(torch.uint8)),
        "is_positive must be bool, got torch.uint8",
    ),
    ("resolve_multi_gt", "is_positive_shape"): (
        lambda s: dict(is_positive=s["is_positive"][:1]),
        "is_positive must have the shape of candidates [2, 3, 3], got shape [1, 3, 3]",
    ),
    ("resolve_multi_gt", "candidates_2d"): (
        lambda s: dict(candidates=s["candidates"][0]),
        "candidates must have shape [B, G, C]",
    ),
}


STAGE_PARAMS = [
    pytest.param(op, ch, msg, path, id=f"{op}-{name}-{path}")
    for (op, name), (ch, msg) in STAGE_INVALID.items()
    for path in PATHS
] + [
    pytest.param(op, ch, msg, "emu", id=f"{op}-{name}-emu", marks=pytest.mark.emu)
    for (op, name), (ch, msg) in STAGE_INVALID.items()
    if not any(v in msg for v in VALUE_CHECKS)
]


@pytest.mark.parametrize("op, changes, message, path", STAGE_PARAMS)
def test_stage_op_invalid_input_raises(op, changes, message, path):
    """The stage ops check their inputs too, with the same messages on every path."""
    s = stage_inputs()
    s["num_anchors"] = ANCHOR_COUNT
    s.update(changes(s))
    args = [s[name] for name in OP_ARGS[op]]
    with pytest.raises(raw_op_error_for(path), match=re.escape(message)):
        entry_point(path, op)(*args)


OVERFLOW_SETUP = """
anchors = torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 8.0]])
gt = torch.tensor([[[0.0, 0.0, 9.0, 9.0]]])
d = reference.center_distance(anchors, gt)
"""


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("op", ["center_distance", "atss_assign"])
def test_every_bad_anchor_coordinate_is_found(op, dims):
    """The kernels check a call's anchors in one branch-free pass over blocks of 1,024 boxes first (a
    fast path): a bad value in any coordinate of any box, at the blocks' edges too, still raises,
    naming the first bad box."""
    A = 2500
    centre = torch.arange(A, dtype=torch.float32)[:, None].expand(A, dims) * 4
    good = torch.cat([centre, centre + 8], dim=1)
    gt = torch.cat([torch.zeros(1, 1, dims), torch.full((1, 1, dims), 8.0)], dim=-1)
    args = (good, [A], gt) if op == "atss_assign" else (good, gt)
    getattr(torch.ops.atss_ops, op)(*args)  # the good anchors pass
    error = raw_op_error_for("op")
    for box in (0, 1, 1023, 1024, 2047, A - 1):
        for coord in range(2 * dims):
            for value in (NAN, INF, -INF):
                anchors = good.clone()
                anchors[box, coord] = value
                with pytest.raises(error, match=rf"^anchors\[{box}\] = \[.*\] is not finite"):
                    getattr(torch.ops.atss_ops, op)(anchors, *args[1:])
        for axis in range(dims):
            anchors = good.clone()
            anchors[box, dims + axis] = anchors[box, axis] - 1e-3  # upper below lower on one axis
            with pytest.raises(error, match=rf"^anchors\[{box}\] = \[.*\] has x2 < x1"):
                getattr(torch.ops.atss_ops, op)(anchors, *args[1:])


def test_level_sizes_overflowing_int64():
    """Level sizes that are each >= 0 but whose int64 sum wraps around to A are rejected with a
    ValueError naming num_anchors_per_level, by the kernels too (never a crash or a bad_alloc).

    Run in a child process (a crash would take pytest down); one line per call."""
    calls = {}
    for levels in ([2**62] * 4 + [2], [2**63 - 1, 2**63 - 1, 4]):
        calls[f"torch.ops.atss_ops.atss_assign {levels}"] = f"torch.ops.atss_ops.atss_assign(anchors, {levels}, gt)"
        calls[f"atss_ops.atss_assign {levels}"] = f"atss_ops.atss_assign(anchors, {levels}, gt)"
    for levels in ([2**62] * 4 + [2], [2**63 - 1, 2**63 - 1, 4]):
        calls[f"torch.ops.atss_ops.topk_per_level {levels}"] = f"torch.ops.atss_ops.topk_per_level(d, {levels}, 9)"
        calls[f"atss_ops.topk_per_level {levels}"] = f"atss_ops.topk_per_level(d, {levels}, 9)"
    results = isolated_results(run_isolated(OVERFLOW_SETUP, calls), calls)
    expected = {label: raw_op_error_for("op" if label.startswith("torch.ops") else "api").__name__ for label in calls}
    failures = [
        f"{label} -> {r}"
        for label, r in results.items()
        if not r.startswith(f"{expected[label]}: num_anchors_per_level")
    ]
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- devices

# Every (op, tensor argument): that argument alone on another device. 'meta' is another device
# even on a CPU-only machine; 'cuda' runs where there is one.
DEVICE_PARAMS = [
    pytest.param(op, arg, id=f"{op}-{arg}")
    for op, names in OP_ARGS.items()
    for arg in names
    if arg not in ("num_anchors_per_level", "topk", "center_eps", "num_anchors", "ensure_positive")
]


@pytest.mark.filterwarnings("ignore:atss_ops. using the pure-PyTorch reference")
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("device", ["meta", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("op, arg", DEVICE_PARAMS)
def test_tensors_on_different_devices_raise(op, arg, device, path):
    """One tensor on another device than the others: ValueError naming both tensors and devices
    (checked in argument order: the message names the first tensor the moved one disagrees with)."""
    s = stage_inputs()
    s.update(
        num_anchors=ANCHOR_COUNT,
        anchor_valid=torch.ones(2, ANCHOR_COUNT, dtype=torch.bool),
        anchor_ignore=torch.zeros(2, ANCHOR_COUNT, dtype=torch.bool),
    )
    s[arg] = s[arg].to(device)
    tensors = [n for n in OP_ARGS[op] if isinstance(s[n], torch.Tensor)]
    first = tensors[0] if arg != tensors[0] else tensors[1]
    if arg == tensors[0]:
        message = f"{first} is on cpu but {arg} is on {s[arg].device}: all tensors must be on one device"
    else:
        message = f"{arg} is on {s[arg].device} but {first} is on cpu: all tensors must be on one device"
    # With a meta tensor the raw op runs the Python fake kernel: ValueError on every torch.
    expected = ValueError if device == "meta" else raw_op_error_for(path)
    with pytest.raises(expected, match=f"^{re.escape(message)}$"):
        entry_point(path, op)(*(s[n] for n in OP_ARGS[op]))


# --------------------------------------------------------------------------- valid edge cases


@pytest.mark.parametrize("path", [*PATHS, EMU])
@pytest.mark.parametrize("name", EMPTY_CASE_NAMES)
def test_empty_cases_give_sentinels(name, path):
    """G == 0, B == 0, A == 0 and gt_counts == 0 are valid: all background, with the documented sentinels
    (gt_index -1, iou +0, threshold NaN, num_positive 0) in the documented shapes."""
    case = make_case(name)
    B, G = case["gt_boxes"].shape[:2]
    A = case["anchors"].shape[0]
    res = call(path, case)
    assert bits_equal(res.gt_index, torch.full((B, A), -1, dtype=torch.int64))
    assert bits_equal(res.iou, torch.zeros(B, A))
    assert bits_equal(res.threshold, torch.full((B, G), NAN))
    assert bits_equal(res.num_positive, torch.zeros(B, G, dtype=torch.int64))
