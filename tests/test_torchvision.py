"""atss_ops.integrations.torchvision: torchvision's RetinaNet and FCOS trained with ATSS.

The models here are torchvision's classes on a tiny two-level backbone, so the
whole file runs in seconds on a CPU. What the heads receive as ``matched_idxs``
is checked against :func:`atss_ops.reference.atss_assign`, image by image, on
the anchors torchvision generated.
"""

from __future__ import annotations

import copy
import importlib
import pickle
import sys
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

pytest.importorskip("torchvision")

from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402

import atss_ops  # noqa: E402
from atss_ops.integrations.torchvision import ATSSComputeLoss, fcos_assign_anchors, use_atss_ops  # noqa: E402

CHANNELS = 32
STRIDES = (8, 16)


class TinyBackbone(nn.Module):
    """Two feature maps, strides 8 and 16: enough for the heads and the anchor generator."""

    out_channels = CHANNELS

    def __init__(self):
        super().__init__()
        self.p3 = nn.Sequential(
            nn.Conv2d(3, CHANNELS, 3, stride=4, padding=1),
            nn.ReLU(),
            nn.Conv2d(CHANNELS, CHANNELS, 3, stride=2, padding=1),
        )
        self.p4 = nn.Conv2d(CHANNELS, CHANNELS, 3, stride=2, padding=1)

    def forward(self, x):
        p3 = self.p3(x)
        return OrderedDict([("p3", p3), ("p4", self.p4(torch.relu(p3)))])


def make_model(kind: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    # No resize while training: the boxes stay in the images' pixels, so the expected
    # assignment below needs no transform.
    common = dict(min_size=64, max_size=96, _skip_resize=True, **kwargs)
    if kind == "retinanet":
        sizes = tuple((4 * s, 5 * s, 6 * s) for s in STRIDES)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(STRIDES))  # 9 anchors per location
        return RetinaNet(TinyBackbone(), num_classes=3, anchor_generator=anchors, **common)
    anchors = AnchorGenerator(tuple((s,) for s in STRIDES), ((1.0,),) * len(STRIDES))
    return FCOS(TinyBackbone(), num_classes=3, anchor_generator=anchors, **common)


KINDS = ("retinanet", "fcos")


@pytest.fixture(autouse=True)
def one_thread(restore_threads):
    """These models are tiny: one intra-op thread runs them fastest, and on a shared
    machine a second thread spinning for a busy core makes each step 50x slower."""
    torch.set_num_threads(1)


