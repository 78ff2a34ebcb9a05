"""The test suite's case catalogue: the inputs every implementation is compared on.

Every generator is a plain function of no argument returning a *case*: a dict
with the arguments of ``atss_assign`` (``anchors``, ``num_anchors_per_level``,
``gt_boxes``, ``gt_counts``, ``topk``, ``anchor_valid``, ``center_eps``,
``anchor_ignore``, ``ensure_positive``). They
are registered by name in :data:`CASES`, so tests parametrise over
``CASE_NAMES`` and the ids say which input failed. Generators are
deterministic (fixed seeds); :func:`make_case` returns a fresh copy each call.

The adversarial cases target the places where two implementations of the
contract could disagree: distance ties (several anchors per location, GT
centres on grid lines and cell corners), IoU ties (integer boxes, duplicate
GTs), degenerate and padding GTs, invalid anchors, levels smaller than
``topk`` or empty, empty batches, and float overflow / signed zeros.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from atss_ops import grid_anchors, reference
from atss_ops.testing import random_gt

# --------------------------------------------------------------------------- case plumbing

ARG_NAMES = (
    "anchors",
    "num_anchors_per_level",
    "gt_boxes",
    "gt_counts",
    "topk",
    "anchor_valid",
    "center_eps",
    "anchor_ignore",
    "ensure_positive",
)
# Cases written before contract v2 may leave these out.
V2_DEFAULTS = {"anchor_ignore": None, "ensure_positive": False}

CASES: Dict[str, Callable[[], dict]] = {}


def register(name: str):
    """Decorator: registers a case generator under ``name``."""

    def deco(fn):
        assert name not in CASES, name
        CASES[name] = fn
        return fn

    return deco


def make_case(name: str) -> dict:
    """A fresh copy of case ``name`` (tests may modify it)."""
    case = CASES[name]()
    return {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in case.items()}


def case_args(case: dict) -> tuple:
    """The positional arguments of ``atss_assign`` (op schema order)."""
    return tuple(case.get(k, V2_DEFAULTS.get(k)) for k in ARG_NAMES)


def to_device(case: dict, device) -> dict:
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in case.items()}


def case_of(
    anchors,
    levels,
    gt_boxes,
    gt_counts=None,
    topk=9,
    anchor_valid=None,
    center_eps=0.01,
    anchor_ignore=None,
    ensure_positive=False,
) -> dict:
    levels = [int(n) for n in levels]
    assert sum(levels) == anchors.shape[0]
    return dict(
        anchors=anchors.float().contiguous(),
        num_anchors_per_level=levels,
        gt_boxes=gt_boxes.float().contiguous(),
        gt_counts=gt_counts,
        topk=topk,
        anchor_valid=anchor_valid,
        center_eps=center_eps,
        anchor_ignore=anchor_ignore,
        ensure_positive=ensure_positive,
    )


def multi_scale_anchors(height: int, width: int, strides: Sequence[int], scales: Sequence[float]):
    """``len(scales)`` square anchors per location (consecutive indices, equal centres), level by level."""
    boxes, counts = [], []
    for s in strides:
        ny, nx = -(-height // s), -(-width // s)
        ys, xs = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        cx = ((xs.flatten().float() + 0.5) * s)[:, None]
        cy = ((ys.flatten().float() + 0.5) * s)[:, None]
        half = torch.tensor([sc * s / 2 for sc in scales])[None, :]
        level = torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1).reshape(-1, 4)
        boxes.append(level)
        counts.append(level.shape[0])
    return torch.cat(boxes), counts


def boxes_around(cx: Tensor, cy: Tensor, w: Tensor, h: Tensor) -> Tensor:
    """``x1, y1, x2, y2`` boxes with the given centres and sizes (exact when all are small integers/halves)."""
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def pad_counts(gt_boxes: Tensor, counts: Sequence[int], fill: float = float("nan")) -> tuple:
    """Marks ``gt_boxes[b, counts[b]:]`` as padding, filled with ``fill``."""
    gt_boxes = gt_boxes.clone()
    for b, n in enumerate(counts):
        gt_boxes[b, n:] = fill
    return gt_boxes, torch.tensor(list(counts), dtype=torch.int64)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- random COCO-like batches

# name: (seed, B, G, height, width, strides, with gt_counts)
_COCO = {
    "coco_s0_b1_g1": (0, 1, 1, 320, 480, (8, 16, 32, 64, 128), False),
    "coco_s1_b2_g7": (1, 2, 7, 320, 480, (8, 16, 32, 64, 128), True),
    "coco_s2_b3_g20": (2, 3, 20, 256, 384, (8, 16, 32, 64, 128), True),
    "coco_s3_b4_g5": (3, 4, 5, 200, 300, (8, 16, 32, 64), False),
    "coco_s4_b2_g40": (4, 2, 40, 320, 320, (8, 16, 32), True),
    "coco_full_b2_g20": (5, 2, 20, 800, 1344, (8, 16, 32, 64, 128), False),
}


def _coco(seed, B, G, height, width, strides, with_counts):
    anchors, levels = grid_anchors(height, width, strides)
    gt = random_gt(B, G, height, width, seed=seed)
    counts = None
    if with_counts:
        counts = torch.randint(0, G + 1, (B,), generator=generator(seed))
        counts[0] = G  # at least one full image
        gt, counts = pad_counts(gt, counts.tolist())
    return case_of(anchors, levels, gt, counts)


for _name, _params in _COCO.items():
    register(_name)(functools.partial(_coco, *_params))


# --------------------------------------------------------------------------- distance ties


@register("multi_anchor_3scales")
def _multi_anchor():
    """3 anchors per location (equal centres: ties by index), topk = 9 * 3 as the original code."""
    anchors, levels = multi_scale_anchors(192, 256, (8, 16, 32, 64), [4 * 2 ** (i / 3) for i in range(3)])
    gt = random_gt(2, 12, 192, 256, seed=11)
    return case_of(anchors, levels, gt, topk=27)


@register("multi_anchor_ratios")
def _multi_anchor_ratios():
    """3 aspect ratios per location (equal centres, different IoUs), topk = 9 * 3."""
    boxes, levels = [], []
    for s in (8, 16, 32):
        level = []
        for ratio in (0.5, 1.0, 2.0):
            a, n = grid_anchors(128, 128, (s,), scales=(4.0,))
            cx, cy = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2
            w, h = (a[:, 2] - a[:, 0]) * math.sqrt(ratio), (a[:, 3] - a[:, 1]) / math.sqrt(ratio)
            level.append(boxes_around(cx, cy, w, h))
        level = torch.stack(level, dim=1).reshape(-1, 4)  # location-major: 3 per location
        boxes.append(level)
        levels.append(level.shape[0])
    gt = random_gt(2, 8, 128, 128, seed=12)
    return case_of(torch.cat(boxes), levels, gt, topk=27)


def _on_lines(seed: int, corners: bool):
    height, width, strides = 256, 256, (8, 16, 32)
    anchors, levels = grid_anchors(height, width, strides)
    g = generator(seed)
    B, G, big = 2, 16, max(strides)
    # Multiples of the largest stride are grid lines of every level: the GT centre
    # is equidistant from 2 (line) or 4 (corner) anchor centres on each level.
    cx = torch.randint(1, width // big, (B, G), generator=g).float() * big
    if corners:
        cy = torch.randint(1, height // big, (B, G), generator=g).float() * big
    else:
        cy = (torch.randint(0, height // 8, (B, G), generator=g).float() + 0.5) * 8  # a row of stride-8 centres
    w = torch.randint(2, 60, (B, G), generator=g).float() * 2
    h = torch.randint(2, 60, (B, G), generator=g).float() * 2
    return case_of(anchors, levels, boxes_around(cx, cy, w, h))


register("gt_centres_on_grid_lines")(functools.partial(_on_lines, 21, False))
register("gt_centres_on_cell_corners")(functools.partial(_on_lines, 22, True))


@register("gt_centre_on_anchor_centre")
def _on_centres():
    """GT centres exactly on stride-8 anchor centres: d2 = 0 for one anchor, then rings of equal d2."""
    anchors, levels = grid_anchors(128, 128, (8, 16, 32))
    g = generator(23)
    cx = (torch.randint(0, 16, (1, 10), generator=g).float() + 0.5) * 8
    cy = (torch.randint(0, 16, (1, 10), generator=g).float() + 0.5) * 8
    w = torch.randint(1, 40, (1, 10), generator=g).float() * 2
    return case_of(anchors, levels, boxes_around(cx, cy, w, w))


# --------------------------------------------------------------------------- GT edge cases


@register("duplicate_gts")
def _duplicates():
    """Identical GT boxes (3 copies of one, 2 of another): shared positives go to the lower index."""
    anchors, levels = grid_anchors(256, 320, (8, 16, 32, 64))
    gt = random_gt(2, 8, 256, 320, seed=31)
    gt[:, 3] = gt[:, 0]
    gt[:, 6] = gt[:, 0]
    gt[:, 7] = gt[:, 2]
    gt[1, 5] = gt[0, 1]
    return case_of(anchors, levels, gt)


@register("degenerate_gts")
def _degenerate():
    """Zero-width, zero-height and point GTs among normal ones: candidates, IoU 0, no positives."""
    anchors, levels = grid_anchors(128, 192, (8, 16, 32))
    gt = random_gt(2, 9, 128, 192, seed=32)
    gt[:, 0, 2] = gt[:, 0, 0]  # zero width
    gt[:, 1, 3] = gt[:, 1, 1]  # zero height
    gt[:, 2, 2:] = gt[:, 2, :2]  # a point
    gt[0, 3] = torch.tensor([60.0, 40.0, 60.0, 100.0])  # zero width, on a grid line
    gt[1, 4] = torch.tensor([0.0, 0.0, 0.0, 0.0])  # a point at the origin
    return case_of(anchors, levels, gt)


@register("no_center_test_degenerate")
def _no_center_test_degenerate():
    """center_eps=None: degenerate GTs do get positives, with IoU 0 (ties resolved by GT index)."""
    anchors, levels = grid_anchors(64, 64, (8, 16))
    gt = torch.tensor(
        [[[20.0, 28.0, 44.0, 28.0], [20.0, 28.0, 44.0, 28.0], [28.0, 20.0, 28.0, 44.0], [30.0, 30.0, 30.0, 30.0]]]
    )
    return case_of(anchors, levels, gt, center_eps=None)


@register("large_center_eps")
def _large_eps():
    """center_eps larger than every box: candidates and thresholds, but no positives at all."""
    anchors, levels = grid_anchors(128, 128, (8, 16, 32))
    return case_of(anchors, levels, random_gt(2, 6, 128, 128, seed=33), center_eps=1e4)


@register("nan_padding")
def _nan_padding():
    """Padding rows beyond gt_counts hold NaN: never read."""
    anchors, levels = grid_anchors(192, 256, (8, 16, 32, 64))
    gt, counts = pad_counts(random_gt(3, 10, 192, 256, seed=34), [10, 4, 1])
    return case_of(anchors, levels, gt, counts)


@register("garbage_padding")
def _garbage_padding():
    """Padding rows hold inf, -inf and inverted boxes: never read, never an error."""
    anchors, levels = grid_anchors(128, 128, (8, 16, 32))
    gt = random_gt(2, 5, 128, 128, seed=35)
    gt[0, 3] = torch.tensor([float("inf"), 0.0, float("-inf"), 5.0])
    gt[0, 4] = torch.tensor([50.0, 50.0, 10.0, 10.0])
    gt[1, 2:] = float("nan")
    gt[1, 4, 0] = float("inf")
    return case_of(anchors, levels, gt, torch.tensor([3, 2]))


@register("gt_counts_zero")
def _counts_zero():
    """Images with gt_counts[b] == 0 beside a normal one: all background there."""
    anchors, levels = grid_anchors(128, 160, (8, 16, 32))
    gt, counts = pad_counts(random_gt(3, 4, 128, 160, seed=36), [0, 4, 0])
    return case_of(anchors, levels, gt, counts)


@register("gt_counts_all_zero")
def _counts_all_zero():
    """Every image has gt_counts 0 (G > 0): the kernels' fast paths must still give the sentinels."""
    anchors, levels = grid_anchors(64, 64, (8, 16))
    gt, counts = pad_counts(random_gt(2, 3, 64, 64, seed=37), [0, 0])
    return case_of(anchors, levels, gt, counts)


