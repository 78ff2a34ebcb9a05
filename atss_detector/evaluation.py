"""COCO box metrics through pycocotools, their table and files, and the evaluation of a model on a split."""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed as dist
from .data import BadImages, build_loader
from .model import ATSSDetector
from .prediction import predict_batches

# The first six numbers of COCOeval.stats, in order.
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# What write_metrics writes (a training run's final evaluation, `atss-detector eval`).
METRICS_JSON = "metrics.json"
METRICS_TXT = "metrics.txt"


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def to_coco_results(
    image_ids: Sequence[int], detections: Sequence[Dict[str, Tensor]], category_ids: Sequence[int]
) -> List[Dict]:
    """COCO result records (``bbox`` as ``x, y, w, h``) from per-image detections in original pixels."""
    records = []
    for image_id, det in zip(image_ids, detections):
        boxes = det["boxes"].tolist()
        for (x1, y1, x2, y2), score, label in zip(boxes, det["scores"].tolist(), det["labels"].tolist()):
            records.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[label]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return records


def coco_evaluate(coco_gt, results: List[Dict], image_ids: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` of ``results`` against ``coco_gt``.

    Values are fractions in [0, 1]; -1 where the ground truth has no box of that
    size range (pycocotools' convention). No detections at all gives zeros.
    Only the images of ``coco_gt`` that have results or ground truth count; with
    ``image_ids``, only those images (e.g. all but the ones that could not be decoded).
    """
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {name: 0.0 for name in METRICS}
    with _quiet():
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(METRICS, evaluator.stats[: len(METRICS)])}


def _percent(value: float) -> str:
    return f"{100 * value:.1f}" if value >= 0 else "n/a"  # pycocotools' -1: no GT box of that size


def format_table(metrics: Dict[str, float], title: str = "COCO box metrics") -> str:
    """A fixed-width text table of the metrics (in percent)."""
    names = [m for m in METRICS if m in metrics]
    header = " ".join(f"{n:>6}" for n in names)
    values = " ".join(f"{_percent(metrics[n]):>6}" for n in names)
    return "\n".join([title, "-" * max(len(title), len(header)), header, values])


def format_line(metrics: Dict[str, float]) -> str:
    """``AP 33.8 AP50 58.0 ...`` on one line (in percent)."""
    return " ".join(f"{n} {_percent(metrics[n])}" for n in METRICS if n in metrics)


def write_metrics(directory: str, metrics: Dict[str, float], info: Dict[str, Any], stem: str = "metrics") -> None:
    """``<stem>.json`` (metrics and ``info``) and ``<stem>.txt`` (the table) in ``directory``."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, stem + ".json"), "w") as f:
        json.dump({"metrics": metrics, **info}, f, indent=2)
    with open(os.path.join(directory, stem + ".txt"), "w") as f:
        f.write(format_table(metrics) + "\n")


def unwrap(model: nn.Module) -> ATSSDetector:
    return model.module if isinstance(model, DistributedDataParallel) else model


def evaluate(
    model: nn.Module,
    dataset,
    device: torch.device,
    batch_size: int = 8,
    amp: Optional[torch.dtype] = None,
    num_workers: int = 0,
    bad_images: Optional[BadImages] = None,
) -> Dict[str, float]:
    """COCO metrics of ``model`` on ``dataset``; under ``torchrun`` each rank runs
    its share and rank 0 scores the union. Every rank returns the metrics.

    An image that cannot be decoded stops the evaluation (``ImageError`` naming it), or with
    ``bad_images`` skipping is left out (of the score too) and recorded there."""
    model = unwrap(model)
    was_training = model.training
    bad_images = bad_images or BadImages(skip=False)
    loader = build_loader(
        dataset,
        batch_size,
        train=False,
        rank=dist.rank(),
        world_size=dist.world_size(),
        num_workers=num_workers,
        defer_bad_images=True,
    )
    image_ids, detections = predict_batches(model, bad_images.batches(loader), device, amp, progress=dist.is_main())
    results: Dict[int, List[Dict]] = {}
    for shard in dist.all_gather_objects(
        {i: to_coco_results([i], [d], dataset.category_ids) for i, d in zip(image_ids, detections)}
    ):
        results.update(shard)  # images repeated to even out the shares collapse here
    metrics = None
    if dist.is_main():
        skipped = len(results) < len(dataset)  # images that could not be decoded: left out of the score too
        metrics = coco_evaluate(
            dataset.coco(), [r for records in results.values() for r in records], sorted(results) if skipped else None
        )
    model.train(was_training)
    return dist.broadcast_object(metrics)
