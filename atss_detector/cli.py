"""``atss-detector``: train, evaluate and run the bundled ATSS detector.

Examples::

    atss-detector train                                  # the full schedule, synthetic data
    atss-detector train --preset demo --output-dir runs/demo
    atss-detector train --data /data/coco --train-split train2017 --val-split val2017 \\
        --image-size 800 --optimizer sgd --lr 0.01 --schedule step --epochs 12
    torchrun --nproc_per_node 8 -m atss_detector.cli train ...
    atss-detector train --output-dir runs/x --resume      # continue from runs/x/checkpoint.pt
    atss-detector eval --checkpoint runs/x/checkpoint.pt
    atss-detector predict --checkpoint runs/x/checkpoint.pt images/ --output-dir runs/x/predictions

Every ``train`` flag left out keeps the value of ``--preset`` (or, with
``--resume``, of the checkpoint being resumed). On a CPU shared with other jobs,
set ``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP threads otherwise slow training
down many times over (``python -m atss_detector.demo`` sets it itself).
"""

from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from .config import PRESETS, Config, preset


def _floats(text: str):
    return tuple(float(v) for v in text.split(","))


# (flag, config section, field, type, help): the train flags, each overriding one Config field.
TRAIN_FLAGS = (
    ("--data", "data", "data", str, "'synthetic' or a COCO-format directory"),
    ("--train-split", "data", "train_split", str, "training split name"),
    ("--val-split", "data", "val_split", str, "validation split name"),
    ("--image-size", "data", "image_size", int, "COCO: shorter side; synthetic: longer side of generated images"),
    ("--max-size", "data", "max_size", int, "COCO: cap on the longer side"),
    ("--num-workers", "data", "num_workers", int, "data-loader worker processes"),
    ("--train-images", "data", "synthetic_train_images", int, "synthetic training images"),
    ("--val-images", "data", "synthetic_val_images", int, "synthetic validation images"),
    ("--data-seed", "data", "synthetic_seed", int, "seed of the synthetic images"),
    ("--min-object", "data", "synthetic_min_object", float, "smallest synthetic object side, px"),
    ("--mean-objects", "data", "synthetic_mean_objects", float, "mean synthetic objects per image"),
    ("--max-objects", "data", "synthetic_max_objects", int, "most synthetic objects per image"),
    ("--classes", "data", "synthetic_classes", int, "synthetic shape classes (1-6)"),
    ("--depth", "model", "depth", int, "ResNet depth (18, 34, 50, 101, 152)"),
    ("--backbone-weights", "model", "backbone_weights", str, "local ResNet state_dict (default: random init)"),
    ("--min-level", "model", "min_level", int, "finest pyramid level (2-5)"),
    ("--max-level", "model", "max_level", int, "coarsest pyramid level (up to 8)"),
    ("--channels", "model", "fpn_channels", int, "FPN and head channels"),
    ("--head-convs", "model", "head_convs", int, "convs per head tower"),
    ("--anchor-scales", "model", "anchor_scales", _floats, "comma-separated anchor sizes in strides"),
    ("--anchor-ratios", "model", "anchor_ratios", _floats, "comma-separated anchor ratios h/w"),
    ("--topk", "model", "topk", int, "ATSS k (times the anchors per location)"),
    ("--assigner", "model", "assigner", str, "'atss' or 'max_iou' (RetinaNet's IoU rule, for comparison)"),
    ("--batch-size", "train", "batch_size", int, "images per process and step"),
    ("--epochs", "train", "epochs", int, "training epochs"),
    ("--iterations", "train", "iterations", int, "training steps (overrides --epochs)"),
    ("--optimizer", "train", "optimizer", str, "'sgd' or 'adamw'"),
    ("--lr", "train", "lr", float, "learning rate of the global batch"),
    ("--weight-decay", "train", "weight_decay", float, "weight decay"),
    ("--schedule", "train", "schedule", str, "'cosine' or 'step'"),
    ("--steps", "train", "steps", _floats, "step schedule: comma-separated fractions of training"),
    ("--warmup-iters", "train", "warmup_iters", int, "linear warm-up steps"),
    ("--amp", "train", "amp", str, "'auto' (bf16 on CUDA), 'bf16' or 'off'"),
    ("--seed", "train", "seed", int, "seed of weights, order and augmentation"),
    ("--output-dir", "train", "output_dir", str, "run directory"),
    ("--eval-every", "train", "eval_every", int, "evaluate every N epochs (0: at the end only)"),
    ("--log-every", "train", "log_every", int, "iterations between log records"),
    ("--threads", "train", "threads", int, "CPU threads per process"),
    ("--device", "train", "device", str, "'auto', 'cpu' or 'cuda'"),
)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atss-detector", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2],
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (and evaluate on the val split at the end)")
    train.add_argument("--preset", choices=sorted(PRESETS), default="full",
                       help="base settings: full (one GPU, default), demo (2-core CPU), tiny (tests)")
    for flag, _, _, kind, help_text in TRAIN_FLAGS:
        train.add_argument(flag, type=kind, default=None, help=help_text)
    train.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                       help="continue a run (default: OUTPUT_DIR/checkpoint.pt)")

    evaluate = commands.add_parser("eval", help="COCO metrics of a checkpoint")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--data", default=None, help="dataset (default: the training run's)")
    evaluate.add_argument("--split", default=None, help="split (default: the training run's val split)")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--output-dir", default=None, help="where eval_<split>.json/.txt go (default: beside the checkpoint)")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--threads", type=int, default=None)

    predict = commands.add_parser("predict", help="draw a checkpoint's detections on images")
    predict.add_argument("images", nargs="+", help="image files or folders")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("--output-dir", required=True)
    predict.add_argument("--score-threshold", type=float, default=0.3, help="draw detections scoring at least this")
    predict.add_argument("--batch-size", type=int, default=8)
    predict.add_argument("--device", default="auto")
    predict.add_argument("--threads", type=int, default=None)
    return parser