@register("g0")
def _g0():
    anchors, levels = grid_anchors(64, 96, (8, 16, 32))
    return case_of(anchors, levels, torch.zeros(3, 0, 4))


@register("g0_with_counts")
def _g0_counts():
    anchors, levels = grid_anchors(64, 96, (8, 16, 32))
    return case_of(anchors, levels, torch.zeros(2, 0, 4), torch.zeros(2, dtype=torch.int64))


@register("b0")
def _b0():
    anchors, levels = grid_anchors(64, 96, (8, 16, 32))
    return case_of(
        anchors,
        levels,
        torch.zeros(0, 5, 4),
        torch.zeros(0, dtype=torch.int64),
        anchor_valid=torch.zeros(0, anchors.shape[0], dtype=torch.bool),
    )


@register("a0_empty_levels")
def _a0():
    """A = 0 with every level empty: GTs get no candidate (threshold NaN) and nothing is assigned."""
    return case_of(torch.zeros(0, 4), [0, 0, 0], random_gt(2, 3, 64, 64, seed=38))


@register("a0_no_levels")
def _a0_no_levels():
    return case_of(torch.zeros(0, 4), [], random_gt(1, 2, 64, 64, seed=39))


# --------------------------------------------------------------------------- anchor_valid


@register("anchor_valid_random")
def _valid_random():
    anchors, levels = grid_anchors(192, 256, (8, 16, 32, 64))
    valid = torch.rand(3, anchors.shape[0], generator=generator(41)) < 0.6
    return case_of(anchors, levels, random_gt(3, 8, 192, 256, seed=41), anchor_valid=valid)


