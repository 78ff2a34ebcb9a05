"""Training, evaluation and prediction loops; checkpoints and the run directory.

A training run writes into ``TrainConfig.output_dir`` (rank 0 only):

* ``config.json``: the full :class:`~atss_detector.config.Config`, as run
  (with ``iterations`` set, ``epochs`` is the number of epochs those take);
* ``checkpoint.pt``: model, optimiser, schedule, epoch and iteration, rewritten
  after every epoch (what ``--resume`` reads);
* ``train_log.jsonl``: one JSON record appended per logging step (losses, lr)
  and per evaluation (COCO metrics);
* ``curves.png``: the loss and AP curves, redrawn after every epoch;
* ``metrics.json`` and ``metrics.txt``: the final evaluation on the val split;
* ``failed.txt``: only after a run that stopped (the reason, one line), removed when a run starts.

A run that stops before its first checkpoint removes the folder it made (a folder that was
there before keeps what it held, plus ``failed.txt``); one that stops later keeps its last
checkpoint, and the exception's note says how to continue (``--resume``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import distributed as dist
from .coco import load_image
from .config import Config, TrainConfig
from .data import BadImages, Batch, DetectionTransform, build_dataset, build_loader, collate
from .errors import (
    CheckpointError,
    DataError,
    DeviceError,
    DivergedError,
    ImageError,
    UsageError,
    add_note,
    first_line,
)
from .evaluation import coco_evaluate, format_line, format_table, to_coco_results
from .model import ATSSDetector, Detections, build_model, rescale_detections

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
LOG = "train_log.jsonl"
CURVES = "curves.png"
METRICS_JSON = "metrics.json"
METRICS_TXT = "metrics.txt"
FAILED = "failed.txt"
# The layout of checkpoint.pt; a newer layout is refused in one line (CheckpointError).
CHECKPOINT_FORMAT = 1
# The keys of every checkpoint the trainer writes (and `eval`, `predict` and `--resume` read).
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "iteration", "config", "classes")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


# --------------------------------------------------------------------------- environment


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def select_device(name: str) -> torch.device:
    """``auto``: this process's GPU under ``torchrun`` (or the only one) when CUDA is there, else the CPU.

    With more processes on this machine than GPUs, ``auto`` runs every process on
    the CPU (and says so) rather than pick a GPU index that does not exist;
    ``cuda`` is then an error.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: CUDA is not available here (no GPU, or a CPU-only torch): use --device cpu")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    gpus = torch.cuda.device_count()
    processes = max(dist.local_world_size(), dist.local_rank() + 1)
    if processes > gpus:
        why = f"{processes} processes on this machine but {gpus} GPU(s)"
        if name == "cuda":
            raise DeviceError(f"--device cuda: {why}: start at most {gpus} (torchrun --nproc_per_node {gpus})")
        if dist.local_rank() == 0:
            print(
                f"{why}: every process runs on the CPU (torchrun --nproc_per_node {gpus} uses the GPUs)",
                file=sys.stderr,
            )
        return torch.device("cpu")
    return torch.device("cuda", dist.local_rank())


