"""The paper's rows in torchvision's own detectors: RetinaNet and FCOS, with and without ATSS.

One command trains torchvision's ``RetinaNet`` (#A = 9: 3 scales x 3 ratios) and
``FCOS``, each as torchvision builds it and each switched to ATSS by
:func:`atss_ops.integrations.torchvision.use_atss_ops`, on the bundled synthetic
shapes, with two seeds: 8 runs, the same schedule for all, evaluated with
pycocotools::

    python -m experiments.torchvision_table                     # docs/experiments/torchvision.json
    python -m experiments.torchvision_table --rows diagnostics  # FCOS + ATSS on 4S anchors
    python -m experiments.torchvision_table --smoke             # seconds: what CI runs

The model: a torchvision ResNet-18 from scratch (BatchNorm) with an FPN on its
stride-8 and stride-16 stages (P3, P4: the images are 128 px, objects 8-100 px),
64 channels; torchvision's heads (GroupNorm towers; RetinaNet's as
``retinanet_resnet50_fpn_v2`` builds it, GIoU box loss). Anchors, box coders,
losses, transform and inference are torchvision's; RetinaNet's anchors are 4S x
(2^0, 2^1/3, 2^2/3) with ratios 0.5, 1, 2 (torchvision's default design on these
strides), FCOS's one S x S point box per location. Both models keep every
detection above score 0.05 (RetinaNet's default; FCOS's is 0.2), at most 100 per
image (COCO's maxDets).

Every run's record is written to the JSON as soon as it ends (through a temporary
file, then renamed), so the same command again skips the runs done with the same
settings (a fingerprint of the schedule) and an interrupted table continues with
the run it was in. A progress line with the run's loss and the time left is
printed every ``--log-every`` steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from atss_detector.config import Config, TrainConfig, preset
from atss_detector.evaluation import METRICS, coco_evaluate, to_coco_results
from atss_detector.synthetic import SyntheticShapes, SyntheticSpec
from atss_detector.training import lr_factor

from . import records
from .ablate_grid import OCTAVE_SCALES, RATIOS  # RetinaNet #A = 9: 3 octave scales x 3 ratios

OUTPUT = os.path.join("docs", "experiments", "torchvision.json")
MODELS = ("RetinaNet", "FCOS")
SEEDS = (0, 1)


@dataclass(frozen=True)
class Schedule:
    """What every row shares: data, model size, optimisation."""

    image_size: int = 128  # synthetic images' longer side, px (also the transform's min and max size)
    train_images: int = 3200
    val_images: int = 200
    channels: int = 64  # FPN and head channels
    batch_size: int = 16
    iterations: int = 600
    lr: float = 2e-3  # AdamW
    weight_decay: float = 0.05
    warmup_iters: int = 50
    grad_clip: float = 10.0
    topk: int = 9  # ATSS's k
    threads: int = 1
    min_object: float = 8.0
    mean_objects: float = 8.0
    max_objects: int = 16

    def spec(self) -> SyntheticSpec:
        return SyntheticSpec(
            image_size=self.image_size,
            min_object=self.min_object,
            mean_objects=self.mean_objects,
            max_objects=self.max_objects,
        )

    @classmethod
    def from_config(cls, cfg: Config) -> "Schedule":
        """The schedule of a detector preset: its data, channels and optimisation (``iterations``
        set, one thread unless the preset says otherwise)."""
        data, train = cfg.data, cfg.train
        return cls(
            image_size=data.image_size,
            train_images=data.synthetic_train_images,
            val_images=data.synthetic_val_images,
            channels=cfg.model.fpn_channels,
            batch_size=train.batch_size,
            iterations=train.iterations,
            lr=train.lr,
            weight_decay=train.weight_decay,
            warmup_iters=train.warmup_iters,
            grad_clip=train.grad_clip,
            topk=cfg.model.topk,
            threads=train.threads or 1,
            min_object=data.synthetic_min_object,
            mean_objects=data.synthetic_mean_objects,
            max_objects=data.synthetic_max_objects,
        )

    def lr_factor(self):
        """The multiplier of ``lr`` at each step: the detector's cosine schedule
        (:func:`atss_detector.training.lr_factor`) with a warm-up from 0.001, decaying over
        the steps after the warm-up."""
        train = TrainConfig(schedule="cosine", warmup_iters=self.warmup_iters, warmup_factor=0.001)
        return lr_factor(train, self.iterations, decay_after_warmup=True)


# --smoke: the detector's own smoke preset (ablate-smoke: the tiny model's data and size, 2 steps).
SMOKE = Schedule.from_config(preset("ablate-smoke"))


# How a row matches: torchvision's own rule, or use_atss_ops with these arguments.
VARIANTS: Dict[str, Optional[Dict[str, Any]]] = {
    "torchvision": None,
    "atss": {},
    # A diagnostic of FCOS + ATSS on these small images (docs/torchvision.md): 4S assignment anchors.
    "atss-4S": {"fcos_anchor_scale": 4.0},
}
MAIN_ROWS = tuple((m, v) for m in MODELS for v in ("torchvision", "atss"))
DIAGNOSTIC_ROWS = (("FCOS", "atss-4S"),)


def row_name(model: str, variant: str) -> str:
    return {
        "torchvision": model,
        "atss": f"{model} + ATSS",
        "atss-4S": f"{model} + ATSS, 4S anchors",
    }[variant]


def fingerprint(schedule: Schedule) -> str:
    """:func:`experiments.records.fingerprint` of the schedule and the torch version."""
    return records.fingerprint({"schedule": dataclasses.asdict(schedule), "torch": torch.__version__})


# --------------------------------------------------------------------------- model


def build_model(name: str, num_classes: int, schedule: Schedule) -> nn.Module:
    """torchvision's ``RetinaNet`` or ``FCOS`` on a from-scratch ResNet-18 + FPN (P3, P4)."""
    import torchvision
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.retinanet import RetinaNetHead

    # layer2 -> P3 (stride 8), layer3 -> P4 (stride 16); layer4 is never run.
    backbone = BackboneWithFPN(
        torchvision.models.resnet18(weights=None), {"layer2": "p3", "layer3": "p4"}, [128, 256], schedule.channels
    )
    backbone.fpn.extra_blocks = None  # BackboneWithFPN adds a max-pooled level by default
    strides = (8, 16)
    size = schedule.image_size
    common = dict(min_size=size, max_size=size, score_thresh=0.05, detections_per_img=100)
    if name == "RetinaNet":
        sizes = tuple(tuple(4 * s * o for o in OCTAVE_SCALES) for s in strides)
        anchors = AnchorGenerator(sizes, (RATIOS,) * len(strides))
        head = RetinaNetHead(
            schedule.channels,
            anchors.num_anchors_per_location()[0],
            num_classes,
            norm_layer=partial(nn.GroupNorm, 32),
        )
        head.regression_head._loss_type = "giou"  # as retinanet_resnet50_fpn_v2 builds it
        return RetinaNet(backbone, num_classes, anchor_generator=anchors, head=head, **common)
    if name == "FCOS":
        anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
        return FCOS(backbone, num_classes, anchor_generator=anchors, **common)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


