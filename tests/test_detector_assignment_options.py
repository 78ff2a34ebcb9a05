"""The detector's contract-v2 options: --ensure-positive, --no-center-test and --ignore-crowd
(COCO crowd boxes as ignore regions through atss_ops.ignore_mask)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from subprocesses import run_python

import atss_ops
from atss_detector import cli
from atss_detector.anchors import anchor_validity
from atss_detector.coco import CocoDetection, find_split
from atss_detector.config import Config, preset
from atss_detector.data import build_dataset, collate
from atss_detector.model import build_model
from atss_detector.synthetic import CLASSES, SyntheticShapes, SyntheticSpec
from atss_detector.training import read_log

REPO = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--threads", "1"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def detector(*args: str) -> str:
    return run_python("-m", "atss_detector.cli", *args, OMP_NUM_THREADS="1")


# A crowd box per training image: the top-left quarter of the 64 px image.
CROWD = [0, 0, 32, 32]


def coco_with_crowd(root: Path) -> Path:
    """Synthetic images exported as COCO (train 8, val 4), each train image with one crowd box."""
    for split, count in (("train", 8), ("val", 4)):
        SyntheticShapes(split, count, SyntheticSpec(image_size=64, min_object=12)).export_coco(str(root / split))
    path = root / "train" / "annotations.json"
    data = json.loads(path.read_text())
    next_id = max(a["id"] for a in data["annotations"]) + 1
    for i, image in enumerate(data["images"]):
        data["annotations"].append(
            {
                "id": next_id + i,
                "image_id": image["id"],
                "category_id": data["categories"][0]["id"],
                "bbox": CROWD,
                "area": 32 * 32,
                "iscrowd": 1,
            }
        )
    path.write_text(json.dumps(data))
    return root


# --------------------------------------------------------------------------- flags and config


def test_flags_reach_the_config_and_left_out_keep_the_preset():
    parse = cli.build_parser().parse_args
    cfg = cli.train_config(parse(["train", "--preset", "tiny"]))
    assert cfg.model.ensure_positive is False and cfg.model.center_eps == 0.01 and cfg.data.ignore_crowd is False
    flags = ["--ensure-positive", "--no-center-test", "--ignore-crowd"]
    cfg = cli.train_config(parse(["train", "--preset", "tiny", *flags]))
    assert cfg.model.ensure_positive is True and cfg.model.center_eps is None and cfg.data.ignore_crowd is True
    assert cli.train_config(parse(["train", "--no-ensure-positive"])).model.ensure_positive is False
    model = build_model(cfg.model, 3)
    assert model.criterion.ensure_positive is True and model.criterion.center_eps is None


def test_ignore_crowd_with_synthetic_data_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *TINY, "--ignore-crowd"])
    assert exit_info.value.code == 2
    assert "--ignore-crowd needs COCO data" in capsys.readouterr().err
    cfg = preset("tiny")
    cfg.data.ignore_crowd = True
    with pytest.raises(ValueError, match="ignore_crowd .* needs COCO data"):
        build_dataset(cfg.data, "train", train=True)
    assert len(build_dataset(cfg.data, "val", train=False)) == 8  # evaluation does not care


def test_config_round_trip_keeps_the_new_fields_and_old_configs_load():
    cfg = preset("tiny")
    cfg.model = dataclasses.replace(cfg.model, center_eps=None, ensure_positive=True)
    cfg.data = dataclasses.replace(cfg.data, ignore_crowd=True)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["model"]["center_eps"] is None and d["model"]["ensure_positive"] is True and d["data"]["ignore_crowd"]
    assert Config.from_dict(d) == cfg
    # at their defaults the new fields are left out: a default run is written as before
    # (and the ablation's fingerprints of earlier runs still match); older configs load
    old = preset("demo").to_dict()
    assert "ensure_positive" not in old["model"] and "ignore_crowd" not in old["data"]
    assert Config.from_dict(old) == preset("demo")


# --------------------------------------------------------------------------- targets


def tiny_targets(assigner: str, ignore_boxes, **model):
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.model = dataclasses.replace(cfg.model, assigner=assigner, fcos_range_scale=64 / 800, **model)
    model = build_model(cfg.model, len(CLASSES))
    dataset = build_dataset(cfg.data, "train", train=False)
    batch = collate([dataset[i] for i in range(2)], cfg.data.size_divisible)
    features = model.backbone(batch.images)
    anchors, counts = model.anchor_generator([f.shape[-2:] for f in features], batch.images.device)
    valid = anchor_validity(anchors, batch.image_sizes)
    targets = model.criterion.targets(anchors, counts, valid, batch.boxes, batch.labels, ignore_boxes)
    return model, batch, features, anchors, counts, valid, targets


@pytest.mark.parametrize("assigner", ["atss", "max_iou", "fcos"])
def test_anchors_under_an_ignore_box_are_neither_positive_nor_negative(assigner):
    crowd = [torch.tensor([CROWD], dtype=torch.float32), torch.zeros(0, 4)]  # image 1: no crowd box
    model, batch, features, anchors, counts, valid, targets = tiny_targets(assigner, crowd)
    padded, gt_counts = atss_ops.pad_gt_boxes(crowd)
    ignored = atss_ops.ignore_mask(anchors, padded, gt_counts)
    assert ignored[0].any() and not ignored[1].any()
    assert torch.equal(targets.assignment.gt_index == -2, ignored)
    assert not (targets.positive & ignored).any() and not (targets.valid & ignored).any()
    assert (targets.labels[ignored] == -2).all() and (targets.centerness[ignored] == 0).all()  # assign_targets
    _, _, _, _, _, _, plain = tiny_targets(assigner, None)
    if assigner == "atss":
        gt_boxes, gt_counts = atss_ops.pad_gt_boxes(batch.boxes)
        expected = atss_ops.atss_assign(anchors, counts, gt_boxes, gt_counts, anchor_valid=valid, anchor_ignore=ignored)
        assert torch.equal(targets.assignment.gt_index, expected.gt_index)
        assert torch.equal(targets.valid, valid & ~ignored)
    else:
        assert torch.equal(targets.valid, plain.valid & ~ignored)
    # image 1 has no crowd box: its targets are those without ignore boxes
    assert torch.equal(targets.assignment.gt_index[1], plain.assignment.gt_index[1])
    # the classification loss leaves the ignored anchors out: it is the loss of the same
    # targets with those anchors invalid, and no longer the loss with them as background
    cls, box, ctr = model.head(features)
    losses = model.criterion(cls, box, ctr, anchors, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    as_background = targets._replace(valid=targets.valid | (ignored & valid))
    assert model.criterion(cls, box, ctr, anchors, as_background)["loss_cls"] > losses["loss_cls"]
    # the model's forward passes the ignore boxes on
    forward = model(batch.images, batch.image_sizes, batch.boxes, batch.labels, crowd)
    assert torch.allclose(forward["loss_cls"], losses["loss_cls"])


def test_no_ignore_boxes_means_no_ignore_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("ignore_mask called without ignore boxes")

    monkeypatch.setattr(atss_ops, "ignore_mask", fail)
    _, _, _, _, _, _, empty = tiny_targets("atss", [torch.zeros(0, 4)] * 2)
    _, _, _, _, _, _, none = tiny_targets("atss", None)
    assert torch.equal(empty.assignment.gt_index, none.assignment.gt_index) and torch.equal(empty.valid, none.valid)
    assert (none.assignment.gt_index >= -1).all()


def test_ensure_positive_and_no_center_test_reach_the_assignment():
    model, batch, _, anchors, counts, valid, targets = tiny_targets("atss", None, center_eps=None, ensure_positive=True)
    gt_boxes, gt_counts = atss_ops.pad_gt_boxes(batch.boxes)
    expected = atss_ops.atss_assign(
        anchors, counts, gt_boxes, gt_counts, anchor_valid=valid, center_eps=None, ensure_positive=True
    )
    assert torch.equal(targets.assignment.gt_index, expected.gt_index)
    # tiny GTs inside one cell: the centre test leaves them without positives, ensure_positive does not
    tiny = [torch.tensor([[21.0, 21, 23, 23]]), torch.tensor([[41.0, 41, 42, 42]])]
    labels = [torch.tensor([0]), torch.tensor([1])]
    base = preset("tiny").model
    default = build_model(base, len(CLASSES)).criterion.targets(anchors, counts, valid, tiny, labels)
    ensure_only = build_model(dataclasses.replace(base, ensure_positive=True), len(CLASSES))
    ensured = ensure_only.criterion.targets(anchors, counts, valid, tiny, labels)
    assert (default.assignment.num_positive[:, 0] == 0).all()
    assert (ensured.assignment.num_positive[:, 0] >= 1).all()
    assert (ensured.assignment.num_positive >= default.assignment.num_positive).all()


# --------------------------------------------------------------------------- COCO crowd boxes


def test_coco_crowd_boxes_become_ignore_boxes_only_with_ignore_crowd(tmp_path):
    root = coco_with_crowd(tmp_path)
    annotation_file, image_dir = find_split(str(root), "train")
    kept = CocoDetection(annotation_file, image_dir, ignore_crowd=True)[0]
    assert kept["ignore_boxes"].tolist() == [CROWD]
    dropped = CocoDetection(annotation_file, image_dir)[0]
    assert "ignore_boxes" not in dropped and torch.equal(dropped["boxes"], kept["boxes"])

    cfg = preset("tiny").data
    cfg = dataclasses.replace(cfg, data=str(root), image_size=128, flip_prob=1.0, ignore_crowd=True)
    dataset = build_dataset(cfg, "train", train=True)
    batch = collate([dataset[0], dataset[1]], cfg.size_divisible)
    # resized (shorter side 64 -> 128) and flipped with the image, like the boxes
    for i, ignore in enumerate(batch.ignore_boxes):
        (sx, sy), w = batch.scales[i].tolist(), int(batch.image_sizes[i, 1])
        assert sx > 1.9 and ignore.tolist() == [pytest.approx([w - 32 * sx, 0, w, 32 * sy])]
    assert batch.to(torch.device("cpu")).ignore_boxes[1].tolist() == batch.ignore_boxes[1].tolist()
    without = build_dataset(dataclasses.replace(cfg, ignore_crowd=False), "train", train=True)
    assert "ignore_boxes" not in without[0] and collate([without[0]]).ignore_boxes is None
    assert "ignore_boxes" not in build_dataset(cfg, "val", train=False)[0]  # evaluation reads crowd from the json


def test_train_with_the_new_flags_then_resume(tmp_path):
    pytest.importorskip("pycocotools")  # training evaluates with it
    root = coco_with_crowd(tmp_path / "coco")
    out = tmp_path / "run"
    flags = ["--data", str(root), "--image-size", "64", "--output-dir", str(out)]
    detector("train", *TINY, *flags, "--iterations", "2", "--ensure-positive", "--no-center-test", "--ignore-crowd")
    log = [r for r in read_log(str(out / "train_log.jsonl")) if r["kind"] == "train"]
    assert [r["iteration"] for r in log] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r[k])) for r in log for k in ("loss", "loss_cls", "loss_box", "loss_ctr"))
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["center_eps"] is None and saved["model"]["ensure_positive"] and saved["data"]["ignore_crowd"]
    # resumed, the flags left out keep the checkpoint's values
    detector("train", "--output-dir", str(out), "--resume", "--iterations", "3", "--threads", "1")
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["iteration"] == 3
    resumed = Config.from_dict(checkpoint["config"])
    assert resumed.model == Config.from_dict(saved).model and resumed.data == Config.from_dict(saved).data
