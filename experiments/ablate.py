"""``python -m experiments.ablate``: the paper's three ablations on the bundled detector, in one command.

The grid (the ATSS paper's tables; ``k`` is ATSS's one parameter, #A the anchors
per location):

* Table 2, what the essential difference is: assigner {max_iou, fcos, atss} x
  regression {box, point}, #A = 1, k = 9;
* Table 4, sensitivity to k: atss, box, k in {3, 5, 9, 13, 19};
* Table 7, anchors per location: 3 scales x 3 ratios (#A = 9) under max_iou and
  under atss (k = 9, so 81 candidates per level), against #A = 1.

Each configuration trains once per seed (the seed of weights, order and
augmentation; the data stay the same) on the ``ablate`` preset; a configuration
shared by two tables runs once. Each finished run is added to
``OUTPUT_DIR/results.json`` at once (written through a temporary file), so a
second invocation skips what is done and an interrupted sweep resumes where it
stopped; the run directories (checkpoints, logs) go under ``--runs-dir``. After
every run ``results.md`` (the tables) and the plots are redrawn from the JSON
(see :mod:`~experiments.ablate_report`).

Imports run one way: this module (the sweep and its command, :func:`main`) calls
:mod:`~experiments.ablate_report`; both take the grid from :mod:`~experiments.ablate_grid`
and use :mod:`atss_detector`, which never imports them.

A run counts as done only for the same settings: its record keeps a fingerprint
of the full configuration, and a record from other settings (another preset,
``--iterations``, data) is run again and replaced.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from atss_detector.config import Config, preset

from . import records
from .ablate_grid import OCTAVE_SCALES, RATIOS, RECORD_MINUTES, SMOKE, TABLES, Setting, grid, tables_of
from .ablate_report import write_report

__all__ = [
    "OCTAVE_SCALES",
    "RATIOS",
    "SMOKE",
    "TABLES",
    "Setting",
    "configure",
    "fingerprint",
    "grid",
    "main",
    "positive_statistics",
    "positives_markdown",
    "sweep",
    "tables_of",
]

RESULTS_JSON = "results.json"
POSITIVES_JSON, POSITIVES_MD = "positives.json", "positives.md"  # ablate --positives
RUN_OUTPUT = "output.log"  # a run's own output, in its run directory


def configure(base: Config, setting: Setting, seed: int, run_dir: str) -> Config:
    """``base`` with the setting, the seed and the run directory applied."""
    model = base.model
    if setting.anchors_per_location == 9:
        scales = tuple(model.anchor_scales[0] * s for s in OCTAVE_SCALES)
        model = dataclasses.replace(model, anchor_scales=scales, anchor_ratios=RATIOS)
    elif setting.anchors_per_location != 1:
        raise ValueError(f"anchors_per_location must be 1 or 9, got {setting.anchors_per_location}")
    model = dataclasses.replace(
        model, assigner=setting.assigner, regression=setting.regression, topk=setting.topk, fcos_range_scale=None
    )
    train = dataclasses.replace(base.train, seed=seed, output_dir=run_dir)
    return dataclasses.replace(base, model=model, train=train).resolved()


def fingerprint(cfg: Config) -> str:
    """A short hash of everything that decides a run's result (not where it is written)."""
    settings = cfg.to_dict()
    settings["train"].pop("output_dir")
    return records.fingerprint(settings)


# --------------------------------------------------------------------------- the results file


def load_results(path: str) -> Dict[str, Any]:
    return records.load_json(path, {"runs": []})


def find_run(results: Dict[str, Any], setting: Setting, seed: int) -> Optional[Dict[str, Any]]:
    for record in results["runs"]:
        if record["config"]["name"] == setting.name and record["config"]["seed"] == seed:
            return record
    return None


def record_of(setting: Setting, seed: int, cfg: Config, summary: Dict[str, Any], wall: float) -> Dict[str, Any]:
    """The JSON record of a finished run."""
    return {
        "config": {
            "name": setting.name,
            "assigner": setting.assigner,
            "regression": setting.regression,
            "topk": setting.topk,
            "anchors_per_location": setting.anchors_per_location,
            "candidates_per_level": setting.topk * setting.anchors_per_location,
            "seed": seed,
            "anchor_scales": list(cfg.model.anchor_scales),
            "anchor_ratios": list(cfg.model.anchor_ratios),
            "fcos_range_scale": cfg.model.fcos_range_scale,
            "tables": tables_of(setting),
        },
        **{k: round(v, 4) for k, v in summary["metrics"].items()},
        "iterations": summary["iterations"],
        "train_seconds": round(summary["train_seconds"], 1),
        "wall_seconds": round(wall, 1),
        "threads": cfg.train.threads,
        "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "fingerprint": fingerprint(cfg),
    }