# --------------------------------------------------------------------------- data


class _Data:
    """The synthetic splits, drawn once per process and held in memory (uint8)."""

    def __init__(self, schedule: Schedule):
        spec = schedule.spec()
        self.train = SyntheticShapes("train", schedule.train_images, spec, seed=0)
        self.val = SyntheticShapes("val", schedule.val_images, spec, seed=0)
        self.train_items = [self.train[i] for i in range(len(self.train))]
        self.val_items = [self.val[i] for i in range(len(self.val))]
        self.coco_val = self.val.coco()
        self.num_classes = len(self.train.classes)


def _batch(items, indices, flips):
    images, targets = [], []
    for i, flip in zip(indices, flips):
        item = items[i]
        image = item["image"].float().div_(255)
        boxes = item["boxes"].clone()
        if flip:
            image = image.flip(-1)
            width = image.shape[-1]
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        images.append(image)
        targets.append({"boxes": boxes, "labels": item["labels"]})
    return images, targets


# --------------------------------------------------------------------------- one run


def build_row(model_name: str, variant: str, schedule: Schedule, num_classes: int) -> nn.Module:
    """The row's model: torchvision's, switched to ATSS by ``use_atss_ops`` unless ``variant`` is "torchvision"."""
    model = build_model(model_name, num_classes, schedule)
    options = VARIANTS[variant]
    if options is not None:
        from atss_ops.integrations.torchvision import use_atss_ops

        use_atss_ops(model, topk=schedule.topk, **options)
    return model


