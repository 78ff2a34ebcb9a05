"""Every mistake a user can make with ``atss-detector`` ends in one line, an exit status and a known disk state.

One table (``CASES``) feeds each mistake to ``train``, ``eval`` and ``predict`` and asserts, for each:
the one line on stderr (``atss-detector <command>: error: ...`` naming the file, or ``interrupted``),
its exit status (``atss_detector.errors.EXIT_CODES``), that no traceback and, except for usage errors,
no usage text is printed, and what is left on disk (no half run folder before the first checkpoint;
the last checkpoint, ``failed.txt`` and a ``--resume`` hint after it; no output of eval or predict).
Sizes are tiny (64 px, 8 training images, at most 3 steps) so the table runs in well under a minute.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import pytest
import torch

pytest.importorskip("pycocotools", reason="training and eval score with it")

from atss_detector import checkpoints, cli, evaluation, prediction, training
from atss_detector.config import preset
from atss_detector.errors import EXIT_CODES
from atss_detector.synthetic import SyntheticShapes, SyntheticSpec

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the data and a checkpoint


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A COCO-format folder (8 train, 4 val images of 64 px) and an untrained checkpoint of it."""
    root = tmp_path_factory.mktemp("pristine")
    spec = SyntheticSpec(image_size=64, min_object=12)
    SyntheticShapes("train", 8, spec, seed=1).export_coco(str(root / "data" / "train"))
    SyntheticShapes("val", 4, spec, seed=2).export_coco(str(root / "data" / "val"))
    cfg = preset("tiny")
    cfg.data.data, cfg.train.output_dir, cfg.train.threads = str(root / "data"), str(root / "trained"), 1
    threads = torch.get_num_threads()
    training.Trainer(cfg)._end_epoch(0)  # the first epoch's save, without training
    torch.set_num_threads(threads)
    return root


@dataclass
class Context:
    """One case's own copy of the data and checkpoint, and where its outputs would go."""

    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    data: Path = field(init=False)
    checkpoint: Path = field(init=False)
    out: Path = field(init=False)
    pictures: Path = field(init=False)

    def __post_init__(self):
        self.data = self.tmp / "data"
        self.checkpoint = self.tmp / "trained" / "checkpoint.pt"
        self.out = self.tmp / "out"
        self.pictures = self.data / "val" / "images"

    def image(self, split: str, index: int = 0) -> Path:
        """The ``index``-th image file listed in ``split``'s json."""
        listed = json.loads((self.data / split / "annotations.json").read_text())["images"]
        return self.data / split / "images" / listed[index]["file_name"]


def _truncate_png(path: Path) -> Path:
    """Cuts a PNG short after its header: PIL still reads its size, decoding its pixels fails."""
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _text_as_png(path: Path) -> Path:
    path.write_text("this is not a picture\n")
    return path


def _edit_json(ctx: Context, split: str, change: Callable[[dict], None]) -> Path:
    path = ctx.data / split / "annotations.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def _bare_state_dict(ctx: Context) -> None:
    """Another model's weights: a torchvision ResNet's state_dict, as people often save."""
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), ctx.checkpoint)


def _newer_format(ctx: Context) -> None:
    checkpoint = torch.load(ctx.checkpoint, weights_only=False)
    checkpoint["format"] = checkpoints.CHECKPOINT_FORMAT + 1
    torch.save(checkpoint, ctx.checkpoint)


def _unknown_setting(ctx: Context) -> None:
    """A checkpoint of a later version whose config has a setting this one does not know."""
    checkpoint = torch.load(ctx.checkpoint, weights_only=False)
    checkpoint["config"]["model"]["a_future_setting"] = 1
    torch.save(checkpoint, ctx.checkpoint)


def _other_weights(ctx: Context) -> None:
    """The config says one model, the weights are of another (64 FPN channels instead of 32)."""
    checkpoint = torch.load(ctx.checkpoint, weights_only=False)
    cfg = preset("tiny")
    cfg.model.fpn_channels = 64
    from atss_detector.model import build_model

    checkpoint["model"] = build_model(cfg.model, len(checkpoint["classes"])).state_dict()
    torch.save(checkpoint, ctx.checkpoint)


