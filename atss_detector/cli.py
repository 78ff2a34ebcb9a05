"""atss-detector: train, evaluate and run the bundled ATSS detector.

Examples:

    atss-detector train --preset small --data path/to/coco --output-dir runs/mine   # start here
    atss-detector train --preset demo --output-dir runs/demo    # minutes on a CPU, synthetic data
    atss-detector train                                          # the full schedule (one GPU)
    atss-detector train --data /data/coco --train-split train2017 --val-split val2017 \\
        --image-size 800 --optimizer sgd --lr 0.01 --schedule step --epochs 12
    torchrun --nproc_per_node 8 -m atss_detector.cli train ...
    atss-detector train --output-dir runs/x --resume      # continue from runs/x/checkpoint.pt
    atss-detector eval --checkpoint runs/x/checkpoint.pt
    atss-detector predict --checkpoint runs/x/checkpoint.pt images/ --output-dir runs/x/predictions

Every train flag left out keeps the value of --preset (or, with --resume, of the
checkpoint being resumed). On a CPU shared with other jobs, set
OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads otherwise slow training down
many times over (python -m atss_detector.demo sets it itself).

The paper's ablations are not part of this command: from a source checkout of
atss-ops, python -m experiments.ablate (docs/experiments.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import NoReturn, Optional, Sequence, Tuple

from .config import PRESET_SUMMARIES, PRESETS, Config, preset
from .errors import EXIT_CODES, UsageError, UserError, check_writable, first_line

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


def int_at_least(low: int):
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


_positive = int_at_least(1)
_non_negative = int_at_least(0)


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
    (
        "--skip-bad-images",
        "data",
        "skip_bad_images",
        "leave out the images that cannot be decoded (missing, not an image, truncated), count them and "
        "report them at the end, instead of stopping at the first",
    ),
)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _table(rows: Sequence[Tuple[str, str]], width: int = 100) -> str:
    """Two columns, the second wrapped under itself: ``--help``'s lists of presets and exit codes."""
    import textwrap

    first = max(len(key) for key, _ in rows)
    return "\n".join(
        textwrap.fill(text, width, initial_indent=f"  {key:<{first}}  ", subsequent_indent=" " * (first + 4))
        for key, text in rows
    )


def presets_text() -> str:
    """The presets, one line each (wrapped), for ``--help``."""
    return _table([(name, PRESET_SUMMARIES[name]) for name in PRESETS])


def exit_codes_text() -> str:
    """The exit statuses, one line each (wrapped), for ``--help``."""
    return _table([(f"{code:>3}", meaning) for code, meaning in EXIT_CODES.items()])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atss-detector",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2]
        + "\nPresets (train --preset):\n"
        + presets_text()
        + "\n\nA mistake (a path, an image, a checkpoint, a folder that cannot be written) ends in one line\n"
        "that names the file; --debug adds the traceback. Exit status:\n" + exit_codes_text(),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="on an error, print the traceback too")

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], **kwargs)
        sub.set_defaults(command_parser=sub)
        return sub

    train = command(
        "train",
        help="train (and evaluate on the val split at the end)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Presets (each flag left out keeps the preset's value):\n"
        + presets_text()
        + "\n\nOn your own data, start with --preset small: within minutes it shows that the data, the\n"
        "set-up and training work, before the longer demo and full schedules.",
    )
    train.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="full",
        help="base settings (default full; each is described below)",
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

    evaluate = command("eval", help="COCO metrics of a checkpoint")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--data", default=None, help="dataset (default: the training run's)")
    evaluate.add_argument("--split", default=None, help="split (default: the training run's val split)")
    evaluate.add_argument("--batch-size", type=_positive, default=8)
    evaluate.add_argument(
        "--output-dir", default=None, help="where eval_<split>.json/.txt go (default: beside the checkpoint)"
    )
    evaluate.add_argument("--device", choices=DEVICES, default="auto")
    evaluate.add_argument("--threads", type=_positive, default=None)
    evaluate.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out (of the score too) the images that cannot be decoded, and count them, instead of stopping",
    )

    predict = command(
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
    predict.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out the images that cannot be decoded, and count them, instead of stopping at the first",
    )
    return parser


def train_config(args: argparse.Namespace) -> Config:
    """The preset (or the resumed checkpoint's config) with the given flags applied."""
    if args.resume:
        from .checkpoints import load_checkpoint

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
    from .checkpoints import CHECKPOINT

    if args.resume != "auto":
        return args.resume
    output_dir = args.output_dir or (cfg.train.output_dir if cfg else None)
    if output_dir is None:
        raise UsageError("--resume without a path needs --output-dir (the run to continue)")
    return os.path.join(output_dir, CHECKPOINT)


