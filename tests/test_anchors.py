"""``atss_ops.grid_anchors``: the 2-D grid as documented, the 3-D grid against MONAI's anchor generators."""

from __future__ import annotations

import math

import pytest
import torch
from cases import multi_scale_anchors

import atss_ops

# --------------------------------------------------------------------------- 2-D (unchanged)


@pytest.mark.parametrize(
    "height, width, strides, scales",
    [(800, 1344, (8, 16, 32, 64, 128), (8.0,)), (100, 75, (8, 16), (4.0, 6.0)), (33, 1, (4,), (1.0,))],
)
def test_2d_grid_is_the_documented_one(height, width, strides, scales):
    """Squares of side ``scale * s`` at ``((x + 0.5) s, (y + 0.5) s)``, row by row, scale by scale."""
    anchors, levels = atss_ops.grid_anchors(height, width, strides=strides, scales=scales)
    expected, expected_levels = multi_scale_anchors(height, width, strides, scales)
    assert levels == expected_levels
    assert anchors.dtype == torch.float32 and torch.equal(anchors, expected)
    if (height, width) == (800, 1344):
        assert anchors.shape == (22400, 4)


def test_2d_ratios_keep_the_area_and_set_height_over_width():
    anchors, levels = atss_ops.grid_anchors(16, 16, (16,), scales=(2.0, 4.0), ratios=(0.5, 1.0, 2.0))
    assert levels == [6]
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    side = torch.tensor([32.0, 32.0, 32.0, 64.0, 64.0, 64.0])  # scale by scale, then ratio by ratio
    assert torch.allclose(w * h, side**2) and torch.allclose(h / w, torch.tensor([0.5, 1.0, 2.0] * 2))


# --------------------------------------------------------------------------- 3-D

VOLUMES = [((32, 24, 16), (4, 8)), ((20, 20, 9), (4, 8, 16)), ((1, 1, 1), (2,))]


@pytest.mark.parametrize("size, strides", VOLUMES)
def test_3d_grid_layout(size, strides):
    """``[A, 6]`` xyzxyz anchors; axis i of the volume goes with coordinates i and i + 3; locations with
    axis 0 slowest and axis 2 fastest; ``ceil(S_i / s)`` locations along axis i; cubes of side ``8 s``."""
    anchors, levels = atss_ops.grid_anchors(size, strides=strides)
    assert anchors.shape == (sum(levels), 6) and anchors.dtype == torch.float32
    start = 0
    for stride, count in zip(strides, levels):
        n = [math.ceil(s / stride) for s in size]
        assert count == n[0] * n[1] * n[2]
        level = anchors[start : start + count]
        start += count
        centres = (level[:, :3] + level[:, 3:]) / 2
        grid = torch.stack(torch.meshgrid(*(torch.arange(k) for k in n), indexing="ij"), dim=-1).reshape(-1, 3)
        assert torch.equal(centres, (grid + 0.5) * stride)
        assert torch.equal(level[:, 3:] - level[:, :3], torch.full((count, 3), 8.0 * stride))


def test_3d_anisotropic_strides_and_feature_sizes():
    """A stride may be a triple; extents are ``scale * s_i`` per axis; ``feature_sizes`` replace the division."""
    anchors, levels = atss_ops.grid_anchors((64, 64, 32), strides=((4, 4, 2), 8), scales=(2.0,))
    assert levels == [16 * 16 * 16, 8 * 8 * 4]
    assert torch.equal(anchors[0], torch.tensor([-2.0, -2.0, -1.0, 6.0, 6.0, 3.0]))
    assert torch.equal(anchors[levels[0]], torch.tensor([-4.0, -4.0, -4.0, 12.0, 12.0, 12.0]))
    _, levels = atss_ops.grid_anchors((64, 64, 32), strides=(4, 8), feature_sizes=[(3, 2, 1), (1, 1, 1)])
    assert levels == [6, 1]


def test_3d_ratios_keep_the_volume():
    """``(r1, r2)``: extents ``1 : r1 : r2`` along axes 0, 1, 2 at the volume of the cube ``scale * s``."""
    ratios = ((1.0, 1.0), (2.0, 0.5), (0.5, 3.0))
    anchors, _ = atss_ops.grid_anchors((8, 8, 8), strides=(8,), scales=(2.0, 3.0), ratios=ratios)
    extents = (anchors[:, 3:] - anchors[:, :3]).double()
    volumes = extents.prod(dim=1)
    expected = torch.tensor([16.0, 24.0] * 3, dtype=torch.float64) ** 3  # ratio by ratio, scale by scale
    assert torch.allclose(volumes, expected, rtol=1e-6)
    r = torch.tensor([r for r in ratios for _ in range(2)], dtype=torch.float64)
    assert torch.allclose(extents[:, 1:] / extents[:, :1], r, rtol=1e-6)