def configure_threads(threads: Optional[int], device: torch.device) -> int:
    """Sets torch's intra-op threads: ``threads``, or on CPU the available cores
    shared among the processes of this machine (at least 1). Returns the count."""
    if threads is None:
        cores = available_cores()
        threads = max(1, cores // dist.local_world_size()) if device.type == "cpu" else min(4, cores)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    return threads


def restart_with_passive_openmp(module: str, extra_env: Optional[Dict[str, str]] = None) -> None:
    """Re-executes ``python -m module <this process's arguments>`` with ``OMP_WAIT_POLICY=PASSIVE``
    unless it is set (and then returns at once).

    With the default policy, OpenMP threads spin while they wait; when other jobs
    share the cores (CI, builds), the spinning threads starve the working ones and
    a training step gets 10-50x slower. The policy is read once, when torch loads
    OpenMP, which importing torch has already done: hence a fresh process.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", **(extra_env or {}))
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)


def autocast_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype: ``auto`` is bf16 on CUDA and off on CPU (where bf16 is
    usually slower); ``bf16`` forces it; ``off`` disables it."""
    if amp not in ("auto", "bf16", "off"):
        raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {amp!r}")
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


# --------------------------------------------------------------------------- optimisation


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW; no weight decay on biases, norms and the level scales.

    ``cfg.lr`` is the learning rate of the global batch.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.lr <= 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    # fused: one kernel for all parameters (on a CPU 6x faster than the per-parameter loop)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")


def lr_factor(cfg: TrainConfig, total_iterations: int, decay_after_warmup: bool = False):
    """The learning-rate multiplier at each iteration: linear warm-up from
    ``warmup_factor``, then ``step`` (x0.1 at each fraction of ``steps``) or ``cosine`` decay.

    The cosine runs over the whole of training (the warm-up ramp multiplying its first
    steps), or with ``decay_after_warmup`` over the steps after the warm-up only (the
    schedule of ``experiments/torchvision_table.py``)."""
    if cfg.schedule not in ("step", "cosine"):
        raise ValueError(f"schedule must be 'step' or 'cosine', got {cfg.schedule!r}")
    warmup = min(cfg.warmup_iters, total_iterations)
    milestones = [int(round(s * total_iterations)) for s in cfg.steps]

    def factor(iteration: int) -> float:
        if cfg.schedule == "step":
            value = 0.1 ** sum(iteration >= m for m in milestones)
        elif decay_after_warmup:
            progress = (min(iteration, total_iterations) - warmup) / max(1, total_iterations - warmup)
            value = 1.0 if iteration < warmup else 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            value = 0.5 * (1.0 + math.cos(math.pi * min(iteration, total_iterations) / max(total_iterations, 1)))
        if iteration < warmup:
            value *= cfg.warmup_factor + (1.0 - cfg.warmup_factor) * iteration / warmup
        return value

    return factor


# --------------------------------------------------------------------------- checkpoints and logs


def save_checkpoint(path: str, **state: Any) -> None:
    """``torch.save`` through a temporary file, so a crash never leaves half a checkpoint."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> Dict[str, Any]:
    """The checkpoint dict of a training run's ``checkpoint.pt``.

    Raises:
        CheckpointError: one line naming ``path``: no such file, not a file torch can read,
            not an atss-detector checkpoint (another model's weights, a bare state_dict), or
            written by a newer atss-detector.
    """
    if not os.path.isfile(path):
        what = "a folder, not a checkpoint file" if os.path.isdir(path) else "no such file"
        raise CheckpointError(f"no checkpoint at {path}: {what} (a training run writes OUTPUT_DIR/{CHECKPOINT})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises pickle, zip and runtime errors of many kinds
        raise CheckpointError(
            f"{path}: not a checkpoint torch can read ({type(exc).__name__}: {first_line(exc)})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path}: not an atss-detector checkpoint (a {type(checkpoint).__name__}; a training run's "
            f"{CHECKPOINT} is a dict of {', '.join(CHECKPOINT_KEYS)})"
        )
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        keys = ", ".join(map(repr, list(checkpoint)[:4])) + (", ..." if len(checkpoint) > 4 else "")
        raise CheckpointError(
            f"{path}: not an atss-detector checkpoint (no {missing[0]!r}; its keys: {keys or 'none'}; a training "
            f"run's {CHECKPOINT} holds {', '.join(CHECKPOINT_KEYS)})"
        )
    version = checkpoint.get("format", 1)
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: written by a newer atss-detector (checkpoint format {version!r}; this one reads "
            f"{CHECKPOINT_FORMAT}): upgrade atss-ops to use it"
        )
    try:
        Config.from_dict(checkpoint["config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: its settings are not this atss-detector's (another version?): {first_line(exc)}"
        ) from None
    return checkpoint


def _check_weights(path: str, model: nn.Module, weights: Dict[str, Any]) -> None:
    """``weights`` fit ``model`` key for key and shape for shape, or a one-line CheckpointError."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    reshaped = [
        f"{k} {list(weights[k].shape)} (expected {list(v.shape)})"
        for k, v in own.items()
        if k in weights and getattr(weights[k], "shape", None) != v.shape
    ]
    if missing or unexpected or reshaped:
        first = (reshaped or [f"missing {k}" for k in missing] or [f"unexpected {k}" for k in unexpected])[0]
        raise CheckpointError(
            f"{path}: its weights do not fit the model its settings describe ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} of another shape; first: {first})"
        )


def model_from_checkpoint(path: str, device: torch.device) -> Tuple[ATSSDetector, Config, Dict[str, Any]]:
    """The trained model (eval mode, on ``device``), its config and the checkpoint dict
    (a :class:`~atss_detector.errors.CheckpointError` for a file that is not one)."""
    checkpoint = load_checkpoint(path)
    cfg = Config.from_dict(checkpoint["config"])
    model = build_model(cfg.model, len(checkpoint["classes"]))
    _check_weights(path, model, checkpoint["model"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), cfg, checkpoint


def append_log(path: str, record: Dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(path: str) -> List[Dict[str, Any]]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _unwrap(model: nn.Module) -> ATSSDetector:
    return model.module if isinstance(model, DistributedDataParallel) else model


# --------------------------------------------------------------------------- inference


@torch.no_grad()
def predict_batches(
    model: ATSSDetector,
    batches: Iterable[Batch],
    device: torch.device,
    amp: Optional[torch.dtype] = None,
    progress: bool = False,
) -> Tuple[List[int], List[Detections]]:
    """Runs ``model`` on every batch; detections in the original images' pixels (on the CPU)."""
    model.eval()
    image_ids, detections = [], []
    bar = tqdm(batches, desc="eval", disable=not progress, leave=False, dynamic_ncols=True, mininterval=_bar_interval())
    with bar:  # cleared on the way out too, so that an error's line starts a line of its own
        for batch in bar:
            batch = batch.to(device, non_blocking=True)
            with _autocast(device, amp):
                out = model(batch.images, batch.image_sizes)
            out = rescale_detections(out, batch.scales, batch.original_sizes)
            image_ids += batch.image_ids
            detections += [{k: v.cpu() for k, v in d.items()} for d in out]
    return image_ids, detections


def evaluate(
    model: nn.Module,
    dataset,
    device: torch.device,
    batch_size: int = 8,
    amp: Optional[torch.dtype] = None,
    num_workers: int = 0,
    bad_images: Optional[BadImages] = None,
) -> Dict[str, float]:
    """COCO metrics of ``model`` on ``dataset``; under ``torchrun`` each rank runs
    its share and rank 0 scores the union. Every rank returns the metrics.

    An image that cannot be decoded stops the evaluation (``ImageError`` naming it), or with
    ``bad_images`` skipping is left out (of the score too) and recorded there."""
    model = _unwrap(model)
    was_training = model.training
    bad_images = bad_images or BadImages(skip=False)
    loader = build_loader(
        dataset,
        batch_size,
        train=False,
        rank=dist.rank(),
        world_size=dist.world_size(),
        num_workers=num_workers,
        defer_bad_images=True,
    )
    image_ids, detections = predict_batches(model, bad_images.batches(loader), device, amp, progress=dist.is_main())
    results: Dict[int, List[Dict]] = {}
    for shard in dist.all_gather_objects(
        {i: to_coco_results([i], [d], dataset.category_ids) for i, d in zip(image_ids, detections)}
    ):
        results.update(shard)  # images repeated to even out the shares collapse here
    metrics = None
    if dist.is_main():
        skipped = len(results) < len(dataset)  # images that could not be decoded: left out of the score too
        metrics = coco_evaluate(
            dataset.coco(), [r for records in results.values() for r in records], sorted(results) if skipped else None
        )
    model.train(was_training)
    return dist.broadcast_object(metrics)


def image_files(paths: Sequence[str], recursive: bool = False) -> List[str]:
    """The image files among ``paths``: files as given, folders listed (sorted; with
    ``recursive``, their subfolders too)."""
    files: List[str] = []
    for path in paths:
        if os.path.isdir(path):
            if recursive:
                found = [os.path.join(d, f) for d, _, names in os.walk(path) for f in names]
            else:
                found = [os.path.join(path, f) for f in os.listdir(path)]
            files += sorted(f for f in found if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(f))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise DataError(f"no image or folder at {path}")
    seen: set = set()  # a file given twice, or also found in a given folder: once
    files = [f for f in files if not (os.path.abspath(f) in seen or seen.add(os.path.abspath(f)))]
    if not files:
        where = "or their subfolders" if recursive else "(--recursive looks into subfolders too)"
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(paths)} {where}")
    return files


def output_paths(files: Sequence[str], inputs: Sequence[str], output_dir: str, suffix: str = ".png") -> List[str]:
    """Where the pictures of ``files`` go: ``output_dir`` mirrors the input tree, so no two
    outputs share a path.

    Each file keeps its path relative to the deepest folder that holds every input
    (the folder given, a given file's folder, or their common parent): ``predict pics
    --recursive`` maps ``pics/a.jpg`` to ``OUT/a.png`` and ``pics/sub/a.jpg`` to
    ``OUT/sub/a.png``. Two files of one folder that differ only in their image suffix
    (``a.jpg``, ``a.png``) keep it: ``OUT/a.jpg.png``, ``OUT/a.png.png``.
    """
    roots = [os.path.abspath(p) if os.path.isdir(p) else os.path.dirname(os.path.abspath(p)) for p in inputs]
    root = os.path.commonpath(roots) if roots else os.getcwd()
    relative = [os.path.relpath(os.path.abspath(f), root) for f in files]
    stems = [os.path.splitext(r)[0] for r in relative]
    counts: Dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    names = [(stem if counts[stem] == 1 else rel) + suffix for rel, stem in zip(relative, stems)]
    if len(set(names)) < len(names):  # e.g. a.jpg, a.png and a.png.jpg: whole names are always distinct
        names = [rel + suffix for rel in relative]
    return [os.path.join(output_dir, name) for name in names]


def predict_files(
    model: ATSSDetector,
    files: Sequence[str],
    transform: DetectionTransform,
    device: torch.device,
    batch_size: int = 8,
    size_divisible: int = 32,
    bad_images: Optional[BadImages] = None,
) -> List[Optional[Detections]]:
    """Detections (original pixels) for image files, in order.

    Each image is decoded here (:func:`~atss_detector.coco.load_image`): one that cannot be
    stops with an ``ImageError`` naming it, or with ``bad_images`` skipping gets ``None`` and
    is recorded there."""
    bad_images = bad_images or BadImages(skip=False)
    detections: List[Optional[Detections]] = []
    for start in range(0, len(files), batch_size):
        items, decoded = [], []
        for i, path in enumerate(files[start : start + batch_size]):
            try:
                pixels = load_image(path)
            except ImageError as exc:
                bad_images.check([str(exc)])
                decoded.append(False)
                continue
            decoded.append(True)
            image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
            items.append(
                transform(
                    {
                        "image": image,
                        "boxes": torch.zeros(0, 4),
                        "labels": torch.zeros(0, dtype=torch.int64),
                        "image_id": start + i,
                    }
                )
            )
        found = iter(predict_batches(model, [collate(items, size_divisible)], device)[1] if items else [])
        detections += [next(found) if ok else None for ok in decoded]
    return detections


# --------------------------------------------------------------------------- training


def _bar_interval() -> float:
    """Seconds between progress-bar redraws: live on a terminal, every 30 s into a log file."""
    return 0.1 if sys.stderr.isatty() else 30.0


class _Progress:
    """Running means of the loss parts between log records."""

    def __init__(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, losses: Dict[str, torch.Tensor]) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().float()
        self.count += 1

    def pop(self) -> Dict[str, float]:
        values = {k: float(v) / max(self.count, 1) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return values


class Trainer:
    """One training run, alone or as one process of a ``torchrun`` group.

    ``Trainer(cfg, resume).run()`` trains, checkpoints after every epoch,
    evaluates on the val split every ``eval_every`` epochs and at the end, and
    (rank 0) writes the run directory described in the module docstring.
    """

    def __init__(self, cfg: Config, resume: Optional[str] = None):
        cfg = cfg.resolved()  # a copy, ours to fill in; written to config.json and the checkpoints as trained
        tc = self.tc = cfg.train
        self.cfg = cfg
        self.device = select_device(tc.device)
        dist.init(self.device.type)
        self.threads = configure_threads(tc.threads, self.device)
        self.amp = autocast_dtype(tc.amp, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.main = dist.is_main()
        self.out = tc.output_dir
        self.log_path = os.path.join(self.out, LOG)
        self.bad_images = BadImages(skip=cfg.data.skip_bad_images)
        self.saved_iteration: Optional[int] = None  # of the last checkpoint this run wrote

        # Everything that can fail on bad data or settings runs before the run directory is
        # made: a failed start leaves no half-made folder behind.
        torch.manual_seed(tc.seed)  # the same initial weights on every rank
        self.train_set = build_dataset(cfg.data, cfg.data.train_split, train=True)
        self.val_set = build_dataset(cfg.data, cfg.data.val_split, train=False)
        self.model = build_model(cfg.model, len(self.train_set.classes)).to(self.device)
        self.optimizer = build_optimizer(tc, self.model)
        # Never more loader workers than this process's share of the cores.
        workers = min(cfg.data.num_workers, max(1, available_cores() // dist.local_world_size()))
        if workers < cfg.data.num_workers and self.main:
            print(
                f"data: {workers} loader worker(s) instead of {cfg.data.num_workers}: "
                f"{available_cores()} core(s) for {dist.local_world_size()} process(es)",
                file=sys.stderr,
            )
        self.loader = build_loader(
            self.train_set,
            tc.batch_size,
            train=True,
            rank=dist.rank(),
            world_size=dist.world_size(),
            num_workers=workers,
            seed=tc.seed,
            size_divisible=cfg.data.size_divisible,
            defer_bad_images=True,
        )
        self.iters_per_epoch = len(self.loader)
        self.total = tc.iterations if tc.iterations is not None else tc.epochs * self.iters_per_epoch
        if self.total < 1:
            raise UsageError(
                f"nothing to train: {self.total} iterations (epochs={tc.epochs}, iterations={tc.iterations})"
            )
        self.epochs = math.ceil(self.total / self.iters_per_epoch)
        if tc.iterations is not None:
            tc.epochs = self.epochs  # what runs (iterations decide), not the preset's unused epoch count
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(tc, self.total))
        self.start_epoch, self.iteration = 0, 0
        self.resumed_from = resume
        self.iteration_resumed = 0
        if resume:
            self._restore(resume)
        self.ddp_model: nn.Module = self.model
        if dist.world_size() > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=device_ids)
        self.made_folder = not os.path.exists(self.out)  # removed again if the run stops before a checkpoint
        if self.main:
            os.makedirs(self.out, exist_ok=True)
            if os.path.isfile(os.path.join(self.out, FAILED)):
                os.remove(os.path.join(self.out, FAILED))  # an earlier run's
            with open(os.path.join(self.out, CONFIG), "w") as f:
                json.dump(cfg.to_dict(), f, indent=2)

    def _restore(self, path: str) -> None:
        checkpoint = load_checkpoint(path)
        saved = Config.from_dict(checkpoint["config"]).resolved().model  # as trained (older files: unresolved)
        if saved != self.cfg.model:
            changed = [f for f in saved.__dataclass_fields__ if getattr(saved, f) != getattr(self.cfg.model, f)]
            raise CheckpointError(
                f"cannot resume from {path}: its model settings differ in "
                + ", ".join(f"{f} ({getattr(saved, f)!r} there, {getattr(self.cfg.model, f)!r} here)" for f in changed)
            )
        _check_weights(path, self.model, checkpoint["model"])
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.start_epoch, self.iteration = checkpoint["epoch"], checkpoint["iteration"]
        self.iteration_resumed = self.iteration

    def run(self) -> Dict[str, Any]:
        """Trains and evaluates; returns ``{"model", "metrics", "iterations", "epochs",
        "output_dir", "train_seconds", "rank", "world_size", "skipped_images"}`` on every rank.

        Whatever stops it (an exception, Ctrl-C) leaves the run folder as the module docstring
        says and gets a note saying what is kept (:meth:`_stopped`), then propagates."""
        try:
            return self._run()
        except BaseException as exc:
            if self.main:
                self._stopped(exc)
            raise

    def _stopped(self, exc: BaseException) -> None:
        """Cleans up after a run that stopped, and notes on ``exc`` what is kept."""
        checkpoint = os.path.join(self.out, CHECKPOINT)
        if self.saved_iteration is None and self.made_folder and not self.resumed_from:
            shutil.rmtree(self.out, ignore_errors=True)
            add_note(exc, f"stopped before the first checkpoint: the run folder {self.out} is removed")
            return
        reason = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else first_line(exc)
        try:
            with open(os.path.join(self.out, FAILED), "w") as f:
                f.write(f"stopped at iteration {self.iteration} of {self.total}: {reason}\n")
        except OSError:
            pass  # the folder itself may be what failed; the message still says why
        # a checkpoint of this run, or the one it resumed from (not an older run's, left in the folder)
        if os.path.isfile(checkpoint) and (self.saved_iteration is not None or self.resumed_from):
            at = self.saved_iteration if self.saved_iteration is not None else self.iteration_resumed
            add_note(
                exc,
                f"stopped at iteration {self.iteration} of {self.total}; {checkpoint} (iteration {at}) is kept: "
                f"continue with `atss-detector train --output-dir {self.out} --resume`",
            )
        else:
            add_note(exc, f"stopped before the first checkpoint; {os.path.join(self.out, FAILED)} says why")

    def _run(self) -> Dict[str, Any]:
        self._announce()
        started = self.started = time.time()
        for epoch in range(self.start_epoch, self.epochs):
            self._train_epoch(epoch)
            self._end_epoch(epoch)
        train_seconds = time.time() - started
        metrics = self._evaluate(self.epochs)
        if self.main:
            _plot(self.out)
            write_metrics(
                self.out,
                metrics,
                {
                    "split": self.cfg.data.val_split,
                    "images": len(self.val_set),
                    "iterations": self.iteration,
                    "train_seconds": round(train_seconds, 1),
                    "skipped_images": list(self.bad_images.found),
                },
            )
        return {
            "model": self.model,
            "metrics": metrics,
            "iterations": self.iteration,
            "epochs": self.epochs,
            "output_dir": self.out,
            "train_seconds": train_seconds,
            "rank": dist.rank(),
            "world_size": dist.world_size(),
            "skipped_images": list(self.bad_images.found),
        }

    def _announce(self) -> None:
        if not self.main:
            return
        where = f"{self.device}" + (f" x {dist.world_size()} processes" if dist.world_size() > 1 else "")
        resumed = f"; resumed at iteration {self.iteration}" if self.resumed_from else ""
        print(
            f"atss-detector: {len(self.train_set)} train / {len(self.val_set)} val images, "
            f"{len(self.train_set.classes)} classes; {self.total} iterations ({self.epochs} epochs of "
            f"{self.iters_per_epoch}) of batch {self.tc.batch_size} on {where}, {self.threads} threads, "
            f"amp {self.amp or 'off'}{resumed}",
            flush=True,
        )

    def _train_epoch(self, epoch: int) -> None:
        tc = self.tc
        self.loader.sampler.set_epoch(epoch)
        torch.manual_seed(tc.seed + 1000 * epoch + dist.rank())  # augmentation draws: resumable, per rank
        self.ddp_model.train()
        progress = _Progress()
        steps = min(self.iters_per_epoch, self.total - self.iteration)
        # closed on the way out too, so that an error's line starts a line of its own
        with tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            disable=not self.main,
            dynamic_ncols=True,
            mininterval=_bar_interval(),
        ) as bar:
            for batch in self.bad_images.batches(self.loader):
                if self.iteration >= self.total:
                    break
                batch = batch.to(self.device, non_blocking=True)
                with _autocast(self.device, self.amp):
                    losses = self.ddp_model(
                        batch.images, batch.image_sizes, batch.boxes, batch.labels, batch.ignore_boxes
                    )
                loss = sum(losses.values())
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip:
                    nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.iteration += 1
                progress.add({"loss": loss, **losses})
                if self.iteration % tc.log_every == 0 or self.iteration == self.total:
                    self._log_losses(epoch, progress.pop(), bar)
                bar.update(1)

    def _log_losses(self, epoch: int, values: Dict[str, float], bar: tqdm) -> None:
        # Reading the losses syncs with the device: done every log_every steps only.
        if not math.isfinite(values["loss"]):
            raise DivergedError(
                f"the loss is {values['loss']} at iteration {self.iteration}: lower --lr or raise --warmup-iters"
            )
        lr = self.optimizer.param_groups[0]["lr"]
        if self.main:
            append_log(
                self.log_path,
                {
                    "kind": "train",
                    "epoch": epoch + 1,
                    "iteration": self.iteration,
                    "lr": lr,
                    "seconds": round(time.time() - self.started, 2),
                    **values,
                },
            )
        bar.set_postfix_str(
            " ".join(f"{k.replace('loss_', '')}={v:.3f}" for k, v in values.items()) + f" lr={lr:.2e}", refresh=False
        )  # redrawn at the bar's own pace

    def _end_epoch(self, epoch: int) -> None:
        dist.broadcast_buffers(self.model)
        done = epoch + 1
        if done < self.epochs and self.tc.eval_every and done % self.tc.eval_every == 0:
            metrics = self._evaluate(done)
            if self.main:
                tqdm.write(f"epoch {done}: {format_line(metrics)}")
        if self.main:
            save_checkpoint(
                os.path.join(self.out, CHECKPOINT),
                model=self.model.state_dict(),
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                epoch=done,
                iteration=self.iteration,
                format=CHECKPOINT_FORMAT,
                config=self.cfg.to_dict(),
                classes=list(self.train_set.classes),
                category_ids=list(self.train_set.category_ids),
            )
            self.saved_iteration = self.iteration
            _plot(self.out)
        dist.barrier()

    def _evaluate(self, epoch: int) -> Dict[str, float]:
        metrics = evaluate(
            self.model, self.val_set, self.device, self.tc.batch_size, self.amp, bad_images=self.bad_images
        )
        if self.main:
            append_log(self.log_path, {"kind": "eval", "epoch": epoch, "iteration": self.iteration, **metrics})
        return metrics


def train(cfg: Config, resume: Optional[str] = None) -> Dict[str, Any]:
    """Trains with ``cfg`` (continuing from the checkpoint ``resume`` if given): see :class:`Trainer`.

    ``resume``'s model settings must equal ``cfg.model``. Returns :meth:`Trainer.run`'s summary.
    """
    return Trainer(cfg, resume).run()


def _plot(out: str) -> None:
    from .visualize import plot_curves

    plot_curves(read_log(os.path.join(out, LOG)), os.path.join(out, CURVES))


def write_metrics(directory: str, metrics: Dict[str, float], info: Dict[str, Any], stem: str = "metrics") -> None:
    """``<stem>.json`` (metrics and ``info``) and ``<stem>.txt`` (the table) in ``directory``."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, stem + ".json"), "w") as f:
        json.dump({"metrics": metrics, **info}, f, indent=2)
    with open(os.path.join(directory, stem + ".txt"), "w") as f:
        f.write(format_table(metrics) + "\n")
