"""Small examples of the contract worked out by hand; the reference and the kernels must give exactly those numbers.

Anchors used below (x1, y1, x2, y2 -> centre):

    level 0 (2x2 boxes)            level 1 (4x4 boxes)
    a0 [0, 0, 2, 2] -> (1, 1)      a4 [0, 0, 4, 4] -> (2, 2)
    a1 [2, 0, 4, 2] -> (3, 1)      a5 [4, 0, 8, 4] -> (6, 2)
    a2 [0, 2, 2, 4] -> (1, 3)
    a3 [2, 2, 4, 4] -> (3, 3)

IoUs are exact fractions; the implementations see them rounded to float32
(``f32``), and the threshold is computed from those float32 values in float64,
one candidate at a time (``contract_threshold`` spells out contract step 5).
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction as F
from typing import Sequence

import pytest
import torch
from backends import emu_available
from bits import assert_bits_equal

from atss_ops import reference

NAN = float("nan")
ANCHORS = torch.tensor(
    [[0, 0, 2, 2], [2, 0, 4, 2], [0, 2, 2, 4], [2, 2, 4, 4], [0, 0, 4, 4], [4, 0, 8, 4]], dtype=torch.float32
)
LEVELS = [4, 2]


def f32(x) -> float:
    """``x`` rounded to the nearest float32 (returned as a Python float)."""
    return struct.unpack("f", struct.pack("f", float(x)))[0]


def contract_threshold(ious: Sequence[F]) -> float:
    """Step 5 by hand: float64 mean + std of the float32 candidate IoUs, summed in order."""
    values = [f32(v) for v in ious]
    total = 0.0
    for v in values:
        total = total + v
    mean = total / len(values)
    squares = 0.0
    for v in values:
        d = v - mean
        squares = squares + d * d
    std = math.sqrt(squares / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean + std


def run_all(inputs: dict, impl) -> dict:
    """Every stage of ``impl`` (``atss_ops.reference`` or ``torch.ops.atss_ops``) on ``inputs``."""
    i = inputs
    d = impl.center_distance(i["anchors"], i["gt_boxes"], i["gt_counts"])
    ignore, ensure = i.get("anchor_ignore"), i.get("ensure_positive", False)
    cand = impl.topk_per_level(d, i["levels"], i["topk"], i["gt_counts"], i["anchor_valid"], ignore)
    cand_iou, thr, pos = impl.iou_statistics(i["anchors"], i["gt_boxes"], cand, i["gt_counts"], i["center_eps"])
    gt_index, iou, num_pos = impl.resolve_multi_gt(cand, cand_iou, pos, i["anchors"].shape[0], ignore, ensure)
    fused = impl.atss_assign(
        i["anchors"],
        i["levels"],
        i["gt_boxes"],
        i["gt_counts"],
        i["topk"],
        i["anchor_valid"],
        i["center_eps"],
        ignore,
        ensure,
    )
    return dict(
        distances=d,
        candidates=cand,
        candidate_iou=cand_iou,
        threshold=thr,
        is_positive=pos,
        gt_index=gt_index,
        iou=iou,
        num_positive=num_pos,
        fused=tuple(fused),
    )


def expected_tensors(e: dict) -> dict:
    """The hand-computed values as the tensors the ops return."""
    out = dict(
        distances=torch.tensor(e["distances"], dtype=torch.float32),
        candidates=torch.tensor(e["candidates"], dtype=torch.int64),
        candidate_iou=torch.tensor([[[f32(v) for v in row] for row in img] for img in e["candidate_iou"]]),
        threshold=torch.tensor([[f32(v) for v in img] for img in e["threshold"]], dtype=torch.float32),
        is_positive=torch.tensor(e["is_positive"], dtype=torch.bool),
        gt_index=torch.tensor(e["gt_index"], dtype=torch.int64),
        iou=torch.tensor([[f32(v) for v in img] for img in e["iou"]], dtype=torch.float32),
        num_positive=torch.tensor(e["num_positive"], dtype=torch.int64),
    )
    out["fused"] = (out["gt_index"], out["iou"], out["threshold"], out["num_positive"])
    return out


def check(inputs: dict, expected: dict) -> None:
    want = expected_tensors(expected)
    impls = [("reference", reference), ("kernel", torch.ops.atss_ops)]
    if emu_available():  # the CUDA kernels' sources, run on the host (make emu)
        impls.append(("emulated CUDA kernel", torch.ops.atss_ops_emu))
    for impl_name, impl in impls:
        got = run_all(inputs, impl)
        for key, value in want.items():
            assert_bits_equal(got[key], value, f"{impl_name} {key}")


def example(
    gt_boxes,
    topk,
    gt_counts=None,
    anchor_valid=None,
    anchors=ANCHORS,
    levels=LEVELS,
    center_eps=0.01,
    anchor_ignore=None,
    ensure_positive=False,
):
    return dict(
        anchor_ignore=None if anchor_ignore is None else torch.tensor(anchor_ignore),
        ensure_positive=ensure_positive,
        anchors=anchors,
        levels=levels,
        gt_boxes=torch.tensor(gt_boxes, dtype=torch.float32),
        topk=topk,
        gt_counts=None if gt_counts is None else torch.tensor(gt_counts),
        center_eps=center_eps,
        anchor_valid=None if anchor_valid is None else torch.tensor(anchor_valid),
    )


def test_two_gts_distance_ties_and_multi_gt_by_iou():
    """Two GTs share their positive anchor a4: it goes to the GT with the higher IoU (GT1).

    GT0 = [1, 1, 3, 3], centre (2, 2), area 4.
      d2 to a0..a5: (1+1, 1+1, 1+1, 1+1, 0, 16+0) = (2, 2, 2, 2, 0, 16).
      Level 0: four-way tie at 2 -> the lower indices a0, a1. Level 1: a4 (0), a5 (16).
      IoU a0: inter [1,1,2,2] = 1, union 4+4-1 = 7 -> 1/7;  a1: 1/7 likewise;
          a4 contains GT0: 4/16 = 1/4;  a5: iw = min(8,3) - max(4,1) = -1 -> 0.
      mean = (1/7+1/7+1/4+0)/4 = 15/112; deviations 1/112, 1/112, 13/112, -15/112;
      var = (1+1+169+225)/112^2/3 = 33/3136; thr = 15/112 + sqrt(33)/56 ~ 0.23652.
      Positive: a4 only (1/4 >= thr, centre (2,2) inside GT0 by 1 > 0.01).
    GT1 = [0, 0, 4, 5], centre (2, 2.5), area 20.
      d2: (1+2.25, 1+2.25, 1+0.25, 1+0.25, 0+0.25, 16+0.25) = (3.25, 3.25, 1.25, 1.25, 0.25, 16.25).
      Level 0: a2, a3 (tie at 1.25, index order). Level 1: a4, a5.
      IoU a2, a3: inside GT1, 4/20 = 1/5; a4: 16/20 = 4/5; a5: iw = min(8,4) - max(4,0) = 0 -> 0.
      mean = (6/5)/4 = 3/10; deviations -1/10, -1/10, 5/10, -3/10; var = 36/100/3 = 3/25;
      thr = 3/10 + sqrt(3/25) ~ 0.64641. Positive: a4 (4/5).
    a4 is positive for GT0 (IoU 1/4) and GT1 (IoU 4/5): GT1 wins. num_positive = (0, 1).
    """
    gt0 = [F(1, 7), F(1, 7), F(1, 4), F(0)]
    gt1 = [F(1, 5), F(1, 5), F(4, 5), F(0)]
    thr0, thr1 = contract_threshold(gt0), contract_threshold(gt1)
    assert abs(thr0 - (15 / 112 + math.sqrt(33) / 56)) < 1e-7
    assert abs(thr1 - (3 / 10 + math.sqrt(3 / 25))) < 1e-7
    check(
        example([[[1, 1, 3, 3], [0, 0, 4, 5]]], topk=2),
        dict(
            distances=[[[2, 2, 2, 2, 0, 16], [3.25, 3.25, 1.25, 1.25, 0.25, 16.25]]],
            candidates=[[[0, 1, 4, 5], [2, 3, 4, 5]]],
            candidate_iou=[[gt0, gt1]],
            threshold=[[thr0, thr1]],
            is_positive=[[[False, False, True, False], [False, False, True, False]]],
            gt_index=[[-1, -1, -1, -1, 1, -1]],
            iou=[[0, 0, 0, 0, F(4, 5), 0]],
            num_positive=[[0, 1]],
        ),
    )


def test_equal_iou_goes_to_lower_gt_index():
    """Two mirror-image GTs claim a1 with the same IoU 2/3: the lower GT index (0) gets it.

    One level: a0 [0,0,2,2] (1,1), a1 [2,0,4,2] (3,1), a2 [4,0,6,2] (5,1); topk = 3.
    GT0 = [1, 0, 4, 2], centre (2.5, 1), area 6.
      d2 = (2.25, 0.25, 6.25) -> order a1, a0, a2.
      IoU a1: inter [2,0,4,2] = 4, union 4+6-4 = 6 -> 2/3; a0: inter [1,0,2,2] = 2, union 8 -> 1/4;
          a2: iw = min(6,4) - max(4,1) = 0 -> 0.
    GT1 = [2, 0, 5, 2], centre (3.5, 1): d2 = (6.25, 0.25, 2.25) -> a1, a2, a0 with the
      same IoUs (2/3, 1/4, 0) in the same order, hence the same threshold bits.
    mean = (2/3 + 1/4)/3 = 11/36; deviations 13/36, -2/36, -11/36; var = 294/1296/2;
    thr = 11/36 + 7*sqrt(3)/36 ~ 0.64234. Positive for both: a1 (2/3; centre (3,1) inside both).
    """
    anchors = torch.tensor([[0, 0, 2, 2], [2, 0, 4, 2], [4, 0, 6, 2]], dtype=torch.float32)
    ious = [F(2, 3), F(1, 4), F(0)]
    thr = contract_threshold(ious)
    assert abs(thr - (11 + 7 * math.sqrt(3)) / 36) < 1e-7
    check(
        example([[[1, 0, 4, 2], [2, 0, 5, 2]]], topk=3, anchors=anchors, levels=[3]),
        dict(
            distances=[[[2.25, 0.25, 6.25], [6.25, 0.25, 2.25]]],
            candidates=[[[1, 0, 2], [1, 2, 0]]],
            candidate_iou=[[ious, ious]],
            threshold=[[thr, thr]],
            is_positive=[[[True, False, False], [True, False, False]]],
            gt_index=[[-1, 0, -1]],
            iou=[[0, F(2, 3), 0]],
            num_positive=[[1, 0]],
        ),
    )


def test_invalid_anchors_short_level_and_padding():
    """anchor_valid removes a0 and a5; a level with fewer valid anchors than topk leaves a -1 slot;
    a NaN padding row (gt_counts = 1) gets NaN distances, -1 candidates, NaN threshold, 0 positives.

    GT0 = [1, 1, 3, 3], topk = 3, C = min(3, 4) + min(3, 2) = 5 slots.
      Level 0: valid a1, a2, a3, all at d2 = 2 -> a1, a2, a3. Level 1: only a4 valid -> a4, -1.
      IoU a1, a2, a3: inter 1, union 7 -> 1/7 each; a4: 1/4; the -1 slot: 0 and not counted (4 candidates).
      mean = (3/7 + 1/4)/4 = 19/112; deviations -3/112 (x3), 9/112; var = 108/112^2/3;
      std = 6/112; thr = 25/112 ~ 0.22321. Positive: a4 (1/4 >= 25/112).
    """
    ious = [F(1, 7), F(1, 7), F(1, 7), F(1, 4)]
    thr = contract_threshold(ious)
    assert abs(thr - 25 / 112) < 1e-7
    check(
        example(
            [[[1, 1, 3, 3], [NAN, NAN, NAN, NAN]]],
            topk=3,
            gt_counts=[1],
            anchor_valid=[[False, True, True, True, True, False]],
        ),
        dict(
            distances=[[[2, 2, 2, 2, 0, 16], [NAN] * 6]],
            candidates=[[[1, 2, 3, 4, -1], [-1] * 5]],
            candidate_iou=[[ious + [F(0)], [F(0)] * 5]],
            threshold=[[thr, NAN]],
            is_positive=[[[False, False, False, True, False], [False] * 5]],
            gt_index=[[-1, -1, -1, -1, 0, -1]],
            iou=[[0, 0, 0, 0, F(1, 4), 0]],
            num_positive=[[1, 0]],
        ),
    )


@pytest.mark.parametrize("center_eps, positive", [(0.25, True), (0.5, False), (None, True)])
def test_single_candidate_std_zero_and_centre_margin(center_eps, positive):
    """C == 1 (one level, topk = 1): std = 0, so thr is the candidate's own IoU and the centre test decides;
    the margin must be strictly greater than center_eps (None: no centre test).

    Anchors a4, a5 as one level; GT = [1.5, 0, 6, 4], centre (3.75, 2), area 4.5 * 4 = 18.
      d2: a4 (2, 2) -> 1.75^2 = 3.0625; a5 (6, 2) -> 2.25^2 = 5.0625. Candidate: a4.
      IoU a4: inter [1.5, 0, 4, 4] = 2.5 * 4 = 10, union 16 + 18 - 10 = 24 -> 5/12 = thr.
      Centre margins of a4: (2 - 1.5, 2 - 0, 6 - 2, 4 - 2) = (0.5, 2, 4, 2): min 0.5 > center_eps?
    """
    iou = F(5, 12)
    check(
        example([[[1.5, 0, 6, 4]]], topk=1, anchors=ANCHORS[4:], levels=[2], center_eps=center_eps),
        dict(
            distances=[[[3.0625, 5.0625]]],
            candidates=[[[0]]],
            candidate_iou=[[[iou]]],
            threshold=[[contract_threshold([iou])]],
            is_positive=[[[positive]]],
            gt_index=[[0 if positive else -1, -1]],
            iou=[[iou if positive else 0, 0]],
            num_positive=[[int(positive)]],
        ),
    )
    assert contract_threshold([iou]) == f32(iou)


# --------------------------------------------------------------------------- contract v2 by hand

# 3-D anchors (x1, y1, z1, x2, y2, z2 -> centre): level 0: b0 [0,0,0,2,2,2] -> (1,1,1), b1 [1,1,1,3,3,3]
# -> (2,2,2), b2 [4,4,4,6,6,6] -> (5,5,5); level 1: b3 [0,0,0,4,4,4] -> (2,2,2).
ANCHORS_3D = torch.tensor(
    [[0, 0, 0, 2, 2, 2], [1, 1, 1, 3, 3, 3], [4, 4, 4, 6, 6, 6], [0, 0, 0, 4, 4, 4]], dtype=torch.float32
)
# GT0 [0.5, 0.5, 0.5, 2.5, 2.5, 2.5]: centre (1.5, 1.5, 1.5), volume 8. GT1 [3, 3, 3, 6, 6, 6]: centre
# (4.5, 4.5, 4.5), volume 27.
GT_3D = [[[0.5, 0.5, 0.5, 2.5, 2.5, 2.5], [3, 3, 3, 6, 6, 6]]]
# d2 = (dx*dx + dy*dy) + dz*dz: GT0 -> b0, b1, b3: 3 * 0.5^2 = 0.75 (ties: lower index first), b2: 3 * 3.5^2;
# GT1 -> b2: 0.75, b1, b3: 3 * 2.5^2 = 18.75, b0: 3 * 3.5^2 = 36.75.
DIST_3D = [[[0.75, 0.75, 36.75, 0.75], [36.75, 18.75, 0.75, 18.75]]]
# IoUs, products in axis order. GT0: b0 and b1 overlap 1.5 per axis -> 27/8, union 8 + 8 - 27/8 = 101/8:
# 27/101; b3 overlaps 2 per axis -> 8, union 64 + 8 - 8: 1/8. GT1: b2 overlaps 2 per axis -> 8, union
# 27 + 8 - 8: 8/27; b1 [1, 3] touches [3, 6]: 0; b3 overlaps 1 per axis -> 1, union 64 + 27 - 1: 1/90.
IOU_B0 = IOU_B1 = F(27, 101)


def test_3d_example():
    """topk = 2 in 3-D. GT0: candidates b0, b1 (level 0, tie by index), b3 (level 1); IoUs 27/101, 27/101,
    1/8 give thr 0.302 > 27/101: no positive. GT1: candidates b2, b1, b3 with IoUs 8/27, 0, 1/90, thr 0.270;
    b2 reaches it and its centre (5, 5, 5) is inside [3, 6]^3 by 1 > 0.01: positive."""
    thr0 = contract_threshold([IOU_B0, IOU_B1, F(1, 8)])
    thr1 = contract_threshold([F(8, 27), F(0), F(1, 90)])
    assert thr0 > f32(IOU_B0) and f32(F(8, 27)) >= thr1
    check(
        example(GT_3D, topk=2, anchors=ANCHORS_3D, levels=[3, 1]),
        dict(
            distances=DIST_3D,
            candidates=[[[0, 1, 3], [2, 1, 3]]],
            candidate_iou=[[[IOU_B0, IOU_B1, F(1, 8)], [F(8, 27), 0, F(1, 90)]]],
            threshold=[[thr0, thr1]],
            is_positive=[[[False, False, False], [True, False, False]]],
            gt_index=[[-1, -1, 1, -1]],
            iou=[[0, 0, F(8, 27), 0]],
            num_positive=[[0, 1]],
        ),
    )


def test_3d_example_ensure_positive():
    """The same with step 8: GT0 is left empty and proposes its best free candidate of IoU > 0, b0 (b0 and
    b1 tie at 27/101: the earlier slot); nobody competes, so GT0 gets b0. Thresholds stay as they were."""
    thr0 = contract_threshold([IOU_B0, IOU_B1, F(1, 8)])
    thr1 = contract_threshold([F(8, 27), F(0), F(1, 90)])
    check(
        example(GT_3D, topk=2, anchors=ANCHORS_3D, levels=[3, 1], ensure_positive=True),
        dict(
            distances=DIST_3D,
            candidates=[[[0, 1, 3], [2, 1, 3]]],
            candidate_iou=[[[IOU_B0, IOU_B1, F(1, 8)], [F(8, 27), 0, F(1, 90)]]],
            threshold=[[thr0, thr1]],
            is_positive=[[[False, False, False], [True, False, False]]],
            gt_index=[[0, -1, 1, -1]],
            iou=[[IOU_B0, 0, F(8, 27), 0]],
            num_positive=[[1, 1]],
        ),
    )


def test_3d_example_ignore_no_center_test_ensure_positive():
    """b3 ignored, no centre test, step 8. Level 1 has no usable anchor, so its slot is -1 and C = 2.
    GT0: IoUs 27/101, 27/101: std 0, thr = 27/101, both positive (no centre test). GT1: IoUs 8/27 and 0:
    thr = m + m * sqrt(2) with m = 4/27, above 8/27: no positive; step 8: b1 is taken, b2 (8/27 > 0) is
    free, so GT1 proposes and gets b2. b3 comes out as -2 with IoU 0."""
    thr0 = contract_threshold([IOU_B0, IOU_B1])
    thr1 = contract_threshold([F(8, 27), F(0)])
    assert thr1 > f32(F(8, 27))
    check(
        example(
            GT_3D,
            topk=2,
            anchors=ANCHORS_3D,
            levels=[3, 1],
            center_eps=None,
            anchor_ignore=[[False, False, False, True]],
            ensure_positive=True,
        ),
        dict(
            distances=DIST_3D,
            candidates=[[[0, 1, -1], [2, 1, -1]]],
            candidate_iou=[[[IOU_B0, IOU_B1, 0], [F(8, 27), 0, 0]]],
            threshold=[[thr0, thr1]],
            is_positive=[[[True, True, False], [False, False, False]]],
            gt_index=[[0, 0, 1, -2]],
            iou=[[IOU_B0, IOU_B1, F(8, 27), 0]],
            num_positive=[[2, 1]],
        ),
    )


def test_ensure_positive_competing_proposals():
    """2-D, topk = 1, two identical GTs [1, 0, 3, 2] (centre (2, 1), area 4) with a margin of 1.5 that no
    anchor centre meets: no positive after step 7. Both propose their single candidate (a0 [0, 0, 2, 2] and
    a1 [2, 0, 4, 2] tie on d2 = 1 on level 0: a0, the lower index; a4 on level 1): the best free one of IoU > 0.
    a0: inter 1 * 2 = 2, union 4 + 4 - 2 = 6: 1/3; a4 [0, 0, 4, 4]: inter 4, union 16: 1/4. Both GTs
    propose a0 with 1/3: GT0 (lower index) takes it, GT1 stays empty (one round). A third GT [0, 0, 0, 4]
    (zero width) has only IoU-0 candidates: it proposes nothing."""
    gt = [[[1, 0, 3, 2], [1, 0, 3, 2], [0, 0, 0, 4]]]
    thr = contract_threshold([F(1, 3), F(1, 4)])
    check(
        example(gt, topk=1, center_eps=1.5, ensure_positive=True),
        dict(
            distances=[[[1, 1, 5, 5, 1, 17], [1, 1, 5, 5, 1, 17], [2, 10, 2, 10, 4, 36]]],
            candidates=[[[0, 4], [0, 4], [0, 4]]],
            candidate_iou=[[[F(1, 3), F(1, 4)], [F(1, 3), F(1, 4)], [0, 0]]],
            threshold=[[thr, thr, 0]],
            is_positive=[[[False, False], [False, False], [False, False]]],
            gt_index=[[0, -1, -1, -1, -1, -1]],
            iou=[[F(1, 3), 0, 0, 0, 0, 0]],
            num_positive=[[1, 0, 0]],
        ),
    )