@register("anchor_valid_padded_image")
def _valid_padded():
    """Per-image unpadded areas (anchor centre inside), as a batch of differently sized images."""
    height, width = 256, 320
    anchors, levels = grid_anchors(height, width, (8, 16, 32, 64, 128))
    sizes = [(256, 320), (200, 150), (64, 300), (17, 9)]
    cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    valid = torch.stack([(cx < w) & (cy < h) for h, w in sizes])
    gt = torch.stack([random_gt(1, 6, max(h, 16), max(w, 16), seed=42 + i)[0] for i, (h, w) in enumerate(sizes)])
    return case_of(anchors, levels, gt, anchor_valid=valid)


@register("anchor_valid_none_in_image")
def _valid_none():
    """One image where no anchor is valid: C == 0 for its GTs (threshold NaN, no positives)."""
    anchors, levels = grid_anchors(128, 128, (8, 16, 32))
    valid = torch.ones(2, anchors.shape[0], dtype=torch.bool)
    valid[1] = False
    return case_of(anchors, levels, random_gt(2, 4, 128, 128, seed=43), anchor_valid=valid)


@register("anchor_valid_one_per_level")
def _valid_one_per_level():
    """A single valid anchor per level (V_l = 1 < topk): one candidate per level, the rest -1."""
    anchors, levels = grid_anchors(128, 128, (8, 16, 32))
    valid = torch.zeros(1, anchors.shape[0], dtype=torch.bool)
    start = 0
    for n in levels:
        valid[0, start + n // 3] = True
        start += n
    return case_of(anchors, levels, random_gt(1, 5, 128, 128, seed=44), anchor_valid=valid)


# --------------------------------------------------------------------------- levels


@register("level_smaller_than_topk")
def _small_level():
    """Levels of 6 and 2 anchors with topk = 9: min(topk, N_l) candidates there."""
    anchors, levels = grid_anchors(64, 80, (8, 16, 32, 64))
    return case_of(anchors, levels, random_gt(2, 6, 64, 80, seed=51))


@register("topk_larger_than_every_level")
def _huge_topk():
    """topk = 1000 > A: every valid anchor is a candidate of every GT."""
    anchors, levels = grid_anchors(48, 64, (8, 16, 32))
    valid = torch.rand(2, anchors.shape[0], generator=generator(52)) < 0.8
    return case_of(anchors, levels, random_gt(2, 5, 48, 64, seed=52), topk=1000, anchor_valid=valid)


def _empty_level(where: str):
    anchors, levels = grid_anchors(96, 128, (8, 16, 32))
    levels = {
        "start": [0] + levels,
        "middle": levels[:1] + [0] + levels[1:],
        "end": levels + [0],
        "everywhere": [0, levels[0], 0, 0, levels[1], levels[2], 0],
    }[where]
    return case_of(anchors, levels, random_gt(2, 6, 96, 128, seed=53))


for _where in ("start", "middle", "end", "everywhere"):
    register(f"empty_level_{_where}")(functools.partial(_empty_level, _where))


@register("c1_topk1_one_level")
def _c1():
    """C == 1 (topk = 1, one level): std = 0, so the single candidate is positive if its centre is inside."""
    anchors, levels = grid_anchors(64, 64, (8,))
    return case_of(anchors, levels, random_gt(2, 7, 64, 64, seed=54), topk=1)


@register("topk1_multi_level")
def _topk1():
    anchors, levels = grid_anchors(128, 128, (8, 16, 32, 64))
    return case_of(anchors, levels, random_gt(2, 7, 128, 128, seed=55), topk=1)


# --------------------------------------------------------------------------- numerics


@register("integer_boxes")
def _integer_boxes():
    """Small integer anchors and GTs: many exactly equal IoUs and distances."""
    g = generator(61)
    anchors, levels = multi_scale_anchors(32, 32, (4, 8), [2.0, 3.0])
    xy = torch.randint(0, 24, (2, 12, 2), generator=g).float()
    wh = torch.randint(1, 12, (2, 12, 2), generator=g).float()
    gt = torch.cat([xy, xy + wh], dim=-1)
    return case_of(anchors, levels, gt, topk=6)


@register("tiny_image")
def _tiny():
    """An 8x8 image with strides up to 128: one anchor per level, GTs larger than the image."""
    anchors, levels = grid_anchors(8, 8, (8, 16, 32, 64, 128))
    gt = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [1.0, 1.0, 3.0, 7.0], [-50.0, -50.0, 60.0, 60.0]]])
    return case_of(anchors, levels, gt)


