"""``python -m experiments.ablate``: the grid, the smoke sweep end to end (records, report, resuming),
its help, and the experiments kept out of the installed package."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pycocotools", reason="needs the detector extra")

from subprocesses import run_python

from atss_detector.config import preset
from atss_detector.evaluation import METRICS
from experiments.ablate import (
    SMOKE,
    TABLES,
    Setting,
    configure,
    fingerprint,
    grid,
    positive_statistics,
    positives_markdown,
)

REPO = Path(__file__).resolve().parents[1]


def ablate(*args: str) -> str:
    """Runs ``python -m experiments.ablate args...``; returns stdout, fails with the output."""
    return run_python("-m", "experiments.ablate", *args)


def test_the_grid_is_the_papers():
    assert len(TABLES["table2"]) == 6 and len(TABLES["table4"]) == 5 and len(TABLES["table7"]) == 4
    settings = grid()
    # shared rows run once: atss-box-k9-A1 is in all three tables, max_iou-box-k9-A1 in 2 and 7
    assert len(settings) == 12 and len(set(settings)) == 12
    assert sum(s.anchors_per_location == 9 for s in settings) == 2
    cfg = configure(preset("ablate"), Setting("atss", "box", 9, 9), seed=1, run_dir="runs/x")
    assert len(cfg.model.anchor_scales) * len(cfg.model.anchor_ratios) == 9
    assert cfg.model.topk == 9 and cfg.train.seed == 1 and cfg.train.threads == 1
    assert cfg.model.fcos_range_scale == cfg.data.image_size / 800
    # the fingerprint ignores where a run is written, not what it is
    other_dir = configure(preset("ablate"), Setting("atss", "box", 9, 9), seed=1, run_dir="elsewhere")
    other_seed = configure(preset("ablate"), Setting("atss", "box", 9, 9), seed=2, run_dir="runs/x")
    assert fingerprint(cfg) == fingerprint(other_dir) != fingerprint(other_seed)


def test_smoke_sweep_writes_records_and_resumes(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    printed = ablate("--smoke", "--output-dir", str(out), "--runs-dir", str(runs))
    assert "4 runs (2 configurations x 2 seeds), 0 already done, 4 to run" in printed
    assert "[4/4]" in printed and "ETA" in printed
    results = json.loads((out / "results.json").read_text())
    records = results["runs"]
    assert len(records) == 4
    assert {(r["config"]["name"], r["config"]["seed"]) for r in records} == {
        (s.name, seed) for s in SMOKE for seed in (0, 1)
    }
    for record in records:
        assert set(record["config"]) >= {"assigner", "regression", "topk", "anchors_per_location", "seed"}
        assert all(0 <= record[m] <= 1 or record[m] == -1 for m in METRICS)
        assert record["train_seconds"] > 0 and record["iterations"] == 2
    for name in ("results.md", "table2_assignment_vs_regression.png", "table4_ap_vs_k.png", "table7_anchors.png"):
        assert (out / name).is_file(), name
    assert "fcos" in (out / "results.md").read_text()

    # a second invocation skips the finished runs and runs only what is missing (one record
    # dropped, as if the sweep had been interrupted in that run)
    dropped = records.pop()
    (out / "results.json").write_text(json.dumps(results))
    printed = ablate("--smoke", "--output-dir", str(out), "--runs-dir", str(runs))
    assert "3 already done, 1 to run" in printed
    again = json.loads((out / "results.json").read_text())["runs"]
    assert again[:3] == records  # the finished runs were kept as they were
    assert again[3]["config"] == dropped["config"]


def test_positive_statistics_count_every_gt():
    import torch

    torch.set_num_threads(1)
    rows = positive_statistics(preset("ablate-smoke"), SMOKE, num_batches=2)
    assert [r["name"] for r in rows] == [s.name for s in SMOKE]
    for row in rows:
        assert row["images"] == 8 and row["gts"] == sum(b["gts"] for b in row["by_size"]) > 0
        assert 0 <= row["without_positive"] <= 1 and 0 <= row["on_finest_level"] <= 1
    assert "| `atss-box-k9-A1` |" in positives_markdown(rows)


def test_help_and_duration_have_one_source(capsys):
    """``--help`` is plain text and quotes the sweep of record's minutes (``RECORD_MINUTES``), as
    the README and docs/experiments.md do; nothing quotes the 80-minute estimate as its duration."""
    from experiments.ablate import main
    from experiments.ablate_grid import RECORD_MINUTES

    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert help_text.startswith("usage: python -m experiments.ablate")
    assert "``" not in help_text and ":mod:" not in help_text
    assert f"took {RECORD_MINUTES} minutes on one thread" in help_text and "80 min" not in help_text
    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"the 24 runs took {RECORD_MINUTES} minutes on one thread" in readme
    experiments = " ".join((REPO / "docs" / "experiments.md").read_text().split())
    assert f"**{RECORD_MINUTES}.0 minutes** wall time for 24 runs" in experiments


def test_the_old_verb_says_where_the_command_went(capsys):
    from atss_detector import cli

    with pytest.raises(SystemExit) as stopped:
        cli.main(["ablate", "--smoke"])
    assert stopped.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.endswith("ablate is not part of atss-detector: from a source checkout, python -m experiments.ablate")


def test_a_mistake_ends_in_one_line():
    """Errors end as ``atss-detector``'s do: one line naming the problem, its exit status."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.ablate", "--smoke", "--data", str(REPO / "no-such-folder")],
        cwd=REPO,
        env=dict(env, OMP_WAIT_POLICY="PASSIVE"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode not in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("python -m experiments.ablate: error: ") and len(proc.stderr.splitlines()) == 1


def test_the_records_of_docs_keep_their_fingerprints():
    """The records in docs/experiments/ carry the fingerprint the commands compute today, so the
    same commands find them done (one fingerprint, :func:`experiments.records.fingerprint`)."""
    from experiments import records, torchvision_table

    results = json.loads((REPO / "docs" / "experiments" / "results.json").read_text())
    assert len(results["runs"]) == 24
    for record in results["runs"]:
        c = record["config"]
        setting = Setting(c["assigner"], c["regression"], c["topk"], c["anchors_per_location"])
        cfg = configure(preset("ablate"), setting, c["seed"], "unused")
        assert record["fingerprint"] == fingerprint(cfg), c["name"]
    table = json.loads((REPO / "docs" / "experiments" / "torchvision.json").read_text())
    stored = {"schedule": table["schedule"], "torch": table["versions"]["torch"]}
    assert table["fingerprint"] == records.fingerprint(stored)
    assert table["schedule"] == dataclasses.asdict(torchvision_table.Schedule())


def test_experiments_stay_out_of_the_package():
    """pyproject.toml installs atss_ops and atss_detector only, and neither imports ``experiments``."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's tomllib reads pyproject.toml")
    import setuptools

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packaged = setuptools.find_packages(str(REPO), include=include)
    assert "experiments" not in packaged and "atss_detector" in packaged and "atss_ops" in packaged
    assert not [p for p in packaged if p.split(".")[0] not in ("atss_ops", "atss_detector")], packaged
    for package in ("atss_ops", "atss_detector"):
        for path in (REPO / package).rglob("*.py"):
            assert "experiments" not in {
                name.split(".")[0]
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for name in ([node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names])
            }, path
