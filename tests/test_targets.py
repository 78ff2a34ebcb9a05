"""``atss_ops.assign_targets``: per-anchor labels, boxes and positive mask consistent with the assignment."""

from __future__ import annotations

import pytest
import torch
from cases import assert_bits_equal, bits_equal, make_case

import atss_ops

TARGET_CASES = ["coco_s1_b2_g7", "nan_padding", "duplicate_gts", "anchor_valid_padded_image", "gt_counts_zero"]


def _labels(case: dict, seed: int = 0) -> torch.Tensor:
    B, G = case["gt_boxes"].shape[:2]
    return torch.randint(0, 80, (B, G), generator=torch.Generator().manual_seed(seed))


def _assign(case: dict) -> atss_ops.AssignResult:
    return atss_ops.atss_assign(
        case["anchors"],
        case["num_anchors_per_level"],
        case["gt_boxes"],
        case["gt_counts"],
        topk=case["topk"],
        anchor_valid=case["anchor_valid"],
        center_eps=case["center_eps"],
    )


@pytest.mark.parametrize("background", [-1, 80])
@pytest.mark.parametrize("name", TARGET_CASES)
def test_targets_follow_assignment(name, background):
    """Positive anchors get their GT's label and box; background anchors get ``background`` and zeros."""
    case = make_case(name)
    res = _assign(case)
    labels = _labels(case)
    t = atss_ops.assign_targets(res, case["gt_boxes"], labels, background=background)
    B, A = res.gt_index.shape
    pos = res.gt_index >= 0
    assert t.labels.dtype == torch.int64 and t.labels.shape == (B, A)
    assert t.boxes.dtype == torch.float32 and t.boxes.shape == (B, A, 4)
    assert torch.equal(t.positive, pos)
    b, a = pos.nonzero(as_tuple=True)
    g = res.gt_index[b, a]
    assert torch.equal(t.labels[b, a], labels[b, g])
    assert bits_equal(t.boxes[b, a], case["gt_boxes"][b, g])
    assert (t.labels[~pos] == background).all()
    assert bits_equal(t.boxes[~pos], torch.zeros(int((~pos).sum()), 4))  # +0, never NaN from padding rows


@pytest.mark.parametrize("name", TARGET_CASES)
def test_one_hot(name):
    """``one_hot(C)``: a single 1 at the label for positives, all zeros for background."""
    case = make_case(name)
    res = _assign(case)
    labels = _labels(case)
    t = atss_ops.assign_targets(res, case["gt_boxes"], labels)
    hot = t.one_hot(80)
    assert hot.dtype == torch.float32 and hot.shape == (*res.gt_index.shape, 80)
    expected = torch.zeros_like(hot)
    b, a = t.positive.nonzero(as_tuple=True)
    expected[b, a, t.labels[b, a]] = 1.0
    assert_bits_equal(hot, expected, "one_hot")


@pytest.mark.parametrize("name", TARGET_CASES)
def test_list_inputs_equal_padded(name):
    """Lists of per-image boxes and labels give the padded inputs' targets."""
    case = make_case(name)
    B, G = case["gt_boxes"].shape[:2]
    counts = case["gt_counts"].tolist() if case["gt_counts"] is not None else [G] * B
    labels = _labels(case)
    box_list = [case["gt_boxes"][b, :n] for b, n in enumerate(counts)]
    label_list = [labels[b, :n] for b, n in enumerate(counts)]
    res = _assign(case)
    padded = atss_ops.assign_targets(res, case["gt_boxes"], labels)
    listed = atss_ops.assign_targets(res, box_list, label_list)
    assert_bits_equal(tuple(listed), tuple(padded), "list vs padded")
    # Python lists of ints as labels work as well.
    listed_ints = atss_ops.assign_targets(res, box_list, [lab.tolist() for lab in label_list])
    assert_bits_equal(tuple(listed_ints), tuple(padded), "int lists vs padded")


@pytest.mark.parametrize("background", [-1, 0])
@pytest.mark.parametrize("name", ["g0", "g0_with_counts", "b0", "gt_counts_all_zero", "a0_empty_levels"])
def test_empty_cases(name, background):
    """G == 0 (and the other empty cases): all background, zero boxes, no positive, in [B, A] shapes."""
    case = make_case(name)
    res = _assign(case)
    B, G = case["gt_boxes"].shape[:2]
    A = case["anchors"].shape[0]
    t = atss_ops.assign_targets(res, case["gt_boxes"], torch.zeros(B, G, dtype=torch.int64), background=background)
    assert bits_equal(t.labels, torch.full((B, A), background, dtype=torch.int64))
    assert bits_equal(t.boxes, torch.zeros(B, A, 4))
    assert bits_equal(t.positive, torch.zeros(B, A, dtype=torch.bool))
    assert bits_equal(t.one_hot(3), torch.zeros(B, A, 3))


def test_empty_label_lists():
    """Per-image lists where every image has no GT: G == 0 after padding."""
    case = make_case("g0")
    res = _assign(case)
    B = case["gt_boxes"].shape[0]
    t = atss_ops.assign_targets(res, [torch.zeros(0, 4)] * B, [torch.zeros(0, dtype=torch.int64)] * B)
    assert (t.labels == -1).all() and not t.positive.any() and (t.boxes == 0).all()


def test_labels_shape_checked():
    """A wrong ``gt_labels`` shape is a ValueError naming it."""
    case = make_case("coco_s1_b2_g7")
    res = _assign(case)
    with pytest.raises(ValueError, match=r"gt_labels must have shape \[B, G\] with B = 2, got shape \[3, 7\]"):
        atss_ops.assign_targets(res, case["gt_boxes"], torch.zeros(3, 7, dtype=torch.int64))
