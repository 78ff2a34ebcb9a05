"""The TAL reference (``atss_ops.reference_tal``) against the contract (docs/contract.md, TAL version 1), by hand:

* the routines (``atan_c``, ``P``, the overlap, the inside test) against scalar re-computations from the
  contract's text, one float32 rounding per operation (``f32``), bit for bit on random inputs;
* steps 3 to 5 on small dense inputs whose answers are worked out below;
* one end-to-end call on a 4 x 4 grid of points;
* bad input: a ValueError naming the argument and the value.

Every compiled-kernel test of ``tests/test_tal_equivalence.py`` compares with this reference.
"""

from __future__ import annotations

import math
import struct

import pytest
import torch
from bits import assert_bits_equal
from cases import generator

import atss_ops
from atss_ops import reference_tal as R


def f32(x) -> float:
    """``x`` rounded to the nearest float32 (as a Python float)."""
    return struct.unpack("f", struct.pack("f", float(x)))[0]


def fpos(v: float) -> float:
    return v if v > 0 else 0.0


def fmin(a: float, b: float) -> float:
    return b if b < a else a


def fmax(a: float, b: float) -> float:
    return b if b > a else a


def atan_by_hand(x: float) -> float:
    """The contract's ``atan_c``, one rounding per operation."""
    if x > f32(2.4142137):
        b, t = f32(1.5707964), f32(-1.0 / x)
    elif x > f32(0.41421357):
        b, t = f32(0.7853982), f32(f32(x - 1) / f32(x + 1))
    else:
        b, t = 0.0, x
    z = f32(t * t)
    p = f32(-0.06071304)
    for c in (0.10590773, -0.14243065, 0.19998442, -0.33333313):
        p = f32(f32(p * z) + f32(c))
    return f32(b + f32(t + f32(f32(t * z) * p)))


def power_by_hand(x: float, e: float) -> float:
    """The contract's ``P(x, e)``: float64 binary exponentiation, a square root for the half, one rounding."""
    n, half = int(e), e - int(e) == 0.5
    r, base, k = 1.0, x, n
    while k > 0:
        if k & 1:
            r = r * base
        k >>= 1
        if k > 0:
            base = base * base
    if half:
        r = r * math.sqrt(x)
    return f32(r)


def overlap_by_hand(g, p, ciou: bool) -> float:
    """The contract's overlap ``o(g, p)``, steps 1 to 8, one float32 rounding per operation."""
    E = f32(1e-7)
    gx1, gy1, gx2, gy2 = g
    px1, py1, px2, py2 = p
    gw, gh = f32(gx2 - gx1), f32(f32(gy2 - gy1) + E)
    pw, ph = f32(px2 - px1), f32(f32(py2 - py1) + E)
    iw = fpos(f32(fmin(gx2, px2) - fmax(gx1, px1)))
    ih = fpos(f32(fmin(gy2, py2) - fmax(gy1, py1)))
    inter = f32(iw * ih)
    union = f32(f32(f32(f32(gw * gh) + f32(pw * ph)) - inter) + E)
    iou = f32(inter / union)
    if not ciou:
        return fpos(iou)
    cw = f32(fmax(gx2, px2) - fmin(gx1, px1))
    ch = f32(fmax(gy2, py2) - fmin(gy1, py1))
    c2 = f32(f32(f32(cw * cw) + f32(ch * ch)) + E)
    dx = f32(f32(f32(px1 + px2) - gx1) - gx2)
    dy = f32(f32(f32(py1 + py2) - gy1) - gy2)
    rho2 = f32(f32(f32(dx * dx) + f32(dy * dy)) / 4)
    d = f32(atan_by_hand(f32(pw / ph)) - atan_by_hand(f32(gw / gh)))
    v = f32(f32(0.40528473) * f32(d * d))
    k = f32(v / f32(f32(f32(1 - iou) + v) + E))
    return fpos(f32(iou - f32(f32(rho2 / c2) + f32(v * k))))


