"""Training: the optimiser, the learning-rate schedule, the loop and the run directory.

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
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import distributed as dist
from .checkpoints import CHECKPOINT, CHECKPOINT_FORMAT, check_weights, load_checkpoint, save_checkpoint
from .config import Config, TrainConfig
from .data import BadImages, build_dataset, build_loader
from .errors import CheckpointError, DivergedError, UsageError, add_note, first_line
from .evaluation import evaluate, format_line, write_metrics
from .model import build_model
from .runtime import autocast, autocast_dtype, available_cores, bar_interval, configure_threads, select_device

CONFIG = "config.json"
LOG = "train_log.jsonl"
CURVES = "curves.png"
FAILED = "failed.txt"


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


def append_log(path: str, record: Dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(path: str) -> List[Dict[str, Any]]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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
        check_weights(path, self.model, checkpoint["model"])
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
            mininterval=bar_interval(),
        ) as bar:
            for batch in self.bad_images.batches(self.loader):
                if self.iteration >= self.total:
                    break
                batch = batch.to(self.device, non_blocking=True)
                with autocast(self.device, self.amp):
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
