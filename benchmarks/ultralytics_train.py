"""A short training of Ultralytics YOLO with its own assigner and with ``atss_ops.tal_assign``.

    python -m benchmarks.ultralytics_train [--epochs 60] [--seeds 0 1] [--images 64] [--threads 1]
                                           [--atss-warmup 0] [--out benchmarks/results] [--doc docs/ultralytics.md]
    python -m benchmarks.ultralytics_train --table-only benchmarks/results/ultralytics_train.json  # table again

Needs Ultralytics (``pip install atss-ops[ultralytics]``). Nothing is downloaded: the data set is written
here (``write_dataset``: coloured rectangles of two classes on noise, YOLO-format labels, ``data.yaml``),
the model is built from its yaml (``yolo11n.yaml``, no weights), and Ultralytics runs offline
(``YOLO_OFFLINE=1``, its settings in a temporary folder, ``plots=False``, ``amp=False``); its download
function is replaced by one that raises, so an attempt would stop the run.

Each seed trains twice on the same data and settings (``deterministic=True``, ``seed``): ``ultralytics``
(its own ``TaskAlignedAssigner``) and ``atss_ops`` (``use_atss_ops``); with ``--atss-warmup N`` a third
row, ``atss_ops + ATSS warm-up``, assigns with ATSS for the first N epochs. Printed per run: the training
loss (box + cls + dfl, Ultralytics' epoch means) of the first and last epoch, and mAP50 / mAP50-95 of the
final validation (Ultralytics' own, on ``best.pt``). Results: ``ultralytics_train.json`` in ``--out`` and
the table between the markers in ``--doc``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

NAMES = ("red", "blue")
COLOURS = ((40, 40, 220), (220, 70, 40))  # BGR, one per class
TABLE_BEGIN = "<!-- ultralytics_train table: begin -->"
TABLE_END = "<!-- ultralytics_train table: end -->"


def offline_ultralytics(config_dir: Optional[str] = None) -> None:
    """Environment for an Ultralytics that never reaches the network; call before importing it."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_CONFIG_DIR", config_dir or tempfile.mkdtemp(prefix="yolo-config-"))


def forbid_downloads() -> None:
    """Replaces Ultralytics' download function with one that raises (whatever path would try one)."""
    import ultralytics.utils.downloads as downloads

    def refuse(*args, **kwargs):
        raise RuntimeError(f"Ultralytics tried to download {args or kwargs}: nothing may be downloaded here")

    downloads.safe_download = refuse


def write_dataset(root: Path, n_train: int = 64, n_val: int = 32, size: int = 160, seed: int = 0) -> Path:
    """A YOLO-format data set of ``size`` x ``size`` PNG images: noise with 1 to 6 filled rectangles of
    class 0 (red) or 1 (blue), sides 6 to 70 px (some below YOLO's middle stride, 16), overlapping at
    times. ``root/images/{train,val}``, ``root/labels/{train,val}`` (one ``class cx cy w h`` line per
    rectangle, normalised), ``root/data.yaml``. Deterministic in ``seed``; returns the yaml's path."""
    import cv2

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = rng.integers(70, 160, (size, size, 3), dtype=np.uint8)
            lines = []
            for _ in range(int(rng.integers(1, 7))):
                cls = int(rng.integers(0, len(NAMES)))
                w, h = (int(v) for v in rng.integers(6, 71, 2))
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                shade = rng.integers(-25, 26, 3)
                image[y : y + h, x : x + w] = np.clip(np.array(COLOURS[cls]) + shade, 0, 255)
                lines.append(f"{cls} {(x + w / 2) / size:.6f} {(y + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
            cv2.imwrite(str(root / "images" / split / f"{i:04d}.png"), image)
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(NAMES))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return data


def train_args(data: Path, project: Path, name: str, seed: int, epochs: int, imgsz: int, batch: int) -> Dict:
    """Ultralytics' train() arguments of every run: CPU, no plots, no AMP check, no workers, deterministic,
    one optimizer step per batch."""
    return dict(
        data=str(data),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        nbs=batch,  # an optimizer step per batch (Ultralytics' nbs=64 would accumulate 8 batches of 8)
        workers=0,
        device="cpu",
        plots=False,
        amp=False,
        seed=seed,
        deterministic=True,
        project=str(project),
        name=name,
        exist_ok=True,
        verbose=False,
        save=True,
    )