# --------------------------------------------------------------------------- the sweep


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _estimate(done_walls: Dict[int, List[float]], anchors: int) -> Optional[float]:
    """Expected wall time of a run with ``anchors`` per location, from the runs timed so far."""
    same = done_walls.get(anchors)
    if same:
        return sum(same) / len(same)
    every = [w for walls in done_walls.values() for w in walls]
    return sum(every) / len(every) if every else None


def sweep(
    base: Config,
    settings: Sequence[Setting],
    seeds: Sequence[int],
    output_dir: str,
    runs_dir: str,
    base_name: str,
    quiet: bool = True,
) -> Dict[str, Any]:
    """Runs every (setting, seed) not yet in ``output_dir/results.json``; returns the results.

    Seed-major order: every configuration's first seed comes before any second one,
    so a sweep stopped early still covers the whole grid.
    """
    from atss_detector.training import LOG

    path = os.path.join(output_dir, RESULTS_JSON)
    results = load_results(path)
    results["preset"] = base_name
    results["base_config"] = base.to_dict()
    results["seeds"] = list(seeds)
    todo, skipped = [], 0
    for seed in seeds:
        for setting in settings:
            cfg = configure(base, setting, seed, os.path.join(runs_dir, f"{setting.name}-s{seed}"))
            old = find_run(results, setting, seed)
            if old is not None and old.get("fingerprint") == fingerprint(cfg):
                skipped += 1
                continue
            if old is not None:
                print(f"{setting.label()} seed {seed}: recorded with other settings, run again", flush=True)
            todo.append((setting, seed, cfg))
    total = skipped + len(todo)
    print(
        f"ablate ({base_name}): {total} runs ({len(settings)} configurations x {len(seeds)} seeds), "
        f"{skipped} already done, {len(todo)} to run; results in {path}",
        flush=True,
    )
    done_walls: Dict[int, List[float]] = {}
    for record in results["runs"]:
        if "wall_seconds" in record:
            done_walls.setdefault(record["config"]["anchors_per_location"], []).append(record["wall_seconds"])
    started = time.time()
    for number, (setting, seed, cfg) in enumerate(todo, start=skipped + 1):
        log = os.path.join(cfg.train.output_dir, LOG)
        if os.path.exists(log):
            os.remove(log)  # an interrupted earlier try: start the run afresh
        print(f"[{number}/{total}] {setting.label()} seed {seed} ...", flush=True)
        run_started = time.time()
        summary = _train(cfg, quiet)
        wall = time.time() - run_started
        record = record_of(setting, seed, cfg, summary, wall)
        results["runs"] = [
            r for r in results["runs"] if not (r["config"]["name"] == setting.name and r["config"]["seed"] == seed)
        ]
        results["runs"].append(record)
        records.write_json_atomically(path, results)
        write_report(results, output_dir)
        done_walls.setdefault(setting.anchors_per_location, []).append(wall)
        remaining = todo[number - skipped :]
        eta = sum(_estimate(done_walls, s.anchors_per_location) or 0.0 for s, _, _ in remaining)
        print(
            f"[{number}/{total}] {setting.label()} seed {seed}: AP {100 * record['AP']:.1f} "
            f"AP50 {100 * record['AP50']:.1f} in {_minutes(wall)}; elapsed {_minutes(time.time() - started)}, "
            f"ETA {_minutes(eta)} for {len(remaining)} more",
            flush=True,
        )
    write_report(results, output_dir)
    print(f"ablate: {total} runs done; {path}, results.md and the plots in {output_dir}", flush=True)
    return results


def _train(cfg: Config, quiet: bool) -> Dict[str, Any]:
    """One training run; with ``quiet``, its own output (announcement, progress bars,
    warnings) goes to ``output.log`` in its run directory instead of the terminal."""
    import contextlib

    from atss_detector.training import train

    if not quiet:
        return train(cfg)
    os.makedirs(cfg.train.output_dir, exist_ok=True)
    with open(os.path.join(cfg.train.output_dir, RUN_OUTPUT), "w") as out:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            return train(cfg)


