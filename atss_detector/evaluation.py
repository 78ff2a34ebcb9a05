"""COCO box metrics through pycocotools, and their table."""

from __future__ import annotations

import contextlib
import io
import json
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

from torch import Tensor

if TYPE_CHECKING:  # pycocotools is imported where it is used
    from pycocotools.coco import COCO

# The first six numbers of COCOeval.stats, in order.
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def coco_from_dict(data: Dict) -> "COCO":
    """A ``pycocotools.coco.COCO`` built from an in-memory COCO dict."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with _quiet():
        coco.createIndex()
    return coco


def load_coco(annotation_file: str) -> "COCO":
    """A ``pycocotools.coco.COCO`` read from ``annotation_file``, without its prints."""
    with open(annotation_file) as f:
        return coco_from_dict(json.load(f))


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
