"""``atss_ops.tal_assign`` against Ultralytics' own ``TaskAlignedAssigner`` on random YOLO-like batches.

Ultralytics is imported (never copied: AGPL-3.0) and the module is skipped without it. The comparison
splits the differences by cause, so that each is accounted for by the contract's documented ones
(docs/contract.md, "Deliberate differences from Ultralytics' TaskAlignedAssigner"):

1. The inside test (``min_side`` = Ultralytics' middle stride) is the same, bit for bit.
2. Steps 3 to 5 of the contract run on Ultralytics' own overlaps and metrics
   (``reference_tal.select_and_resolve``): every anchor whose foreground flag or GT differs is explained
   by a pick that differs only at the k-th place of some GT's order (a tie there, zero metrics
   included: Ultralytics' top-k over all anchors keeps an arbitrary subset of them), or by a shared
   anchor whose overlaps are all 0 (Ultralytics gives it to GT 0).
3. The contract's own overlaps and metrics (its ``atan_c`` and ``P``) against Ultralytics': a few ulp
   apart; the assignments they give differ only where metrics that close sit at a GT's k-th place.

``python -m pytest tests/test_tal_ultralytics.py -s`` prints the agreement numbers.
"""

from __future__ import annotations

import pytest
import torch
from cases import generator

import atss_ops
from atss_ops import reference_tal as R
from atss_ops.testing import anchor_points

# Ultralytics is imported by the fixture below, not at collection: its import replaces
# PIL.Image.open for the whole process (conftest's pil_as_found puts PIL's back after).
pytestmark = pytest.mark.usefixtures("pil_as_found")

STRIDES = (8, 16, 32)
MIN_SIDE = 16.0  # Ultralytics' stride_val: its middle stride


