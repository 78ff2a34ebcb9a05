"""``python -m atss_detector.demo``: train the detector on the built-in data, on a CPU, in minutes.

Trains with the ``demo`` preset (see :mod:`atss_detector.config`), evaluates
on the synthetic val split and writes into ``--out`` (default ``runs/demo``):
``metrics.json`` / ``metrics.txt`` (the COCO table), ``curves.png`` (losses and
AP), ``predictions.png`` (val images with their detections, ground truth in
white, and a legend of the colours), plus the checkpoint and logs of any training run. Prints the metrics
table and the wall time at the end.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Optional, Sequence

import torch

from .config import preset
from .data import build_dataset, build_loader
from .evaluation import format_table

NUM_SHOWN = 8
SHOWN_SCORE = 0.4  # detections drawn in predictions.png score at least this


def write_predictions_png(checkpoint: str, path: str, num_images: int = NUM_SHOWN) -> None:
    """A grid of the first ``num_images`` val images with the checkpoint's detections."""
    from .checkpoints import model_from_checkpoint
    from .prediction import predict_batches
    from .visualize import detection_legend, draw_detections, save_grid

    device = torch.device("cpu")
    model, cfg, ckpt = model_from_checkpoint(checkpoint, device)
    dataset = build_dataset(cfg.data, cfg.data.val_split, train=False)
    subset = torch.utils.data.Subset(dataset, range(min(num_images, len(dataset))))
    _, detections = predict_batches(model, build_loader(subset, num_images, train=False), device)
    tiles = []
    for index, det in enumerate(detections):
        image, boxes, _ = dataset.dataset.render(index)
        tiles.append(
            draw_detections(image, det, ckpt["classes"], score_threshold=SHOWN_SCORE, ground_truth=boxes, min_side=256)
        )
    save_grid(tiles, path, legend=detection_legend(ckpt["classes"], SHOWN_SCORE))


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all available cores)")
    parser.add_argument("--device", default="cpu", help="'cpu' (default, what the numbers are for), 'cuda', 'auto'")
    args = parser.parse_args(argv)

    from .checkpoints import CHECKPOINT
    from .evaluation import write_metrics
    from .training import LOG, train

    started = float(os.environ.pop("ATSS_DEMO_STARTED", time.time()))  # counts the restart
    cfg = preset("demo")
    cfg.train.output_dir = args.out
    cfg.train.threads = args.threads
    cfg.train.device = args.device
    if os.path.exists(os.path.join(args.out, LOG)):
        os.remove(os.path.join(args.out, LOG))  # a fresh run: do not append to an old log
    summary = train(cfg)
    write_predictions_png(os.path.join(args.out, CHECKPOINT), os.path.join(args.out, "predictions.png"))
    wall = time.time() - started
    write_metrics(
        args.out,
        summary["metrics"],
        {
            "split": cfg.data.val_split,
            "images": cfg.data.synthetic_val_images,
            "iterations": summary["iterations"],
            "train_seconds": round(summary["train_seconds"], 1),
            "wall_seconds": round(wall, 1),
            "threads": torch.get_num_threads(),
            "device": str(cfg.train.device),
        },
    )

    print()
    print(format_table(summary["metrics"], f"demo: synthetic val, {cfg.data.synthetic_val_images} images"))
    print(
        f"wall time {wall / 60:.1f} min ({wall:.0f} s, of which training {summary['train_seconds']:.0f} s) "
        f"on {torch.get_num_threads()} CPU threads; outputs in {args.out}/"
    )


if __name__ == "__main__":
    from .runtime import restart_with_passive_openmp

    restart_with_passive_openmp("atss_detector.demo", {"ATSS_DEMO_STARTED": repr(time.time())})
    main()
