"""The bundled detector's pieces: data, anchors, targets, losses, a one-batch overfit, COCO evaluation."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import atss_ops
from atss_detector.anchors import AnchorGenerator, BoxCoder, PointCoder, anchor_strides, anchor_validity
from atss_detector.coco import CocoDetection, find_split
from atss_detector.config import Config, preset
from atss_detector.data import DetectionTransform, TransformedDataset, build_dataset, collate
from atss_detector.evaluation import coco_evaluate, to_coco_results
from atss_detector.loss import fcos_assign, fcos_size_ranges, max_iou_assign
from atss_detector.model import build_model, rescale_detections
from atss_detector.synthetic import CLASSES, SyntheticShapes, SyntheticSpec, render
from atss_detector.training import lr_factor


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # One intra-op thread: these models are tiny, and spinning OpenMP workers slow
    # everything down by orders of magnitude when other jobs share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**model) -> Config:
    cfg = preset("tiny")
    cfg.model = dataclasses.replace(cfg.model, **model)
    return cfg


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou as iou

    return iou(a, b)


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_is_deterministic_and_well_formed():
    spec = SyntheticSpec(image_size=96)
    for index in range(20):
        image, boxes, labels = render(spec, 3, "train", index)
        again = render(spec, 3, "train", index)
        assert np.array_equal(image, again[0]) and np.array_equal(boxes, again[1])
        H, W = image.shape[:2]
        assert image.dtype == np.uint8 and max(H, W) == 96 and min(H, W) >= 72
        assert len(boxes) >= 1 and len(boxes) == len(labels)
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all()
        assert ((labels >= 0) & (labels < len(CLASSES))).all()
    assert not np.array_equal(render(spec, 3, "train", 0)[0], render(spec, 3, "val", 0)[0])
    assert not np.array_equal(render(spec, 3, "train", 0)[0], render(spec, 4, "train", 0)[0])


def test_synthetic_covers_sizes_and_classes():
    spec = SyntheticSpec(image_size=128)
    sides, labels = [], []
    for index in range(150):
        _, boxes, lab = render(spec, 0, "train", index)
        sides.append(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        labels.append(lab)
    sides, labels = np.concatenate(sides), np.concatenate(labels)
    assert sides.min() < 10 and sides.max() > 64  # a few pixels to most of the image
    assert set(labels.tolist()) == set(range(len(CLASSES)))


def test_synthetic_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="image_size"):
        SyntheticSpec(image_size=8)
    with pytest.raises(ValueError, match="split"):
        SyntheticShapes("training", 4)


# --------------------------------------------------------------------------- COCO loader


def write_tiny_coco(root: str) -> str:
    """A COCO split under root/train: 3 images, non-contiguous category ids, a crowd box,
    a box sticking out of the image, a zero-width box, and an image whose only box is crowd."""
    image_dir = os.path.join(root, "train", "images")
    os.makedirs(image_dir)
    rng = np.random.default_rng(0)
    sizes = {1: (40, 60), 2: (50, 30), 3: (32, 32)}  # id: (h, w)
    for image_id, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            os.path.join(image_dir, f"{image_id}.png")
        )
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": h, "width": w} for i, (h, w) in sizes.items()],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 6, 10, 12], "area": 120, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0, 0, 60, 40], "area": 2400, "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [50, 30, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 7, "bbox": [3, 4, 0, 10], "area": 0, "iscrowd": 0},
            {"id": 5, "image_id": 2, "category_id": 3, "bbox": [2, 2, 20, 30], "area": 600, "iscrowd": 0},
            {"id": 6, "image_id": 3, "category_id": 3, "bbox": [1, 1, 20, 20], "area": 400, "iscrowd": 1},
        ],
    }
    path = os.path.join(root, "train", "annotations.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def test_coco_loader_excludes_crowd_and_maps_categories(tmp_path):
    write_tiny_coco(str(tmp_path))
    annotation_file, image_dir = find_split(str(tmp_path), "train")
    train = CocoDetection(annotation_file, image_dir, skip_empty=True)
    assert train.classes == ("cat", "dog") and train.category_ids == [3, 7]
    assert [im["id"] for im in train.images] == [1, 2]  # image 3 has only a crowd box
    first = train[0]
    assert first["image"].shape == (3, 40, 60) and first["image"].dtype == torch.uint8
    # the crowd box is gone; the box sticking out is clipped to the image
    assert first["boxes"].tolist() == [[5, 6, 15, 18], [50, 30, 60, 40]]
    assert first["labels"].tolist() == [0, 1]
    second = train[1]  # the zero-width box is dropped
    assert second["boxes"].tolist() == [[2, 2, 22, 32]] and second["labels"].tolist() == [0]
    assert len(CocoDetection(annotation_file, image_dir)) == 3  # evaluation keeps every image
    with pytest.raises(FileNotFoundError, match="val"):
        find_split(str(tmp_path), "val")


def test_coco_transform_resize_flip_and_padding(tmp_path):
    write_tiny_coco(str(tmp_path))
    dataset = CocoDetection(*find_split(str(tmp_path), "train"))
    item = DetectionTransform(min_size=80, max_size=100, flip_prob=1.0)(dataset[0])
    # 40x60 -> shorter side 80 would make the longer 120 > 100: scaled by 100/60 instead
    assert tuple(item["image"].shape) == (3, 67, 100)
    sx, sy = item["scale"]
    assert sx == pytest.approx(100 / 60) and sy == pytest.approx(67 / 40)
    x1, y1, x2, y2 = item["boxes"][0].tolist()
    assert (x1, x2) == pytest.approx((100 - 15 * sx, 100 - 5 * sx)) and (y1, y2) == pytest.approx((6 * sy, 18 * sy))
    batch = collate([item, DetectionTransform(80, 100)(dataset[1])], size_divisible=32)
    assert batch.images.shape[-2:] == (128, 128)
    assert batch.image_sizes.tolist() == [[67, 100], [100, 60]]
    assert batch.original_sizes.tolist() == [[40, 60], [50, 30]]
    assert (batch.images[1, :, :, 60:] == 0).all()


@pytest.mark.parametrize("flip", [0.0, 1.0])
@pytest.mark.parametrize("sizes", [(None, None), (80, 100), (20, 30)])
def test_transform_pixels_match_torchvision(flip, sizes):
    import torchvision.transforms.v2.functional as TF

    from atss_detector.data import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    item = {"image": image, "boxes": torch.tensor([[5.0, 6, 15, 18]]), "labels": torch.tensor([1]), "image_id": 0}
    out = DetectionTransform(*sizes, flip_prob=flip)(item)["image"]
    expected = image.float() / 255
    if sizes[0] is not None:
        expected = TF.resize(expected, list(out.shape[1:]), antialias=True)
    if flip:
        expected = TF.horizontal_flip(expected)
    expected = TF.normalize(expected, IMAGENET_MEAN, IMAGENET_STD)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


def test_coco_evaluation_scores_perfect_detections_one():
    pytest.importorskip("pycocotools")
    from atss_detector.coco import coco_from_dict

    gt = coco_from_dict(
        {
            "images": [{"id": 1, "height": 100, "width": 100}, {"id": 2, "height": 100, "width": 100}],
            "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 30], "area": 600, "iscrowd": 0},
                {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 0},
                {"id": 3, "image_id": 2, "category_id": 7, "bbox": [0, 0, 100, 50], "area": 5000, "iscrowd": 1},
                {"id": 4, "image_id": 2, "category_id": 3, "bbox": [5, 60, 8, 8], "area": 64, "iscrowd": 0},
            ],
        }
    )
    detections = [
        {
            "boxes": torch.tensor([[10.0, 10, 30, 40], [50, 50, 90, 90]]),
            "labels": torch.tensor([0, 1]),
            "scores": torch.tensor([0.9, 0.8]),
        },
        # a detection inside the crowd region is ignored, not a false positive
        {
            "boxes": torch.tensor([[5.0, 60, 13, 68], [10, 5, 40, 30]]),
            "labels": torch.tensor([0, 1]),
            "scores": torch.tensor([0.7, 0.95]),
        },
    ]
    metrics = coco_evaluate(gt, to_coco_results([1, 2], detections, [3, 7]))
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["APs"] == pytest.approx(1.0) and metrics["APl"] == -1  # no large GT box
    assert coco_evaluate(gt, [])["AP"] == 0.0


# --------------------------------------------------------------------------- anchors and boxes


def test_anchor_layout_matches_head_layout():
    gen = AnchorGenerator([8, 16], scales=(8.0, 4.0), ratios=(0.5, 1.0, 2.0))
    anchors, counts = gen([(4, 6), (2, 3)], torch.device("cpu"))
    assert gen.num_anchors_per_location == 6 and counts == [4 * 6 * 6, 2 * 3 * 6]
    # location (y=1, x=2) of level 0, anchor 4 = (scale 4, ratio 1): a 32x32 box centred at (20, 12)
    box = anchors[(1 * 6 + 2) * 6 + 4]
    assert box.tolist() == [4.0, -4.0, 36.0, 28.0]
    wh = anchors[:6, 2:] - anchors[:6, :2]
    assert torch.allclose(wh[:, 1] / wh[:, 0], torch.tensor([0.5, 1, 2, 0.5, 1, 2]))
    valid = anchor_validity(anchors, torch.tensor([[32, 48], [20, 30]]))
    assert valid[0, : counts[0]].all() and not valid[1].all()


def test_box_coder_round_trip():
    coder = BoxCoder()
    anchors = torch.tensor([[0.0, 0, 64, 64], [10, 20, 42, 52]])
    boxes = torch.tensor([[3.0, 5, 9, 13], [0, 0, 100, 80]])
    assert torch.allclose(coder.decode(coder.encode(boxes, anchors), anchors), boxes, atol=1e-4)


def test_point_coder_round_trip():
    coder = PointCoder()
    torch.manual_seed(0)
    anchors = torch.tensor([[0.0, 0, 64, 64], [10, 20, 42, 52], [-4, -4, 12, 12]])  # centres (32, 32), (26, 36), (4, 4)
    strides = torch.tensor([8.0, 16.0, 8.0])
    # boxes around each centre: distances l, t, r, b of 1-80 px
    cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    ltrb = torch.rand(3, 4) * 79 + 1
    boxes = torch.stack([cx - ltrb[:, 0], cy - ltrb[:, 1], cx + ltrb[:, 2], cy + ltrb[:, 3]], dim=1)
    deltas = coder.encode(boxes, anchors, strides)
    assert torch.allclose(deltas, torch.log(ltrb / strides[:, None]), atol=1e-5)  # distances in strides, log space
    assert torch.allclose(coder.decode(deltas, anchors, strides), boxes, atol=1e-4)
    # zero deltas: one stride from the centre to every side, whatever the anchor's size
    assert coder.decode(torch.zeros(3, 4), anchors, strides)[1].tolist() == [10.0, 20.0, 42.0, 52.0]
    assert coder.decode(torch.zeros(3, 4), anchors, strides)[0].tolist() == [24.0, 24.0, 40.0, 40.0]
    with pytest.raises(ValueError, match="needs the strides"):
        coder.decode(deltas, anchors)
    assert anchor_strides([2, 1], [8, 16], torch.device("cpu")).tolist() == [8.0, 8.0, 16.0]


def test_fcos_size_ranges_are_fcos_scaled():
    inf = float("inf")
    assert fcos_size_ranges([8, 16, 32, 64, 128]) == [
        (0.0, 64.0),
        (64.0, 128.0),
        (128.0, 256.0),
        (256.0, 512.0),
        (512.0, inf),
    ]
    assert fcos_size_ranges([8, 16], scale=0.5) == [(0.0, 32.0), (32.0, inf)]
    with pytest.raises(ValueError, match="scale must be > 0"):
        fcos_size_ranges([8], scale=0)


def test_fcos_assigner_by_hand():
    # Level 0 (ranges: largest distance in [0, 10]): 8 px anchors centred at (5, 5), (15, 5), (50, 50);
    # level 1 ([10, inf)): 16 px anchors centred at (20, 20), (100, 100).
    centres = torch.tensor([[5.0, 5], [15, 5], [50, 50], [20, 20], [100, 100]])
    half = torch.tensor([4.0, 4, 4, 8, 8])[:, None]
    anchors = torch.cat([centres - half, centres + half], dim=1)
    gt = torch.tensor(
        [
            [
                [0.0, 0, 12, 10],  # 0: (5, 5) inside, largest distance 7: qualifies at level 0 ...
                [0, 0, 40, 40],  # 1: (5, 5), (15, 5) inside but distances up to 35 (not level 0); (20, 20): 20, level 1
                [2, 2, 14, 9],  # 2: (5, 5) inside, largest 9: qualifies too, and is smaller than 0: wins (5, 5)
                [45, 45, 55, 55],  # 3: (50, 50) fits, but that anchor is invalid in image 0
                [100, 90, 130, 130],  # 4: (100, 100) on its left side, not strictly inside
                [5, 0, 25, 10],  # 5: (15, 5): largest distance exactly 10, the end of level 0's range (included)
            ],
            [[0.0, 0, 12, 10]] + [[float("nan")] * 4] * 5,
        ]
    )
    valid = torch.tensor([[True, True, False, True, True], [True] * 5])
    result = fcos_assign(anchors, [3, 2], valid, gt, torch.tensor([6, 1]), [(0.0, 10.0), (10.0, float("inf"))])
    assert result.gt_index.tolist() == [[2, 5, -1, 1, -1], [0, -1, -1, -1, -1]]
    assert result.num_positive.tolist() == [[0, 1, 1, 0, 0, 1], [1, 0, 0, 0, 0, 0]]
    # the anchor [1, 1, 9, 9] and GT 2 overlap in [2, 2, 9, 9]: 49 / (64 + 84 - 49)
    assert result.iou[0, 0].item() == pytest.approx(49 / 99)
    assert result.iou[0, 2] == 0 and result.iou[1, 1:].eq(0).all()
    assert result.threshold.isnan().all()
    # anchors of one location (same centre, other shapes) get the same GT
    wide = torch.cat([centres[:3] - torch.tensor([6.0, 2]), centres[:3] + torch.tensor([6.0, 2])], dim=1)
    doubled = fcos_assign(
        torch.cat([anchors[:3], wide, anchors[3:]]),
        [6, 2],
        torch.ones(2, 8, dtype=torch.bool),
        gt,
        torch.tensor([6, 1]),
        [(0.0, 10.0), (10.0, float("inf"))],
    )
    assert doubled.gt_index[0].tolist() == [2, 5, 3, 2, 5, 3, 1, -1]
    with pytest.raises(ValueError, match="one \\(low, high\\) per level"):
        fcos_assign(anchors, [3, 2], valid, gt, torch.tensor([6, 1]), [(0.0, 10.0)])


@pytest.mark.parametrize("assigner, regression", [("fcos", "box"), ("fcos", "point"), ("atss", "point")])
def test_every_assigner_and_regression_trains(assigner, regression):
    torch.manual_seed(0)
    cfg = tiny_config(assigner=assigner, regression=regression, fcos_range_scale=64 / 800)
    model = build_model(cfg.model, len(CLASSES))
    batch = padded_batch(cfg)
    losses = model(batch.images, batch.image_sizes, batch.boxes, batch.labels)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        detections = model(batch.images, batch.image_sizes)
    assert len(detections) == len(batch) and all(torch.isfinite(d["boxes"]).all() for d in detections)
    with pytest.raises(ValueError, match="regression must be one of"):
        build_model(dataclasses.replace(cfg.model, regression="corner"), 3)


def test_lr_schedules():
    cfg = preset("tiny").train
    cfg = dataclasses.replace(cfg, warmup_iters=10, warmup_factor=0.1, schedule="step", steps=(0.5, 0.75))
    f = lr_factor(cfg, 100)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55) and f(10) == 1.0
    assert f(49) == 1.0 and f(50) == pytest.approx(0.1) and f(99) == pytest.approx(0.01)
    f = lr_factor(dataclasses.replace(cfg, schedule="cosine", warmup_iters=0), 100)
    assert f(0) == 1.0 and f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(dataclasses.replace(cfg, schedule="linear"), 100)


def test_config_round_trip_and_errors():
    cfg = preset("demo")
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        Config.from_dict({"model": {"depht": 18}})
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ValueError, match="min_level"):
        build_model(dataclasses.replace(cfg.model, min_level=1), 3)
    # the FCOS ranges follow the image size unless set; a config saved before the field existed resolves alike
    resolved = cfg.resolved()
    assert resolved.model.fcos_range_scale == cfg.data.image_size / 800 and cfg.model.fcos_range_scale is None
    older = cfg.to_dict()
    del older["model"]["fcos_range_scale"], older["model"]["regression"]
    assert Config.from_dict(older).resolved() == resolved
    explicit = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, fcos_range_scale=0.5))
    assert explicit.resolved() == explicit


def test_local_backbone_weights_are_loaded_and_frozen(tmp_path):
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(tiny_config(backbone_weights=str(path)).model, 3)
    body = model.backbone.body
    assert torch.equal(body.layer2[0].conv1.weight, reference.layer2[0].conv1.weight)
    assert isinstance(body.bn1, torchvision.ops.FrozenBatchNorm2d)
    assert not body.conv1.weight.requires_grad and body.layer2[0].conv1.weight.requires_grad
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a state_dict of this ResNet"):
        build_model(tiny_config(backbone_weights=str(tmp_path / "bad.pth")).model, 3)


def test_detections_map_back_to_original_pixels():
    detections = [
        {
            "boxes": torch.tensor([[10.0, 10, 50, 30], [0, 0, 200, 200]]),
            "scores": torch.ones(2),
            "labels": torch.zeros(2, dtype=torch.int64),
        }
    ]
    out = rescale_detections(detections, torch.tensor([[2.0, 0.5]]), torch.tensor([[100, 80]]))
    assert out[0]["boxes"].tolist() == [[5, 20, 25, 60], [0, 0, 80, 100]]  # clipped to 80 x 100


# --------------------------------------------------------------------------- targets and losses


def padded_batch(cfg: Config, count: int = 4):
    dataset = build_dataset(cfg.data, "train", train=False)
    return collate([dataset[i] for i in range(count)], cfg.data.size_divisible)


def head_targets(model, batch):
    """``(features, anchors, anchors per level, anchor validity, HeadTargets)`` of ``batch``."""
    features = model.backbone(batch.images)
    anchors, counts = model.anchor_generator([f.shape[-2:] for f in features], batch.images.device)
    valid = anchor_validity(anchors, batch.image_sizes)
    return features, anchors, counts, valid, model.criterion.targets(anchors, counts, valid, batch.boxes, batch.labels)


@pytest.mark.parametrize("scales,ratios", [((4.0,), (1.0,)), ((4.0, 6.0, 8.0), (0.5, 1.0, 2.0))])
def test_head_targets_agree_with_the_assignment(scales, ratios):
    torch.manual_seed(0)
    cfg = tiny_config(anchor_scales=scales, anchor_ratios=ratios)
    model = build_model(cfg.model, len(CLASSES))
    num_anchors = len(scales) * len(ratios)
    assert model.criterion.topk == 9 * num_anchors  # the paper's k * anchors per location
    batch = padded_batch(cfg)
    assert len(set(map(tuple, batch.image_sizes.tolist()))) > 1  # images of several shapes: padding

    features, anchors, counts, valid, targets = head_targets(model, batch)

    padded, gt_counts = atss_ops.pad_gt_boxes(batch.boxes)
    expected = atss_ops.atss_assign(anchors, counts, padded, gt_counts, topk=9 * num_anchors, anchor_valid=valid)
    assert torch.equal(targets.assignment.gt_index, expected.gt_index)
    assert torch.equal(targets.positive, expected.gt_index >= 0)
    assert targets.positive.any()
    assert not (targets.positive & ~valid).any()  # padding anchors are background
    for b in range(len(batch)):
        pos = targets.positive[b]
        index = expected.gt_index[b, pos]
        assert torch.equal(targets.labels[b, pos], batch.labels[b][index])
        assert torch.equal(targets.boxes[b, pos], batch.boxes[b][index])
        assert (targets.labels[b, ~pos] == -1).all() and (targets.boxes[b, ~pos] == 0).all()
        # every positive anchor's centre lies inside its box: centerness in (0, 1]
        ctr = targets.centerness[b, pos]
        assert ((ctr > 0) & (ctr <= 1)).all() and (targets.centerness[b, ~pos] == 0).all()

    cls, box, ctr = model.head(features)
    assert cls.shape == (len(batch), anchors.shape[0], len(CLASSES)) and box.shape[:2] == cls.shape[:2]
    losses = model.criterion(cls, box, ctr, anchors, targets)
    assert set(losses) == {"loss_cls", "loss_box", "loss_ctr"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_max_iou_baseline_by_hand():
    anchors = torch.tensor(
        [
            [0.0, 0, 10, 10],  # IoU 1 with GT 0: positive
            [0, 0, 10, 4.5],  # IoU 0.45 with GT 0: ignored (between 0.4 and 0.5)
            [0, 0, 10, 2],  # IoU 0.2: background
            [100, 100, 110, 103],  # IoU 0.3 with GT 1, its best anchor: positive (low-quality match)
            [200, 200, 210, 210],  # equals GT 2 but outside the image: background
        ]
    )
    valid = torch.tensor([[True, True, True, True, False]] * 2)
    gt = torch.tensor(
        [
            [[0.0, 0, 10, 10], [100, 100, 110, 110], [200, 200, 210, 210], [50, 50, 50, 50]],
            [[0.0, 0, 10, 10]] + [[float("nan")] * 4] * 3,
        ]
    )
    result, ignored = max_iou_assign(anchors, valid, gt, torch.tensor([4, 0]))
    assert result.gt_index.tolist() == [[0, -1, -1, 1, -1], [-1] * 5]  # GTs 2 (no valid overlap) and 3 claim nothing
    assert ignored.tolist() == [[False, True, False, False, False], [False] * 5]
    assert result.num_positive.tolist() == [[1, 1, 0, 0], [0] * 4]
    assert torch.allclose(result.iou, torch.tensor([[1.0, 0, 0, 0.3, 0], [0] * 5]))
    assert result.threshold.tolist() == [[0.5] * 4, [0.0] * 4]
    with pytest.raises(ValueError, match="negative_iou <= positive_iou"):
        max_iou_assign(anchors, valid, gt, torch.tensor([4, 0]), positive_iou=0.3, negative_iou=0.4)


def test_max_iou_assigner_trains_and_ignores_the_middle_band():
    torch.manual_seed(0)
    cfg = tiny_config(assigner="max_iou")
    model = build_model(cfg.model, len(CLASSES))
    batch = padded_batch(cfg)
    _, anchors, _, valid, targets = head_targets(model, batch)
    padded, gt_counts = atss_ops.pad_gt_boxes(batch.boxes)
    expected, ignored = max_iou_assign(anchors, valid, padded, gt_counts)
    assert torch.equal(targets.assignment.gt_index, expected.gt_index) and targets.positive.any()
    assert ignored.any() and torch.equal(targets.valid, valid & ~ignored)
    losses = model(batch.images, batch.image_sizes, batch.boxes, batch.labels)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    with pytest.raises(ValueError, match="assigner must be one of"):
        build_model(dataclasses.replace(cfg.model, assigner="iou"), 3)


def test_images_without_boxes_train():
    cfg = tiny_config()
    model = build_model(cfg.model, 3)
    images = torch.randn(2, 3, 64, 64)
    losses = model(
        images, torch.tensor([[64, 64], [40, 64]]), [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.int64)] * 2
    )
    assert losses["loss_box"] == 0 and losses["loss_ctr"] == 0 and losses["loss_cls"] > 0
    sum(losses.values()).backward()  # every parameter stays in the graph (DDP needs that)
    assert all(p.grad is not None for p in model.parameters())


# --------------------------------------------------------------------------- one-batch overfit


def test_one_batch_overfit_recovers_the_boxes():
    torch.manual_seed(0)
    cfg = tiny_config(head_convs=2)
    spec = SyntheticSpec(image_size=64, min_object=16, max_objects=2)
    dataset = TransformedDataset(SyntheticShapes("train", 2, spec, seed=1), DetectionTransform())
    batch = collate([dataset[0], dataset[1]], 32)
    model = build_model(cfg.model, len(CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(120):
        losses = model(batch.images, batch.image_sizes, batch.boxes, batch.labels)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    for key in ("loss_cls", "loss_box", "loss_ctr"):
        first, last = np.mean([h[key] for h in history[:5]]), np.mean([h[key] for h in history[-5:]])
        assert last < 0.5 * first or key == "loss_ctr" and last < first, (key, first, last)

    model.eval()
    with torch.no_grad():
        detections = model(batch.images, batch.image_sizes)
    detections = rescale_detections(detections, batch.scales, batch.original_sizes)
    for det, boxes, labels in zip(detections, batch.boxes, batch.labels):
        for box, label in zip(boxes, labels):
            same_class = det["labels"] == label
            assert same_class.any(), f"no detection of class {CLASSES[label]}"
            best = box_iou(box[None], det["boxes"][same_class]).max()
            assert best > 0.7, (box.tolist(), det["boxes"][same_class][:3].tolist())
