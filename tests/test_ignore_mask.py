"""atss_ops.ignore_mask: anchors whose intersection over their own area with an ignore box exceeds a threshold."""

from __future__ import annotations

import pytest
import torch

import atss_ops
from atss_ops import ignore_mask

ANCHORS_2D = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # area 100
        [10.0, 0.0, 20.0, 10.0],  # area 100
        [0.0, 0.0, 0.0, 10.0],  # zero area
        [4.0, 4.0, 6.0, 6.0],  # area 4
    ]
)


def test_hand_worked_2d():
    nan = float("nan")
    ignore = torch.tensor(
        [
            # Image 0: [5, 15] x [0, 10] covers exactly half of anchors 0, 1 and 3:
            # inter 5*10 = 50 of 100, 5*10 = 50 of 100, 1*2 = 2 of 4, so IoF = 0.5 each.
            [[5.0, 0.0, 15.0, 10.0], [nan, nan, nan, nan]],
            # Image 1: [0, 12] x [0, 10]: anchor 0 IoF 1, anchor 1 IoF 2*10/100 = 0.2, anchor 3 IoF 1.
            [[0.0, 0.0, 12.0, 10.0], [nan, nan, nan, nan]],
            # Image 2: no ignore box, padding only.
            [[nan, nan, nan, nan], [nan, nan, nan, nan]],
        ]
    )
    counts = torch.tensor([1, 1, 0])
    # IoF must exceed the threshold: exactly 0.5 is not ignored at 0.5, but is at 0.49.
    # The zero-area anchor 2 has IoF 0 (its area is clamped to 1e-6) and is never ignored.
    assert ignore_mask(ANCHORS_2D, ignore, counts, 0.5).tolist() == [
        [False, False, False, False],
        [True, False, False, True],
        [False, False, False, False],
    ]
    assert ignore_mask(ANCHORS_2D, ignore, counts, 0.49).tolist() == [
        [True, True, False, True],
        [True, False, False, True],
        [False, False, False, False],
    ]
    # Threshold 0: any overlap of positive area; threshold 1: never (IoF <= 1).
    assert ignore_mask(ANCHORS_2D, ignore, counts, 0.0)[1].tolist() == [True, True, False, True]
    assert not ignore_mask(ANCHORS_2D, ignore, counts, 1.0).any()


def test_hand_worked_3d():
    anchors = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 2.0, 2.0, 0.0]])  # volume 8 and 0
    ignore = torch.tensor(
        [
            [[1.0, 0.0, 0.0, 3.0, 2.0, 2.0]],  # inter 1*2*2 = 4 of 8: IoF 0.5, not above 0.5
            [[0.0, 0.0, 0.0, 2.0, 2.0, 1.5]],  # inter 2*2*1.5 = 6 of 8: IoF 0.75
        ]
    )
    assert ignore_mask(anchors, ignore).tolist() == [[False, False], [True, False]]
    assert ignore_mask(anchors, ignore, iof_threshold=0.4).tolist() == [[True, False], [True, False]]


def _iof64(anchors, boxes):
    """IoF in float64, dense ``[B, M, A]``: the meaning, not the float32 computation."""
    d = anchors.shape[1] // 2
    a, g = anchors.double()[None, None], boxes.double()[:, :, None]
    overlap = (torch.minimum(a[..., d:], g[..., d:]) - torch.maximum(a[..., :d], g[..., :d])).clamp(min=0)
    return overlap.prod(-1) / (a[..., d:] - a[..., :d]).prod(-1).clamp(min=1e-6)


def _random_boxes(gen, shape, dims, extent=100.0):
    lo = torch.rand(*shape, dims, generator=gen) * extent
    size = torch.rand(*shape, dims, generator=gen) * extent / 3 + 0.5
    return torch.cat([lo, lo + size], dim=-1)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9])