@register("tiny_image_1px")
def _tiny_1px():
    anchors, levels = grid_anchors(1, 1, (1, 2, 4), scales=(1.0,))
    gt = torch.tensor([[[0.0, 0.0, 1.0, 1.0]], [[0.25, 0.25, 0.75, 0.75]]])
    return case_of(anchors, levels, gt, topk=3, center_eps=0.0)


@register("negative_coordinates")
def _negative():
    """Everything shifted to negative coordinates."""
    anchors, levels = grid_anchors(128, 128, (8, 16, 32))
    return case_of(anchors - 1000.0, levels, random_gt(2, 6, 128, 128, seed=62) - 1000.0)


@register("huge_coordinates_overflow")
def _huge():
    """Coordinates near float32's limit: centres, d2, areas overflow to inf and IoUs become NaN."""
    big = 3.0e38
    anchors = torch.tensor(
        [
            [0.0, 0.0, 1.0, 1.0],
            [big, big, big, big],
            [-big, -big, big, big],
            [1e19, 1e19, 3e19, 3e19],
            [0.0, 0.0, big, big],
            [-big, 0.0, 0.0, 1.0],
            [1e30, -1e30, 2e30, 1e30],
            [5.0, 5.0, 6.0, 6.0],
        ]
    )
    gt = torch.tensor(
        [
            [[0.0, 0.0, 2.0, 2.0], [big, big, big, big], [-big, -big, big, big], [1e19, 1e19, 2e19, 2e19]],
            [[0.0, 0.0, big, big], [1e30, 0.0, 2e30, 1e30], [-1.0, -1.0, 7.0, 7.0], [-big, -big, -big, -big]],
        ]
    )
    return case_of(anchors, [3, 5], gt, topk=2)


