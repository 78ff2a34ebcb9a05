"""The detector end to end from the command line: train, resume, eval, predict, and torchrun (gloo, CPU)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from subprocesses import run_python

from atss_detector import cli, prediction, runtime
from atss_detector.errors import DataError
from atss_detector.synthetic import SyntheticShapes, SyntheticSpec
from atss_detector.training import read_log

REPO = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--threads", "1"]


def detector(*args: str) -> str:
    return run_python("-m", "atss_detector.cli", *args)


def test_train_checkpoint_resume_eval_predict(tmp_path):
    pytest.importorskip("pycocotools")  # training evaluates with it
    out = tmp_path / "run"
    detector("train", *TINY, "--epochs", "1", "--output-dir", str(out))
    first = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (first["epoch"], first["iteration"]) == (1, 4)  # 16 images, batch 4

    # resume takes the settings from the checkpoint; only --epochs changes
    detector("train", "--output-dir", str(out), "--resume", "--epochs", "2")
    resumed = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (resumed["epoch"], resumed["iteration"]) == (2, 8)
    assert resumed["config"]["model"] == first["config"]["model"]
    log = read_log(str(out / "train_log.jsonl"))
    steps = [r["iteration"] for r in log if r["kind"] == "train"]
    assert steps == list(range(1, 9))  # appended across the two runs, nothing repeated
    assert [r["epoch"] for r in log if r["kind"] == "eval"] == [1, 2]
    for name in ("config.json", "curves.png", "metrics.json", "metrics.txt"):
        assert (out / name).is_file(), name

    # the optimiser state was carried over (Adam's step count continues from 4)
    assert all(int(state["step"]) == 8 for state in resumed["optimizer"]["state"].values())
    assert any(not torch.equal(resumed["model"][k], v) for k, v in first["model"].items())

    printed = detector("eval", "--checkpoint", str(out / "checkpoint.pt"), "--threads", "1")
    assert "AP50" in printed
    assert (out / "eval_val.json").is_file() and (out / "eval_val.txt").is_file()

    images = tmp_path / "images"
    SyntheticShapes("val", 3, SyntheticSpec(image_size=64, min_object=12)).export_coco(str(images))
    printed = detector(
        "predict",
        "--checkpoint",
        str(out / "checkpoint.pt"),
        str(images / "images"),
        "--output-dir",
        str(tmp_path / "pred"),
        "--threads",
        "1",
    )
    written = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert written == ["000001.png", "000002.png", "000003.png", "detections.json"]
    assert printed.count(" -> ") == 3


def test_train_on_a_coco_folder(tmp_path):
    pytest.importorskip("pycocotools")  # training evaluates with it
    # the synthetic data exported in COCO format goes through the COCO loader
    for split, count in (("train", 8), ("val", 4)):
        SyntheticShapes(split, count, SyntheticSpec(image_size=64, min_object=12)).export_coco(
            str(tmp_path / "coco" / split)
        )
    detector(
        "train",
        *TINY,
        "--data",
        str(tmp_path / "coco"),
        "--image-size",
        "64",
        "--iterations",
        "2",
        "--output-dir",
        str(tmp_path / "run"),
    )
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert checkpoint["iteration"] == 2 and checkpoint["classes"][0] == "rectangle"


def test_cli_errors_are_clear(tmp_path, capsys):
    """One line and the checkpoint's exit status (the whole table: test_detector_mistakes.py)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--output-dir", str(tmp_path), "--resume"])
    assert exit_info.value.code == 4
    assert capsys.readouterr().err.startswith(f"atss-detector train: error: no checkpoint at {tmp_path}/checkpoint.pt")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--preset", "huge"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "argument --epochs: expected an integer >= 1, got 0"),
        (["--batch-size", "two"], "argument --batch-size: expected an integer, got 'two'"),
        (["--assigner", "maxiou"], "argument --assigner: invalid choice: 'maxiou'"),
        (["--device", "gpu"], "argument --device: invalid choice: 'gpu'"),
        (["--lr", "-1"], "argument --lr: expected a number > 0, got -1.0"),
        (["--anchor-scales", "4,x"], "argument --anchor-scales: expected comma-separated numbers, got '4,x'"),
        (["--steps", "0.5,2"], "argument --steps: expected comma-separated fractions in (0, 1), got '0.5,2'"),
    ],
)
def test_bad_flag_values_are_argparse_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_data_folder_in_another_layout_says_which_it_expects(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--data", str(tmp_path)])
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    assert f"{tmp_path}/train/annotations.json with the images in {tmp_path}/train/images/" in err
    assert f"the COCO 2017 layout {tmp_path}/annotations/instances_train.json" in err
    with pytest.raises(SystemExit):
        cli.main(["train", "--data", str(tmp_path / "missing")])
    assert "no such folder" in capsys.readouterr().err


def test_the_default_preset_without_a_gpu_warns(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = cli.build_parser().parse_args(["train"])
    cli.warn_if_sized_for_a_gpu(args, cli.train_config(args))
    assert "sized for one GPU" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["train", "--preset", "demo"])
    cli.warn_if_sized_for_a_gpu(args, cli.train_config(args))
    assert capsys.readouterr().err == ""


def test_more_processes_than_gpus_run_on_the_cpu(monkeypatch, capsys):
    """Never a CUDA device index that does not exist: 'auto' falls back to the CPU and says so."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert runtime.select_device("auto") == torch.device("cpu")
    assert "2 processes on this machine but 1 GPU(s)" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="start at most 1"):
        runtime.select_device("cuda")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert runtime.select_device("auto") == torch.device("cuda", 0)


def test_image_files_in_folders_and_subfolders(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.png", "b.JPG", "notes.txt", "sub/c.jpeg"):
        (tmp_path / name).write_bytes(b"")
    assert prediction.image_files([str(tmp_path)]) == [str(tmp_path / "a.png"), str(tmp_path / "b.JPG")]
    assert prediction.image_files([str(tmp_path)], recursive=True)[-1] == str(tmp_path / "sub" / "c.jpeg")
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    (tmp_path / "empty" / "deeper" / "d.png").write_bytes(b"")
    with pytest.raises(DataError, match="--recursive looks into subfolders"):
        prediction.image_files([str(tmp_path / "empty")])
    assert prediction.image_files([str(tmp_path / "empty")], recursive=True) == [
        str(tmp_path / "empty" / "deeper" / "d.png")
    ]


def test_predict_mirrors_the_input_tree_and_writes_coco_results(tmp_path, untrained_checkpoint, monkeypatch, capsys):
    """``--recursive`` never overwrites: equal names in subfolders and equal stems get their own pictures,
    and detections.json holds every detection in COCO's results format."""
    from PIL import Image

    pics = tmp_path / "pics"
    names = ["img_000.jpg", "sub/img_000.jpg", "sub/deeper/img_000.png", "img_001.jpg", "img_001.png"]
    for i, name in enumerate(names):
        (pics / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40 + 8 * i, 32), (10 * i, 80, 160)).save(pics / name)
    real = prediction.predict_files

    def with_a_known_detection(model, files, *args, **kwargs):
        """The model's own detections, plus one known box per image (an untrained model finds little)."""
        out = real(model, files, *args, **kwargs)
        known = dict(boxes=torch.tensor([[1.0, 2.0, 11.0, 22.0]]), scores=torch.tensor([0.9]), labels=torch.tensor([1]))
        return [{k: torch.cat([d[k], known[k]]) for k in d} for d in out]

    monkeypatch.setattr(prediction, "predict_files", with_a_known_detection)
    out = tmp_path / "preds"
    args = ["predict", str(pics), "--recursive", "--checkpoint", str(untrained_checkpoint), "--threads", "1"]
    cli.main([*args, "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert f"found 5 image(s) in {pics} and subfolders\n" in printed
    pictures = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert pictures == [
        "img_000.png",
        "img_001.jpg.png",
        "img_001.png.png",
        "sub/deeper/img_000.png",
        "sub/img_000.png",
    ]
    records = json.loads((out / "detections.json").read_text())
    checkpoint = torch.load(untrained_checkpoint, weights_only=False)
    files = sorted({r["file_name"] for r in records})
    assert files == sorted(str(pics / n) for n in names)
    for record in records:
        assert set(record) == {"image_id", "file_name", "category_id", "bbox", "score"}
        assert record["category_id"] in checkpoint["category_ids"] and 0 <= record["score"] <= 1
        assert len(record["bbox"]) == 4 and record["bbox"][2] >= 0 and record["bbox"][3] >= 0
    known = [r for r in records if r["score"] == pytest.approx(0.9) and r["bbox"] == [1.0, 2.0, 10.0, 20.0]]
    assert sorted(r["image_id"] for r in known) == [1, 2, 3, 4, 5]
    assert all(r["category_id"] == checkpoint["category_ids"][1] for r in known)
    assert len({(r["image_id"], r["file_name"]) for r in records}) == 5


def test_output_paths_never_collide(tmp_path):
    """Files given one by one, or from two folders, or stems that differ only in suffix: distinct paths."""
    (tmp_path / "a" / "x").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    files = [str(tmp_path / n) for n in ("a/p.jpg", "a/p.png", "a/p.png.jpg", "a/x/p.jpg", "b/p.jpg")]
    for f in files:
        Path(f).write_bytes(b"")
    found = prediction.image_files([str(tmp_path / "a"), str(tmp_path / "b"), files[0]], recursive=True)
    assert sorted(found) == sorted(files)  # the file given again is listed once
    outputs = prediction.output_paths(found, [str(tmp_path / "a"), str(tmp_path / "b")], "OUT")
    assert len(set(outputs)) == len(found) and all(o.startswith("OUT/") for o in outputs)
    assert prediction.output_paths([files[3]], [files[3]], "OUT") == ["OUT/p.png"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_stay_in_sync(tmp_path):
    pytest.importorskip("pycocotools")  # training evaluates with it
    run_python(
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(REPO / "tests" / "data" / "ddp_train.py"),
        str(tmp_path),
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for state in ranks:
        assert state["world_size"] == 2 and state["iterations"] == 3
        assert any(not torch.equal(state["initial"][k], v) for k, v in state["final"].items())  # it stepped
    for name, value in ranks[0]["final"].items():
        assert torch.equal(value, ranks[1]["final"][name]), f"{name} differs between ranks"
    # rank 0 alone writes: one checkpoint (rewritten each epoch), one log
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pt")) == ["checkpoint.pt"]
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert checkpoint["iteration"] == 3
    for name, value in checkpoint["model"].items():
        assert torch.equal(value, ranks[0]["final"][name]), name
    steps = [r["iteration"] for r in read_log(str(tmp_path / "run" / "train_log.jsonl")) if r["kind"] == "train"]
    assert steps == [1, 2, 3]