def train_one(
    model_name: str, variant: str, seed: int, schedule: Schedule, data: _Data, progress=None
) -> Dict[str, Any]:
    """Trains one row's model with one seed and evaluates it; returns the record."""
    torch.manual_seed(seed)
    model = build_row(model_name, variant, schedule, data.num_classes)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=schedule.lr,
    )
    rng = np.random.default_rng([seed, 17])
    order: List[int] = []
    losses: List[float] = []
    model.train()
    factor = schedule.lr_factor()
    start = time.perf_counter()
    for step in range(schedule.iterations):
        if len(order) < schedule.batch_size:
            order.extend(rng.permutation(len(data.train_items)).tolist())
        indices, order = order[: schedule.batch_size], order[schedule.batch_size :]
        images, targets = _batch(data.train_items, indices, rng.random(len(indices)) < 0.5)
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr * factor(step)
        loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), schedule.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, losses, time.perf_counter() - start)
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    model.eval()
    detections, image_ids = [], []
    with torch.no_grad():
        for first in range(0, len(data.val_items), schedule.batch_size):
            items = data.val_items[first : first + schedule.batch_size]
            detections += model([item["image"].float().div(255) for item in items])
            image_ids += [item["image_id"] for item in items]
    metrics = coco_evaluate(data.coco_val, to_coco_results(image_ids, detections, data.val.category_ids))
    eval_seconds = time.perf_counter() - start
    window = max(1, schedule.iterations // 10)
    return {
        "model": model_name,
        "variant": variant,
        "row": row_name(model_name, variant),
        "seed": seed,
        **metrics,
        "first_loss": statistics.fmean(losses[:window]),
        "last_loss": statistics.fmean(losses[-window:]),
        "loss_every_10": [round(statistics.fmean(losses[i : i + 10]), 4) for i in range(0, len(losses), 10)],
        "iterations": schedule.iterations,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "threads": torch.get_num_threads(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def positives(model_name: str, variant: str, schedule: Schedule, data: _Data, num_images: int = 64) -> Dict[str, float]:
    """How the row's matching treats the first ``num_images`` training images (no flip):
    positives per GT and the share of GTs left without any. The matching does not
    depend on the weights, so an untrained model tells it."""
    torch.manual_seed(0)
    model = build_row(model_name, variant, schedule, data.num_classes)
    seen: List[int] = []
    own_loss = model.head.compute_loss

    def count(targets, head_outputs, anchors, matched_idxs):
        for t, matched in zip(targets, matched_idxs):
            found = torch.bincount(matched[matched >= 0], minlength=t["boxes"].shape[0])
            seen.extend(found.tolist())
        return own_loss(targets, head_outputs, anchors, matched_idxs)

    model.head.compute_loss = count
    model.train()
    with torch.no_grad():
        for first in range(0, min(num_images, len(data.train_items)), schedule.batch_size):
            indices = range(first, min(first + schedule.batch_size, num_images, len(data.train_items)))
            model(*_batch(data.train_items, indices, [False] * len(indices)))
    return {
        "gts": len(seen),
        "positives_per_gt": round(statistics.fmean(seen), 2),
        "gts_without_positive": round(sum(1 for n in seen if n == 0) / len(seen), 4),
    }


# --------------------------------------------------------------------------- the table


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def summarise(runs: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per row: mean and half-range over seeds of every metric (in %), and each seed's AP."""
    rows = []
    for model_name, variant in MAIN_ROWS + DIAGNOSTIC_ROWS:
        done = sorted((r for r in runs if (r["model"], r["variant"]) == (model_name, variant)), key=lambda r: r["seed"])
        if done:
            row: Dict[str, Any] = {"row": row_name(model_name, variant), "seeds": [r["seed"] for r in done]}
            for metric in METRICS:
                values = [100 * r[metric] for r in done if r[metric] >= 0]  # pycocotools' -1: no GT of that size
                row[metric] = round(statistics.fmean(values), 2) if values else None
                row[metric + "_half_range"] = round((max(values) - min(values)) / 2, 2) if values else None
            row["AP_per_seed"] = [round(100 * r["AP"], 2) for r in done]
            row["train_minutes"] = round(statistics.fmean(r["train_seconds"] for r in done) / 60, 2)
            row["matching"] = done[0].get("matching")
            rows.append(row)
    return rows


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    lines = [
        "| row | AP | AP50 | AP75 | APs | APm | APl | AP per seed | train min |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        cells = [f"{row[m]:.1f} ± {row[m + '_half_range']:.1f}" if row[m] is not None else "n/a" for m in METRICS]
        seeds = ", ".join(f"{ap:.1f}" for ap in row["AP_per_seed"])
        lines.append(f"| {row['row']} | " + " | ".join(cells) + f" | {seeds} | {row['train_minutes']:.1f} |")
    return "\n".join(lines)


def run_table(schedule: Schedule, output: str, seeds: Sequence[int], rows: Sequence[tuple]) -> Dict[str, Any]:
    """Trains every ``(model, variant)`` of ``rows`` with every seed (seed by seed), skipping
    the runs ``output`` already holds for the same schedule; returns the record."""
    torch.set_num_threads(schedule.threads)
    key = fingerprint(schedule)
    record = records.load_json(output, {})
    if record.get("fingerprint") != key:
        record = {"fingerprint": key, "schedule": dataclasses.asdict(schedule), "runs": []}
    record["versions"] = {"torch": torch.__version__, "torchvision": _torchvision_version()}
    plan = [(m, v, s) for s in seeds for m, v in rows]
    done = {(r["model"], r["variant"], r["seed"]) for r in record["runs"]}
    todo = [p for p in plan if p not in done]
    print(f"{len(plan) - len(todo)} of {len(plan)} runs already in {output}; {len(todo)} to go", flush=True)
    if not todo:
        return record
    print(f"drawing {schedule.train_images} + {schedule.val_images} synthetic images ...", flush=True)
    data = _Data(schedule)
    table_start = time.perf_counter()
    run_seconds: List[float] = []
    matching: Dict[tuple, Dict[str, float]] = {}  # positives() depends on the row, not the seed
    for number, (model_name, variant, seed) in enumerate(todo, 1):
        label = f"[{number}/{len(todo)}] {row_name(model_name, variant)}, seed {seed}"
        every = max(1, schedule.iterations // 10)

        def progress(step, losses, elapsed, label=label, every=every, number=number):
            if step % every and step != schedule.iterations:
                return
            per_step = elapsed / step
            run_left = per_step * (schedule.iterations - step)
            typical = statistics.fmean(run_seconds) if run_seconds else per_step * schedule.iterations * 1.05
            table_left = run_left + typical * (len(todo) - number)
            print(
                f"{label}: step {step}/{schedule.iterations}, loss {statistics.fmean(losses[-every:]):.3f}, "
                f"{per_step:.2f} s/step, run left {_minutes(run_left)}, table left ~{_minutes(table_left)}",
                flush=True,
            )

        start = time.perf_counter()
        result = train_one(model_name, variant, seed, schedule, data, progress)
        if (model_name, variant) not in matching:
            matching[model_name, variant] = positives(model_name, variant, schedule, data)
        result["matching"] = matching[model_name, variant]
        run_seconds.append(time.perf_counter() - start)
        result["wall_seconds"] = round(run_seconds[-1], 1)
        record["runs"] = [
            r for r in record["runs"] if (r["model"], r["variant"], r["seed"]) != (model_name, variant, seed)
        ] + [result]
        record["summary"] = summarise(record["runs"])
        records.write_json_atomically(output, record)
        left = statistics.fmean(run_seconds) * (len(todo) - number)
        print(
            f"{label}: AP {100 * result['AP']:.1f} AP50 {100 * result['AP50']:.1f}, "
            f"{_minutes(run_seconds[-1])}; elapsed {_minutes(time.perf_counter() - table_start)}, "
            f"left ~{_minutes(left)}",
            flush=True,
        )
    print(format_table(record["summary"]), flush=True)
    return record


def _torchvision_version() -> str:
    import torchvision

    return torchvision.__version__


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.torchvision_table", description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=None, help=f"the JSON records (default {OUTPUT}; --smoke: a temp file)")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument(
        "--rows",
        choices=("main", "diagnostics", "all"),
        default="main",
        help="main: the four rows (default); diagnostics: FCOS + ATSS on 4S anchors",
    )
    parser.add_argument("--iterations", type=int, default=None, help="steps per run (default: the schedule's)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default 1)")
    parser.add_argument("--smoke", action="store_true", help="tiny images and 2 steps per run: what CI runs")
    args = parser.parse_args(argv)
    schedule = SMOKE if args.smoke else Schedule()
    if args.iterations is not None:
        schedule = dataclasses.replace(schedule, iterations=args.iterations)
    if args.threads is not None:
        schedule = dataclasses.replace(schedule, threads=args.threads)
    output = args.output
    if output is None:
        if args.smoke:
            import tempfile

            output = os.path.join(tempfile.mkdtemp(prefix="torchvision-table-"), "torchvision.json")
        else:
            output = OUTPUT
    seeds = [int(s) for s in args.seeds.split(",") if s]
    rows = {"main": MAIN_ROWS, "diagnostics": DIAGNOSTIC_ROWS, "all": MAIN_ROWS + DIAGNOSTIC_ROWS}[args.rows]
    run_table(schedule, output, seeds, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