def random_boxes(g: torch.Generator, n: int, scale: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * scale
    wh = torch.rand(n, 2, generator=g) ** 3 * scale
    wh[: n // 8] = 0  # degenerate boxes
    return torch.cat([xy, xy + wh], dim=-1)


# --------------------------------------------------------------------------- routines


def test_atan_c_follows_the_written_routine():
    g = generator(1)
    x = torch.cat(
        [
            torch.rand(3000, generator=g) * 3,
            torch.exp(torch.randn(3000, generator=g) * 8),
            torch.tensor([0.0, 0.41421357, 0.41421360, 2.4142137, 2.4142140, 1.0, 3.4e38, float("inf")]),
        ]
    )
    got = R.atan_c(x)
    expected = torch.tensor([atan_by_hand(v) for v in x.tolist()], dtype=torch.float32)
    assert_bits_equal(got, expected, "atan_c")
    # And it is an arctangent: within 3 ulp of the true value everywhere.
    true = torch.atan(x.double())
    t32 = true.float()
    ulp = (torch.nextafter(t32, torch.tensor(float("inf"))) - t32).double()
    assert float(((got.double() - true).abs() / ulp).max()) <= 3.0


@pytest.mark.parametrize("e", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 6.0, 6.5, 13.0, 1024.0])
def test_power_follows_the_written_routine(e):
    x = torch.cat([torch.rand(2000, generator=generator(2)), torch.tensor([0.0, 1.0, 1e-30, 0.5])])
    got = R.power(x, e)
    expected = torch.tensor([power_by_hand(v, e) for v in x.tolist()], dtype=torch.float32)
    assert_bits_equal(got, expected, f"P(x, {e})")
    if e == 0.5:  # the correctly rounded square root (float64's, rounded once: innocuous double rounding).
        # Not torch.sqrt of float32: on some CPUs (AVX-512 builds) it is 1 ulp off for about 1 value in 5.
        assert_bits_equal(got, torch.sqrt(x.double()).float(), "P(x, 0.5) == sqrt(x)")
    if e == 1.0:
        assert_bits_equal(got, x, "P(x, 1) == x")
    if e == 0.0:
        assert bool((got == 1).all())


@pytest.mark.parametrize("ciou", [True, False], ids=["ciou", "iou"])
def test_overlap_follows_the_written_order(ciou):
    g = generator(3)
    gt, pred = random_boxes(g, 1500), random_boxes(g, 1500)
    pred[:100] = gt[:100]  # identical boxes: overlap 1 for the non-degenerate ones
    got = R.box_overlap(gt, pred, ciou)
    expected = [overlap_by_hand(a, b, ciou) for a, b in zip(gt.tolist(), pred.tolist())]
    assert_bits_equal(got, torch.tensor(expected, dtype=torch.float32), "overlap")
    assert bool(((got >= 0) & (got <= 1)).all())
    # A CIoU / IoU indeed: close to the float64 formula with a true arctangent.
    g64, p64 = gt.double(), pred.double()
    E = 1e-7
    gw, gh = g64[:, 2] - g64[:, 0], g64[:, 3] - g64[:, 1] + E
    pw, ph = p64[:, 2] - p64[:, 0], p64[:, 3] - p64[:, 1] + E
    iw = (torch.minimum(g64[:, 2], p64[:, 2]) - torch.maximum(g64[:, 0], p64[:, 0])).clamp(min=0)
    ih = (torch.minimum(g64[:, 3], p64[:, 3]) - torch.maximum(g64[:, 1], p64[:, 1])).clamp(min=0)
    inter = iw * ih
    iou = inter / (gw * gh + pw * ph - inter + E)
    value = iou
    if ciou:
        cw = torch.maximum(g64[:, 2], p64[:, 2]) - torch.minimum(g64[:, 0], p64[:, 0])
        ch = torch.maximum(g64[:, 3], p64[:, 3]) - torch.minimum(g64[:, 1], p64[:, 1])
        rho2 = (
            (p64[:, 0] + p64[:, 2] - g64[:, 0] - g64[:, 2]) ** 2 + (p64[:, 1] + p64[:, 3] - g64[:, 1] - g64[:, 3]) ** 2
        ) / 4
        v = 4 / math.pi**2 * (torch.atan(pw / ph) - torch.atan(gw / gh)) ** 2
        value = iou - (rho2 / (cw**2 + ch**2 + E) + v * v / (1 - iou + v + E))
    assert float((got.double() - value.clamp(min=0)).abs().max()) < 2e-5


@pytest.mark.parametrize("min_side", [None, 16.0, 3.0])
def test_inside_follows_the_written_test(min_side):
    g = generator(4)
    boxes = random_boxes(g, 12, scale=48)[None]  # [1, 12, 4], some degenerate
    boxes[0, 0] = torch.tensor([8.0, 8.0, 24.0, 24.0])  # corners on grid points: not inside (> eps)
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    points = torch.stack([xs.flatten() * 4, ys.flatten() * 4], dim=-1)  # integer grid, step 4
    for eps in (1e-9, 0.0, 2.0):
        got = R.inside_mask(points, boxes, None, min_side, eps)
        e = f32(eps)
        for j, box in enumerate(boxes[0].tolist()):
            x1, y1, x2, y2 = box
            if min_side is not None:
                m = f32(min_side)
                cx, cy = f32(f32(x1 + x2) / 2), f32(f32(y1 + y2) / 2)
                w, h = f32(x2 - x1), f32(y2 - y1)
                hw, hh = f32((m if w < m else w) / 2), f32((m if h < m else h) / 2)
                x1, y1, x2, y2 = f32(cx - hw), f32(cy - hh), f32(cx + hw), f32(cy + hh)
            for a, (px, py) in enumerate(points.tolist()):
                inside = f32(px - x1) > e and f32(py - y1) > e and f32(x2 - px) > e and f32(y2 - py) > e
                assert bool(got[0, j, a]) == inside, (j, a, eps)
    assert not bool(R.inside_mask(points, boxes, torch.tensor([0]), min_side, 1e-9).any())  # padding


# --------------------------------------------------------------------------- steps 3 to 5, worked by hand


def dense(rows):
    """``[1, G, A]`` tensors from per-GT rows of (inside, overlap, metric) triples (None: not inside)."""
    inside = torch.tensor([[[c is not None for c in row] for row in rows]])
    overlap = torch.tensor([[[c[0] if c else 0.0 for c in row] for row in rows]], dtype=torch.float32)
    metric = torch.tensor([[[c[1] if c else 0.0 for c in row] for row in rows]], dtype=torch.float32)
    return inside, overlap, metric


def test_topk_ties_and_zero_metrics():
    """Step 3: top-k among inside anchors, equal metrics in anchor order, zero metrics picked too."""
    inside, overlap, metric = dense(
        [
            # a0          a1          a2          a3          a4          a5
            [(0.9, 0.5), (0.8, 0.7), (0.7, 0.5), None, (0.6, 0.5), (0.5, 0.1)],  # GT 0
            [None, None, None, (0.0, 0.0), None, (0.0, 0.0)],  # GT 1: two zero-metric inside anchors
        ]
    )
    sel = R.select_and_resolve(inside, overlap, metric, topk=3, topk2=None, eps=1e-9)
    # GT 0: a1 (0.7), then the tie at 0.5 in anchor order a0, a2 (a4 left out); GT 1: a3 and a5 (metric 0).
    assert sel.picks[0, 0].tolist() == [True, True, True, False, False, False]
    assert sel.picks[0, 1].tolist() == [False, False, False, True, False, True]
    assert sel.result.gt_index[0].tolist() == [0, 0, 0, 1, -1, 1]
    assert sel.result.num_positive[0].tolist() == [3, 2]
    # Step 5, GT 0: M = 0.7, O = 0.9; a0: (0.5 * 0.9) / (0.7 + eps), each rounded to float32.
    eps = f32(1e-9)
    score = f32(f32(f32(0.5) * f32(0.9)) / f32(f32(0.7) + eps))
    assert sel.result.target_score[0, 0].item() == score
    assert sel.result.target_score[0, 1].item() == f32(f32(f32(0.7) * f32(0.9)) / f32(f32(0.7) + eps))
    # GT 1: M = 0, O = 0: target 0 / eps = 0.
    assert sel.result.target_score[0, 3].item() == 0.0 and sel.result.overlap[0, 3].item() == 0.0
    assert sel.result.overlap[0].tolist()[:3] == [f32(0.9), f32(0.8), f32(0.7)]


def test_shared_anchor_goes_to_the_highest_overlap_of_every_gt_it_is_inside():
    """Step 4: a0 is picked by GT 0 and GT 1 but goes to GT 2, which holds it with a higher overlap
    without picking it; a1, picked by GT 0 and GT 1 at equal overlaps, goes to GT 0."""
    inside, overlap, metric = dense(
        [
            [(0.3, 0.9), (0.5, 0.8), None, None],  # GT 0 (topk 2): a0, a1
            [(0.4, 0.9), (0.5, 0.8), None, None],  # GT 1: a0, a1
            [(0.6, 0.1), None, (0.9, 0.9), (0.9, 0.8)],  # GT 2: a2, a3 (a0's metric is lower)
        ]
    )
    sel = R.select_and_resolve(inside, overlap, metric, topk=2, topk2=None, eps=1e-9)
    assert sel.result.gt_index[0].tolist() == [2, 0, 2, 2]
    assert sel.result.num_positive[0].tolist() == [1, 0, 3]
    # GT 2 owns a0 with its own metric (0.1) and overlap (0.6): M = 0.9, O = 0.9.
    assert sel.result.overlap[0, 0].item() == f32(0.6)
    assert sel.result.target_score[0, 0].item() == f32(f32(f32(0.1) * f32(0.9)) / f32(f32(0.9) + f32(1e-9)))


def test_topk2_keeps_the_highest_metrics_of_own_anchors():
    """Step 4b: GT 2 of the case above owns a0, a2, a3; topk2 = 2 keeps a2 (0.9) and a3 (0.8)."""
    inside, overlap, metric = dense(
        [
            [(0.3, 0.9), (0.5, 0.8), None, None],
            [(0.4, 0.9), (0.5, 0.8), None, None],
            [(0.6, 0.1), None, (0.9, 0.8), (0.9, 0.8)],
        ]
    )
    sel = R.select_and_resolve(inside, overlap, metric, topk=2, topk2=1, eps=1e-9)
    # GT 0 keeps a1; GT 2 keeps one of a2, a3 (equal metrics): a2, the lower index.
    assert sel.result.gt_index[0].tolist() == [-1, 0, 2, -1]
    assert sel.result.num_positive[0].tolist() == [1, 0, 1]


def test_end_to_end_on_a_grid():
    """4 x 4 points at (4 + 8i, 4 + 8j); every predicted box is GT 0's box (overlap 1 where inside)."""
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    points = torch.stack([xs.flatten() * 8 + 4, ys.flatten() * 8 + 4], dim=-1)  # a = 4 * row + column
    gt = torch.tensor([[[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 16.0, 16.0], [10.0, 10.0, 11.0, 11.0]]])
    labels = torch.tensor([[0, 1, 0]])
    scores = torch.zeros(1, 16, 2)
    scores[0, [0, 1, 4, 5], 0] = torch.tensor([0.64, 0.25, 0.64, 0.09])
    scores[0, [0, 1, 4, 5], 1] = torch.tensor([0.04, 0.81, 0.01, 0.36])
    pred = gt[:, :1].expand(1, 16, 4).contiguous()
    r = R.tal_assign(scores, pred, points, gt, labels, topk=2)
    # GT 0 (class 0, inside a0 a1 a4 a5, overlap 1): metrics sqrt(s) = 0.8 0.5 0.8 0.3 -> a0, a4 (tie, index).
    # GT 1 (same box, class 1): 0.2 0.9 0.1 0.6 -> a1, a5. GT 2 holds no point: nothing.
    assert r.gt_index[0].tolist() == [0, 1, -1, -1, 0, 1] + [-1] * 10
    assert r.num_positive[0].tolist() == [2, 2, 0]
    assert r.overlap[0, [0, 1, 4, 5]].tolist() == [1.0, 1.0, 1.0, 1.0]
    # Target scores: metric * 1 / (M + eps): 1 for the best of each GT, 0.6 / 0.9 for a5.
    assert r.target_score[0, [0, 4, 1]].tolist() == [1.0, 1.0, 1.0]
    assert r.target_score[0, 5].item() == f32(f32(0.6) / f32(f32(0.9) + f32(1e-9)))
    # min_side 16 widens GT 2 to [2.5, 2.5, 18.5, 18.5]: it holds a0 a1 a4 a5 too. Its CIoU with the
    # predicted box is negative (centres 5 * sqrt(2) apart in a 16 x 16 box), so its overlaps and metrics
    # are 0 and it picks a0, a1 (index order). a1, picked by GT 1 and GT 2, goes to the highest overlap
    # among every GT it is inside: GT 0 and GT 1 (1.0, equal: the lower index), so to GT 0, which did
    # not pick it.
    assert R.inside_mask(points, gt, None, 16.0, 1e-9)[0, 2].nonzero().flatten().tolist() == [0, 1, 4, 5]
    widened = R.tal_assign(scores, pred, points, gt, labels, topk=2, min_side=16.0)
    assert widened.gt_index[0].tolist() == [0, 0, -1, -1, 0, 1] + [-1] * 10
    assert widened.num_positive[0].tolist() == [3, 1, 0]
    # Duplicate GTs with the same class: shared picks go to the lower index.
    same = R.tal_assign(scores, pred, points, gt, torch.tensor([[0, 0, 0]]), topk=2)
    assert same.num_positive[0].tolist() == [2, 0, 0]


# --------------------------------------------------------------------------- errors


def small_call() -> dict:
    g = generator(5)
    return dict(
        pred_scores=torch.rand(2, 6, 3, generator=g),
        pred_boxes=torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(2, 6, 1),
        anchor_points=torch.rand(6, 2, generator=g) * 8,
        gt_boxes=torch.tensor([[[0.0, 0.0, 8.0, 8.0], [1.0, 1.0, 4.0, 4.0]]]).repeat(2, 1, 1),
        gt_labels=torch.tensor([[0, 2], [1, 1]]),
        gt_counts=None,
    )


def _set(key, value):
    def change(c):
        c = dict(c)
        c[key] = value(c) if callable(value) else value
        return c

    return change


def _poke(key, index, value):
    def change(c):
        c = dict(c)
        c[key] = c[key].clone()
        c[key][index] = value
        return c

    return change


BAD = {
    "scores_2d": (
        _set("pred_scores", lambda c: c["pred_scores"][0]),
        {},
        r"pred_scores must have shape \[B, A, C\], got shape \[6, 3\]",
    ),
    "scores_int": (
        _set("pred_scores", lambda c: (c["pred_scores"] * 10).int()),
        {},
        r"pred_scores must be float32, got torch.int32",
    ),
    "boxes_shape": (
        _set("pred_boxes", lambda c: c["pred_boxes"][:, :5]),
        {},
        r"pred_boxes must have shape \[B, A, 4\] = \[2, 6, 4\], got shape \[2, 5, 4\]",
    ),
    "points_shape": (
        _set("anchor_points", lambda c: c["anchor_points"][:, :1]),
        {},
        r"anchor_points must have shape \[A, 2\] = \[6, 2\], got shape \[6, 1\]",
    ),
    "gt_batch": (
        _set("gt_boxes", lambda c: c["gt_boxes"][:1]),
        {},
        r"gt_boxes must have shape \[B, G, 4\] with B = 2, got shape \[1, 2, 4\]",
    ),
    "labels_shape": (
        _set("gt_labels", lambda c: c["gt_labels"][:, :1]),
        {},
        r"gt_labels must have shape \[B, G\] = \[2, 2\], got shape \[2, 1\]",
    ),
    "labels_range": (_poke("gt_labels", (1, 0), 3), {}, r"gt_labels\[1, 0\] = 3 is out of range \[0, C = 3\)"),
    "labels_negative": (_poke("gt_labels", (0, 1), -1), {}, r"gt_labels\[0, 1\] = -1 is out of range \[0, C = 3\)"),
    "pred_misordered": (
        _poke("pred_boxes", (1, 4, 2), -1.0),
        {},
        r"pred_boxes\[1, 4\] = \[0, 0, -1, 8\] has x2 < x1 or y2 < y1",
    ),
    "pred_nan": (
        _poke("pred_boxes", (0, 2, 1), float("nan")),
        {},
        r"pred_boxes\[0, 2\] = \[0, nan, 8, 8\] is not finite",
    ),
    "points_inf": (_poke("anchor_points", (3, 0), float("inf")), {}, r"anchor_points\[3\] = \[inf, .*\] is not finite"),
    "gt_misordered": (
        _poke("gt_boxes", (0, 1, 0), 5.0),
        {},
        r"gt_boxes\[0, 1\] = \[5, 1, 4, 4\] has x2 < x1 or y2 < y1",
    ),
    "counts_range": (_set("gt_counts", torch.tensor([3, 0])), {}, r"gt_counts\[0\] = 3 is out of range \[0, G = 2\]"),
    "topk": ((lambda c: c), {"topk": 0}, r"topk must be >= 1, got 0"),
    "topk2": ((lambda c: c), {"topk2": 0}, r"topk2 must be >= 1 \(or None: no second filter\), got 0"),
    "alpha": ((lambda c: c), {"alpha": 0.7}, r"alpha must be a multiple of 0.5 in \[0, 1024\] .*, got 0.7"),
    "beta_negative": ((lambda c: c), {"beta": -2.0}, r"beta must be a multiple of 0.5 in \[0, 1024\] .*, got -2"),
    "beta_huge": ((lambda c: c), {"beta": 2048.0}, r"beta must be a multiple of 0.5 in \[0, 1024\] .*, got 2048"),
    "min_side": ((lambda c: c), {"min_side": 0.0}, r"min_side must be finite and > 0 \(or None: no widening\), got 0"),
    "eps": ((lambda c: c), {"eps": -1e-9}, r"eps must be finite and >= 0, got -1e-09"),
}

# The reference takes the op's arguments (ciou instead of overlap).
OPTION_ORDER = ("topk", "alpha", "beta", "ciou", "min_side", "topk2", "eps")
OP_DEFAULTS = dict(topk=10, alpha=0.5, beta=6.0, ciou=True, min_side=None, topk2=None, eps=1e-9)


def op_call_args(case: dict, options: dict) -> tuple:
    names = ("pred_scores", "pred_boxes", "anchor_points", "gt_boxes", "gt_labels", "gt_counts")
    opts = dict(OP_DEFAULTS, **options)
    return tuple(case[n] for n in names) + tuple(opts[n] for n in OPTION_ORDER)


@pytest.mark.parametrize("name", list(BAD))
@pytest.mark.parametrize("path", ["reference", "api"])
def test_bad_input_names_the_argument_and_value(name, path):
    change, options, message = BAD[name]
    case = change(small_call())
    with pytest.raises(ValueError, match=message):
        if path == "reference":
            R.tal_assign(*op_call_args(case, options))
        else:
            atss_ops.tal_assign(**case, **options)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"overlap": "giou"}, r"overlap must be 'ciou' or 'iou', got 'giou'"),
        ({"alpha": "1"}, r"alpha must be a number, got str '1'"),
        ({"min_side": True}, r"min_side must be a number or None, got bool True"),
        ({"topk2": 1.5}, r"topk2 must be an int or None, got float 1.5"),
        ({"topk": 2.0}, r"topk must be an int, got float 2.0"),
    ],
)
def test_bad_option_types(kwargs, message):
    with pytest.raises(ValueError, match=message):
        atss_ops.tal_assign(**small_call(), **kwargs)