def check_data(cfg: Config, splits: Optional[Sequence[str]] = None) -> None:
    """The data of ``splits`` (default train and val) checked whole before anything starts
    (:func:`atss_detector.data.check_data`): a ``DataError`` of one line naming the folder,
    or the file and the entry. With ``--skip-bad-images`` the images that fail are named in a
    warning and left out."""
    from .data import check_data as check

    bad_images = check(cfg.data, splits)
    if bad_images:
        more = f" and {len(bad_images) - 1} more" if len(bad_images) > 1 else ""
        print(
            f"warning: {len(bad_images)} image(s) cannot be read and will be skipped (--skip-bad-images): "
            f"{bad_images[0]}{more}",
            file=sys.stderr,
        )


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


def run_train(args: argparse.Namespace) -> None:
    from . import distributed as dist
    from . import training
    from .evaluation import METRICS_JSON, format_table

    cfg = train_config(args)
    check_data(cfg)
    check_writable("--output-dir", cfg.train.output_dir)
    warn_if_sized_for_a_gpu(args, cfg)
    if args.preset == "tiny" and not args.resume and dist.is_main():
        print(
            "note: the 'tiny' preset trains for seconds to test the set-up: expect AP near 0 and few or no "
            "detections (--preset small learns in about a minute)",
            file=sys.stderr,
        )
    resume = _resume_path(args, cfg) if args.resume else None
    try:
        summary = training.train(cfg, resume=resume)
        if dist.is_main():
            title = f"{cfg.data.data} {cfg.data.val_split} after {summary['iterations']} iterations"
            print(format_table(summary["metrics"], title))
            print(f"wrote {os.path.join(cfg.train.output_dir, METRICS_JSON)}")
            _report_skipped(summary["skipped_images"])
    finally:
        dist.shutdown()


def _report_skipped(messages: Sequence[str]) -> None:
    from .data import BadImages

    skipped = BadImages(skip=True)
    skipped.found.update(dict.fromkeys(messages))
    if skipped.found:
        print(skipped.summary())


def run_eval(args: argparse.Namespace) -> None:
    from . import distributed as dist
    from . import evaluation
    from .checkpoints import model_from_checkpoint
    from .data import BadImages, build_dataset
    from .errors import DataError
    from .runtime import autocast_dtype, configure_threads, select_device

    out = args.output_dir or os.path.dirname(os.path.abspath(args.checkpoint))
    device = select_device(args.device)
    dist.init(device.type)
    configure_threads(args.threads, device)
    try:
        model, cfg, checkpoint = model_from_checkpoint(args.checkpoint, device)
        if args.data:
            cfg.data.data = args.data
        split = args.split or cfg.data.val_split
        cfg.data.ignore_crowd = False  # training's setting: evaluation reads crowd boxes through pycocotools
        cfg.data.skip_bad_images = args.skip_bad_images
        check_data(cfg, [split])
        check_writable("--output-dir" if args.output_dir else "the checkpoint's folder", out)
        dataset = build_dataset(cfg.data, split, train=False)
        if tuple(dataset.classes) != tuple(checkpoint["classes"]):
            raise DataError(
                f"--data {cfg.data.data} {split}: its classes {list(dataset.classes)} differ from those the model "
                f"of {args.checkpoint} was trained on {list(checkpoint['classes'])}"
            )
        bad_images = BadImages(skip=args.skip_bad_images)
        metrics = evaluation.evaluate(
            model,
            dataset,
            device,
            args.batch_size,
            autocast_dtype(cfg.train.amp, device),
            bad_images=bad_images,
        )
        if dist.is_main():
            title = f"{cfg.data.data} {split}, {len(dataset)} images, {os.path.basename(args.checkpoint)}"
            print(evaluation.format_table(metrics, title))
            evaluation.write_metrics(
                out,
                metrics,
                {
                    "checkpoint": args.checkpoint,
                    "split": split,
                    "images": len(dataset) - len(bad_images.found),
                    "iteration": checkpoint["iteration"],
                    "skipped_images": list(bad_images.found),
                },
                stem=f"eval_{split}",
            )
            print(f"wrote {os.path.join(out, f'eval_{split}.json')}")
            _report_skipped(list(bad_images.found))
    finally:
        dist.shutdown()