def test_3d_feeds_atss_assign():
    anchors, levels = atss_ops.grid_anchors((32, 32, 16), strides=(4, 8), scales=(2.0,))
    gt = torch.tensor([[[4.0, 6.0, 2.0, 20.0, 18.0, 12.0]]])
    result = atss_ops.atss_assign(anchors, levels, gt, topk=4)
    assert result.gt_index.shape == (1, anchors.shape[0]) and int(result.num_positive[0, 0]) > 0


# MONAI's generators, where both apply: even strides, extents whose halves MONAI's rounding keeps.
MONAI_ISOTROPIC = [
    ((32, 24, 16), (4, 8), (2.0, 3.0), ((1.0, 1.0), (2.0, 0.5), (0.5, 2.0), (2.0, 4.0))),
    ((64, 64, 32), (4, 8, 16), (4.0,), ((1.0, 1.0),)),
    ((48, 40, 24), (8,), (1.0, 2.0, 4.0), ((1.0, 1.0), (0.5, 2.0))),
]


@pytest.mark.parametrize("size, strides, scales, ratios", MONAI_ISOTROPIC)
def test_3d_equals_monai_anchor_generator(size, strides, scales, ratios):
    """Bit for bit MONAI's ``AnchorGenerator(sizes=scale * s, aspect_ratios=ratios)`` (``indexing="ij"``),
    order included."""
    anchor_utils = pytest.importorskip("monai.apps.detection.utils.anchor_utils")
    ours, levels = atss_ops.grid_anchors(size, strides=strides, scales=scales, ratios=ratios)
    generator = anchor_utils.AnchorGenerator(
        sizes=[[sc * s for sc in scales] for s in strides], aspect_ratios=[ratios] * len(strides)
    )
    image = torch.zeros(1, 1, *size)
    features = [torch.zeros(1, 1, *(n // s for n in size)) for s in strides]
    theirs = generator(image, features)[0]
    assert levels == [f[0, 0].numel() * len(scales) * len(ratios) for f in features]
    assert torch.equal(ours, theirs)


def test_3d_anisotropic_equals_monai_anchor_shapes():
    """Anisotropic strides (LUNA16's (4, 4, 2) ...): MONAI's ``AnchorGeneratorWithAnchorShape`` with the
    shape ``scale * (s0, s1, s2)`` of the first level, doubled per level."""
    anchor_utils = pytest.importorskip("monai.apps.detection.utils.anchor_utils")
    size, strides, scale = (96, 96, 40), ((4, 4, 2), (8, 8, 4), (16, 16, 8)), 2.0
    ours, _ = atss_ops.grid_anchors(size, strides=strides, scales=(scale,))
    generator = anchor_utils.AnchorGeneratorWithAnchorShape(
        feature_map_scales=(1, 2, 4), base_anchor_shapes=((scale * 4, scale * 4, scale * 2),)
    )
    features = [torch.zeros(1, 1, *(n // s for n, s in zip(size, st))) for st in strides]
    theirs = generator(torch.zeros(1, 1, *size), features)[0]
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (((16, 16, 8), (4, 8)), {}, r"width must be left out with a 3-D volume size .* pass strides by keyword"),
        (((16, 16),), {"strides": (4,)}, r"a volume size must be 3 ints \(S0, S1, S2\), got \(16, 16\)"),
        ((16,), {}, r"width is missing"),
        (((16, 16, 8),), {"strides": (4,), "ratios": (1.0,)}, r"ratios must be \(r1, r2\) pairs .* got \[1\.0\]"),
        (((16, 16, 8),), {"strides": ((4, 4),)}, r"strides must hold positive ints or triples of them"),
        (((16, 16, 8),), {"strides": (0,)}, r"strides must hold positive ints or triples"),
        (((16, 0, 8),), {"strides": (4,)}, r"the volume size \(S0, S1, S2\) must be positive ints, got \(16, 0, 8\)"),
        (((16, 16, 8),), {"strides": (4,), "scales": (-1.0,)}, r"scales must be .* positive numbers, got \[-1\.0\]"),
        (((16, 16, 8),), {"strides": (4,), "feature_sizes": [(2, 2)]}, r"feature_sizes must be \(n0, n1, n2\)"),
        ((16, 16), {"strides": (4,), "ratios": (0.0,)}, r"ratios must be .* positive numbers, got \[0\.0\]"),
        ((16, 16), {"strides": (4, 8), "feature_sizes": [(4, 4)]}, r"feature_sizes must give one \(h, w\) per"),
    ],
)
def test_errors_name_argument_and_value(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        atss_ops.grid_anchors(*args, **kwargs)