def _interrupt(target: str, after_epochs: int = 0):
    """Ctrl-C: ``target`` raises KeyboardInterrupt (the trainer's epoch: after ``after_epochs`` epochs)."""

    def setup(ctx: Context) -> None:
        if target == "train":
            real = training.Trainer._train_epoch

            def epoch(self, index):
                if index >= after_epochs:
                    raise KeyboardInterrupt
                return real(self, index)

            ctx.monkeypatch.setattr(training.Trainer, "_train_epoch", epoch)
        else:

            def stop(*args, **kwargs):
                raise KeyboardInterrupt

            ctx.monkeypatch.setattr({"evaluate": evaluation, "predict_files": prediction}[target], target, stop)

    return setup


def _raise(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc

    return fail


def _image_goes_bad_after_the_first_checkpoint(ctx: Context) -> None:
    """A training image truncated on disk once the first checkpoint is written (a file that breaks mid-run)."""
    real = training.Trainer._end_epoch

    def end_epoch(self, index):
        real(self, index)
        if index == 0:
            for i in range(8):
                _truncate_png(ctx.image("train", i))

    ctx.monkeypatch.setattr(training.Trainer, "_end_epoch", end_epoch)


# --------------------------------------------------------------------------- what is left on disk


def nothing_at(*names: str):
    def check(ctx: Context) -> None:
        for name in names:
            assert not (ctx.tmp / name).exists(), f"{name} was left behind"

    return check


def no_run_folder(ctx: Context) -> None:
    assert not ctx.out.exists(), f"a half run folder was left: {sorted(os.listdir(ctx.out))}"


def last_checkpoint_kept(ctx: Context) -> None:
    checkpoint = torch.load(ctx.out / "checkpoint.pt", weights_only=False)
    assert (checkpoint["epoch"], checkpoint["iteration"]) == (1, 2)
    assert "stopped at iteration 2 of 3" in (ctx.out / "failed.txt").read_text()


def output_file_untouched(ctx: Context) -> None:
    assert (ctx.tmp / "file").read_text() == "x" and not ctx.out.exists()


def marked_failed(ctx: Context) -> None:
    """A folder that was there before the run keeps what it held, and says why the run stopped."""
    assert (ctx.out / "notes.txt").read_text() == "mine" and not (ctx.out / "checkpoint.pt").exists()
    assert (ctx.out / "failed.txt").read_text() == "stopped at iteration 0 of 4: interrupted (Ctrl-C)\n"


def no_eval_output(ctx: Context) -> None:
    assert not list(ctx.checkpoint.parent.glob("eval_*")) and not ctx.out.exists()


def trained_and_skipped(ctx: Context) -> None:
    assert (ctx.out / "checkpoint.pt").is_file() and (ctx.out / "metrics.json").is_file()
    assert len(json.loads((ctx.out / "metrics.json").read_text())["skipped_images"]) == 1


def predicted_all_but_one(ctx: Context) -> None:
    assert sorted(p.name for p in ctx.out.iterdir()) == ["000002.png", "000003.png", "000004.png", "detections.json"]


def evaluated_all_but_one(ctx: Context) -> None:
    written = json.loads((ctx.checkpoint.parent / "eval_val.json").read_text())
    assert written["images"] == 3 and len(written["skipped_images"]) == 1


# --------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    argv: Callable[[Context], List[str]]
    code: int
    line: str  # regex the printed line must match (after "atss-detector <command>: ")
    setup: Callable[[Context], object] = lambda ctx: None
    left: Callable[[Context], None] = lambda ctx: None
    usage: bool = False  # a usage error: the command's usage comes first
    stdout: Optional[str] = None  # regex stdout must match (runs that succeed)


def train(*flags: str):
    return lambda ctx: ["train", "--preset", "tiny", "--data", str(ctx.data), "--output-dir", str(ctx.out), *flags]


def evaluate(*flags: str):
    return lambda ctx: ["eval", "--checkpoint", str(ctx.checkpoint), "--data", str(ctx.data), *flags]


def predict(*flags: str, images=lambda ctx: ctx.pictures):
    return lambda ctx: [
        "predict",
        str(images(ctx)),
        "--checkpoint",
        str(ctx.checkpoint),
        "--output-dir",
        str(ctx.out),
        *flags,
    ]


def resume(ctx: Context) -> List[str]:
    return ["train", "--output-dir", str(ctx.out), "--resume", str(ctx.checkpoint)]


TRUNCATED = r"{path}: the image cannot be decoded: a truncated or corrupt file\? \(image file is truncated.*\)"
NOT_AN_IMAGE = r"{path}: not an image file \(PIL does not recognise its format\)"
KEPT = (
    r"stopped at iteration 2 of 3; {out}/checkpoint.pt \(iteration 2\) is kept: "
    r"continue with `atss-detector train --output-dir {out} --resume`"
)
SKIP_HINT = r" \(--skip-bad-images leaves out the images that cannot be (decoded|read)\)"

CASES = [
    # 1. a PNG cut short after a valid header: passes the start-up check, fails where it is decoded
    Case(
        "train-truncated-png",
        train("--epochs", "1"),
        3,
        TRUNCATED.format(path="{train0}")
        + SKIP_HINT
        + "; stopped before the first checkpoint: the run folder .* is removed",
        lambda ctx: _truncate_png(ctx.image("train", 0)),
        no_run_folder,
    ),
    Case(
        "eval-truncated-png",
        evaluate(),
        3,
        TRUNCATED.format(path="{val0}") + SKIP_HINT,
        lambda ctx: _truncate_png(ctx.image("val", 0)),
        no_eval_output,
    ),
    Case(
        "predict-truncated-png",
        predict(),
        3,
        TRUNCATED.format(path="{val0}") + SKIP_HINT,
        lambda ctx: _truncate_png(ctx.image("val", 0)),
        no_run_folder,
    ),
    # 2. a text file named .png
    Case(
        "train-text-as-png",
        train(),
        3,
        r"{train_json}: images\[0\] \(id \d+\): {train0} is not an image PIL can read" + r".*" + SKIP_HINT,
        lambda ctx: _text_as_png(ctx.image("train", 0)),
        no_run_folder,
    ),
    Case(
        "eval-text-as-png",
        evaluate(),
        3,
        r"{val_json}: images\[0\] .* is not an image PIL can read",
        lambda ctx: _text_as_png(ctx.image("val", 0)),
        no_eval_output,
    ),
    Case(
        "predict-text-as-png",
        predict(),
        3,
        NOT_AN_IMAGE.format(path="{val0}") + SKIP_HINT,
        lambda ctx: _text_as_png(ctx.image("val", 0)),
        no_run_folder,
    ),
    # 3. a wrong path: a missing image, data folder, image or folder to predict on
    Case(
        "train-missing-image",
        train(),
        3,
        r"{train_json}: images\[0\] .* lists file_name .*, but {train0} is missing",
        lambda ctx: ctx.image("train", 0).unlink(),
        no_run_folder,
    ),
    Case(
        "eval-missing-image",
        evaluate(),
        3,
        r"{val_json}: images\[0\] .* is missing",
        lambda ctx: ctx.image("val", 0).unlink(),
        no_eval_output,
    ),
    Case(
        "train-missing-data-folder",
        lambda ctx: train()(ctx)[:3] + ["--data", str(ctx.tmp / "nothere"), "--output-dir", str(ctx.out)],
        3,
        r"--data {tmp}/nothere: no such folder",
        left=no_run_folder,
    ),
    Case(
        "eval-missing-data-folder",
        evaluate("--data", "nothere"),
        3,
        r"--data nothere: no such folder",
        left=no_eval_output,
    ),
    Case(
        "predict-missing-image",
        predict(images=lambda ctx: ctx.tmp / "nothere.png"),
        3,
        r"no image or folder at {tmp}/nothere.png",
        left=no_run_folder,
    ),
    Case(
        "predict-empty-folder",
        predict(images=lambda ctx: ctx.tmp / "empty"),
        3,
        r"no images \(.*\) in {tmp}/empty \(--recursive looks into subfolders too\)",
        lambda ctx: (ctx.tmp / "empty").mkdir(),
        no_run_folder,
    ),
    # 4. bad annotations: a truncated json, a bbox of 3 numbers, classes that differ from the model's
    Case(
        "train-truncated-json",
        train(),
        3,
        r"{val_json}: not valid JSON \(line 1 column \d+: .*; the file ends early: truncated\?\)",
        lambda ctx: (ctx.data / "val" / "annotations.json").write_text(
            (ctx.data / "val" / "annotations.json").read_text()[:300]
        ),
        no_run_folder,
    ),
    Case(
        "eval-truncated-json",
        evaluate(),
        3,
        r"{val_json}: not valid JSON .*truncated\?\)",
        lambda ctx: (ctx.data / "val" / "annotations.json").write_text('{"images": ['),
        no_eval_output,
    ),
    Case(
        "train-bbox-of-3-numbers",
        train(),
        3,
        r"{train_json}: annotations\[1\] \(id 2\) has bbox \[[\d., ]+\]: expected 4 finite numbers x, y, w, h",
        lambda ctx: _edit_json(
            ctx, "train", lambda d: d["annotations"][1].update(bbox=d["annotations"][1]["bbox"][:3])
        ),
        no_run_folder,
    ),
    Case(
        "eval-other-classes",
        evaluate(),
        3,
        r"--data {data} val: its classes \[.*\] differ from those the model of {checkpoint} was trained on \[.*\]",
        lambda ctx: _edit_json(ctx, "val", lambda d: d["categories"][0].update(name="a renamed class")),
        no_eval_output,
    ),
    # 5. a checkpoint that is missing, not a checkpoint, of another model, or of another version
    Case(
        "eval-missing-checkpoint",
        lambda ctx: ["eval", "--checkpoint", str(ctx.tmp / "nothere.pt")],
        4,
        r"no checkpoint at {tmp}/nothere.pt: no such file \(a training run writes OUTPUT_DIR/checkpoint.pt\)",
        left=no_eval_output,
    ),
    Case(
        "predict-missing-checkpoint",
        lambda ctx: predict()(ctx)[:2] + ["--checkpoint", str(ctx.tmp / "nothere.pt"), "--output-dir", str(ctx.out)],
        4,
        r"no checkpoint at {tmp}/nothere.pt: no such file",
        left=no_run_folder,
    ),
    Case(
        "train-resume-missing-checkpoint",
        lambda ctx: ["train", "--output-dir", str(ctx.out), "--resume"],
        4,
        r"no checkpoint at {out}/checkpoint.pt: no such file",
        left=no_run_folder,
    ),
    Case(
        "eval-text-checkpoint",
        evaluate(),
        4,
        r"{checkpoint}: not a checkpoint torch can read \(UnpicklingError: .*\)",
        lambda ctx: ctx.checkpoint.write_text("hello\n"),
        no_eval_output,
    ),
    Case(
        "predict-another-models-weights",
        predict(),
        4,
        r"{checkpoint}: not an atss-detector checkpoint \(no 'model'; its keys: 'conv1.weight', .*\)",
        _bare_state_dict,
        no_run_folder,
    ),
    Case(
        "train-resume-another-models-weights",
        resume,
        4,
        r"{checkpoint}: not an atss-detector checkpoint",
        _bare_state_dict,
        no_run_folder,
    ),
    Case(
        "eval-newer-format",
        evaluate(),
        4,
        r"{checkpoint}: written by a newer atss-detector \(checkpoint format 2; this one reads 1\): upgrade atss-ops",
        _newer_format,
        no_eval_output,
    ),
    Case(
        "predict-unknown-setting",
        predict(),
        4,
        r"{checkpoint}: its settings are not this atss-detector's \(another version\?\): "
        r"config section 'model' has unknown keys \['a_future_setting'\]",
        _unknown_setting,
        no_run_folder,
    ),
    Case(
        "eval-weights-of-another-shape",
        evaluate(),
        4,
        r"{checkpoint}: its weights do not fit the model its settings describe "
        r"\(0 missing, 0 unexpected, \d+ of another shape; first: .*\)",
        _other_weights,
        no_eval_output,
    ),
    # 6. an output folder that cannot be written (here: under a file, which stops root too)
    Case(
        "train-output-under-a-file",
        lambda ctx: train()(ctx)[:-2] + ["--output-dir", str(ctx.tmp / "file" / "run")],
        5,
        r"--output-dir {tmp}/file/run: {tmp}/file is a file, not a folder",
        lambda ctx: (ctx.tmp / "file").write_text("x"),
        nothing_at("file/run"),
    ),
    Case(
        "eval-output-under-a-file",
        evaluate("--output-dir", "{tmp}/file/eval"),
        5,
        r"--output-dir {tmp}/file/eval: {tmp}/file is a file, not a folder",
        lambda ctx: (ctx.tmp / "file").write_text("x"),
        no_eval_output,
    ),
    Case(
        "predict-output-is-a-file",
        lambda ctx: predict()(ctx)[:-1] + [str(ctx.tmp / "file")],
        5,
        r"--output-dir {tmp}/file: {tmp}/file is a file, not a folder",
        lambda ctx: (ctx.tmp / "file").write_text("x"),
        output_file_untouched,
    ),
    # 7. Ctrl-C: before the first checkpoint, after it, and in eval and predict
    Case(
        "train-interrupted-before-a-checkpoint",
        train(),
        130,
        r"interrupted \(Ctrl-C\); stopped before the first checkpoint: the run folder {out} is removed",
        _interrupt("train"),
        no_run_folder,
    ),
    Case(
        "train-interrupted-in-a-folder-of-its-own",
        train(),
        130,
        r"interrupted \(Ctrl-C\); stopped before the first checkpoint; {out}/failed.txt says why$",
        lambda ctx: (ctx.out.mkdir(), (ctx.out / "notes.txt").write_text("mine"), _interrupt("train")(ctx)),
        marked_failed,
    ),
    Case(
        "train-interrupted-after-a-checkpoint",
        train("--iterations", "3"),
        130,
        r"interrupted \(Ctrl-C\); " + KEPT,
        _interrupt("train", after_epochs=1),
        last_checkpoint_kept,
    ),
    Case("eval-interrupted", evaluate(), 130, r"interrupted \(Ctrl-C\)$", _interrupt("evaluate"), no_eval_output),
    Case("predict-interrupted", predict(), 130, r"interrupted \(Ctrl-C\)$", _interrupt("predict_files"), no_run_folder),
    # 8. an image that breaks after the first checkpoint: the checkpoint is kept, and how to resume
    Case(
        "train-image-breaks-mid-run",
        train("--iterations", "3"),
        3,
        r"{images}/\d+.png: the image cannot be decoded: .*; " + KEPT,
        _image_goes_bad_after_the_first_checkpoint,
        last_checkpoint_kept,
    ),
    # 9. flags that do not go together: a usage error, with the command's usage
    Case(
        "train-resume-without-output-dir",
        lambda ctx: ["train", "--resume"],
        2,
        r"--resume without a path needs --output-dir \(the run to continue\)",
        usage=True,
    ),
    Case(
        "train-cuda-without-a-gpu",
        train("--device", "cuda"),
        2,
        r"--device cuda: CUDA is not available here \(no GPU, or a CPU-only torch\): use --device cpu",
        lambda ctx: ctx.monkeypatch.setattr(torch.cuda, "is_available", lambda: False),
        no_run_folder,
        usage=True,
    ),
    Case(
        "train-batch-larger-than-the-data",
        train("--batch-size", "16"),
        3,
        r"the training set has 8 images, fewer than one batch of 16 for each of 1 processes: lower --batch-size",
        left=no_run_folder,
    ),
    # 10. a bug (not a mistake): one line too, and --debug for the traceback
    Case(
        "train-unexpected-error",
        train(),
        1,
        r"unexpected RuntimeError: something broke \(--debug shows the traceback\)$",
        lambda ctx: ctx.monkeypatch.setattr(training, "train", _raise(RuntimeError("something broke\nin detail"))),
        no_run_folder,
    ),
    # 11. --skip-bad-images: the run goes on, and says what it left out
    Case(
        "train-skip-bad-images",
        train("--iterations", "2", "--skip-bad-images"),
        0,
        "",
        lambda ctx: _truncate_png(ctx.image("train", 0)),
        trained_and_skipped,
        stdout=r"skipped 1 image\(s\) that cannot be decoded \(--skip-bad-images\): {train0}: ",
    ),
    Case(
        "eval-skip-bad-images",
        evaluate("--skip-bad-images"),
        0,
        "",
        lambda ctx: _truncate_png(ctx.image("val", 0)),
        evaluated_all_but_one,
        stdout=r"skipped 1 image\(s\) .*: {val0}: the image cannot be decoded",
    ),
    Case(
        "predict-skip-bad-images",
        predict("--skip-bad-images"),
        0,
        "",
        lambda ctx: _text_as_png(ctx.image("val", 0)),
        predicted_all_but_one,
        stdout=r"found 4 image\(s\) in {images_val}\n(.|\n)*skipped 1 image\(s\) .*: {val0}: not an image file",
    ),
]


def placeholders(ctx: Context) -> dict:
    """The paths a case's patterns name as ``{name}``, taken before its setup spoils any file."""
    return {
        "tmp": ctx.tmp,
        "out": ctx.out,
        "data": ctx.data,
        "checkpoint": ctx.checkpoint,
        "images": ctx.data / "train" / "images",
        "images_val": ctx.pictures,
        "train0": ctx.image("train", 0),
        "val0": ctx.image("val", 0),
        "train_json": ctx.data / "train" / "annotations.json",
        "val_json": ctx.data / "val" / "annotations.json",
    }


def _fill(pattern: str, names: dict) -> str:
    for name, value in names.items():
        pattern = pattern.replace("{" + name + "}", re.escape(str(value)))
    return pattern


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_mistake_ends_in_one_line(case, pristine, tmp_path, monkeypatch, capsys, restore_threads):
    shutil.copytree(pristine / "data", tmp_path / "data")
    shutil.copytree(pristine / "trained", tmp_path / "trained")
    ctx = Context(tmp_path, monkeypatch)
    names = placeholders(ctx)
    case.setup(ctx)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in case.argv(ctx)] + ["--threads", "1"]
    with pytest.raises(SystemExit) if case.code else _no_exit() as exit_info:
        cli.main(argv)
    captured = capsys.readouterr()
    code = exit_info.value.code if case.code else 0
    assert code == case.code, f"exit {code}, expected {case.code}\n{captured.err[-3000:]}"
    assert case.code in EXIT_CODES
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    if case.code:
        lines = [line for line in captured.err.splitlines() if re.search(r"error:|interrupted", line)]
        assert len(lines) == 1 and captured.err.rstrip().endswith(lines[0]), captured.err[-3000:]
        command = f"atss-detector {argv[0]}: "
        assert lines[0].startswith(command), lines[0]
        expected = ("error: " if case.code != 130 else "") + _fill(case.line, names)
        assert re.match(expected, lines[0][len(command) :]), f"{lines[0]}\ndoes not match\n{expected}"
        assert ("usage: atss-detector " + argv[0]) in captured.err if case.usage else "usage:" not in captured.err
    if case.stdout:
        assert re.search(_fill(case.stdout, names), captured.out), captured.out[-3000:]
    case.left(ctx)


