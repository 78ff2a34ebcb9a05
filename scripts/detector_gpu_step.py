"""The bundled detector on a GPU: some training steps of the ``tiny`` preset (gpu_check.sh's ``detector`` step).

Trains ``atss_detector``'s ``tiny`` preset (synthetic data, no download) for ``--steps`` steps on
``--device`` and checks that every loss is finite and that the first batch's assignment on the
device (``atss_ops.atss_assign``, as the detector calls it) equals the CPU kernel's bit for bit on
the same inputs. Reports the time of a training step (median after ``--warmup`` steps) and the share
of it spent in ``atss_assign``: CUDA events around each step and each ``atss_assign`` call on a GPU
(read once at the end: no sync inside the loop), the wall clock on the CPU. Writes the figures as
``detector_step.json`` in ``--out``.

    python scripts/detector_gpu_step.py --device cuda --steps 30
    python scripts/detector_gpu_step.py --device cpu --steps 3   # the plumbing, with the CPU standing in
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Callable, List, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import atss_ops  # noqa: E402
from atss_detector.config import preset  # noqa: E402
from atss_detector.data import build_dataset, build_loader  # noqa: E402
from atss_detector.model import build_model  # noqa: E402
from atss_detector.runtime import autocast_dtype  # noqa: E402
from atss_detector.training import build_optimizer  # noqa: E402


class Clock:
    """Marks on the device's stream (CUDA events) or the host's clock; durations read at the end."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3


def same_bits(a, b) -> bool:
    a, b = list(a), list(b)
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        x, y = x.detach().cpu(), y.detach().cpu()
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if x.dtype == torch.float32:
            x, y = x.contiguous().view(torch.int32), y.contiguous().view(torch.int32)
        if not torch.equal(x, y):
            return False
    return True


def to_cpu(x):
    return x.detach().cpu() if isinstance(x, torch.Tensor) else x


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("detector_gpu_step: no CUDA device")
        return 2
    if device.type == "cuda" and not atss_ops.has_kernel("atss_assign", "cuda"):
        print("detector_gpu_step: atss_ops has no CUDA kernels")
        return 2
    warmup = min(args.warmup, max(0, args.steps - 1))

    cfg = preset("tiny").resolved()
    torch.manual_seed(cfg.train.seed)
    train_set = build_dataset(cfg.data, cfg.data.train_split, train=True)
    model = build_model(cfg.model, len(train_set.classes)).to(device).train()
    optimizer = build_optimizer(cfg.train, model)
    loader = build_loader(
        train_set,
        cfg.train.batch_size,
        train=True,
        rank=0,
        world_size=1,
        num_workers=0,
        seed=cfg.train.seed,
        size_divisible=cfg.data.size_divisible,
    )
    amp = autocast_dtype(cfg.train.amp, device)
    clock = Clock(device)

    # Every atss_assign call of the detector, timed; the first one's inputs and outputs kept.
    original: Callable = atss_ops.atss_assign
    assign_marks: List[Tuple[int, object, object]] = []
    first: dict = {}
    step_index = [0]

    def timed_assign(*a, **kw):
        start = clock.mark()
        out = original(*a, **kw)
        assign_marks.append((step_index[0], start, clock.mark()))
        if not first:
            first.update(args=tuple(to_cpu(x) for x in a), kwargs={k: to_cpu(v) for k, v in kw.items()}, out=out)
        return out

    atss_ops.atss_assign = timed_assign
    step_marks, losses = [], []
    try:
        step = 0
        while step < args.steps:
            for batch in loader:
                if step >= args.steps:
                    break
                step_index[0] = step
                batch = batch.to(device, non_blocking=True)
                start = clock.mark()
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    parts = model(batch.images, batch.image_sizes, batch.boxes, batch.labels, batch.ignore_boxes)
                loss = sum(parts.values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step_marks.append((start, clock.mark()))
                losses.append(loss.detach())
                step += 1
    finally:
        atss_ops.atss_assign = original
    if device.type == "cuda":
        torch.cuda.synchronize(device)

    loss_values = [float(v) for v in losses]
    finite = all(math.isfinite(v) for v in loss_values)
    cpu_out = original(*first["args"], **first["kwargs"])  # the CPU kernel on the same inputs
    assignment_equal = same_bits(first["out"], cpu_out)
    step_ms = [clock.ms(s, e) for s, e in step_marks]
    assign_ms = [0.0] * len(step_ms)
    calls = [0] * len(step_ms)
    for i, s, e in assign_marks:
        assign_ms[i] += clock.ms(s, e)
        calls[i] += 1
    timed = range(warmup, len(step_ms))
    step_total = sum(step_ms[i] for i in timed)
    assign_total = sum(assign_ms[i] for i in timed)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "preset": "tiny",
        "batch_size": cfg.train.batch_size,
        "image_size": cfg.data.image_size,
        "steps": len(step_ms),
        "timed_steps": len(timed),
        "losses_finite": finite,
        "first_assignment_equals_cpu": assignment_equal,
        "step_ms_median": statistics.median(step_ms[i] for i in timed),
        "atss_assign_ms_median": statistics.median(assign_ms[i] for i in timed),
        "atss_assign_calls_per_step": calls[-1],
        "atss_assign_share": assign_total / step_total if step_total > 0 else float("nan"),
        "losses": loss_values,
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "detector_step.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(
        f"detector (tiny, batch {cfg.train.batch_size}, {cfg.data.image_size} px) on {result['device']}: "
        f"{len(step_ms)} steps, losses finite: {finite}, first batch's assignment == CPU kernel: {assignment_equal}"
    )
    print(
        f"training step {result['step_ms_median']:.2f} ms (median of {len(timed)}), atss_assign "
        f"{result['atss_assign_ms_median']:.3f} ms in {calls[-1]} call(s): {100 * result['atss_assign_share']:.1f}% "
        f"of the step; loss {loss_values[0]:.3f} -> {loss_values[-1]:.3f}"
    )
    print(f"wrote {path}")
    return 0 if finite and assignment_equal else 1


if __name__ == "__main__":
    sys.exit(main())