@register("tiny_coordinates")
def _tiny_coords():
    """Sub-normal sizes: areas underflow to 0 and the union clamps to 1e-6."""
    anchors, levels = grid_anchors(16, 16, (4, 8), scales=(2.0,))
    anchors = anchors * 1e-20
    gt = torch.tensor([[[0.0, 0.0, 8e-20, 8e-20], [1e-20, 2e-20, 9e-20, 1.5e-19], [0.0, 0.0, 1.0, 1.0]]])
    return case_of(anchors, levels, gt, center_eps=0.0)


@register("signed_zeros")
def _signed_zeros():
    """Boxes touching at +-0 coordinates: where -0.0 can appear in centres, widths and IoUs."""
    z = -0.0
    anchors = torch.tensor(
        [
            [z, z, 1.0, 1.0],
            [-1.0, -1.0, z, z],
            [z, -1.0, 1.0, z],
            [-1.0, z, z, 1.0],
            [z, z, z, z],
            [0.0, 0.0, 0.0, 0.0],
            [-2.0, -2.0, 2.0, 2.0],
            [z, z, 2.0, 2.0],
        ]
    )
    gt = torch.tensor(
        [
            [[z, z, 1.0, 1.0], [-1.0, -1.0, 0.0, 0.0], [z, z, z, z], [-1.0, -1.0, 1.0, 1.0]],
            [[0.0, z, 1.0, 0.0], [z, -1.0, z, 1.0], [-2.0, z, 2.0, z], [z, z, 2.0, 2.0]],
        ]
    )
    return case_of(anchors, [4, 4], gt, topk=3, center_eps=None)


@register("non_integer_random_boxes")
def _random_float_boxes():
    """Anchors not on a grid at all (random floats): generic rounding everywhere."""
    g = generator(63)
    xy = torch.rand(60, 2, generator=g) * 100
    wh = torch.rand(60, 2, generator=g) * 30
    anchors = torch.cat([xy, xy + wh], dim=-1)
    gxy = torch.rand(2, 7, 2, generator=g) * 100
    gwh = torch.rand(2, 7, 2, generator=g) * 50
    return case_of(anchors, [25, 20, 15], torch.cat([gxy, gxy + gwh], dim=-1), topk=5, center_eps=0.5)