class _no_exit:
    """``pytest.raises``'s stand-in for the cases that succeed."""

    value = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_the_table_covers_each_command_and_mistake():
    """Each of train, eval and predict meets at least ten mistakes; every exit status is exercised."""
    for command in ("train", "eval", "predict"):
        assert sum(c.id.startswith(command + "-") for c in CASES) >= 10, command
    assert {c.code for c in CASES} == set(EXIT_CODES)


def test_the_console_prints_one_line_alone(tmp_path):
    """The real command (a fresh process): stderr is the one line and nothing else."""
    images = tmp_path / "images"
    SyntheticShapes("val", 2, SyntheticSpec(image_size=64, min_object=12)).export_coco(str(tmp_path / "coco"))
    shutil.copytree(tmp_path / "coco" / "images", images)
    bad = _truncate_png(sorted(images.iterdir())[0])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = [
        sys.executable,
        "-m",
        "atss_detector.cli",
        "predict",
        str(images),
        "--checkpoint",
        str(tmp_path / "none.pt"),
    ]
    proc = subprocess.run(
        [*argv, "--output-dir", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300
    )
    assert (proc.returncode, proc.stderr) == (
        4,
        f"atss-detector predict: error: no checkpoint at {tmp_path}/none.pt: no such file "
        "(a training run writes OUTPUT_DIR/checkpoint.pt)\n",
    )
    proc = subprocess.run(
        [*argv, "--output-dir", str(tmp_path / "out"), "--debug"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 4 and "Traceback" in proc.stderr  # --debug shows where
    assert bad.exists() and not (tmp_path / "out").exists()


def test_help_reads_as_plain_text(capsys):
    """No reST markup in any --help; every preset explained in one line with its size and time."""
    from atss_detector.config import PRESET_SUMMARIES, PRESETS

    texts = [cli.build_parser().format_help()]
    for command in ("train", "eval", "predict"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        texts.append(capsys.readouterr().out)
    for text in texts:
        assert "``" not in text and "::" not in text and ":func:" not in text, text
    assert set(PRESET_SUMMARIES) == set(PRESETS)
    top, train_help = (" ".join(t.split()) for t in texts[:2])
    for name, summary in PRESET_SUMMARIES.items():
        assert re.search(r"\d", summary) and re.search(r"min|seconds|minute", summary), name
        assert " ".join(summary.split()) in top and " ".join(summary.split()) in train_help
    assert "start with --preset small" in train_help
    for code in EXIT_CODES:
        assert f"{code} {' '.join(EXIT_CODES[code].split())}" in top


def test_a_loader_never_drops_a_bad_image_silently(pristine, tmp_path):
    """Without ``defer_bad_images`` the loader raises the ImageError naming the file; with it the batch
    carries the message, and BadImages stops there or skips (counting each file once)."""
    from atss_detector.data import BadImages, build_dataset, build_loader
    from atss_detector.errors import ImageError

    shutil.copytree(pristine / "data", tmp_path / "data")
    cfg = preset("tiny").data
    cfg.data = str(tmp_path / "data")
    dataset = build_dataset(cfg, "val", train=False)
    bad = _truncate_png(Context(tmp_path, None).image("val", 1))
    with pytest.raises(ImageError, match=re.escape(f"{bad}: the image cannot be decoded")):
        list(build_loader(dataset, 2, train=False))
    batches = list(build_loader(dataset, 2, train=False, defer_bad_images=True))
    assert [len(b) for b in batches] == [1, 2] and batches[0].bad_images[0].startswith(f"{bad}: ")
    with pytest.raises(ImageError, match="--skip-bad-images"):
        list(BadImages().batches(batches))
    skipping = BadImages(skip=True)
    assert [len(b) for b in skipping.batches(batches + batches)] == [1, 2, 1, 2]
    assert list(skipping.found) == [batches[0].bad_images[0]]
    assert skipping.summary().startswith(f"skipped 1 image(s) that cannot be decoded (--skip-bad-images): {bad}: ")
