"""torchvision's own matching against ``use_atss_ops``'s, inside RetinaNet and FCOS.

    python -m benchmarks.bench_torchvision [--device cpu|cuda|all] [--threads 1] [--reps 5] [--no-step]

The matching part of ``compute_loss`` (what turns targets into ``matched_idxs``),
on the same inputs for both, at COCO size: 800x1333 images (padded to 800x1344 by
torchvision's transform), B = 2 and 8 images, G = 20 and 100 boxes per image
(``benchmarks.cases.random_gt``: log-uniform sizes), on the anchors torchvision's
own generators make for ``retinanet_resnet50_fpn`` (P3-P7, 9 anchors per
location: A = 201,600 per image) and ``fcos_resnet50_fpn`` (one point per
location: A = 22,400).

* ``torchvision``: the model class's own ``compute_loss`` with the head's loss
  replaced by a stub that returns ``matched_idxs``: RetinaNet's dense ``[G, A]``
  ``box_iou`` and ``Matcher`` per image, FCOS's centre-sampling and scale-range
  rule per image.
* ``atss_ops``: ``ATSSComputeLoss.matched_idxs``, what ``use_atss_ops`` runs: one
  ``atss_assign`` for the batch (plus padding the boxes, the ``anchor_valid`` mask
  and, for FCOS, the 8S anchors).

Time: the two run alternately after one warm-up each, ``--reps`` rounds; median
and min-max in milliseconds. Peak extra memory on the CPU: each (case, method) runs
in a child process with glibc's mmap threshold fixed at 128 KiB (so large blocks
go back to the system when freed), once to warm up, then again after resetting
the kernel's peak-RSS mark (``/proc/self/clear_refs``); the number is the peak RSS
during that call minus the RSS before it (it includes the returned indices). On
CUDA: ``torch.cuda.max_memory_allocated`` above the memory in use before the call.
The dense ``[G, A]`` float32 IoU matrix of one image is printed for scale.

``--step`` (default on): one whole training step (forward and backward) of each
model (ResNet-50 FPN, from scratch weights, B = 2, G = 20) with torchvision's
matching, timed once after a warm-up step, to show what share matching has; the
step with ATSS is that time with the matching's median swapped.

Results: a table printed last and ``torchvision.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Dict, List

import torch
from torch import Tensor

import atss_ops
from benchmarks.bench_gpu import peak_extra_bytes, synchronize
from benchmarks.cases import random_gt
from benchmarks.rss import peak_extra_rss

try:
    import torchvision
    from torchvision.models.detection import FCOS, fcos_resnet50_fpn, retinanet_resnet50_fpn
    from torchvision.models.detection.image_list import ImageList

    from atss_ops.integrations.torchvision import use_atss_ops
except ImportError as error:  # the script says what it needs instead of a traceback
    sys.exit(f"bench_torchvision needs torchvision ({error}): pip install torchvision")

HEIGHT, WIDTH = 800, 1333
PADDED = (800, 1344)  # torchvision pads to a multiple of 32
STRIDES = (8, 16, 32, 64, 128)
MODELS = ("RetinaNet", "FCOS")
METHODS = ("torchvision", "atss_ops")


def build(model_name: str, device: torch.device):
    """The model as torchvision's builder makes it (random weights), switched to ATSS;
    its class's own ``compute_loss`` stays reachable as ``type(model).compute_loss``."""
    builder = retinanet_resnet50_fpn if model_name == "RetinaNet" else fcos_resnet50_fpn
    model = builder(weights=None, weights_backbone=None, num_classes=91).to(device)
    return use_atss_ops(model)


