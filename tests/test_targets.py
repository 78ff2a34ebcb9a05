"""``atss_ops.assign_targets``: per-anchor labels, boxes and positive mask consistent with the assignment."""

from __future__ import annotations

import pytest
import torch
from bits import assert_bits_equal, bits_equal
from cases import make_case

import atss_ops

TARGET_CASES = ["coco_s1_b2_g7", "nan_padding", "duplicate_gts", "anchor_valid_padded_image", "gt_counts_zero"]


def _labels(case: dict, seed: int = 0) -> torch.Tensor:
    B, G = case["gt_boxes"].shape[:2]
    return torch.randint(0, 80, (B, G), generator=torch.Generator().manual_seed(seed))


def _assign(case: dict) -> atss_ops.AssignResult:
    """atss_assign on a registered case, every argument of the case passed on."""
    return atss_ops.atss_assign(
        case["anchors"],
        case["num_anchors_per_level"],
        case["gt_boxes"],
        case["gt_counts"],
        topk=case["topk"],
        anchor_valid=case["anchor_valid"],
        anchor_ignore=case["anchor_ignore"],
        center_eps=case["center_eps"],
        ensure_positive=case["ensure_positive"],
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


# --------------------------------------------------------------------------- ignored anchors (contract v2)

IGNORE_CASES = [
    "ignore_random_with_valid",
    "ignore_every_anchor_of_an_image",
    "ignore_regions_boxes",
    "d3_random_masks",
    "d3_everything",
    "d3_g0_ignore",
]


@pytest.mark.parametrize("background, ignore_label", [(-1, -2), (80, -100)])
@pytest.mark.parametrize("name", IGNORE_CASES)
def test_ignored_anchors_are_neither_positive_nor_background(name, background, ignore_label):
    """``gt_index == -2`` becomes ``ignored``, label ``ignore_label``, weight 0, an all-zero box."""
    case = make_case(name)
    res = _assign(case)
    ignored = res.gt_index == -2
    assert ignored.any()
    t = atss_ops.assign_targets(res, case["gt_boxes"], _labels(case), background=background, ignore_label=ignore_label)
    assert torch.equal(t.ignored, ignored) and not (t.positive & t.ignored).any()
    assert (t.labels[ignored] == ignore_label).all()
    assert (t.labels[~ignored & ~t.positive] == background).all()
    assert t.weight.dtype == torch.float32 and torch.equal(t.weight, (~ignored).float())
    assert (t.boxes[ignored] == 0).all()


def _logits(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_()


@pytest.mark.parametrize("name", IGNORE_CASES)
def test_focal_loss_as_documented_leaves_ignored_anchors_out(name):
    """The README's sigmoid focal loss (``one_hot`` weighted by ``weight``) equals the loss over the
    anchors that are not ignored, and ignored anchors' logits get no gradient."""
    focal = pytest.importorskip("torchvision.ops").sigmoid_focal_loss
    case = make_case(name)
    res = _assign(case)
    t = atss_ops.assign_targets(res, case["gt_boxes"], _labels(case) % 5)
    logits = _logits((*t.labels.shape, 5), seed=1)
    per_class = focal(logits, t.one_hot(5), reduction="none")
    loss = (per_class * t.weight[..., None]).sum() / t.positive.sum().clamp(min=1)
    loss.backward()
    kept = ~t.ignored
    selected = focal(logits[kept], t.one_hot(5)[kept], reduction="sum") / t.positive.sum().clamp(min=1)
    torch.testing.assert_close(loss, selected)
    assert (logits.grad[t.ignored] == 0).all()
    assert (logits.grad[kept] != 0).any()


@pytest.mark.parametrize("name", IGNORE_CASES)
def test_cross_entropy_with_ignore_index_leaves_ignored_anchors_out(name):
    """Softmax path: background as class C, ``ignore_label`` as ``cross_entropy``'s ``ignore_index``."""
    case = make_case(name)
    res = _assign(case)
    t = atss_ops.assign_targets(res, case["gt_boxes"], _labels(case) % 5, background=5, ignore_label=-100)
    logits = _logits((*t.labels.shape, 6), seed=2)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 6), t.labels.reshape(-1), ignore_index=-100)
    loss.backward()
    assert (logits.grad[t.ignored] == 0).all()


@pytest.mark.parametrize("kwargs, match", [(dict(background=-2), "ignore_label must differ from background")])
def test_ignore_label_must_differ_from_background(kwargs, match):
    case = make_case("ignore_random_with_valid")
    with pytest.raises(ValueError, match=match):
        atss_ops.assign_targets(_assign(case), case["gt_boxes"], _labels(case), **kwargs)


# --------------------------------------------------------------------------- 3-D boxes (contract v2)

CASES_3D = ["d3_random_b2_g6", "d3_random_counts_b3_g9", "d3_everything", "d3_g0_ignore"]


@pytest.mark.parametrize("name", CASES_3D)
def test_3d_targets_follow_assignment(name):
    """``[B, G, 6]`` boxes: ``boxes [B, A, 6]``, the assigned GT's box for positives, zeros elsewhere."""
    case = make_case(name)
    res = _assign(case)
    labels = _labels(case)
    t = atss_ops.assign_targets(res, case["gt_boxes"], labels)
    B, A = res.gt_index.shape
    assert t.boxes.shape == (B, A, 6) and t.boxes.dtype == torch.float32
    pos = res.gt_index >= 0
    b, a = pos.nonzero(as_tuple=True)
    g = res.gt_index[b, a]
    assert bits_equal(t.boxes[b, a], case["gt_boxes"][b, g]) and torch.equal(t.labels[b, a], labels[b, g])
    assert bits_equal(t.boxes[~pos], torch.zeros(int((~pos).sum()), 6))
    counts = case["gt_counts"].tolist() if case["gt_counts"] is not None else [case["gt_boxes"].shape[1]] * B
    listed = atss_ops.assign_targets(
        res, [case["gt_boxes"][i, :n] for i, n in enumerate(counts)], [labels[i, :n] for i, n in enumerate(counts)]
    )
    assert_bits_equal(tuple(listed), tuple(t), "3-D list vs padded")


def test_3d_end_to_end_with_ignore_regions():
    """``grid_anchors`` 3-D -> ``ignore_mask`` (a list per image) -> ``atss_assign`` -> ``assign_targets``
    -> a focal loss in which the ignored anchors take no part."""
    focal = pytest.importorskip("torchvision.ops").sigmoid_focal_loss
    anchors, levels = atss_ops.grid_anchors((32, 32, 16), strides=(4, 8), scales=(2.0,))
    gt_boxes = [torch.tensor([[4.0, 4.0, 2.0, 14.0, 12.0, 9.0]]), torch.tensor([[16.0, 18.0, 4.0, 28.0, 30.0, 12.0]])]
    ignore = atss_ops.ignore_mask(anchors, [torch.tensor([[20.0, 0.0, 0.0, 32.0, 12.0, 16.0]]), torch.zeros(0, 6)])
    res = atss_ops.atss_assign(anchors, levels, gt_boxes, topk=4, anchor_ignore=ignore, ensure_positive=True)
    t = atss_ops.assign_targets(res, gt_boxes, [torch.tensor([1]), torch.tensor([0])])
    assert t.boxes.shape == (2, anchors.shape[0], 6)
    assert t.ignored[0].any() and not t.ignored[1].any() and (res.num_positive > 0).all()
    logits = _logits((2, anchors.shape[0], 2), seed=3)
    loss = (focal(logits, t.one_hot(2), reduction="none") * t.weight[..., None]).sum()
    loss.backward()
    assert (logits.grad[t.ignored] == 0).all()