def test_random_against_float64_meaning(dims, threshold):
    gen = torch.Generator().manual_seed(dims * 10 + int(threshold * 10))
    anchors = _random_boxes(gen, (300,), dims)
    ignore = _random_boxes(gen, (3, 19), dims)  # 19 boxes: three chunks of 8, the last one partial
    counts = torch.tensor([19, 5, 0])
    got = ignore_mask(anchors, ignore, counts, threshold)
    iof = _iof64(anchors, ignore)
    iof[torch.arange(19)[None, :] >= counts[:, None]] = 0
    want = (iof > threshold).any(dim=1)
    # Away from the threshold the float32 computation must agree with the float64 meaning.
    near = ((iof - threshold).abs() < 1e-5).any(dim=1)
    assert torch.equal(got[~near], want[~near])
    assert got.any() and not got.all()  # both outcomes occur
    # The chunking never changes the result: one call per box, OR-ed.
    per_box = torch.zeros_like(got)
    for m in range(19):
        per_box |= ignore_mask(anchors, ignore[:, m : m + 1], (counts > m).long(), threshold)
    assert torch.equal(got, per_box)


def test_padding_is_never_read_and_empty_sizes():
    anchors = ANCHORS_2D
    ignore = torch.full((2, 3, 4), float("nan"))
    ignore[0, 0] = torch.tensor([0.0, 0.0, 10.0, 10.0])
    got = ignore_mask(anchors, ignore, torch.tensor([1, 0]))
    assert got.tolist() == [[True, False, False, True], [False] * 4]
    assert ignore_mask(anchors, torch.zeros(0, 3, 4)).shape == (0, 4)
    assert not ignore_mask(anchors, torch.zeros(2, 0, 4)).any()
    assert ignore_mask(torch.zeros(0, 6), torch.zeros(2, 1, 6)).shape == (2, 0)


@pytest.mark.parametrize("dims", [2, 3])
def test_list_of_per_image_boxes_equals_padded(dims):
    """A list of ``Tensor[M_i, 2D]`` (as ``atss_assign`` takes GT boxes) gives the padded call's mask."""
    g = torch.Generator().manual_seed(dims)
    anchors = _random_boxes(g, (40,), dims)
    per_image = [_random_boxes(g, (30,), dims), torch.zeros(0, 2 * dims), _random_boxes(g, (1,), dims)]
    padded, counts = atss_ops.pad_gt_boxes(per_image)
    mask = ignore_mask(anchors, per_image)
    assert mask[0].any() and not mask[1].any()
    assert torch.equal(mask, ignore_mask(anchors, padded, counts))
    assert torch.equal(
        ignore_mask(anchors, tuple(per_image), iof_threshold=0.2), ignore_mask(anchors, padded, counts, 0.2)
    )


@pytest.mark.parametrize(
    "boxes, counts, match",
    [
        ([torch.zeros(1, 4)], torch.tensor([1]), "ignore_counts must be None when ignore_boxes is a list"),
        ([torch.zeros(1, 4), torch.zeros(2, 5)], None, r"ignore_boxes\[1\] must be a Tensor\[G_i, 4\] or"),
        ([torch.zeros(1, 4), torch.zeros(1, 6)], None, r"ignore_boxes\[1\] has 6 coordinates per box but"),
    ],
)
def test_list_errors_name_the_argument(boxes, counts, match):
    with pytest.raises(ValueError, match=match):
        ignore_mask(ANCHORS_2D, boxes, counts)


def test_dtypes_are_converted():
    ignore = torch.tensor([[[0.0, 0.0, 12.0, 10.0]]])
    want = ignore_mask(ANCHORS_2D, ignore)
    assert torch.equal(ignore_mask(ANCHORS_2D.double(), ignore.half()), want)
    assert want.dtype == torch.bool