def batch(seed: int, B: int = 4, G: int = 20, C: int = 80, size: int = 640):
    """Predictions that overlap the GTs to various degrees (boxes around each point, random scores) and
    GTs of all sizes, some below the minimum side, with padding."""
    g = generator(seed)
    points = anchor_points(size, STRIDES)
    A = points.shape[0]
    ltrb = torch.rand(B, A, 4, generator=g) * 60 + 0.5
    pred_boxes = torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)
    pred_scores = torch.rand(B, A, C, generator=g)
    centre = torch.rand(B, G, 2, generator=g) * (size - 40) + 20
    wh = torch.rand(B, G, 2, generator=g) ** 2 * 300 + 2
    gt_boxes = torch.cat([centre - wh / 2, centre + wh / 2], dim=-1).clamp(0, size)
    gt_labels = torch.randint(0, C, (B, G), generator=g)
    counts = torch.randint(G // 2, G + 1, (B,), generator=g)
    return pred_scores, pred_boxes, points, gt_boxes, gt_labels, counts


def ultralytics_run(tal, pred_scores, pred_boxes, points, gt_boxes, gt_labels, counts, topk):
    """Ultralytics' outputs, and its inside mask, overlaps, metrics and per-GT picks ([B, G, A])."""
    B, G = gt_boxes.shape[:2]
    C = pred_scores.shape[2]
    mask_gt = (torch.arange(G)[None, :] < counts[:, None]).float()[..., None]
    labels = gt_labels.float()[..., None]
    assigner = tal.TaskAlignedAssigner(topk=topk, num_classes=C, alpha=0.5, beta=6.0, stride=list(STRIDES))
    out = assigner(pred_scores, pred_boxes, points, labels, gt_boxes, mask_gt)
    assigner.bs, assigner.n_max_boxes = B, G
    inside = assigner.select_candidates_in_gts(points, gt_boxes, mask_gt).bool() & mask_gt.bool()
    picks, metric, overlap = assigner.get_pos_mask(pred_scores, pred_boxes, labels, gt_boxes, points, mask_gt)
    gt_index = torch.where(out[3], out[4], -1)
    return dict(outputs=out, gt_index=gt_index, inside=inside, overlap=overlap, metric=metric, picks=picks.bool())


def kth_metric(metric: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """``[B, G]``: the smallest metric among each GT's picks (its k-th place); +inf without picks."""
    return torch.where(picks, metric, float("inf")).amin(dim=-1)


def explain(ours: R.Selection, theirs: dict, metric: torch.Tensor, overlap: torch.Tensor, inside: torch.Tensor):
    """Sorts the anchors whose GT differs (``ours.result.gt_index`` vs ``theirs['gt_index']``) by cause.

    ``kth_place``: some GT picks the anchor on one side only, and the anchor's metric for that GT equals
    the k-th place metric of our picks (a tie there: zero metrics are the common case).
    ``zero_overlap``: both sides' picks of the anchor agree, several GTs pick it, and its overlaps are all 0
    (Ultralytics' argmax over every GT gives GT 0; the contract the lowest GT it is inside).
    Returns ``({cause: count}, unexplained [N, 2] (b, a) indices)``."""
    differ = ours.result.gt_index != theirs["gt_index"]
    pick_diff = ours.picks != theirs["picks"]  # [B, G, A]
    at_kth = metric == kth_metric(metric, ours.picks)[..., None]
    kth_place = (pick_diff & at_kth).any(dim=1)
    other_pick_diff = (pick_diff & ~at_kth).any(dim=1)
    shared = ours.picks.sum(dim=1) > 1
    all_zero = torch.where(inside, overlap, 0.0).amax(dim=1) == 0
    zero_overlap = ~pick_diff.any(dim=1) & shared & all_zero
    explained_kth = differ & kth_place & ~other_pick_diff
    explained_zero = differ & zero_overlap
    unexplained = differ & ~explained_kth & ~explained_zero
    zero_kth = (pick_diff & at_kth & (metric == 0)).any(dim=1)
    causes = {
        "kth_place_metric_0": int((explained_kth & zero_kth).sum()),
        "kth_place_tie_above_0": int((explained_kth & ~zero_kth).sum()),
        "zero_overlap": int(explained_zero.sum()),
    }
    return causes, unexplained.nonzero()


def agreement(ours_index: torch.Tensor, theirs_index: torch.Tensor) -> dict:
    fg_o, fg_t = ours_index >= 0, theirs_index >= 0
    union = fg_o | fg_t
    return dict(
        anchors=ours_index.numel(),
        foreground_ours=int(fg_o.sum()),
        foreground_ultralytics=int(fg_t.sum()),
        same_foreground_flag=float((fg_o == fg_t).float().mean()),
        same_gt_index_among_foreground=float((ours_index == theirs_index)[union].float().mean()),
    )


SEEDS = range(4)


@pytest.fixture(scope="module")
def runs(pil_as_found):
    tal = pytest.importorskip("ultralytics.utils.tal", reason="needs ultralytics (pip install ultralytics)")
    out = []
    for seed in SEEDS:
        inputs = batch(seed)
        theirs = ultralytics_run(tal, *inputs, topk=10)
        out.append((inputs, theirs))
    return out


def test_inside_test_is_ultralytics_bit_for_bit(runs):
    for (_, _, points, gt_boxes, _, counts), theirs in runs:
        ours = R.inside_mask(points, gt_boxes, counts, MIN_SIDE, 1e-9)
        assert torch.equal(ours, theirs["inside"])


def test_steps_3_to_5_on_ultralytics_metrics_differ_only_as_documented(runs):
    """The contract's selection and resolution on Ultralytics' own metrics and overlaps."""
    total = {"kth_place_metric_0": 0, "kth_place_tie_above_0": 0, "zero_overlap": 0}
    total.update(differing=0, anchors=0, foreground_union=0)
    for _, theirs in runs:
        ours = R.select_and_resolve(theirs["inside"], theirs["overlap"], theirs["metric"], 10, None, 1e-9)
        causes, unexplained = explain(ours, theirs, theirs["metric"], theirs["overlap"], theirs["inside"])
        assert unexplained.numel() == 0, f"unexplained differences at (b, a) {unexplained[:10].tolist()}"
        for k, v in causes.items():
            total[k] += v
        total["differing"] += int((ours.result.gt_index != theirs["gt_index"]).sum())
        total["anchors"] += theirs["gt_index"].numel()
        total["foreground_union"] += int(((ours.result.gt_index >= 0) | (theirs["gt_index"] >= 0)).sum())
        # Where both assign an anchor to the same GT, the target score is Ultralytics' (same metrics, same order
        # of operations: metric * O / (M + eps)) whenever the GT's own anchors agree too.
        same = (ours.result.gt_index == theirs["gt_index"]) & (ours.result.gt_index >= 0)
        their_score = theirs["outputs"][2].amax(dim=-1)
        close = (ours.result.target_score - their_score).abs() <= 1e-6
        assert bool(close[same].float().mean() > 0.99)
    print(f"\nsteps 3-5 on Ultralytics' metrics: {total}")
    assert total["differing"] == total["kth_place_metric_0"] + total["kth_place_tie_above_0"] + total["zero_overlap"]


def test_contract_metrics_are_ulps_from_ultralytics(runs):
    """Our overlaps and metrics (the contract's atan_c and P) on the pairs both call inside."""
    for (scores, boxes, _, gt_boxes, gt_labels, _), theirs in runs:
        inside = theirs["inside"]
        overlap, metric = R.box_metrics(scores, boxes, gt_boxes, gt_labels, inside, 0.5, 6.0, True)
        for name, ours_v, theirs_v in (("overlap", overlap, theirs["overlap"]), ("metric", metric, theirs["metric"])):
            o, t = ours_v[inside], theirs_v[inside]
            identical = float((o == t).float().mean())
            worst = float((o.double() - t.double()).abs().max())
            print(f"\n{name}: {identical:.4f} bit-identical, max absolute difference {worst:.2e}")
            # Absolute: a CIoU near 0 is a difference of nearly equal terms, so its relative error is large.
            assert identical > 0.5 and worst < 1e-6


def test_full_contract_agreement_with_ultralytics(runs):
    """End to end: our tal_assign against Ultralytics' assigner. Differences beyond those of the previous
    test come from metrics a few ulp apart at a GT's k-th place (the contract's own atan and powers)."""
    rows = []
    for (scores, boxes, points, gt_boxes, gt_labels, counts), theirs in runs:
        full = atss_ops.tal_assign(scores, boxes, points, gt_boxes, gt_labels, counts, min_side=MIN_SIDE)
        on_theirs = R.select_and_resolve(theirs["inside"], theirs["overlap"], theirs["metric"], 10, None, 1e-9)
        rows.append(agreement(full.gt_index, theirs["gt_index"]))
        rows[-1]["differing_from_metric_rounding"] = int((full.gt_index != on_theirs.result.gt_index).sum())
        # Where the two selections (ours on our metrics, ours on theirs) differ, the metrics involved are near-ties.
        overlap, metric = R.box_metrics(scores, boxes, gt_boxes, gt_labels, theirs["inside"], 0.5, 6.0, True)
        ours = R.select_and_resolve(theirs["inside"], overlap, metric, 10, None, 1e-9)
        assert torch.equal(ours.result.gt_index, full.gt_index)
        pick_diff = ours.picks != on_theirs.picks
        kth = kth_metric(metric, ours.picks)[..., None]
        near = (metric - kth).abs() <= 1e-5 * kth.clamp(min=1e-30)
        assert bool((near | ~pick_diff).all()), "a pick differs away from the k-th place"
    summary = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    print(f"\ntal_assign vs Ultralytics (mean over {len(rows)} batches): {summary}")
    assert summary["same_foreground_flag"] > 0.99


def test_tal_targets_match_ultralytics_outputs_where_the_assignments_agree(runs):
    """The five outputs of tal_targets against Ultralytics' on the anchors both assign alike: labels,
    boxes and GT index (background included: GT 0's), and the class targets to 1e-6."""
    for (scores, boxes, points, gt_boxes, gt_labels, counts), theirs in runs:
        result = atss_ops.tal_assign(scores, boxes, points, gt_boxes, gt_labels, counts, min_side=MIN_SIDE)
        ours = atss_ops.tal_targets(result, gt_boxes, gt_labels, scores.shape[2])
        labels, target_boxes, target_scores, fg, idx = theirs["outputs"]
        same = result.gt_index == theirs["gt_index"]
        assert torch.equal(ours.fg_mask[same], fg[same])
        assert torch.equal(ours.target_gt_idx[same], idx[same])
        assert torch.equal(ours.target_labels[same], labels[same])
        assert torch.equal(ours.target_bboxes[same], target_boxes[same])
        assert float((ours.target_scores[same] - target_scores[same]).abs().max()) <= 1e-6
