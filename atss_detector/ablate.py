"""``atss-detector ablate``: the paper's three ablations on the bundled detector, in one command.

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
(see :mod:`~atss_detector.ablate_report`).

Imports run one way: the command (:mod:`atss_detector.cli`) calls this module,
which calls :mod:`~atss_detector.ablate_report`; both take the grid from
:mod:`~atss_detector.ablate_grid`.

A run counts as done only for the same settings: its record keeps a fingerprint
of the full configuration, and a record from other settings (another preset,
``--iterations``, data) is run again and replaced.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence

from .ablate_grid import OCTAVE_SCALES, RATIOS, SMOKE, TABLES, Setting, grid, tables_of
from .ablate_report import write_report
from .config import Config

__all__ = [
    "OCTAVE_SCALES",
    "RATIOS",
    "SMOKE",
    "TABLES",
    "Setting",
    "configure",
    "fingerprint",
    "grid",
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
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- the results file


def load_results(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        return {"runs": []}
    with open(path) as f:
        return json.load(f)


def write_json_atomically(path: str, data: Any) -> None:
    """Writes through a temporary file and a rename: a crash leaves the old file or the new one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


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
    from . import engine

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
        log = os.path.join(cfg.train.output_dir, engine.LOG)
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
        write_json_atomically(path, results)
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

    from . import engine

    if not quiet:
        return engine.train(cfg)
    os.makedirs(cfg.train.output_dir, exist_ok=True)
    with open(os.path.join(cfg.train.output_dir, RUN_OUTPUT), "w") as out:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            return engine.train(cfg)


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

    from .anchors import anchor_validity
    from .data import build_dataset, build_loader
    from .model import build_model

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
        "(`atss-detector ablate --positives`; object sizes as sqrt(area)):",
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
