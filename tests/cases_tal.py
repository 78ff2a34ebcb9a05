"""Inputs of the TAL tests: a catalogue of ``tal_assign`` calls, by name.

Every generator returns a *case*: a dict of the op's arguments (``TAL_ARG_NAMES``), so
``tal_args(case)`` is the positional argument tuple of ``torch.ops.atss_ops.tal_assign`` and of
``atss_ops.reference_tal.tal_assign``. Deterministic (fixed seeds). The adversarial cases aim at
the places where two implementations of the contract could disagree: metric ties (equal scores and
identical predicted boxes), zero metrics, points on GT edges (the strict inside test), duplicate
GTs, crowded images (shared anchors), GTs holding no point, padding, topk2 and min_side, point
layouts that are not a grid, and the empty shapes.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch

from atss_ops.testing import anchor_points

TAL_ARG_NAMES = (
    "pred_scores",
    "pred_boxes",
    "anchor_points",
    "gt_boxes",
    "gt_labels",
    "gt_counts",
    "topk",
    "alpha",
    "beta",
    "ciou",
    "min_side",
    "topk2",
    "eps",
)
TAL_DEFAULTS = dict(gt_counts=None, topk=10, alpha=0.5, beta=6.0, ciou=True, min_side=None, topk2=None, eps=1e-9)

TAL_CASES: Dict[str, Callable[[], dict]] = {}


def register(name: str):
    def deco(fn):
        assert name not in TAL_CASES, name
        TAL_CASES[name] = fn
        return fn

    return deco


def make_tal_case(name: str) -> dict:
    return dict(TAL_DEFAULTS, **TAL_CASES[name]())


def tal_args(case: dict) -> tuple:
    return tuple(case[k] for k in TAL_ARG_NAMES)


def predictions(points: torch.Tensor, B: int, C: int, g: torch.Generator, spread: float = 40.0):
    """Scores ``[B, A, C]`` in [0, 1] and boxes ``[B, A, 4]`` around each point."""
    A = points.shape[0]
    ltrb = torch.rand(B, A, 4, generator=g) * spread + 0.5
    boxes = torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)
    return torch.rand(B, A, C, generator=g), boxes


def random_gts(B: int, G: int, C: int, g: torch.Generator, size: int = 320, max_side: float = 160.0):
    centre = torch.rand(B, G, 2, generator=g) * (size - 20) + 10
    wh = torch.rand(B, G, 2, generator=g) ** 2 * max_side + 1
    boxes = torch.cat([centre - wh / 2, centre + wh / 2], dim=-1).clamp(0, size)
    return boxes, torch.randint(0, C, (B, G), generator=g)


def random_case(seed: int, B=2, G=7, C=5, size=320, counts=True, fixed_counts=None, **options) -> dict:
    g = torch.Generator().manual_seed(seed)
    points = anchor_points(size)
    scores, boxes = predictions(points, B, C, g)
    gt, labels = random_gts(B, G, C, g, size)
    gt_counts = None
    if counts:
        gt_counts = torch.randint(0, G + 1, (B,), generator=g)
        gt_counts[0] = G
        if fixed_counts is not None:
            gt_counts = torch.tensor(fixed_counts)
        for b, n in enumerate(gt_counts.tolist()):
            gt[b, n:] = float("nan")  # padding is never read
            labels[b, n:] = -7
    return dict(
        pred_scores=scores,
        pred_boxes=boxes,
        anchor_points=points,
        gt_boxes=gt,
        gt_labels=labels,
        gt_counts=gt_counts,
        **options,
    )


register("random_b2_g7")(lambda: random_case(0))
register("random_b3_g20_min_side")(lambda: random_case(1, B=3, G=20, min_side=16.0))
register("random_iou_alpha1_topk13")(lambda: random_case(2, B=2, G=12, ciou=False, alpha=1.0, topk=13))
register("random_half_powers")(lambda: random_case(3, alpha=1.5, beta=2.5, min_side=8.0))
register("random_powers_0")(lambda: random_case(4, alpha=0.0, beta=0.0))
register("topk2_3")(lambda: random_case(5, B=2, G=15, topk2=3, min_side=16.0))
register("topk2_above_topk")(lambda: random_case(6, B=2, G=30, topk=4, topk2=7))
register("topk1")(lambda: random_case(7, G=20, topk=1))
register("huge_topk")(lambda: random_case(8, G=5, topk=10**6))
register("eps_0")(lambda: random_case(9, eps=0.0, min_side=16.0))
register("eps_large")(lambda: random_case(10, eps=3.0))


@register("crowded")
def _crowded():
    """60 overlapping GTs in a 100 x 100 corner: most picks are shared."""
    c = random_case(11, B=2, G=60, C=3, counts=False, topk=13)
    g = torch.Generator().manual_seed(111)
    centre = torch.rand(2, 60, 2, generator=g) * 80 + 10
    wh = torch.rand(2, 60, 2, generator=g) * 60 + 4
    c["gt_boxes"] = torch.cat([centre - wh / 2, centre + wh / 2], dim=-1)
    return c


@register("duplicate_gts")
def _duplicates():
    """Identical GTs, with the same and with different labels."""
    c = random_case(12, B=2, G=8, counts=False, min_side=16.0)
    gt, labels = c["gt_boxes"], c["gt_labels"]
    gt[:, 3] = gt[:, 0]
    labels[:, 3] = labels[:, 0]
    gt[:, 5] = gt[:, 0]
    labels[:, 5] = (labels[:, 0] + 1) % 5
    gt[:, 7] = gt[:, 2]
    labels[:, 7] = labels[:, 2]
    return c


@register("metric_ties")
def _ties():
    """Scores from {0, 0.25, 1} and every predicted box the same: many equal metrics (index order)."""
    c = random_case(13, B=2, G=10, C=3, counts=False)
    g = torch.Generator().manual_seed(113)
    c["pred_scores"] = torch.randint(0, 3, c["pred_scores"].shape, generator=g).float().pow(2) / 4
    c["pred_boxes"] = torch.tensor([100.0, 100.0, 200.0, 180.0]).expand_as(c["pred_boxes"]).contiguous()
    return c


@register("zero_metrics")
def _zero():
    """Predicted boxes far from every GT: every CIoU is negative, every metric 0."""
    c = random_case(14, B=2, G=9, counts=False, min_side=16.0)
    c["pred_boxes"] = torch.tensor([1000.0, 1000.0, 1001.0, 1001.0]).expand_as(c["pred_boxes"]).contiguous()
    return c


@register("points_on_edges")
def _edges():
    """GT corners on point coordinates (the inside test is strict) and on cell edges; integer boxes."""
    c = random_case(15, B=2, G=12, counts=False)
    g = torch.Generator().manual_seed(115)
    lo = (torch.randint(0, 30, (2, 12, 2), generator=g) * 8 + 4).float()
    c["gt_boxes"] = torch.cat([lo, lo + (torch.randint(1, 10, (2, 12, 2), generator=g) * 8).float()], dim=-1)
    c["pred_boxes"] = c["pred_boxes"].round()
    return c


@register("points_on_edges_eps_0")
def _edges_eps0():
    """The same with eps = 0: a point on an edge (difference 0) is still outside; one 1 ulp in is inside."""
    c = _edges()
    c["eps"] = 0.0
    c["gt_boxes"][1, ::2, :2] = torch.nextafter(c["gt_boxes"][1, ::2, :2], torch.tensor(-1.0))
    return c


def _rising_metrics(topk2=None) -> dict:
    """Large GTs holding 130 to 525 points each, topk 70, and metrics that rise with the anchor index (scores
    rising, every predicted box the same, alpha 1): each new inside anchor comes first in step 3's order, so
    an implementation that scans anchors in index order puts every key at the head of a full list, the rest
    moving down one place (more than 32 keys at once)."""
    points = anchor_points(160)
    A = points.shape[0]
    gt = torch.tensor(
        [
            [[10.0, 10.0, 150.0, 150.0], [20.0, 30.0, 100.0, 125.0], [0.0, 0.0, 160.0, 160.0], [75, 5, 155, 85]],
            [[5.0, 50.0, 155.0, 115.0], [0.0, 0.0, 160.0, 160.0], [32.0, 32.0, 128.0, 128.0], [2, 2, 50, 150]],
        ]
    )
    scores = (torch.arange(A, dtype=torch.float32) + 1) / (A + 1)
    return dict(
        pred_scores=torch.stack([scores, scores.flip(0)], dim=-1).expand(2, A, 2).contiguous(),
        pred_boxes=torch.tensor([30.0, 30.0, 130.0, 130.0]).expand(2, A, 4).contiguous(),
        anchor_points=points,
        gt_boxes=gt,
        gt_labels=torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1]]),  # one GT of class 1: metrics falling instead
        topk=70,
        alpha=1.0,
        topk2=topk2,
    )


def _tiled(eps: float) -> dict:
    """A 64 x 32 integer lattice listed tile by tile (8 x 4 points, 32 to a tile): any 32 consecutive anchors
    from a multiple of 32 form one compact tile. GT sides fall exactly on a tile's first or last row or column,
    or one ulp either side of it, so a point of the tile's border is just outside, on the edge or just inside
    (by more than eps or not)."""
    g = torch.Generator().manual_seed(27)
    ty, tx, y, x = torch.meshgrid(torch.arange(8), torch.arange(8), torch.arange(4), torch.arange(8), indexing="ij")
    points = torch.stack([tx * 8 + x, ty * 4 + y], dim=-1).reshape(-1, 2).float()
    B, G = 2, 16
    lo_tile, extent = torch.randint(0, 7, (B, G, 2), generator=g), torch.randint(1, 4, (B, G, 2), generator=g)
    size = torch.tensor([8, 4])
    lo = (lo_tile * size - 1).float()  # the last row / column of the tile before
    hi = ((lo_tile + extent).clamp(max=7) * size).float()  # the first row / column of a later tile
    nudge = torch.randint(-1, 2, (B, G, 4), generator=g)  # one ulp down, none, one ulp up
    boxes = torch.cat([lo, hi], dim=-1)
    boxes = torch.where(nudge < 0, torch.nextafter(boxes, torch.tensor(-1e9)), boxes)
    boxes = torch.where(nudge > 0, torch.nextafter(boxes, torch.tensor(1e9)), boxes)
    scores, pred = predictions(points, B, 3, g, spread=12.0)
    return dict(
        pred_scores=scores,
        pred_boxes=pred,
        anchor_points=points,
        gt_boxes=boxes,
        gt_labels=torch.randint(0, 3, (B, G), generator=g),
        topk=40,
        eps=eps,
    )


register("tiled_points_block_borders")(lambda: _tiled(1e-9))
register("tiled_points_block_borders_eps_1e-6")(lambda: _tiled(1e-6))  # above the ulp below 8, below it from 16
register("rising_metrics_topk70")(_rising_metrics)
register("rising_metrics_topk70_topk2_40")(lambda: _rising_metrics(topk2=40))
register("empty_images")(lambda: random_case(16, B=4, G=6, fixed_counts=[0, 6, 0, 2]))
register("all_padding")(lambda: random_case(17, B=2, G=5, fixed_counts=[0, 0]))


@register("gts_holding_no_point")
def _no_point():
    """Tiny GTs between the points (no min_side): they pick nothing; one normal GT beside them."""
    c = random_case(18, B=1, G=6, counts=False)
    c["gt_boxes"][0, :5] = torch.tensor(
        [[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 7.0, 7.0], [100.0, 100.0, 100.0, 100.0], [9.0, 0.0, 15.0, 3.5], [0, 0, 0, 0]]
    )
    return c


@register("tiny_gts_min_side")
def _tiny_min_side():
    """The same tiny GTs widened to the middle stride: they do get points."""
    c = _no_point()
    c["min_side"] = 16.0
    return c


@register("shuffled_points")
def _shuffled():
    """The grid's points in a random order: no layout is assumed."""
    c = random_case(19, B=2, G=10, min_side=16.0)
    perm = torch.randperm(c["anchor_points"].shape[0], generator=torch.Generator().manual_seed(119))
    c["anchor_points"] = c["anchor_points"][perm].contiguous()
    return c