def run_predict(args: argparse.Namespace) -> None:
    import json

    from . import prediction
    from .checkpoints import model_from_checkpoint
    from .coco import load_image
    from .data import BadImages, build_transform
    from .evaluation import to_coco_results
    from .runtime import configure_threads, select_device
    from .visualize import draw_detections

    files = prediction.image_files(args.images, recursive=args.recursive)
    check_writable("--output-dir", args.output_dir)
    device = select_device(args.device)
    configure_threads(args.threads, device)
    model, cfg, checkpoint = model_from_checkpoint(args.checkpoint, device)
    folders = [p for p in args.images if os.path.isdir(p)]
    if folders:
        print("found " + "; ".join(_folder_counts(files, folders, args.recursive)))
    targets = prediction.output_paths(files, args.images, args.output_dir)
    bad_images = BadImages(skip=args.skip_bad_images)
    detections = prediction.predict_files(
        model,
        files,
        build_transform(cfg.data, train=False),
        device,
        args.batch_size,
        cfg.data.size_divisible,
        bad_images=bad_images,
    )
    classes = checkpoint["classes"]
    category_ids = checkpoint.get("category_ids") or list(range(1, len(classes) + 1))
    records, pictures = [], 0
    for image_id, (path, target, det) in enumerate(zip(files, targets, detections), start=1):
        if det is None:  # skipped: it cannot be decoded
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        draw_detections(load_image(path), det, classes, score_threshold=args.score_threshold).save(target)
        pictures += 1
        shown = int((det["scores"] >= args.score_threshold).sum())
        print(f"{path}: {shown} detections >= {args.score_threshold} -> {target}")
        for record in to_coco_results([image_id], [det], category_ids):
            records.append({"image_id": image_id, "file_name": path, **record})
    os.makedirs(args.output_dir, exist_ok=True)
    results = os.path.join(args.output_dir, DETECTIONS_JSON)
    with open(results, "w") as f:
        json.dump(records, f)
    print(
        f"wrote {pictures} picture(s) and {results}: {len(records)} detections of every score "
        "(COCO results format: image_id, file_name, category_id, bbox x, y, w, h, score)"
    )
    if not records:
        print(
            "no detections: a model trained for a few steps finds nothing (the tiny preset tests the set-up "
            "only; --preset small learns in 1-2 minutes)"
        )
    if bad_images.found:
        print(bad_images.summary())


def _folder_counts(files: Sequence[str], folders: Sequence[str], recursive: bool) -> list:
    """``"N image(s) in FOLDER"`` for each folder given to ``predict`` (a file found in two given
    folders, one inside the other, counts in the first)."""
    counted: set = set()
    texts = []
    for folder in folders:
        root = os.path.abspath(folder)
        inside = [f for f in files if os.path.abspath(f).startswith(root + os.sep) and f not in counted]
        counted.update(inside)
        texts.append(f"{len(inside)} image(s) in {folder}" + (" and subfolders" if recursive else ""))
    return texts


# What `predict` writes beside its pictures: every detection, in COCO's results format.
DETECTIONS_JSON = "detections.json"


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
    """Entry point of the ``atss-detector`` console script.

    A user's mistake (:class:`~atss_detector.errors.UserError`), Ctrl-C, or any other error ends
    in one line on stderr and the exit status of :data:`~atss_detector.errors.EXIT_CODES`
    (``SystemExit``); ``--debug`` prints the traceback too. Usage errors print the command's usage
    first, as argparse does."""
    check_dependencies()
    parser = build_parser()
    given = sys.argv[1:] if argv is None else list(argv)
    if given[:1] == ["ablate"]:  # the verb of atss-ops 0.2, now outside the installed package
        parser.error("ablate is not part of atss-detector: from a source checkout, python -m experiments.ablate")
    args = parser.parse_args(argv)
    command = args.command_parser
    try:
        if args.command == "train":
            run_train(args)
        elif args.command == "eval":
            run_eval(args)
        else:
            run_predict(args)
    except (Exception, KeyboardInterrupt) as exc:
        fail(command, exc, args.debug)


def fail(command: argparse.ArgumentParser, exc: BaseException, debug: bool = False) -> NoReturn:
    """Ends the command ``command`` after ``exc``: one line on stderr (the traceback too with
    ``debug``) and the exit status of :data:`~atss_detector.errors.EXIT_CODES`; a usage error
    prints the command's usage first, as argparse does."""
    if debug:
        traceback.print_exc()
    if isinstance(exc, UsageError):
        command.error(_one_line(exc))  # the command's usage, then the line; exit status 2
    code, line = _describe(exc)
    print(f"{command.prog}: {line}", file=sys.stderr)
    raise SystemExit(code) from None


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` and its notes (what a stopped run kept), as one line."""
    notes = [first_line(n) for n in getattr(exc, "__notes__", ())]
    return "; ".join([first_line(exc), *notes]) if str(exc) else "; ".join(notes)


def _describe(exc: BaseException) -> Tuple[int, str]:
    """The exit status and the line printed for ``exc``."""
    if isinstance(exc, KeyboardInterrupt):
        notes = _one_line(exc)
        return 130, "interrupted (Ctrl-C)" + (f"; {notes}" if notes else "")
    if isinstance(exc, UserError):
        return exc.exit_code, f"error: {_one_line(exc)}"
    if isinstance(exc, OSError) and exc.filename:  # a file this process could not read or write
        notes = "".join(f"; {first_line(n)}" for n in getattr(exc, "__notes__", ()))
        return 1, f"error: {exc.filename}: {exc.strerror or first_line(exc)}{notes}"
    return 1, f"error: unexpected {type(exc).__name__}: {_one_line(exc)} (--debug shows the traceback)"


if __name__ == "__main__":
    main()