def test_list_inputs_equal_padded_and_are_checked():
    c = small_call()
    boxes = [c["gt_boxes"][0], c["gt_boxes"][1, :1]]
    labels = [c["gt_labels"][0], c["gt_labels"][1, :1]]
    from_list = atss_ops.tal_assign(c["pred_scores"], c["pred_boxes"], c["anchor_points"], boxes, labels, topk=2)
    padded = atss_ops.tal_assign(
        c["pred_scores"],
        c["pred_boxes"],
        c["anchor_points"],
        c["gt_boxes"],
        c["gt_labels"],
        torch.tensor([2, 1]),
        topk=2,
    )
    assert_bits_equal(from_list, padded, "list vs padded")
    with pytest.raises(
        ValueError, match=r"gt_labels\[1\] must be a Tensor\[G_i\] with G_i = 1 \(as gt_boxes\[1\]\), got \[2\]"
    ):
        atss_ops.tal_assign(c["pred_scores"], c["pred_boxes"], c["anchor_points"], boxes, [labels[0], labels[0]])
    with pytest.raises(ValueError, match=r"gt_labels must be a list of Tensor\[G_i\] when gt_boxes is a list"):
        atss_ops.tal_assign(c["pred_scores"], c["pred_boxes"], c["anchor_points"], boxes, c["gt_labels"])