@register("scattered_points")
def _scattered():
    """Random float points, some duplicated, a cluster on one line."""
    g = torch.Generator().manual_seed(20)
    points = torch.rand(700, 2, generator=g) * 320
    points[600:650] = points[:50]  # duplicates
    points[650:, 1] = 77.0  # a horizontal line
    scores, boxes = predictions(points, 2, 4, g)
    gt, labels = random_gts(2, 12, 4, g)
    return dict(pred_scores=scores, pred_boxes=boxes, anchor_points=points, gt_boxes=gt, gt_labels=labels)


@register("points_on_a_line")
def _line():
    """Every point on one vertical line (the grid has one column)."""
    g = torch.Generator().manual_seed(21)
    points = torch.stack([torch.full((200,), 50.0), torch.arange(200.0) * 1.5], dim=-1)
    scores, boxes = predictions(points, 1, 2, g)
    gt, labels = random_gts(1, 6, 2, g, size=300)
    return dict(pred_scores=scores, pred_boxes=boxes, anchor_points=points, gt_boxes=gt, gt_labels=labels, topk=4)


@register("one_point")
def _one_point():
    g = torch.Generator().manual_seed(22)
    points = torch.tensor([[10.0, 10.0]])
    scores, boxes = predictions(points, 2, 3, g)
    gt = torch.tensor([[[0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 15.0, 15.0]], [[30.0, 30.0, 40.0, 40.0], [0, 0, 11, 11]]])
    return dict(
        pred_scores=scores,
        pred_boxes=boxes,
        anchor_points=points,
        gt_boxes=gt,
        gt_labels=torch.tensor([[0, 1], [2, 2]]),
    )


@register("odd_scores")
def _odd_scores():
    """NaN, negative and above-1 scores (clamped), degenerate predicted boxes."""
    c = random_case(23, B=2, G=8, counts=False)
    s = c["pred_scores"]
    s[0, ::7] = float("nan")
    s[1, ::5] = -1.0
    s[:, ::3, 0] = 5.0
    c["pred_boxes"][:, ::4, 2:] = c["pred_boxes"][:, ::4, :2]
    return c


@register("g0")
def _g0():
    c = random_case(24, B=2, G=3, counts=False)
    c["gt_boxes"], c["gt_labels"] = c["gt_boxes"][:, :0], c["gt_labels"][:, :0]
    return c


@register("b0")
def _b0():
    c = random_case(25, B=1, G=3, counts=False)
    for k in ("pred_scores", "pred_boxes", "gt_boxes", "gt_labels"):
        c[k] = c[k][:0]
    return c


@register("a0")
def _a0():
    c = random_case(26, B=2, G=3, counts=False)
    c["pred_scores"], c["pred_boxes"], c["anchor_points"] = (
        c["pred_scores"][:, :0],
        c["pred_boxes"][:, :0],
        c["anchor_points"][:0],
    )
    return c


TAL_CASE_NAMES = list(TAL_CASES)