def random_case(
    seed,
    B,
    G,
    height,
    width,
    strides=(8, 16, 32, 64, 128),
    topk=9,
    counts=False,
    valid=None,
    scales=None,
    center_eps=0.01,
    ignore=None,
    ensure_positive=False,
):
    """A COCO-like batch; ``valid`` / ``ignore``: fraction of valid / ignored anchors (None: no mask);
    ``scales``: anchors per location."""
    g = generator(seed)
    if scales is None:
        anchors, levels = grid_anchors(height, width, strides)
    else:
        anchors, levels = multi_scale_anchors(height, width, strides, scales)
    gt = random_gt(B, G, height, width, seed=seed)
    gt_counts = None
    if counts:
        gt_counts = torch.randint(0, G + 1, (B,), generator=g)
        gt_counts[0] = G
        for b in range(B):
            gt[b, int(gt_counts[b]) :] = float("nan")
    anchor_valid = None
    if valid is not None:
        anchor_valid = torch.rand(B, anchors.shape[0], generator=g) < valid
    anchor_ignore = None
    if ignore is not None:
        anchor_ignore = torch.rand(B, anchors.shape[0], generator=g) < ignore
    return case_of(
        anchors,
        levels,
        gt,
        gt_counts,
        topk=topk,
        anchor_valid=anchor_valid,
        center_eps=center_eps,
        anchor_ignore=anchor_ignore,
        ensure_positive=ensure_positive,
    )


def random_case_3d(seed, B, G, size=(48, 40, 24), strides=(4, 8, 16), topk=9, counts=False, **masks):
    """A random 3-D batch (anchors_3d grid, one cube per location); ``masks``: ``valid`` / ``ignore``
    fractions and ``center_eps`` / ``ensure_positive`` as in :func:`random_case`."""
    g = generator(seed)
    anchors, levels = anchors_3d(size, strides)
    gt = random_gt_3d(B, G, size, g)
    gt_counts = None
    if counts:
        gt, gt_counts = pad_counts(gt, [G] + torch.randint(0, G + 1, (B - 1,), generator=g).tolist())
    A = anchors.shape[0]
    valid, ignore = masks.pop("valid", None), masks.pop("ignore", None)
    return case_of(
        anchors,
        levels,
        gt,
        gt_counts,
        topk=topk,
        anchor_valid=None if valid is None else torch.rand(B, A, generator=g) < valid,
        anchor_ignore=None if ignore is None else torch.rand(B, A, generator=g) < ignore,
        **masks,
    )


# --------------------------------------------------------------------------- contract v2: 3-D boxes