def test_scores_are_clamped_not_checked():
    """NaN and negative scores count as 0, scores above 1 as 1 (the contract's clamp01)."""
    c = small_call()
    odd = c["pred_scores"].clone()
    odd[0, :2] = float("nan")
    odd[1, :2] = -3.0
    odd[0, 3:] = 7.0
    clamped = torch.nan_to_num(odd, nan=0.0).clamp(0, 1)
    args = lambda s: op_call_args(dict(c, pred_scores=s), {"topk": 3})  # noqa: E731
    assert_bits_equal(R.tal_assign(*args(odd)), R.tal_assign(*args(clamped)), "clamped scores")


@pytest.mark.parametrize("shape", [(0, 6, 3, 2), (2, 0, 3, 2), (2, 6, 3, 0), (2, 6, 0, 0)])
def test_empty_shapes_are_background(shape):
    B, A, C, G = shape
    r = atss_ops.tal_assign(
        torch.rand(B, A, C),
        torch.zeros(B, A, 4),
        torch.zeros(A, 2),
        torch.zeros(B, G, 4),
        torch.zeros(B, G, dtype=torch.int64),
    )
    assert r.gt_index.shape == (B, A) and bool((r.gt_index == -1).all())
    assert r.num_positive.shape == (B, G) and bool((r.num_positive == 0).all())
    assert r.target_score.shape == (B, A) and r.overlap.shape == (B, A)


