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
    atss-detector ablate                                 # the paper's Tables 2, 4, 7 (see ablate --help)
    atss-detector ablate --data /data/mycoco --image-size 512 --output-dir runs/ablate-mycoco

Every ``train`` flag left out keeps the value of ``--preset`` (or, with
``--resume``, of the checkpoint being resumed). On a CPU shared with other jobs,
set ``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP threads otherwise slow training
down many times over (``python -m atss_detector.demo`` and ``ablate`` set it themselves).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence, Tuple

from .config import PRESETS, Config, preset

DEVICES = ("auto", "cpu", "cuda")


def _floats(text: str):
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _positive_floats(text: str):
    values = _floats(text)
    if any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers > 0, got {text!r}")
    return values


def _fractions(text: str):
    values = _floats(text)
    if any(not 0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions in (0, 1), got {text!r}")
    return values


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


_positive = _int_at_least(1)
_non_negative = _int_at_least(0)


# (flag, config section, field, type, choices, help): the train flags, each overriding one Config field.
TRAIN_FLAGS = (
    ("--data", "data", "data", str, None, "'synthetic' or a COCO-format directory (layouts: see README)"),
    ("--train-split", "data", "train_split", str, None, "training split name"),
    ("--val-split", "data", "val_split", str, None, "validation split name"),
    (
        "--image-size",
        "data",
        "image_size",
        _positive,
        None,
        "COCO: shorter side; synthetic: longer side of generated images",
    ),
    ("--max-size", "data", "max_size", _positive, None, "COCO: cap on the longer side"),
    ("--num-workers", "data", "num_workers", _non_negative, None, "data-loader worker processes (capped at the cores)"),
    ("--train-images", "data", "synthetic_train_images", _positive, None, "synthetic training images"),
    ("--val-images", "data", "synthetic_val_images", _positive, None, "synthetic validation images"),
    ("--data-seed", "data", "synthetic_seed", int, None, "seed of the synthetic images"),
    ("--min-object", "data", "synthetic_min_object", _positive_float, None, "smallest synthetic object side, px"),
    ("--mean-objects", "data", "synthetic_mean_objects", _positive_float, None, "mean synthetic objects per image"),
    ("--max-objects", "data", "synthetic_max_objects", _positive, None, "most synthetic objects per image"),
    ("--classes", "data", "synthetic_classes", int, range(1, 7), "synthetic shape classes (1-6)"),
    ("--depth", "model", "depth", int, (18, 34, 50, 101, 152), "ResNet depth"),
    ("--backbone-weights", "model", "backbone_weights", str, None, "local ResNet state_dict (default: random init)"),
    ("--min-level", "model", "min_level", int, range(2, 6), "finest pyramid level (2-5)"),
    ("--max-level", "model", "max_level", int, range(2, 9), "coarsest pyramid level (up to 8)"),
    ("--channels", "model", "fpn_channels", _positive, None, "FPN and head channels"),
    ("--head-convs", "model", "head_convs", _positive, None, "convs per head tower"),
    ("--anchor-scales", "model", "anchor_scales", _positive_floats, None, "comma-separated anchor sizes in strides"),
    ("--anchor-ratios", "model", "anchor_ratios", _positive_floats, None, "comma-separated anchor ratios h/w"),
    ("--topk", "model", "topk", _positive, None, "ATSS k (times the anchors per location)"),
    (
        "--assigner",
        "model",
        "assigner",
        str,
        ("atss", "max_iou", "fcos"),
        "max_iou: RetinaNet's IoU rule; fcos: FCOS's spatial and scale constraint (for comparison)",
    ),
    (
        "--fcos-range-scale",
        "model",
        "fcos_range_scale",
        _positive_float,
        None,
        "fcos: FCOS's ranges (64-512 px at P3-P7) times this (default: image size / 800)",
    ),
    (
        "--regression",
        "model",
        "regression",
        str,
        ("box", "point"),
        "box: deltas from the anchor box; point: FCOS's distances from its centre",
    ),
    ("--batch-size", "train", "batch_size", _positive, None, "images per process and step"),
    ("--epochs", "train", "epochs", _positive, None, "training epochs"),
    ("--iterations", "train", "iterations", _positive, None, "training steps (overrides --epochs)"),
    ("--optimizer", "train", "optimizer", str, ("sgd", "adamw"), "optimizer"),
    ("--lr", "train", "lr", _positive_float, None, "learning rate of the global batch"),
    ("--weight-decay", "train", "weight_decay", float, None, "weight decay"),
    ("--schedule", "train", "schedule", str, ("cosine", "step"), "learning-rate schedule"),
    ("--steps", "train", "steps", _fractions, None, "step schedule: comma-separated fractions of training"),
    ("--warmup-iters", "train", "warmup_iters", _non_negative, None, "linear warm-up steps"),
    ("--amp", "train", "amp", str, ("auto", "bf16", "off"), "auto: bf16 on CUDA"),
    ("--seed", "train", "seed", int, None, "seed of weights, order and augmentation"),
    ("--output-dir", "train", "output_dir", str, None, "run directory"),
    ("--eval-every", "train", "eval_every", _non_negative, None, "evaluate every N epochs (0: at the end only)"),
    ("--log-every", "train", "log_every", _positive, None, "iterations between log records"),
    ("--threads", "train", "threads", _positive, None, "CPU threads per process"),
    ("--device", "train", "device", str, DEVICES, "auto: the GPU when there is one"),
)

# (flag, config section, field, help): on/off train flags; --FLAG sets True, --no-FLAG False,
# left out keeps the preset's (or resumed checkpoint's) value.
TRAIN_SWITCHES = (
    (
        "--ensure-positive",
        "model",
        "ensure_positive",
        "atss: each GT left without positives takes its best free candidate of IoU > 0",
    ),
    (
        "--ignore-crowd",
        "data",
        "ignore_crowd",
        "COCO data: crowd boxes become ignore regions (their anchors take no loss) instead of being dropped",
    ),
)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atss-detector",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (and evaluate on the val split at the end)")
    train.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="full",
        help="base settings: full (one GPU, default), demo (2-core CPU), tiny (tests)",
    )
    for flag, _, _, kind, choices, help_text in TRAIN_FLAGS:
        train.add_argument(
            flag,
            type=kind,
            choices=choices,
            default=None,
            help=help_text,
            metavar="{" + ",".join(map(str, choices)) + "}" if choices else None,
        )
    for flag, _, _, help_text in TRAIN_SWITCHES:
        train.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    train.add_argument(
        "--no-center-test",
        action="store_true",
        help="atss: no centre-inside-GT test (model.center_eps None; MONAI's center_in_gt=False)",
    )
    train.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="continue a run (default: OUTPUT_DIR/checkpoint.pt)",
    )

    evaluate = commands.add_parser("eval", help="COCO metrics of a checkpoint")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--data", default=None, help="dataset (default: the training run's)")
    evaluate.add_argument("--split", default=None, help="split (default: the training run's val split)")
    evaluate.add_argument("--batch-size", type=_positive, default=8)
    evaluate.add_argument(
        "--output-dir", default=None, help="where eval_<split>.json/.txt go (default: beside the checkpoint)"
    )
    evaluate.add_argument("--device", choices=DEVICES, default="auto")
    evaluate.add_argument("--threads", type=_positive, default=None)

    predict = commands.add_parser(
        "predict",
        help="draw a checkpoint's detections on images; also OUTPUT_DIR/detections.json (COCO results)",
        description="Draws each image's detections into OUTPUT_DIR, mirroring the input tree (pics/sub/a.jpg "
        "-> OUTPUT_DIR/sub/a.png when pics is given), and writes every detection to OUTPUT_DIR/detections.json "
        "in COCO's results format (image_id, file_name, category_id, bbox x, y, w, h, score).",
    )
    predict.add_argument("images", nargs="+", help="image files or folders")
    predict.add_argument("--recursive", action="store_true", help="look for images in subfolders too")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("--output-dir", required=True)
    predict.add_argument("--score-threshold", type=float, default=0.3, help="draw detections scoring at least this")
    predict.add_argument("--batch-size", type=_positive, default=8)
    predict.add_argument("--device", choices=DEVICES, default="auto")
    predict.add_argument("--threads", type=_positive, default=None)

    from .ablate_grid import RECORD_MINUTES

    ablate = commands.add_parser(
        "ablate",
        help=f"the paper's ablations (Tables 2, 4, 7): a grid of runs, resumable; JSON, markdown and PNGs "
        f"(about {RECORD_MINUTES} min on one CPU thread)",
        description="Trains the grid of the paper's Tables 2, 4 and 7 (see atss_detector.ablate) with "
        "each seed, skipping the runs already in OUTPUT_DIR/results.json, and writes the results, "
        f"results.md and the plots there. The sweep of record (24 runs) took {RECORD_MINUTES} minutes "
        "on one thread of a 2-core CPU (docs/experiments.md).",
    )
    ablate.add_argument(
        "--output-dir", default="docs/experiments", help="results.json, results.md, PNGs (default docs/experiments)"
    )
    ablate.add_argument("--runs-dir", default=None, help="the runs' checkpoints and logs (default runs/ablate[-smoke])")
    ablate.add_argument("--seeds", type=_seeds, default=(0, 1), help="comma-separated training seeds (default 0,1)")
    ablate.add_argument(
        "--tables",
        type=_tables,
        default=("table2", "table4", "table7"),
        help="comma-separated subset of 2,4,7 (default all)",
    )
    ablate.add_argument("--smoke", action="store_true", help="two configurations, a few steps (for CI)")
    ablate.add_argument("--data", default=None, help="'synthetic' (default) or a COCO-format directory")
    ablate.add_argument("--train-split", default=None, help="training split name")
    ablate.add_argument("--val-split", default=None, help="validation split name")
    ablate.add_argument("--image-size", type=_positive, default=None, help="as for train")
    ablate.add_argument("--iterations", type=_positive, default=None, help="training steps of each run")
    ablate.add_argument("--threads", type=_positive, default=None, help="CPU threads (default 1)")
    ablate.add_argument("--device", choices=DEVICES, default=None, help="default auto")
    ablate.add_argument("--verbose", action="store_true", help="show each run's own output and progress bars")
    ablate.add_argument(
        "--positives",
        type=_positive,
        default=None,
        metavar="BATCHES",
        help="train nothing: how each configuration's rule spreads positives over levels and object sizes, "
        "on this many training batches (positives.md/.json)",
    )
    ablate.add_argument(
        "--report-only", action="store_true", help="redraw results.md and the plots from results.json, train nothing"
    )
    return parser


def _seeds(text: str):
    try:
        seeds = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


def _tables(text: str):
    names = tuple(f"table{v.strip()}" for v in text.split(","))
    if not names or any(n not in ("table2", "table4", "table7") for n in names):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of 2,4,7, got {text!r}")
    return names


def train_config(args: argparse.Namespace) -> Config:
    """The preset (or the resumed checkpoint's config) with the given flags applied."""
    if args.resume:
        from .engine import load_checkpoint

        cfg = Config.from_dict(load_checkpoint(_resume_path(args, None))["config"])
    else:
        cfg = preset(args.preset)
    for flag, section, field, *_ in TRAIN_FLAGS:
        value = getattr(args, _dest(flag))
        if value is not None:
            setattr(getattr(cfg, section), field, value)
    for flag, section, field, _ in TRAIN_SWITCHES:
        value = getattr(args, _dest(flag))
        if value is not None:
            setattr(getattr(cfg, section), field, value)
    if args.no_center_test:
        cfg.model.center_eps = None
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


def check_data(parser: argparse.ArgumentParser, cfg: Config, splits: Optional[Sequence[str]] = None) -> None:
    """The data of ``splits`` (default train and val) checked whole before anything starts
    (:func:`atss_detector.data.check_data`): an argparse error, one line naming the folder,
    or the file and the entry, otherwise."""
    from .data import check_data as check

    try:
        check(cfg.data, splits)
    except ValueError as exc:
        parser.error(str(exc))


def warn_if_sized_for_a_gpu(args: argparse.Namespace, cfg: Config) -> None:
    """The default preset on a machine without a GPU would run for days: say so."""
    import torch

    if args.resume or args.preset != "full":
        return
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        print(
            "warning: the 'full' preset (the default) is sized for one GPU (about 15 minutes there); "
            "on this machine's CPU it would take days: try --preset demo (minutes on a CPU)",
            file=sys.stderr,
        )


def run_train(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None) -> None:
    from . import engine
    from .evaluation import format_table

    cfg = train_config(args)
    check_data(parser or build_parser(), cfg)
    warn_if_sized_for_a_gpu(args, cfg)
    resume = _resume_path(args, cfg) if args.resume else None
    try:
        summary = engine.train(cfg, resume=resume)
        if engine.dist.is_main():
            title = f"{cfg.data.data} {cfg.data.val_split} after {summary['iterations']} iterations"
            print(format_table(summary["metrics"], title))
            print(f"wrote {os.path.join(cfg.train.output_dir, engine.METRICS_JSON)}")
    finally:
        engine.dist.shutdown()


def run_eval(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None) -> None:
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
        cfg.data.ignore_crowd = False  # training's setting: evaluation reads crowd boxes through pycocotools
        check_data(parser or build_parser(), cfg, [split])
        dataset = build_dataset(cfg.data, split, train=False)
        if tuple(dataset.classes) != tuple(checkpoint["classes"]):
            raise SystemExit(f"the dataset's classes {dataset.classes} differ from the model's {checkpoint['classes']}")
        metrics = engine.evaluate(model, dataset, device, args.batch_size, engine.autocast_dtype(cfg.train.amp, device))
        if engine.dist.is_main():
            title = f"{cfg.data.data} {split}, {len(dataset)} images, {os.path.basename(args.checkpoint)}"
            print(format_table(metrics, title))
            out = args.output_dir or os.path.dirname(os.path.abspath(args.checkpoint))
            engine.write_metrics(
                out,
                metrics,
                {
                    "checkpoint": args.checkpoint,
                    "split": split,
                    "images": len(dataset),
                    "iteration": checkpoint["iteration"],
                },
                stem=f"eval_{split}",
            )
            print(f"wrote {os.path.join(out, f'eval_{split}.json')}")
    finally:
        engine.dist.shutdown()


def run_predict(args: argparse.Namespace) -> None:
    import json

    from . import engine
    from .data import build_transform
    from .evaluation import to_coco_results
    from .visualize import draw_detections

    device = engine.select_device(args.device)
    engine.configure_threads(args.threads, device)
    model, cfg, checkpoint = engine.model_from_checkpoint(args.checkpoint, device)
    files = engine.image_files(args.images, recursive=args.recursive)
    folders = [p for p in args.images if os.path.isdir(p)]
    if folders:
        print(f"found {len(files)} image(s) in {', '.join(folders)}" + (" and subfolders" if args.recursive else ""))
    targets = engine.output_paths(files, args.images, args.output_dir)
    detections = engine.predict_files(
        model, files, build_transform(cfg.data, train=False), device, args.batch_size, cfg.data.size_divisible
    )
    classes = checkpoint["classes"]
    category_ids = checkpoint.get("category_ids") or list(range(1, len(classes) + 1))
    records = []
    for image_id, (path, target, det) in enumerate(zip(files, targets, detections), start=1):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        draw_detections(engine.load_image(path), det, classes, score_threshold=args.score_threshold).save(target)
        shown = int((det["scores"] >= args.score_threshold).sum())
        print(f"{path}: {shown} detections >= {args.score_threshold} -> {target}")
        for record in to_coco_results([image_id], [det], category_ids):
            records.append({"image_id": image_id, "file_name": path, **record})
    results = os.path.join(args.output_dir, DETECTIONS_JSON)
    with open(results, "w") as f:
        json.dump(records, f)
    print(
        f"wrote {len(targets)} picture(s) and {results}: {len(records)} detections of every score "
        "(COCO results format: image_id, file_name, category_id, bbox x, y, w, h, score)"
    )


# What `predict` writes beside its pictures: every detection, in COCO's results format.
DETECTIONS_JSON = "detections.json"


def ablate_config(args: argparse.Namespace) -> Tuple[Config, str]:
    """The preset (``ablate``, or ``ablate-smoke`` with ``--smoke``) with the ``ablate`` flags applied."""
    name = "ablate-smoke" if args.smoke else "ablate"
    cfg = preset(name)
    if args.data is not None:
        cfg.data.data = args.data
    for flag, section, field in (
        ("train_split", "data", "train_split"),
        ("val_split", "data", "val_split"),
        ("image_size", "data", "image_size"),
        ("iterations", "train", "iterations"),
        ("threads", "train", "threads"),
        ("device", "train", "device"),
    ):
        value = getattr(args, flag)
        if value is not None:
            setattr(getattr(cfg, section), field, value)
    return cfg, name


def run_ablate(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None) -> None:
    """The ``ablate`` subcommand: the sweep of :mod:`atss_detector.ablate` with this command's flags."""
    from . import ablate

    if args.report_only:
        results = ablate.load_results(os.path.join(args.output_dir, ablate.RESULTS_JSON))
        ablate.write_report(results, args.output_dir)
        print(f"redrew results.md and the plots in {args.output_dir} from {len(results['runs'])} runs")
        return
    cfg, name = ablate_config(args)
    runs_dir = args.runs_dir or os.path.join("runs", name)
    settings = list(ablate.SMOKE) if args.smoke else ablate.grid(args.tables)
    if args.positives:
        rows = ablate.positive_statistics(cfg, settings, args.positives)
        text = ablate.positives_markdown(rows)
        print(text)
        ablate.write_json_atomically(os.path.join(args.output_dir, ablate.POSITIVES_JSON), rows)
        with open(os.path.join(args.output_dir, ablate.POSITIVES_MD), "w") as f:
            f.write(text)
        return
    check_data(parser or build_parser(), cfg)
    ablate.sweep(cfg, settings, args.seeds, args.output_dir, runs_dir, name, quiet=not args.verbose)


# The `detector` extra of pyproject.toml (import names).
DEPENDENCIES = ("torchvision", "numpy", "tqdm", "matplotlib", "PIL", "pycocotools")


def check_dependencies() -> None:
    """Stops with the install command when the detector's dependencies are missing
    (``atss-ops`` without its ``detector`` extra installs the core alone)."""
    import importlib.util

    missing = [name for name in DEPENDENCIES if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(
            f"atss-detector needs the detector's dependencies (missing: {', '.join(missing)}): "
            "pip install --no-build-isolation '.[detector]' in a clone, or pip install torchvision "
            "numpy tqdm matplotlib pycocotools pillow"
        )


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``atss-detector`` console script."""
    check_dependencies()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        run_train(args, parser)
    elif args.command == "ablate":
        from .engine import restart_with_passive_openmp

        restart_with_passive_openmp("atss_detector.cli")
        run_ablate(args, parser)
    elif args.command == "eval":
        run_eval(args, parser)
    else:
        run_predict(args)


if __name__ == "__main__":
    main()
