"""Training, evaluation and prediction loops; checkpoints and the run directory.

A training run writes into ``TrainConfig.output_dir`` (rank 0 only):

* ``config.json``: the full :class:`~atss_ops.detector.config.Config`;
* ``checkpoint.pt``: model, optimiser, schedule, epoch and iteration, rewritten
  after every epoch (what ``--resume`` reads);
* ``train_log.jsonl``: one JSON record appended per logging step (losses, lr)
  and per evaluation (COCO metrics);
* ``curves.png``: the loss and AP curves, redrawn after every epoch;
* ``metrics.json`` and ``metrics.txt``: the final evaluation on the val split.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import distributed as dist
from .config import Config, TrainConfig
from .data import Batch, DetectionTransform, build_dataset, build_loader, build_transform, collate
from .evaluation import coco_evaluate, format_table, to_coco_results
from .model import ATSSDetector, Detections, build_model, rescale_detections

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
LOG = "train_log.jsonl"
CURVES = "curves.png"
METRICS_JSON = "metrics.json"
METRICS_TXT = "metrics.txt"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


# --------------------------------------------------------------------------- environment


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def select_device(name: str) -> torch.device:
    """``auto``: this process's GPU under ``torchrun`` (or the only one) when CUDA is there, else the CPU."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but CUDA is not available")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
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


def lr_factor(cfg: TrainConfig, total_iterations: int):
    """The learning-rate multiplier at each iteration: linear warm-up from
    ``warmup_factor``, then ``step`` (x0.1 at each fraction of ``steps``) or ``cosine`` decay."""
    if cfg.schedule not in ("step", "cosine"):
        raise ValueError(f"schedule must be 'step' or 'cosine', got {cfg.schedule!r}")
    warmup = min(cfg.warmup_iters, total_iterations)
    milestones = [int(round(s * total_iterations)) for s in cfg.steps]

    def factor(iteration: int) -> float:
        if cfg.schedule == "step":
            value = 0.1 ** sum(iteration >= m for m in milestones)
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
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=False)


