"""Where and how a run executes: the device, CPU threads, OpenMP's wait policy, autocast, progress bars.

Shared by training (:mod:`~atss_detector.training`), prediction and evaluation
(:mod:`~atss_detector.prediction`, :mod:`~atss_detector.evaluation`) and the commands.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, Optional

import torch

from . import distributed as dist
from .errors import DeviceError


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


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` to ``dtype`` on ``device``; disabled when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def bar_interval() -> float:
    """Seconds between progress-bar redraws: live on a terminal, every 30 s into a log file."""
    return 0.1 if sys.stderr.isatty() else 30.0