# Object-size bins of the positives statistics: sqrt(area) in pixels of the input images.
SIZE_BINS = ((0.0, 16.0), (16.0, 32.0), (32.0, 64.0), (64.0, float("inf")))


def positive_statistics(base: Config, settings: Sequence[Setting], num_batches: int = 10) -> List[Dict[str, Any]]:
    """How each setting's rule spreads positives, on the first ``num_batches`` training batches.

    Trains nothing: builds each setting's model and assigns the same batches. Per
    setting: positives per GT, the share of GTs left without any positive, the
    share of positives on the finest level, and per object-size bin (``sqrt(area)``,
    :data:`SIZE_BINS`) the GT count, the share without positives and positives per GT.
    """
    import torch

    from atss_detector.anchors import anchor_validity
    from atss_detector.data import build_dataset, build_loader
    from atss_detector.model import build_model

    dataset = build_dataset(base.data, base.data.train_split, train=True)
    torch.manual_seed(base.train.seed)
    loader = iter(build_loader(dataset, base.train.batch_size, train=True, num_workers=0, seed=base.train.seed))
    batches = [next(loader) for _ in range(min(num_batches, len(dataset) // base.train.batch_size))]
    rows = []
    for setting in settings:
        cfg = configure(base, setting, base.train.seed, base.train.output_dir)
        model = build_model(cfg.model, len(dataset.classes))
        per_gt, sides, finest, total = [], [], 0, 0
        for batch in batches:
            sizes = [(batch.images.shape[-2] // s, batch.images.shape[-1] // s) for s in model.backbone.strides]
            anchors, counts = model.anchor_generator(sizes, batch.images.device)
            targets = model.criterion.targets(
                anchors, counts, anchor_validity(anchors, batch.image_sizes), batch.boxes, batch.labels
            )
            for b, boxes in enumerate(batch.boxes):
                per_gt.append(targets.assignment.num_positive[b, : len(boxes)])
                sides.append(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt())
            finest += int(targets.positive[:, : counts[0]].sum())
            total += int(targets.positive.sum())
        positives, side = torch.cat(per_gt).float(), torch.cat(sides)
        row = {
            "name": setting.name,
            "images": sum(len(batch.boxes) for batch in batches),
            "gts": positives.numel(),
            "positives_per_gt": float(positives.mean()),
            "without_positive": float((positives == 0).float().mean()),
            "on_finest_level": finest / max(total, 1),
            "by_size": [],
        }
        for low, high in SIZE_BINS:
            chosen = positives[(side >= low) & (side < high)]
            row["by_size"].append(
                {
                    "bin": [low, high],
                    "gts": chosen.numel(),
                    "without_positive": float((chosen == 0).float().mean()) if chosen.numel() else None,
                    "positives_per_gt": float(chosen.mean()) if chosen.numel() else None,
                }
            )
        rows.append(row)
    return rows


def positives_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """The table of :func:`positive_statistics`."""
    bins = [f"{int(lo)}-{int(hi)} px" if hi != float("inf") else f">= {int(lo)} px" for lo, hi in SIZE_BINS]
    header = ["configuration", "positives / GT", "GTs without positive", "positives on P3"]
    header += [f"{b}: none / per GT" for b in bins]
    lines = [
        f"Positives on the first {rows[0]['images'] if rows else 0} training images "
        "(`python -m experiments.ablate --positives`; object sizes as sqrt(area)):",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    for row in rows:
        cells = [
            f"`{row['name']}`",
            f"{row['positives_per_gt']:.2f}",
            f"{100 * row['without_positive']:.0f}%",
            f"{100 * row['on_finest_level']:.0f}%",
        ]
        for b in row["by_size"]:
            cells.append("–" if b["gts"] == 0 else f"{100 * b['without_positive']:.0f}% / {b['positives_per_gt']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    gts = [b["gts"] for b in rows[0]["by_size"]] if rows else []
    lines += ["", "GTs per size bin: " + ", ".join(f"{b} {n}" for b, n in zip(bins, gts)) + "."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the command

PROG = "python -m experiments.ablate"


def _seeds(text: str) -> Tuple[int, ...]:
    try:
        seeds = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


def _tables(text: str) -> Tuple[str, ...]:
    names = tuple(f"table{v.strip()}" for v in text.split(","))
    if not names or any(n not in TABLES for n in names):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of 2,4,7, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    from atss_detector.cli import DEVICES, int_at_least

    positive = int_at_least(1)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Trains the grid of the paper's Tables 2, 4 and 7 (see experiments/ablate.py) with "
        "each seed, skipping the runs already in OUTPUT_DIR/results.json, and writes the results, "
        "results.md and the plots there. Each run starts from the ablate preset (ablate-smoke with --smoke). "
        f"The sweep of record (24 runs) took {RECORD_MINUTES} minutes "
        "on one thread of a 2-core CPU (docs/experiments.md). Run it from the root of a source checkout.",
    )
    parser.set_defaults(command_parser=parser)
    parser.add_argument("--debug", action="store_true", help="on an error, print the traceback too")
    parser.add_argument(
        "--output-dir", default="docs/experiments", help="results.json, results.md, PNGs (default docs/experiments)"
    )
    parser.add_argument("--runs-dir", default=None, help="the runs' checkpoints and logs (default runs/ablate[-smoke])")
    parser.add_argument("--seeds", type=_seeds, default=(0, 1), help="comma-separated training seeds (default 0,1)")
    parser.add_argument(
        "--tables", type=_tables, default=tuple(TABLES), help="comma-separated subset of 2,4,7 (default all)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="two configurations of the ablate-smoke preset, 2 steps each: seconds (for CI)",
    )
    parser.add_argument("--data", default=None, help="'synthetic' (default) or a COCO-format directory")
    parser.add_argument("--train-split", default=None, help="training split name")
    parser.add_argument("--val-split", default=None, help="validation split name")
    parser.add_argument("--image-size", type=positive, default=None, help="as for atss-detector train")
    parser.add_argument("--iterations", type=positive, default=None, help="training steps of each run")
    parser.add_argument("--threads", type=positive, default=None, help="CPU threads (default 1)")
    parser.add_argument("--device", choices=DEVICES, default=None, help="default auto")
    parser.add_argument("--verbose", action="store_true", help="show each run's own output and progress bars")
    parser.add_argument(
        "--positives",
        type=positive,
        default=None,
        metavar="BATCHES",
        help="train nothing: how each configuration's rule spreads positives over levels and object sizes, "
        "on this many training batches (positives.md/.json)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="redraw results.md and the plots from results.json, train nothing"
    )
    return parser


def ablate_config(args: argparse.Namespace) -> Tuple[Config, str]:
    """The preset (``ablate``, or ``ablate-smoke`` with ``--smoke``) with the command's flags applied."""
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


def run(args: argparse.Namespace) -> None:
    """The command: the sweep (or ``--report-only``, ``--positives``) with the parsed flags."""
    from atss_detector.cli import check_data

    if args.report_only:
        results = load_results(os.path.join(args.output_dir, RESULTS_JSON))
        write_report(results, args.output_dir)
        print(f"redrew results.md and the plots in {args.output_dir} from {len(results['runs'])} runs")
        return
    cfg, name = ablate_config(args)
    runs_dir = args.runs_dir or os.path.join("runs", name)
    settings = list(SMOKE) if args.smoke else grid(args.tables)
    if args.positives:
        rows = positive_statistics(cfg, settings, args.positives)
        text = positives_markdown(rows)
        print(text)
        records.write_json_atomically(os.path.join(args.output_dir, POSITIVES_JSON), rows)
        with open(os.path.join(args.output_dir, POSITIVES_MD), "w") as f:
            f.write(text)
        return
    check_data(cfg)
    sweep(cfg, settings, args.seeds, args.output_dir, runs_dir, name, quiet=not args.verbose)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m experiments.ablate``: errors end as ``atss-detector``'s do (one line, its exit statuses)."""
    from atss_detector.cli import check_dependencies, fail
    from atss_detector.runtime import restart_with_passive_openmp

    check_dependencies()
    args = build_parser().parse_args(argv)
    if argv is None:
        restart_with_passive_openmp(__spec__.name if __spec__ else "experiments.ablate")
    try:
        run(args)
    except (Exception, KeyboardInterrupt) as exc:
        fail(args.command_parser, exc, args.debug)


if __name__ == "__main__":
    sys.exit(main())