def anchors_3d(size, strides, scales=(4.0,), depth_scales=(1.0,)):
    """3-D anchors ``x1, y1, z1, x2, y2, z2`` on a grid of each stride over a ``(W, H, D)`` volume;
    ``len(scales) * len(depth_scales)`` anchors per location (equal centres, consecutive indices:
    with several ``depth_scales`` they differ along z only)."""
    W, H, Dz = size
    boxes, counts = [], []
    for st in strides:
        nz, ny, nx = -(-Dz // st), -(-H // st), -(-W // st)
        zs, ys, xs = torch.meshgrid(torch.arange(nz), torch.arange(ny), torch.arange(nx), indexing="ij")
        c = torch.stack([xs.flatten(), ys.flatten(), zs.flatten()], dim=-1).float().add(0.5).mul(st)
        per_loc = []
        for sc in scales:
            for dsc in depth_scales:
                half = torch.tensor([sc * st / 2, sc * st / 2, sc * dsc * st / 2])
                per_loc.append(torch.cat([c - half, c + half], dim=-1))
        level = torch.stack(per_loc, dim=1).reshape(-1, 6)
        boxes.append(level)
        counts.append(level.shape[0])
    return torch.cat(boxes), counts


def random_gt_3d(B, G, size, g, min_size=2.0):
    """Random 3-D GT boxes inside a ``(W, H, D)`` volume (float coordinates)."""
    extent = torch.tensor(size, dtype=torch.float32)
    wh = min_size + torch.rand(B, G, 3, generator=g) * (extent / 2 - min_size)
    lo = torch.rand(B, G, 3, generator=g) * (extent - wh)
    return torch.cat([lo, lo + wh], dim=-1)


for _name, (_seed, _B, _G, _kw) in {
    "d3_random_b2_g6": (71, 2, 6, {}),
    "d3_random_counts_b3_g9": (72, 3, 9, dict(counts=True)),
    "d3_random_masks": (73, 2, 8, dict(valid=0.7, ignore=0.2)),
    "d3_no_center_test": (74, 2, 7, dict(center_eps=None)),
    "d3_ensure_positive": (75, 2, 10, dict(ensure_positive=True, topk=4)),
    "d3_everything": (76, 3, 8, dict(counts=True, valid=0.8, ignore=0.15, center_eps=None, ensure_positive=True)),
}.items():
    register(_name)(functools.partial(random_case_3d, _seed, _B, _G, **_kw))


@register("d3_centres_on_cell_corners")
def _d3_corners():
    """GT centres on corners of every level's cells: distances tie on all three axes (8 equal keys)."""
    anchors, levels = anchors_3d((64, 64, 32), (4, 8, 16))
    g = generator(77)
    c = torch.randint(1, 4, (2, 6, 3), generator=g).float() * 16
    c[..., 2] = 16.0  # the only interior multiple of 16 along z (depth 32)
    half = torch.randint(2, 20, (2, 6, 3), generator=g).float()
    return case_of(anchors, levels, torch.cat([c - half, c + half], dim=-1), topk=9)


@register("d3_anchors_along_z")
def _d3_along_z():
    """Three anchors per location differing only along z (equal centres: ties by index), topk = 9 * 3."""
    anchors, levels = anchors_3d((48, 48, 24), (4, 8), depth_scales=(0.5, 1.0, 2.0))
    g = generator(78)
    return case_of(anchors, levels, random_gt_3d(2, 7, (48, 48, 24), g), topk=27, ensure_positive=True)


@register("d3_degenerate_extents")
def _d3_degenerate():
    """3-D GTs flat along one axis, a line, a point: candidates, IoU 0, nothing to propose."""
    anchors, levels = anchors_3d((32, 32, 16), (4, 8))
    gt = random_gt_3d(1, 6, (32, 32, 16), generator(79))
    gt[0, 0, 5] = gt[0, 0, 2]  # flat in z
    gt[0, 1, 3] = gt[0, 1, 0]  # flat in x
    gt[0, 2, 3:5] = gt[0, 2, 0:2]  # a line along z
    gt[0, 3, 3:] = gt[0, 3, :3]  # a point
    return case_of(anchors, levels, gt, ensure_positive=True)


@register("d3_levels_smaller_than_topk_and_empty")
def _d3_small_levels():
    """A 3-D pyramid with an empty level and levels of 8 and 1 anchors, topk = 9."""
    anchors, levels = anchors_3d((16, 16, 16), (4, 8, 16))
    levels = [levels[0], 0, levels[1], levels[2], 0]
    return case_of(anchors, levels, random_gt_3d(2, 5, (16, 16, 16), generator(80)), ensure_positive=True)


@register("d3_g0_ignore")
def _d3_g0():
    """3-D, G = 0, with ignored anchors: background and -2 only."""
    anchors, levels = anchors_3d((16, 16, 8), (4, 8))
    ignore = torch.rand(2, anchors.shape[0], generator=generator(81)) < 0.3
    return case_of(anchors, levels, torch.zeros(2, 0, 6), anchor_ignore=ignore)


# --------------------------------------------------------------------------- contract v2: ignore, step 8


@register("ignore_random_with_valid")
def _ignore_random():
    """anchor_ignore overlapping anchor_valid: ignored wins (-2) whatever valid says."""
    return random_case(82, 3, 9, 160, 224, (8, 16, 32), counts=True, valid=0.7, ignore=0.3)


@register("ignore_every_anchor_of_an_image")
def _ignore_all():
    """Every anchor of image 1 ignored: its GTs get no candidate, every output there is -2."""
    c = random_case(83, 2, 5, 128, 128, (8, 16, 32), ignore=0.1)
    c["anchor_ignore"][1] = True
    return c


@register("ignore_regions_boxes")
def _ignore_regions():
    """Ignore regions as blocks of anchors (crowd-like), no validity mask, ensure_positive on."""
    c = random_case(84, 2, 12, 192, 192, (8, 16, 32), ensure_positive=True)
    a = c["anchors"]
    cx, cy = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2
    c["anchor_ignore"] = torch.stack([(cx > 40) & (cx < 100) & (cy > 30) & (cy < 90), (cx < 64) | (cy > 150)])
    return c


@register("ensure_positive_competing_tiny_gts")
def _competing():
    """Identical tiny GTs (no positive through the centre test with a big eps): they all propose the
    same best anchor; the lowest GT index takes it and the others stay empty (one round)."""
    anchors, levels = grid_anchors(96, 96, (8, 16, 32))
    tiny = torch.tensor([41.0, 43.0, 44.0, 45.0])
    gt = torch.stack([tiny, tiny, tiny + 1.0, torch.tensor([10.0, 10.0, 60.0, 70.0]), tiny])[None]
    return case_of(anchors, levels, gt, center_eps=4.0, ensure_positive=True)


@register("ensure_positive_no_overlap")
def _no_overlap():
    """GTs whose candidates all have IoU 0 (far from every usable anchor, degenerate): nothing to propose."""
    anchors, levels = grid_anchors(64, 64, (8, 16), scales=(1.0,))
    valid = torch.ones(1, anchors.shape[0], dtype=torch.bool)
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    valid[0, cx < 40] = False
    gt = torch.tensor([[[1.0, 1.0, 5.0, 5.0], [20.0, 20.0, 20.0, 30.0], [44.0, 8.0, 60.0, 30.0]]])
    return case_of(anchors, levels, gt, anchor_valid=valid, ensure_positive=True)


@register("ensure_positive_coco")
def _ensure_coco():
    """A COCO-like batch with many small GTs and ensure_positive: step 8 fires often."""
    c = random_case(85, 3, 30, 256, 256, (8, 16, 32, 64), counts=True, ensure_positive=True)
    c["gt_boxes"][..., 2:] = c["gt_boxes"][..., :2] + (c["gt_boxes"][..., 2:] - c["gt_boxes"][..., :2]) * 0.15
    return c


@register("ensure_positive_no_center_test_ignore")
def _ensure_nocenter_ignore():
    return random_case(
        86, 2, 15, 192, 160, (8, 16, 32), topk=5, valid=0.9, ignore=0.2, center_eps=None, ensure_positive=True
    )


CASE_NAMES: List[str] = list(CASES)
# Cases where everything is background by construction.
EMPTY_CASE_NAMES = ["g0", "g0_with_counts", "b0", "a0_empty_levels", "a0_no_levels", "gt_counts_all_zero"]


# --------------------------------------------------------------------------- per-op inputs and outputs


@functools.lru_cache(maxsize=None)
def reference_stages(name: str) -> dict:
    """The reference's outputs of each stage for case ``name`` (cached: the reference is slow)."""
    return compute_reference_stages(make_case(name))


def _chain(c: dict, impl) -> dict:
    """The four stage ops of ``impl`` chained on case ``c``, each fed the previous one's output."""
    d = impl.center_distance(c["anchors"], c["gt_boxes"], c["gt_counts"])
    cand = impl.topk_per_level(
        d, c["num_anchors_per_level"], c["topk"], c["gt_counts"], c["anchor_valid"], c.get("anchor_ignore")
    )
    stats = impl.iou_statistics(c["anchors"], c["gt_boxes"], cand, c["gt_counts"], c["center_eps"])
    resolved = impl.resolve_multi_gt(
        cand, stats[0], stats[2], c["anchors"].shape[0], c.get("anchor_ignore"), c.get("ensure_positive", False)
    )
    return {"center_distance": d, "topk_per_level": cand, "iou_statistics": stats, "resolve_multi_gt": resolved}


def compute_stages(c: dict, impl=reference) -> dict:
    """The output of each op of ``impl`` (``atss_ops.reference`` or ``torch.ops.atss_ops``) on
    case ``c``: the stages chained, each fed the previous one's output, and the fused op."""
    return {**_chain(c, impl), "atss_assign": impl.atss_assign(*case_args(c))}


def compute_reference_stages(c: dict) -> dict:
    """The reference's output of each op on case ``c``, each stage fed the previous one's output."""
    return compute_stages(c, reference)


def op_args(op: str, case: dict, stages: Optional[dict] = None) -> tuple:
    """Positional arguments of stage ``op`` for ``case``; intermediate inputs come from ``stages``
    (by default the reference's outputs for the case, which all implementations then share)."""
    c = case
    if op == "center_distance":
        return (c["anchors"], c["gt_boxes"], c["gt_counts"])
    if op == "topk_per_level":
        return (
            stages["center_distance"],
            c["num_anchors_per_level"],
            c["topk"],
            c["gt_counts"],
            c["anchor_valid"],
            c.get("anchor_ignore"),
        )
    if op == "iou_statistics":
        return (c["anchors"], c["gt_boxes"], stages["topk_per_level"], c["gt_counts"], c["center_eps"])
    if op == "resolve_multi_gt":
        cand_iou, _, is_positive = stages["iou_statistics"]
        return (
            stages["topk_per_level"],
            cand_iou,
            is_positive,
            c["anchors"].shape[0],
            c.get("anchor_ignore"),
            c.get("ensure_positive", False),
        )
    if op == "atss_assign":
        return case_args(c)
    raise KeyError(op)


def chain_stage_kernels(case: dict, impl=None) -> tuple:
    """The four stage kernels chained (of ``impl``, default ``torch.ops.atss_ops``), as the fused
    ``atss_assign`` computes them."""
    stages = _chain(case, torch.ops.atss_ops if impl is None else impl)
    gt_index, iou, num_positive = stages["resolve_multi_gt"]
    return gt_index, iou, stages["iou_statistics"][1], num_positive