def random_boxes(generator, count, height, width, min_side=4.0):
    if count == 0:
        return torch.zeros(0, 4)
    x1 = torch.rand(count, generator=generator) * (width - min_side - 1)
    y1 = torch.rand(count, generator=generator) * (height - min_side - 1)
    w = min_side + torch.rand(count, generator=generator) * (width - x1 - min_side)
    h = min_side + torch.rand(count, generator=generator) * (height - y1 - min_side)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def make_batch(case: str, seed: int = 0):
    """``(images, targets)``: lists as torchvision's detectors take them."""
    g = torch.Generator().manual_seed(seed)
    sizes = {
        "random": [(64, 64), (64, 64), (64, 64)],
        "empty": [(64, 64), (64, 64), (64, 64)],
        "all-empty": [(64, 64), (64, 64)],
        "crowded": [(64, 64), (64, 64)],
        "sizes": [(64, 96), (40, 72), (57, 33)],  # padded to 64 x 96 by the transform
    }[case]
    counts = {"random": [3, 1, 5], "empty": [2, 0, 4], "all-empty": [0, 0], "crowded": [40, 2], "sizes": [4, 3, 2]}[
        case
    ]
    images, targets = [], []
    for (h, w), count in zip(sizes, counts):
        images.append(torch.rand(3, h, w, generator=g))
        boxes = random_boxes(g, count, h, w)
        if case == "crowded" and count:
            boxes[count // 2 :] = boxes[0] + torch.rand(count - count // 2, 4, generator=g)  # near-duplicates
            boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = torch.randint(0, 3, (count,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


class Spy:
    """Wraps ``model.head.compute_loss`` to keep what the head received."""

    def __init__(self, model):
        self.head_loss = model.head.compute_loss
        model.head.compute_loss = self

    def __call__(self, targets, head_outputs, anchors, matched_idxs):
        self.targets, self.head_outputs, self.anchors, self.matched_idxs = targets, head_outputs, anchors, matched_idxs
        return self.head_loss(targets, head_outputs, anchors, matched_idxs)


def expected_matches(kind, anchors, images, targets, topk=9, center_eps=0.01, ensure_positive=False):
    """Image by image, with the reference: the contract's gt_index on the model's anchors
    (RetinaNet, topk = k x 9) or on 8x anchors about the same points (FCOS, topk = k)."""
    padded_h = max(i.shape[-2] for i in images)
    padded_w = max(i.shape[-1] for i in images)
    padded_h, padded_w = -(-padded_h // 32) * 32, -(-padded_w // 32) * 32  # size_divisible
    per_location = 9 if kind == "retinanet" else 1
    levels = [-(-padded_h // s) * -(-padded_w // s) * per_location for s in STRIDES]
    out = []
    for image, target, image_anchors in zip(images, targets, anchors):
        assert sum(levels) == image_anchors.shape[0]
        if kind == "fcos":
            centres = (image_anchors[:, :2] + image_anchors[:, 2:]) / 2
            sides = image_anchors[:, 2:] - image_anchors[:, :2]
            assign_on = torch.cat([centres - sides * 4, centres + sides * 4], dim=1)
        else:
            assign_on = image_anchors
        cx = (image_anchors[:, 0] + image_anchors[:, 2]) / 2
        cy = (image_anchors[:, 1] + image_anchors[:, 3]) / 2
        valid = (cx < image.shape[-1]) & (cy < image.shape[-2])
        result = atss_ops.reference.atss_assign(
            assign_on,
            levels,
            target["boxes"][None],
            None,
            topk * per_location,
            valid[None],
            center_eps,
            None,
            ensure_positive,
        )
        out.append(result.gt_index[0])
    return out


# ----------------------------------------------------------------------------- matched indices


@pytest.mark.parametrize("case", ["random", "empty", "all-empty", "crowded", "sizes"])
@pytest.mark.parametrize("kind", KINDS)
def test_matched_idxs_equal_the_reference_image_by_image(kind, case):
    model = use_atss_ops(make_model(kind)).train()
    spy = Spy(model)
    images, targets = make_batch(case)
    losses = model(images, targets)
    want = expected_matches(kind, spy.anchors, images, targets)
    for b, (got, expected) in enumerate(zip(spy.matched_idxs, want)):
        assert got.dtype == torch.int64 and got.shape == expected.shape
        assert torch.equal(got, expected), f"image {b}"
    assert all(torch.isfinite(v) for v in losses.values())
    if case == "crowded":  # several GTs got positives (FCOS's 8S anchors are as large as these 64 px images)
        assert len(set(spy.matched_idxs[0][spy.matched_idxs[0] >= 0].tolist())) > (5 if kind == "retinanet" else 0)
    if case in ("random", "empty", "sizes"):
        # The losses are the head's own losses of that same assignment, image by image.
        want_losses = spy.head_loss(spy.targets, spy.head_outputs, spy.anchors, want)
        assert losses.keys() == want_losses.keys()
        for name in losses:
            assert torch.equal(losses[name], want_losses[name]), name


@pytest.mark.parametrize(
    "kind, options",
    [
        ("retinanet", dict(topk=3)),
        ("fcos", dict(topk=3)),
        ("fcos", dict(center_eps=2.0)),
        ("retinanet", dict(center_eps=None)),
        ("retinanet", dict(ensure_positive=True)),
    ],
)
def test_arguments_reach_the_assignment(kind, options):
    model = use_atss_ops(make_model(kind), **options).train()
    spy = Spy(model)
    images, targets = make_batch("random", seed=1)
    model(images, targets)
    want = expected_matches(kind, spy.anchors, images, targets, **options)
    assert all(torch.equal(g, w) for g, w in zip(spy.matched_idxs, want))


def test_fcos_assign_anchors_are_8x_about_the_same_points():
    points = torch.tensor([[-4.0, -4.0, 4.0, 4.0], [8.0, 24.0, 24.0, 40.0]])
    assert torch.equal(
        fcos_assign_anchors(points), torch.tensor([[-32.0, -32.0, 32.0, 32.0], [-48.0, -32.0, 80.0, 96.0]])
    )
    assert torch.equal(fcos_assign_anchors(points, 4.0)[0], torch.tensor([-16.0, -16.0, 16.0, 16.0]))


def test_one_atss_assign_call_per_step(monkeypatch):
    calls = []
    real = atss_ops.atss_assign

    def counting(*args, **kwargs):
        calls.append(args[2].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(atss_ops, "atss_assign", counting)
    model = use_atss_ops(make_model("retinanet")).train()
    model(*make_batch("sizes"))
    assert calls == [torch.Size([3, 4, 4])]  # the whole padded batch at once


class ShiftedAnchors(AnchorGenerator):
    """A generator of another class: image b's anchors moved by ``shifts[b]`` pixels."""

    def __init__(self, shifts, *args):
        super().__init__(*args)
        self.shifts = shifts

    def forward(self, image_list, feature_maps):
        return [a + shift for a, shift in zip(super().forward(image_list, feature_maps), self.shifts)]


@pytest.mark.parametrize("shifts, calls", [((0.0, 2.0, 0.0), 3), ((0.0, 0.0, 0.0), 1)])
def test_another_generator_is_compared_image_by_image(monkeypatch, shifts, calls):
    """Anchors that differ between images get one atss_assign call each; equal ones share one."""
    model = make_model("retinanet")
    own = model.anchor_generator
    model.anchor_generator = ShiftedAnchors(shifts, own.sizes, own.aspect_ratios)
    use_atss_ops(model).train()
    seen = []
    real = atss_ops.atss_assign
    monkeypatch.setattr(atss_ops, "atss_assign", lambda *a, **k: seen.append(1) or real(*a, **k))
    spy = Spy(model)
    images, targets = make_batch("random")
    model(images, targets)
    assert len(seen) == calls
    want = expected_matches("retinanet", spy.anchors, images, targets)
    assert all(torch.equal(g, w) for g, w in zip(spy.matched_idxs, want))


@pytest.mark.parametrize("kind", KINDS)
def test_ignore_boxes_are_between_thresholds(kind):
    model = use_atss_ops(make_model(kind), ignore_box_key="ignore").train()
    spy = Spy(model)
    images, targets = make_batch("random")
    targets[0]["ignore"] = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    model(images, targets)
    matched = spy.matched_idxs[0]
    anchors = spy.anchors[0]
    covered = atss_ops.ignore_mask(anchors, targets[0]["ignore"][None], iof_threshold=0.5)[0]
    assert covered.any()
    assert torch.equal(matched == -2, covered)
    assert not (spy.matched_idxs[1] == -2).any()  # images without the key ignore nothing


# ----------------------------------------------------------------------------- losses and training


@pytest.mark.parametrize("kind", KINDS)
def test_a_few_training_steps_lower_the_loss(kind):
    model = use_atss_ops(make_model(kind, seed=1)).train()
    images, targets = make_batch("random", seed=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(12):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert all(torch.isfinite(torch.tensor(history)))
    assert sum(history[-3:]) < 0.8 * sum(history[:3]), history


@pytest.mark.parametrize("kind", KINDS)
def test_eval_predictions_are_unchanged(kind):
    model = make_model(kind).eval()
    images, _ = make_batch("sizes")
    with torch.no_grad():
        before = model(images)
        use_atss_ops(model)
        after = model(images)
    for b, a in zip(before, after):
        assert b.keys() == a.keys()
        assert all(torch.equal(b[k], a[k]) for k in b)


def test_state_dict_copies_and_pickles_are_untouched():
    plain = make_model("retinanet")
    model = use_atss_ops(make_model("retinanet"))
    assert model.state_dict().keys() == plain.state_dict().keys()
    images, targets = make_batch("random")
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(twin.compute_loss, ATSSComputeLoss) and twin.compute_loss.model is twin
        spy = Spy(twin.train())
        twin(images, targets)
        assert all(
            torch.equal(g, w)
            for g, w in zip(spy.matched_idxs, expected_matches("retinanet", spy.anchors, images, targets))
        )


def test_calling_it_again_replaces_the_settings():
    model = make_model("fcos")
    use_atss_ops(model, topk=9)
    use_atss_ops(model, topk=3)
    assert len(model.anchor_generator._forward_hooks) == 1
    spy = Spy(model.train())
    images, targets = make_batch("random")
    model(images, targets)
    assert all(
        torch.equal(g, w)
        for g, w in zip(spy.matched_idxs, expected_matches("fcos", spy.anchors, images, targets, topk=3))
    )


def test_torchscript_refuses_a_switched_model():
    """Scripting compiles the class's compute_loss: a scripted model would silently
    train with torchvision's matcher, so scripting a switched model must fail; the
    inference weights script as usual on a plain model."""
    model = use_atss_ops(make_model("retinanet"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        with pytest.raises(RuntimeError, match="_record_sizes"):
            torch.jit.script(model)


# ----------------------------------------------------------------------------- errors


def test_other_models_are_a_type_error():
    with pytest.raises(TypeError, match="must be a torchvision.models.detection.RetinaNet or FCOS, got Linear"):
        use_atss_ops(nn.Linear(2, 2))
    faster = FasterRCNN.__new__(FasterRCNN)
    with pytest.raises(TypeError, match="got FasterRCNN"):
        use_atss_ops(faster)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(topk=0), r"topk must be >= 1, got 0"),
        (dict(topk=2.0), r"topk must be an int, got float 2.0"),
        (dict(topk=True), r"topk must be an int, got bool True"),
        (dict(center_eps=-1.0), r"center_eps must be finite and >= 0 .*got -1$"),
        (dict(center_eps=float("nan")), r"center_eps must be finite and >= 0"),
        (dict(center_eps="0.01"), r"center_eps must be a number or None, got str '0.01'"),
        (dict(ensure_positive=1), r"ensure_positive must be a bool, got int 1"),
        (dict(ignore_box_key=3), r"ignore_box_key must be a str or None, got int 3"),
        (dict(iof_threshold=1.5), r"iof_threshold must be a number in \[0, 1\], got float 1.5"),
        (dict(fcos_anchor_scale=0), r"fcos_anchor_scale must be finite and > 0, got 0"),
    ],
)
def test_bad_arguments_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        use_atss_ops(make_model("fcos"), **options)


@pytest.mark.parametrize("options", [dict(center_eps=None), dict(ensure_positive=True)])
def test_fcos_refuses_positives_outside_their_box(options):
    """torchvision's FCOS head takes a square root of distance ratios: NaN for a point
    outside its box, which these options allow (seen in 4 and 8 of 10 batches here)."""
    with pytest.raises(ValueError, match=r"FCOS needs center_eps >= 0 and ensure_positive=False.*NaN"):
        use_atss_ops(make_model("fcos"), **options)
    use_atss_ops(make_model("retinanet"), **options)  # RetinaNet's box deltas are fine


def test_compute_loss_alone_says_what_is_missing():
    model = use_atss_ops(make_model("retinanet"))
    with pytest.raises(RuntimeError, match="call the model"):
        model.compute_loss([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}], {}, [])


def test_without_torchvision_the_import_error_says_so(monkeypatch):
    monkeypatch.delitem(sys.modules, "atss_ops.integrations.torchvision")
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(
        ImportError, match=r"atss_ops.integrations.torchvision needs torchvision.*pip install torchvision"
    ):
        importlib.import_module("atss_ops.integrations.torchvision")


# ----------------------------------------------------------------------------- devices and the table


@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_cpu(kind):
    images, targets = make_batch("sizes")
    cpu = use_atss_ops(make_model(kind)).train()
    cpu_spy = Spy(cpu)
    cpu(images, targets)
    gpu = use_atss_ops(make_model(kind).cuda()).train()
    gpu_spy = Spy(gpu)
    gpu([i.cuda() for i in images], [{k: v.cuda() for k, v in t.items()} for t in targets])
    for c, g in zip(cpu_spy.matched_idxs, gpu_spy.matched_idxs):
        assert g.is_cuda and torch.equal(c, g.cpu())


def test_the_table_runs_the_detectors_schedule_as_recorded():
    """experiments/torchvision_table.py takes its learning rate from the detector's schedule
    (``lr_factor(..., decay_after_warmup=True)``); every step's rate is, bit for bit, that of the
    formula the records of docs/experiments/torchvision.json were trained with."""
    import dataclasses
    import math

    from experiments.torchvision_table import SMOKE, Schedule

    def recorded(step, schedule):  # the table's own copy before issue 24
        if step < schedule.warmup_iters:
            return 0.001 + (1 - 0.001) * step / schedule.warmup_iters
        progress = (step - schedule.warmup_iters) / max(1, schedule.iterations - schedule.warmup_iters)
        return 0.5 * (1 + math.cos(math.pi * progress))

    for schedule in (Schedule(), SMOKE, dataclasses.replace(Schedule(), iterations=300, warmup_iters=7)):
        factor = schedule.lr_factor()
        for step in range(schedule.iterations):
            assert schedule.lr * factor(step) == schedule.lr * recorded(step, schedule), (schedule, step)


def test_the_table_command_smoke(tmp_path):
    pytest.importorskip("pycocotools")
    from experiments import torchvision_table

    output = tmp_path / "torchvision.json"
    assert torchvision_table.main(["--smoke", "--seeds", "0", "--output", str(output)]) == 0
    import json

    record = json.loads(output.read_text())
    assert {(r["model"], r["variant"]) for r in record["runs"]} == set(torchvision_table.MAIN_ROWS)
    assert [row["row"] for row in record["summary"]] == ["RetinaNet", "RetinaNet + ATSS", "FCOS", "FCOS + ATSS"]
    # A second call finds every run done and trains nothing.
    assert torchvision_table.main(["--smoke", "--seeds", "0", "--output", str(output)]) == 0
    assert json.loads(output.read_text())["runs"] == record["runs"]