def run_one(variant: str, seed: int, args, data: Path, project: Path) -> Dict:
    from ultralytics import YOLO

    from atss_ops.integrations.ultralytics import use_atss_ops

    model = YOLO(args.model)
    switch = None
    if variant != "ultralytics":
        switch = use_atss_ops(model, atss_warmup_epochs=args.atss_warmup if variant == "atss_warmup" else 0)
    name = f"{variant}-seed{seed}"
    start = time.perf_counter()
    metrics = model.train(**train_args(data, project, name, seed, args.epochs, args.imgsz, args.batch))
    seconds = time.perf_counter() - start
    with open(project / name / "results.csv") as f:
        rows = [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    loss = [r["train/box_loss"] + r["train/cls_loss"] + r["train/dfl_loss"] for r in rows]
    final = metrics.results_dict
    return dict(
        variant=variant,
        seed=seed,
        epochs=len(rows),
        train_loss_per_epoch=loss,
        train_loss_first=loss[0],
        train_loss_last=loss[-1],
        val_map50_per_epoch=[r["metrics/mAP50(B)"] for r in rows],
        val_map50_95_per_epoch=[r["metrics/mAP50-95(B)"] for r in rows],
        map50=final["metrics/mAP50(B)"],
        map50_95=final["metrics/mAP50-95(B)"],
        assigner_calls=None if switch is None else dict(switch.calls),
        seconds=seconds,
    )


LABELS = {"ultralytics": "Ultralytics TaskAlignedAssigner", "atss_ops": "atss_ops.tal_assign (use_atss_ops)"}


def table(runs: List[Dict], atss_warmup: int) -> str:
    labels = dict(LABELS, atss_warmup=f"atss_ops, ATSS for the first {atss_warmup} epochs")
    lines = [
        "| assigner | seed | train loss, epoch 1 | train loss, last epoch | mAP50 | mAP50-95 | minutes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        lines.append(
            f"| {labels[r['variant']]} | {r['seed']} | {r['train_loss_first']:.3f} | {r['train_loss_last']:.3f} | "
            f"{r['map50']:.3f} | {r['map50_95']:.3f} | {r['seconds'] / 60:.1f} |"
        )
    for variant in dict.fromkeys(r["variant"] for r in runs):
        values = [r["map50_95"] for r in runs if r["variant"] == variant]
        spread = f"{min(values):.3f} to {max(values):.3f}"
        mean = statistics.fmean(values)
        lines.append(f"| {labels[variant]}: mean (range) | | | | | {mean:.3f} ({spread}) | |")
    return "\n".join(lines)


def write_table(doc: Path, text: str) -> None:
    """Puts ``text`` between the table markers of ``doc`` (the markers must be there)."""
    content = doc.read_text()
    if TABLE_BEGIN not in content or TABLE_END not in content:
        raise SystemExit(f"{doc} lacks the markers {TABLE_BEGIN} / {TABLE_END}")
    head, rest = content.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    doc.write_text(f"{head}{TABLE_BEGIN}\n{text}\n{TABLE_END}{tail}")


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="yolo11n.yaml", help="Ultralytics model yaml (no weights)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--images", type=int, default=64, help="training images (validation: half as many)")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--atss-warmup", type=int, default=0, help="epochs of ATSS for a third variant (0: none)")
    p.add_argument(
        "--variants", nargs="+", choices=("ultralytics", "atss_ops", "atss_warmup"), help="default: all that apply"
    )
    p.add_argument("--work", default=None, help="folder for the data set and the runs (default: a temporary one)")
    p.add_argument("--out", default="benchmarks/results", help="folder for ultralytics_train.json")
    p.add_argument("--doc", default="docs/ultralytics.md", help="markdown file whose table is replaced ('' : none)")
    p.add_argument("--table-only", metavar="JSON", help="no training: print the table of a results file (and --doc)")
    args = p.parse_args(argv)
    if args.table_only:
        results = json.loads(Path(args.table_only).read_text())
        text = table(results["runs"], results["setup"]["atss_warmup"])
        print(text)
        if args.doc:
            write_table(Path(args.doc), text)
        return

    work = Path(args.work or tempfile.mkdtemp(prefix="ultralytics-train-")).resolve()
    offline_ultralytics(str(work / "yolo-config"))
    import torch

    torch.set_num_threads(args.threads)
    try:
        import ultralytics
    except ImportError as error:
        sys.exit(f"ultralytics_train needs Ultralytics ({error}): pip install atss-ops[ultralytics]")
    forbid_downloads()

    data = write_dataset(work / "data", n_train=args.images, n_val=max(args.images // 2, 1), size=args.imgsz)
    variants = args.variants or ["ultralytics", "atss_ops"] + (["atss_warmup"] if args.atss_warmup else [])
    if "atss_warmup" in variants and not args.atss_warmup:
        p.error("--variants atss_warmup needs --atss-warmup N > 0")
    runs = []
    for seed in args.seeds:
        for variant in variants:
            runs.append(run_one(variant, seed, args, data, work / "runs"))
            print(json.dumps({k: v for k, v in runs[-1].items() if not k.endswith("per_epoch")}), flush=True)
    text = table(runs, args.atss_warmup)
    print(text)
    setup = dict(
        model=args.model,
        epochs=args.epochs,
        seeds=args.seeds,
        train_images=args.images,
        val_images=max(args.images // 2, 1),
        imgsz=args.imgsz,
        batch=args.batch,
        torch_threads=args.threads,
        atss_warmup=args.atss_warmup,
        ultralytics=ultralytics.__version__,
        torch=torch.__version__,
        python=platform.python_version(),
        machine=platform.machine(),
        processor=platform.processor(),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ultralytics_train.json").write_text(json.dumps(dict(setup=setup, runs=runs), indent=1) + "\n")
    if args.doc:
        write_table(Path(args.doc), text)


if __name__ == "__main__":
    main()