def inputs(model, batch: int, num_gt: int, device: torch.device, seed: int = 0):
    """``(targets, anchors, locations per level, image sizes)`` as ``compute_loss`` sees them."""
    images = ImageList(torch.empty(batch, 3, *PADDED, device=device), [(HEIGHT, WIDTH)] * batch)
    maps = [torch.empty(batch, 1, -(-PADDED[0] // s), -(-PADDED[1] // s), device=device) for s in STRIDES]
    anchors = model.anchor_generator(images, maps)
    boxes = random_gt(batch, num_gt, HEIGHT, WIDTH, seed=seed, device=str(device))
    targets = [{"boxes": b, "labels": torch.ones(num_gt, dtype=torch.int64, device=device)} for b in boxes]
    return targets, anchors, [m.shape[-2] * m.shape[-1] for m in maps], images.image_sizes


def matchers(model, targets, anchors, locations, image_sizes):
    """The two ways to ``matched_idxs``, as zero-argument functions."""
    model.head.compute_loss = lambda targets, head_outputs, anchors, matched_idxs: matched_idxs
    own = type(model).compute_loss
    if isinstance(model, FCOS):

        def theirs():
            return own(model, targets, {}, anchors, locations)
    else:

        def theirs():
            return own(model, targets, {}, anchors)

    per_location = model.compute_loss.anchors_per_location
    levels = [n * per_location for n in locations]

    def ours():
        return model.compute_loss.matched_idxs(targets, anchors, levels, image_sizes)

    return {"torchvision": theirs, "atss_ops": ours}


def time_alternating(functions: Dict, device: torch.device, reps: int) -> Dict[str, List[float]]:
    samples: Dict[str, List[float]] = {name: [] for name in functions}
    for fn in functions.values():
        fn()
    synchronize(device)
    for rep in range(reps):
        names = list(functions) if rep % 2 == 0 else list(reversed(functions))
        for name in names:
            start = time.perf_counter()
            functions[name]()
            synchronize(device)
            samples[name].append(1000 * (time.perf_counter() - start))
    return samples


def positives_per_gt(matched: List[Tensor], num_gt: int) -> float:
    return sum(int((m >= 0).sum()) for m in matched) / (num_gt * len(matched))


# --------------------------------------------------------------------------- memory


def memory_child(model_name: str, batch: int, num_gt: int, method: str) -> int:
    """Peak extra RSS in bytes of one call, in this (fresh) process (after a first call:
    the spatial index, lazy initialisations)."""
    device = torch.device("cpu")
    model = build(model_name, device)
    return peak_extra_rss(matchers(model, *inputs(model, batch, num_gt, device))[method])


def cpu_peak_memory(model_name: str, batch: int, num_gt: int, method: str, threads: int) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    command = [sys.executable, "-m", "benchmarks.bench_torchvision", "--threads", str(threads)]
    command += ["--memory-child", f"{model_name},{batch},{num_gt},{method}"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the whole step


def training_step_ms(model_name: str, device: torch.device, batch: int = 2, num_gt: int = 20) -> float:
    """One forward and backward of the whole model with torchvision's matching, after a warm-up step."""
    builder = retinanet_resnet50_fpn if model_name == "RetinaNet" else fcos_resnet50_fpn
    torch.manual_seed(0)
    model = builder(weights=None, weights_backbone=None, num_classes=91).to(device).train()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, HEIGHT, WIDTH, generator=g).to(device) for _ in range(batch)]
    boxes = random_gt(batch, num_gt, HEIGHT, WIDTH, seed=0, device=str(device))
    targets = [{"boxes": b, "labels": torch.ones(num_gt, dtype=torch.int64, device=device)} for b in boxes]
    times = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        synchronize(device)
        start = time.perf_counter()
        sum(model(images, targets).values()).backward()
        synchronize(device)
        times.append(1000 * (time.perf_counter() - start))
    return times[-1]


# --------------------------------------------------------------------------- the table


def environment(devices: List[torch.device], threads: int) -> Dict:
    env = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "atss_ops": atss_ops.__version__,
        "compiled_cpu_kernel": atss_ops.has_kernel("atss_assign", "cpu"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
    }
    if any(d.type == "cuda" for d in devices):
        env["cuda_device"] = torch.cuda.get_device_name(0)
        env["compiled_cuda_kernel"] = atss_ops.has_kernel("atss_assign", "cuda")
    return env


def bench(devices: List[torch.device], cases: List[tuple], reps: int, threads: int) -> List[Dict]:
    rows = []
    for device in devices:
        for model_name, batch, num_gt in cases:
            model = build(model_name, device)
            case = inputs(model, batch, num_gt, device)
            functions = matchers(model, *case)
            results = {name: fn() for name, fn in functions.items()}
            samples = time_alternating(functions, device, reps)
            num_anchors = case[1][0].shape[0]
            row = {
                "device": device.type,
                "model": model_name,
                "batch": batch,
                "num_gt": num_gt,
                "num_anchors": num_anchors,
                "dense_iou_bytes_per_image": 4 * num_gt * num_anchors,
                "reps": reps,
            }
            for name in METHODS:
                row[name] = {
                    "median_ms": statistics.median(samples[name]),
                    "min_ms": min(samples[name]),
                    "max_ms": max(samples[name]),
                    "positives_per_gt": positives_per_gt(results[name], num_gt),
                    "peak_extra_bytes": (
                        cpu_peak_memory(model_name, batch, num_gt, name, threads)
                        if device.type == "cpu"
                        else peak_extra_bytes(functions[name], device)
                    ),
                }
            row["speedup"] = row["torchvision"]["median_ms"] / row["atss_ops"]["median_ms"]
            rows.append(row)
            print_row(row, flush=True)
            del model, case, functions, results
            gc.collect()
    return rows


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f}"


def print_row(row: Dict, flush: bool = False) -> None:
    tv, ours = row["torchvision"], row["atss_ops"]
    print(
        f"| {row['device']} | {row['model']} | {row['batch']} | {row['num_gt']} | {row['num_anchors']:,} | "
        f"{tv['median_ms']:.1f} ({tv['min_ms']:.1f}-{tv['max_ms']:.1f}) | "
        f"{ours['median_ms']:.1f} ({ours['min_ms']:.1f}-{ours['max_ms']:.1f}) | {row['speedup']:.1f}x | "
        f"{_mib(tv['peak_extra_bytes'])} | {_mib(ours['peak_extra_bytes'])} | "
        f"{_mib(row['dense_iou_bytes_per_image'])} | {tv['positives_per_gt']:.1f} | {ours['positives_per_gt']:.1f} |",
        flush=flush,
    )


HEADER = (
    "| device | model | B | G | anchors/image | torchvision ms (min-max) | atss_ops ms (min-max) | speed-up | "
    "torchvision peak MiB | atss_ops peak MiB | one [G, A] IoU MiB | positives/GT tv | positives/GT atss |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all", help="all: the CPU, and CUDA if present")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--reps", type=int, default=5, help="timed rounds per case (after one warm-up)")
    p.add_argument("--batches", default="2,8", help="images per batch, comma-separated")
    p.add_argument("--gts", default="20,100", help="boxes per image, comma-separated")
    p.add_argument("--no-step", action="store_true", help="skip the whole-training-step timing")
    p.add_argument("--out", default="benchmarks/results", help="folder for torchvision.json")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)  # model,B,G,method: internal, one memory measurement
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        model_name, batch, num_gt, method = args.memory_child.split(",")
        print(memory_child(model_name, int(batch), int(num_gt), method))
        return 0
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        sys.exit("--device cuda: no CUDA device")
    if not atss_ops.has_kernel("atss_assign", "cpu"):
        print("warning: atss_ops has no compiled CPU kernel: the atss_ops rows time the pure-PyTorch reference")
    env = environment(devices, args.threads)
    print(json.dumps(env))
    print(HEADER, flush=True)
    cases = [
        (model, int(batch), int(num_gt))
        for model in MODELS
        for batch in args.batches.split(",")
        for num_gt in args.gts.split(",")
    ]
    rows = bench(devices, cases, args.reps, args.threads)
    steps = []
    if not args.no_step:
        for device in devices:
            for model_name in MODELS:
                step_ms = training_step_ms(model_name, device)
                match = {
                    r_name: next(
                        r
                        for r in rows
                        if (r["device"], r["model"], r["batch"], r["num_gt"]) == (device.type, model_name, 2, 20)
                    )[r_name]["median_ms"]
                    for r_name in METHODS
                }
                with_atss = step_ms - match["torchvision"] + match["atss_ops"]
                steps.append(
                    {
                        "device": device.type,
                        "model": model_name,
                        "batch": 2,
                        "num_gt": 20,
                        "step_ms_torchvision": step_ms,
                        "matching_share_torchvision": match["torchvision"] / step_ms,
                        "step_ms_atss_ops": with_atss,
                        "matching_share_atss_ops": match["atss_ops"] / with_atss,
                    }
                )
    print()
    print(HEADER)
    for row in rows:
        print_row(row)
    if steps:
        print()
        print(
            "| device | model | B | G | step ms (torchvision matching) | matching share | step ms (atss_ops) | share |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for s in steps:
            print(
                f"| {s['device']} | {s['model']} | 2 | 20 | {s['step_ms_torchvision']:.0f} | "
                f"{100 * s['matching_share_torchvision']:.1f}% | {s['step_ms_atss_ops']:.0f} | "
                f"{100 * s['matching_share_atss_ops']:.1f}% |"
            )
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "torchvision.json")
    with open(path, "w") as f:
        json.dump({"environment": env, "matching": rows, "training_step": steps}, f, indent=1)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
