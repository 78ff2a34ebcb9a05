"""The detector's start: bad data files fail before the first step in one line, a failed start
leaves no run folder, ``config.json`` records what runs, and the package's imports run one way."""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest
import torch

from atss_detector import cli, training
from atss_detector.coco import DataError, check_split
from atss_detector.config import preset
from atss_detector.synthetic import SyntheticShapes, SyntheticSpec

PACKAGE = Path(__file__).resolve().parents[1] / "atss_detector"


# --------------------------------------------------------------------------- imports run one way


def _imports(path: Path) -> set:
    """The ``atss_detector`` modules ``path`` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("atss_detector."):
                found.add(node.module.split(".")[1])
            elif node.module == "atss_detector":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("atss_detector."))
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    return (found & modules) - {path.stem}


def test_the_detector_imports_have_no_cycle():
    """No module imports, even lazily, one that imports it back (issue 17): command modules call
    the library, shared helpers live a floor below both."""
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert "cli" not in set().union(*graph.values()), "a library module imports the command module"
    state = {}

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                cycle = path[path.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


# --------------------------------------------------------------------------- bad data files


@pytest.fixture
def coco_root(tmp_path):
    """A COCO-format folder (one folder per split) of 6 train and 3 val synthetic images."""
    spec = SyntheticSpec(image_size=64, min_object=12)
    SyntheticShapes("train", 6, spec, seed=1).export_coco(str(tmp_path / "data" / "train"))
    SyntheticShapes("val", 3, spec, seed=2).export_coco(str(tmp_path / "data" / "val"))
    return tmp_path / "data"


def _edit(root: Path, split: str, change) -> Path:
    path = root / split / "annotations.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def _truncate(root, split):
    path = root / split / "annotations.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    return path, r"not valid JSON \(line 1 column \d+: .*; the file ends early: truncated\?\)"


def _three_numbers(root, split):
    def change(d):
        d["annotations"][1]["bbox"] = d["annotations"][1]["bbox"][:3]

    return _edit(root, split, change), r"annotations\[1\] \(id 2\) has bbox \[[\d., ]+\]: expected 4 finite numbers"


def _missing_image(root, split):
    name = json.loads((root / split / "annotations.json").read_text())["images"][2]["file_name"]
    (root / split / "images" / name).unlink()
    return root / split / "annotations.json", rf"images\[2\] \(id \d+\) lists file_name '{name}', but .* is missing"


def _unknown_category(root, split):
    def change(d):
        d["annotations"][0]["category_id"] = 99

    return _edit(root, split, change), r"annotations\[0\] \(id 1\) has unknown category_id 99 \(the categories' ids"


def _no_images_key(root, split):
    return _edit(root, split, lambda d: d.pop("images")), r"not COCO format: no 'images' key \(keys found: "


def _not_an_image(root, split):
    name = json.loads((root / split / "annotations.json").read_text())["images"][0]["file_name"]
    (root / split / "images" / name).write_bytes(b"not a picture")
    return root / split / "annotations.json", r"images\[0\] \(id \d+\): .* is not an image PIL can read"


def _unlisted_image_id(root, split):
    def change(d):
        d["annotations"][0]["image_id"] = 12345

    return _edit(root, split, change), r"annotations\[0\] \(id 1\) is for image_id 12345, which 'images' lacks"


BAD_FILES = [_truncate, _three_numbers, _missing_image, _unknown_category, _no_images_key, _not_an_image]


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("spoil", [*BAD_FILES, _unlisted_image_id], ids=lambda f: getattr(f, "__name__", f))
def test_bad_data_files_fail_before_training_in_one_line(coco_root, tmp_path, spoil, split, capsys):
    """``train`` checks both splits whole before it builds anything: one line naming the file and
    the entry (no usage: it is not a usage error), exit status 3, and no run folder."""
    annotation_file, message = spoil(coco_root, split)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--preset", "tiny", "--data", str(coco_root), "--output-dir", str(out)])
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"atss-detector train: error: {annotation_file}: ") and "usage:" not in err
    assert re.search(message, last), last
    assert not out.exists()


@pytest.mark.parametrize("spoil", BAD_FILES, ids=lambda f: f.__name__)
def test_check_split_raises_a_data_error(coco_root, spoil):
    annotation_file, message = spoil(coco_root, "train")
    with pytest.raises(DataError, match=message) as error:
        check_split(str(annotation_file), str(coco_root / "train" / "images"))
    assert str(error.value).startswith(f"{annotation_file}: ") and "\n" not in str(error.value)


def test_check_split_decodes_no_pixels(coco_root, monkeypatch):
    """Existence and header only: the check passes with PIL's pixel loading disabled."""
    from PIL import Image, ImageFile

    def refuse(self):
        raise AssertionError("check_split decoded an image")

    monkeypatch.setattr(Image.Image, "load", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    assert check_split(str(coco_root / "train" / "annotations.json"), str(coco_root / "train" / "images")) == 6


def test_a_failed_start_leaves_no_run_folder(coco_root, tmp_path):
    """Below the command too: the trainer makes its folder only once everything is built."""
    _truncate(coco_root, "val")
    cfg = preset("tiny")
    cfg.data.data, cfg.train.output_dir, cfg.train.threads = str(coco_root), str(tmp_path / "run"), 1
    with pytest.raises(DataError, match="annotations.json: not valid JSON"):
        training.Trainer(cfg)
    assert not (tmp_path / "run").exists()


def test_eval_checks_its_split(coco_root, tmp_path, capsys):
    pytest.importorskip("pycocotools")
    cfg = preset("tiny")
    cfg.data.data, cfg.train.output_dir, cfg.train.threads = str(coco_root), str(tmp_path / "run"), 1
    trainer = training.Trainer(cfg)  # a checkpoint without training: the first epoch's save
    trainer._end_epoch(0)
    _missing_image(coco_root, "val")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--threads", "1"])
    assert exit_info.value.code == 3
    assert "is missing" in capsys.readouterr().err.strip().splitlines()[-1]


# --------------------------------------------------------------------------- config.json


@pytest.mark.parametrize("iterations, epochs", [(10, 3), (4, 1), (None, 2)])
def test_config_json_records_the_epochs_that_run(tmp_path, iterations, epochs):
    """With ``iterations`` (16 images, batch 4: 4 steps an epoch), ``epochs`` is what those take;
    the caller's config is left as it was."""
    cfg = preset("tiny")
    cfg.train.iterations, cfg.train.output_dir, cfg.train.threads = iterations, str(tmp_path), 1
    before = cfg.to_dict()
    trainer = training.Trainer(cfg)
    written = json.loads((tmp_path / "config.json").read_text())["train"]
    assert (written["epochs"], written["iterations"]) == (epochs, iterations) == (trainer.epochs, iterations)
    assert cfg.to_dict() == before
    assert os.listdir(tmp_path) == ["config.json"]


# --------------------------------------------------------------------------- predictions.png


def test_predictions_png_explains_its_colours(tmp_path, untrained_checkpoint):
    """The demo's grid has a legend strip below the images: a swatch in every colour it draws with
    (white ground truth, one colour per class) beside its meaning."""
    import numpy as np
    from PIL import Image

    from atss_detector.demo import SHOWN_SCORE, write_predictions_png
    from atss_detector.visualize import LEGEND_ROW, detection_legend, draw_legend

    checkpoint = untrained_checkpoint  # enough to draw
    write_predictions_png(str(checkpoint), str(tmp_path / "predictions.png"), num_images=2)
    picture = np.asarray(Image.open(tmp_path / "predictions.png").convert("RGB"))
    classes = torch.load(checkpoint, weights_only=False)["classes"]
    entries = detection_legend(classes, SHOWN_SCORE)
    assert entries[0][1].startswith("thin white box: ground truth") and len(entries) == len(classes) + 1
    assert all(name in text for (_, text), name in zip(entries[1:], classes))
    height = draw_legend(entries, picture.shape[1]).height
    strip = picture[-height:]  # the last rows: below the tiles
    assert height >= LEGEND_ROW and picture.shape[0] >= 256 + height  # tiles are at least 256 px (min_side)
    colours = {tuple(int(c) for c in px) for px in strip.reshape(-1, 3)}
    for colour, text in entries:
        assert tuple(colour) in colours, f"no swatch for {text!r}"