def test_tal_targets_conventions_and_out_buffer():
    """Ultralytics' five outputs: background has GT 0's label and box and index 0; target scores at the
    label of positives; ``out`` gives the same bits without a new [B, A, C] tensor; G = 0."""
    c = small_call()
    r = atss_ops.tal_assign(**c, topk=2)
    labels, boxes, scores, fg, idx = atss_ops.tal_targets(r, c["gt_boxes"], c["gt_labels"], 3)
    assert torch.equal(fg, r.gt_index >= 0) and bool(fg.any()) and bool((~fg).any())
    assert torch.equal(idx, r.gt_index.clamp(min=0))
    assert torch.equal(labels, c["gt_labels"].gather(1, idx))
    assert torch.equal(boxes, c["gt_boxes"].gather(1, idx[..., None].expand(-1, -1, 4)))
    expected = torch.zeros(2, 6, 3)
    for b, a in fg.nonzero().tolist():
        expected[b, a, labels[b, a]] = r.target_score[b, a]
    assert_bits_equal(scores, expected, "target_scores")
    buffer = torch.full((2, 6, 3), 7.0)
    again = atss_ops.tal_targets(r, c["gt_boxes"], c["gt_labels"][..., None], 3, out=buffer)  # [B, G, 1] labels too
    assert again.target_scores is buffer
    assert_bits_equal(again.target_scores, scores, "out=")
    with pytest.raises(ValueError, match=r"out must be a float32 Tensor\[B, A, C\] = \[2, 6, 3\], got \[2, 6, 4\]"):
        atss_ops.tal_targets(r, c["gt_boxes"], c["gt_labels"], 3, out=torch.zeros(2, 6, 4))
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 1, got 0"):
        atss_ops.tal_targets(r, c["gt_boxes"], c["gt_labels"], 0)
    empty = atss_ops.tal_assign(**dict(c, gt_boxes=c["gt_boxes"][:, :0], gt_labels=c["gt_labels"][:, :0]))
    out = atss_ops.tal_targets(empty, c["gt_boxes"][:, :0], c["gt_labels"][:, :0], 3)
    assert bool((out.target_labels == 3).all()) and not bool(out.fg_mask.any()) and not bool(out.target_scores.any())