def train_config(args: argparse.Namespace) -> Config:
    """The preset (or the resumed checkpoint's config) with the given flags applied."""
    if args.resume:
        from .engine import load_checkpoint

        cfg = Config.from_dict(load_checkpoint(_resume_path(args, None))["config"])
    else:
        cfg = preset(args.preset)
    for flag, section, field, _, _ in TRAIN_FLAGS:
        value = getattr(args, _dest(flag))
        if value is not None:
            setattr(getattr(cfg, section), field, value)
    if args.epochs is not None and args.iterations is None:
        cfg.train.iterations = None  # --epochs alone replaces a step count from the preset or checkpoint
    return cfg


def _resume_path(args: argparse.Namespace, cfg: Optional[Config]) -> str:
    from .engine import CHECKPOINT

    if args.resume != "auto":
        return args.resume
    output_dir = args.output_dir or (cfg.train.output_dir if cfg else None)
    if output_dir is None:
        raise SystemExit("--resume without a path needs --output-dir (the run to continue)")
    return os.path.join(output_dir, CHECKPOINT)


def run_train(args: argparse.Namespace) -> None:
    from . import engine
    from .evaluation import format_table

    cfg = train_config(args)
    resume = _resume_path(args, cfg) if args.resume else None
    try:
        summary = engine.train(cfg, resume=resume)
        if engine.dist.is_main():
            title = f"{cfg.data.data} {cfg.data.val_split} after {summary['iterations']} iterations"
            print(format_table(summary["metrics"], title))
            print(f"wrote {os.path.join(cfg.train.output_dir, engine.METRICS_JSON)}")
    finally:
        engine.dist.shutdown()


def run_eval(args: argparse.Namespace) -> None:
    from . import engine
    from .data import build_dataset
    from .evaluation import format_table

    device = engine.select_device(args.device)
    engine.dist.init(device.type)
    engine.configure_threads(args.threads, device)
    try:
        model, cfg, checkpoint = engine.model_from_checkpoint(args.checkpoint, device)
        if args.data:
            cfg.data.data = args.data
        split = args.split or cfg.data.val_split
        dataset = build_dataset(cfg.data, split, train=False)
        if tuple(dataset.classes) != tuple(checkpoint["classes"]):
            raise SystemExit(f"the dataset's classes {dataset.classes} differ from the model's {checkpoint['classes']}")
        metrics = engine.evaluate(model, dataset, device, args.batch_size, engine.autocast_dtype(cfg.train.amp, device))
        if engine.dist.is_main():
            title = f"{cfg.data.data} {split}, {len(dataset)} images, {os.path.basename(args.checkpoint)}"
            print(format_table(metrics, title))
            out = args.output_dir or os.path.dirname(os.path.abspath(args.checkpoint))
            engine.write_metrics(out, metrics, {"checkpoint": args.checkpoint, "split": split, "images": len(dataset),
                                                "iteration": checkpoint["iteration"]}, stem=f"eval_{split}")
            print(f"wrote {os.path.join(out, f'eval_{split}.json')}")
    finally:
        engine.dist.shutdown()


def run_predict(args: argparse.Namespace) -> None:
    from . import engine
    from .data import build_transform
    from .visualize import draw_detections

    device = engine.select_device(args.device)
    engine.configure_threads(args.threads, device)
    model, cfg, checkpoint = engine.model_from_checkpoint(args.checkpoint, device)
    files = engine.image_files(args.images)
    detections = engine.predict_files(model, files, build_transform(cfg.data, train=False), device,
                                      args.batch_size, cfg.data.size_divisible)
    os.makedirs(args.output_dir, exist_ok=True)
    for path, det in zip(files, detections):
        target = os.path.join(args.output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        draw_detections(engine.load_image(path), det, checkpoint["classes"],
                        score_threshold=args.score_threshold).save(target)
        shown = int((det["scores"] >= args.score_threshold).sum())
        print(f"{path}: {shown} detections >= {args.score_threshold} -> {target}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``atss-detector`` console script."""
    args = build_parser().parse_args(argv)
    {"train": run_train, "eval": run_eval, "predict": run_predict}[args.command](args)


if __name__ == "__main__":
    main()