def model_from_checkpoint(path: str, device: torch.device) -> Tuple[ATSSDetector, Config, Dict[str, Any]]:
    """The trained model (eval mode, on ``device``), its config and the checkpoint dict."""
    checkpoint = load_checkpoint(path)
    cfg = Config.from_dict(checkpoint["config"])
    model = build_model(cfg.model, len(checkpoint["classes"]))
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
def predict_batches(model: ATSSDetector, batches: Iterable[Batch], device: torch.device,
                    amp: Optional[torch.dtype] = None, progress: bool = False) -> Tuple[List[int], List[Detections]]:
    """Runs ``model`` on every batch; detections in the original images' pixels (on the CPU)."""
    model.eval()
    image_ids, detections = [], []
    for batch in tqdm(batches, desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
        batch = batch.to(device, non_blocking=True)
        with _autocast(device, amp):
            out = model(batch.images, batch.image_sizes)
        out = rescale_detections(out, batch.scales, batch.original_sizes)
        image_ids += batch.image_ids
        detections += [{k: v.cpu() for k, v in d.items()} for d in out]
    return image_ids, detections


def evaluate(model: nn.Module, dataset, device: torch.device, batch_size: int = 8,
             amp: Optional[torch.dtype] = None, num_workers: int = 0) -> Dict[str, float]:
    """COCO metrics of ``model`` on ``dataset``; under ``torchrun`` each rank runs
    its share and rank 0 scores the union. Every rank returns the metrics."""
    model = _unwrap(model)
    was_training = model.training
    loader = build_loader(dataset, batch_size, train=False, rank=dist.rank(), world_size=dist.world_size(),
                          num_workers=num_workers)
    image_ids, detections = predict_batches(model, loader, device, amp, progress=dist.is_main())
    results: Dict[int, List[Dict]] = {}
    for shard in dist.all_gather_objects(
        {i: to_coco_results([i], [d], dataset.category_ids) for i, d in zip(image_ids, detections)}
    ):
        results.update(shard)  # images repeated to even out the shares collapse here
    metrics = None
    if dist.is_main():
        metrics = coco_evaluate(dataset.coco(), [r for records in results.values() for r in records])
    model.train(was_training)
    return dist.broadcast_object(metrics)


def image_files(paths: Sequence[str]) -> List[str]:
    """The image files among ``paths`` (directories are listed, sorted, non-recursively)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"no image or folder at {path}")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {list(paths)}")
    return files


def load_image(path: str) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def predict_files(model: ATSSDetector, files: Sequence[str], transform: DetectionTransform,
                  device: torch.device, batch_size: int = 8, size_divisible: int = 32) -> List[Detections]:
    """Detections (original pixels) for image files, in order."""
    detections: List[Detections] = []
    for start in range(0, len(files), batch_size):
        items = []
        for i, path in enumerate(files[start:start + batch_size]):
            image = torch.from_numpy(load_image(path)).permute(2, 0, 1).contiguous()
            items.append(transform({"image": image, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                                    "image_id": start + i}))
        detections += predict_batches(model, [collate(items, size_divisible)], device)[1]
    return detections


# --------------------------------------------------------------------------- training


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


def train(cfg: Config, resume: Optional[str] = None) -> Dict[str, Any]:
    """Trains, checkpoints every epoch, evaluates on the val split; alone or under ``torchrun``.

    Args:
        cfg: the run's settings.
        resume: a checkpoint to continue from (model, optimiser, schedule,
            epoch, iteration); its model settings must equal ``cfg.model``.

    Returns:
        ``{"model", "metrics", "iterations", "epochs", "output_dir", "train_seconds", "rank",
        "world_size"}`` on every rank (``model``: the trained :class:`ATSSDetector`, not
        DDP-wrapped; ``metrics``: the final COCO metrics).
    """
    tc = cfg.train
    device = select_device(tc.device)
    dist.init(device.type)
    threads = configure_threads(tc.threads, device)
    amp = autocast_dtype(tc.amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    main = dist.is_main()
    out = tc.output_dir
    if main:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, CONFIG), "w") as f:
            json.dump(cfg.to_dict(), f, indent=2)
    log_path = os.path.join(out, LOG)

    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    train_set = build_dataset(cfg.data, cfg.data.train_split, train=True)
    val_set = build_dataset(cfg.data, cfg.data.val_split, train=False)
    model = build_model(cfg.model, len(train_set.classes)).to(device)
    optimizer = build_optimizer(tc, model)
    loader = build_loader(train_set, tc.batch_size, train=True, rank=dist.rank(), world_size=dist.world_size(),
                          num_workers=cfg.data.num_workers, seed=tc.seed, size_divisible=cfg.data.size_divisible)
    iters_per_epoch = len(loader)
    total = tc.iterations if tc.iterations is not None else tc.epochs * iters_per_epoch
    if total < 1:
        raise ValueError(f"nothing to train: {total} iterations (epochs={tc.epochs}, iterations={tc.iterations})")
    epochs = math.ceil(total / iters_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(tc, total))

    start_epoch, iteration = 0, 0
    if resume:
        checkpoint = load_checkpoint(resume)
        saved = Config.from_dict(checkpoint["config"]).model
        if saved != cfg.model:
            raise ValueError(f"cannot resume from {resume}: its model settings {saved} differ from {cfg.model}")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start_epoch, iteration = checkpoint["epoch"], checkpoint["iteration"]

    ddp_model: nn.Module = model
    if dist.world_size() > 1:
        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if main:
        where = f"{device}" + (f" x {dist.world_size()} processes" if dist.world_size() > 1 else "")
        print(f"atss-detector: {len(train_set)} train / {len(val_set)} val images, {len(train_set.classes)} classes; "
              f"{total} iterations ({epochs} epochs of {iters_per_epoch}) of batch {tc.batch_size} on {where}, "
              f"{threads} threads, amp {amp or 'off'}" + (f"; resumed at iteration {iteration}" if resume else ""),
              flush=True)

    started = time.time()
    progress = _Progress()
    for epoch in range(start_epoch, epochs):
        loader.sampler.set_epoch(epoch)
        torch.manual_seed(tc.seed + 1000 * epoch + dist.rank())  # augmentation draws: resumable, per rank
        ddp_model.train()
        bar = tqdm(total=min(iters_per_epoch, total - iteration), desc=f"epoch {epoch + 1}/{epochs}",
                   disable=not main, dynamic_ncols=True)
        for batch in loader:
            if iteration >= total:
                break
            batch = batch.to(device, non_blocking=True)
            with _autocast(device, amp):
                losses = ddp_model(batch.images, batch.image_sizes, batch.boxes, batch.labels)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            scheduler.step()
            iteration += 1
            progress.add({"loss": loss, **losses})
            if iteration % tc.log_every == 0 or iteration == total:
                values = progress.pop()
                if not math.isfinite(values["loss"]):
                    raise FloatingPointError(
                        f"the loss is {values['loss']} at iteration {iteration}: lower --lr or raise --warmup-iters"
                    )
                lr = optimizer.param_groups[0]["lr"]
                if main:
                    append_log(log_path, {"kind": "train", "epoch": epoch + 1, "iteration": iteration, "lr": lr,
                                          "seconds": round(time.time() - started, 2), **values})
                bar.set_postfix_str(" ".join(f"{k.replace('loss_', '')}={v:.3f}" for k, v in values.items())
                                    + f" lr={lr:.2e}")
            bar.update(1)
        bar.close()
        dist.broadcast_buffers(model)

        last = epoch + 1 == epochs
        if not last and tc.eval_every and (epoch + 1) % tc.eval_every == 0:
            metrics = evaluate(model, val_set, device, tc.batch_size, amp)
            if main:
                append_log(log_path, {"kind": "eval", "epoch": epoch + 1, "iteration": iteration, **metrics})
                tqdm.write(f"epoch {epoch + 1}: " + " ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items()))
        if main:
            save_checkpoint(
                os.path.join(out, CHECKPOINT), model=model.state_dict(), optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(), epoch=epoch + 1, iteration=iteration, config=cfg.to_dict(),
                classes=list(train_set.classes), category_ids=list(train_set.category_ids),
            )
            _plot(out)
        dist.barrier()
    train_seconds = time.time() - started

    metrics = evaluate(model, val_set, device, tc.batch_size, amp)
    if main:
        append_log(log_path, {"kind": "eval", "epoch": epochs, "iteration": iteration, **metrics})
        _plot(out)
        write_metrics(out, metrics, {"split": cfg.data.val_split, "images": len(val_set), "iterations": iteration,
                                     "train_seconds": round(train_seconds, 1)})
        print(format_table(metrics, f"{cfg.data.data} {cfg.data.val_split}, {len(val_set)} images"), flush=True)
    return {"model": model, "metrics": metrics, "iterations": iteration, "epochs": epochs, "output_dir": out,
            "train_seconds": train_seconds, "rank": dist.rank(), "world_size": dist.world_size()}


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