def test_feeds_atss_assign_as_anchor_ignore():
    """The mask's anchors come out of atss_assign as -2 (contract v2)."""
    anchors, levels = atss_ops.grid_anchors(64, 64, strides=(8, 16), scales=(1.0,))
    gt = torch.tensor([[[4.0, 4.0, 40.0, 40.0], [30.0, 30.0, 60.0, 50.0]]])
    ignore = torch.tensor([[[28.0, 28.0, 64.0, 64.0]]])
    mask = ignore_mask(anchors, ignore)
    assert mask.any()
    res = atss_ops.atss_assign(anchors, levels, gt, anchor_ignore=mask)
    assert torch.equal(res.gt_index == -2, mask)


NAN_BOX = [[[float("nan"), 0.0, 1.0, 1.0]]]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(anchors=[[0.0, 0.0, 1.0, 1.0]]), TypeError, "anchors must be a torch.Tensor, got list"),
        (
            dict(anchors=torch.zeros(3, 5)),
            ValueError,
            r"anchors must have shape \[A, 4\] or \[A, 6\], got shape \[3, 5\]",
        ),
        (dict(anchors=torch.zeros(3, 4, dtype=torch.int64)), ValueError, "anchors must be a floating-point"),
        (dict(ignore_boxes=torch.zeros(1, 2, 6)), ValueError, r"ignore_boxes must have shape \[B, M, 4\]"),
        (dict(ignore_boxes=torch.zeros(2, 4)), ValueError, r"got shape \[2, 4\]"),
        (
            dict(ignore_boxes=torch.tensor(NAN_BOX)),
            ValueError,
            r"ignore_boxes must be finite .* box 0 = \[nan, 0, 1, 1\]",
        ),
        (
            dict(ignore_boxes=torch.tensor([[[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 1.0, 1.0]]])),
            ValueError,
            r"upper corner >= the lower corner .* box 1 = \[2, 0, 1, 1\]",
        ),
        (dict(anchors=torch.tensor([[0.0, 0.0, 1.0, float("inf")]])), ValueError, "anchors must be finite"),
        (
            dict(ignore_counts=torch.tensor([2])),
            ValueError,
            r"ignore_counts must be in \[0, M\] = \[0, 1\], got ignore_counts\[0\] = 2",
        ),
        (dict(ignore_counts=torch.tensor([-1])), ValueError, r"got ignore_counts\[0\] = -1"),
        (dict(ignore_counts=torch.tensor([1.0])), ValueError, "ignore_counts must hold integers"),
        (dict(ignore_counts=torch.tensor([1, 1])), ValueError, r"ignore_counts must have shape \[B\] = \[1\]"),
        (dict(ignore_counts=[1]), TypeError, "ignore_counts must be a torch.Tensor or None, got list"),
        (dict(iof_threshold=1.5), ValueError, r"iof_threshold must be a number in \[0, 1\], got float 1.5"),
        (dict(iof_threshold=-0.1), ValueError, r"got float -0.1"),
        (dict(iof_threshold=float("nan")), ValueError, "got float nan"),
        (dict(iof_threshold="0.5"), ValueError, r"iof_threshold must be a number in \[0, 1\], got str '0.5'"),
    ],
)
def test_errors_name_argument_and_value(kwargs, error, match):
    args = dict(anchors=ANCHORS_2D, ignore_boxes=torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ignore_mask(**args)


def test_padding_is_not_validated():
    """Only the valid ignore boxes are checked: padding may hold anything."""
    ignore = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [5.0, float("nan"), 1.0, 1.0]]])
    assert ignore_mask(ANCHORS_2D, ignore, torch.tensor([1])).shape == (1, 4)


@pytest.mark.cuda
def test_cuda_equals_cpu():
    gen = torch.Generator().manual_seed(5)
    anchors = _random_boxes(gen, (500,), 3)
    ignore = _random_boxes(gen, (2, 11), 3)
    counts = torch.tensor([11, 4])
    want = ignore_mask(anchors, ignore, counts, 0.25)
    got = ignore_mask(anchors.cuda(), ignore.cuda(), counts.cuda(), 0.25)
    assert got.device.type == "cuda" and torch.equal(got.cpu(), want)
