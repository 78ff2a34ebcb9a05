"""Shared pytest configuration: the CUDA skip, the hypothesis profile, fixtures.

The markers are registered in pyproject.toml, which also puts the repository
root and ``tests/`` on the import path (the packages are used in place;
``benchmarks`` and ``cases`` are plain modules):

* ``cuda``: needs a CUDA GPU *and* the compiled CUDA kernels; skipped cleanly otherwise.
* ``emu``: runs the CUDA kernel sources through the host execution model (the
  library ``make emu`` builds); skipped without it, unless ATSS_REQUIRE_EMU=1
  (CI), which turns a missing library into an error.
* ``slow``: takes more than a few seconds (deselect with ``-m "not slow"``).

The detector's tests (``test_detector*.py``, ``test_ablate.py``) need its extra
(pyproject.toml's ``detector``): without it they are not collected, and pytest's
header says which module is missing.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from hypothesis import settings

import atss_ops

settings.register_profile("atss", deadline=None, max_examples=50, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "atss"))


# The detector extra's modules that its tests import (pycocotools: only where training evaluates).
DETECTOR_EXTRA = ("numpy", "PIL", "torchvision", "tqdm", "matplotlib")
DETECTOR_TESTS = ("test_detector", "test_ablate")


def _missing_detector_extra() -> list:
    return [m for m in DETECTOR_EXTRA if importlib.util.find_spec(m) is None]


def pytest_ignore_collect(collection_path, config):
    if collection_path.name.startswith(DETECTOR_TESTS) and _missing_detector_extra():
        return True
    return None


def pytest_report_header(config):
    missing = _missing_detector_extra()
    if missing:
        return f"detector tests not collected: {', '.join(missing)} missing (pip install '.[detector]')"
    return None


def cuda_available() -> bool:
    """A CUDA device is visible and ``atss_ops`` has CUDA kernels."""
    return torch.cuda.is_available() and atss_ops.has_kernel("atss_assign", "cuda")


def pytest_collection_modifyitems(config, items):
    from backends import EMU_LIBRARY, emu_available

    if not cuda_available():
        why = "no CUDA device" if not torch.cuda.is_available() else "atss_ops was built without CUDA kernels"
        skip = pytest.mark.skip(reason=f"cuda test skipped: {why}")
        for item in items:
            if item.get_closest_marker("cuda") is not None:
                item.add_marker(skip)
    if any(item.get_closest_marker("emu") is not None for item in items) and not emu_available():
        if os.environ.get("ATSS_REQUIRE_EMU") == "1":
            raise pytest.UsageError(
                f"ATSS_REQUIRE_EMU=1 but the emulated CUDA library {EMU_LIBRARY} is missing: run `make emu`"
            )
        skip = pytest.mark.skip(reason=f"emulated CUDA kernels not built ({EMU_LIBRARY}): run `make emu`")
        for item in items:
            if item.get_closest_marker("emu") is not None:
                item.add_marker(skip)


@pytest.fixture(scope="module")
def pil_as_found():
    """For the modules that import Ultralytics: its import replaces PIL.Image.open for the
    whole process (a retry through a HEIF plugin it installs on demand), which would change
    what the detector's tests see of an unreadable image; PIL's own comes back after the module."""
    try:
        from PIL import Image
    except ImportError:
        yield
        return
    saved = Image.open
    yield
    Image.open = saved


@pytest.fixture
def restore_threads():
    """Restores torch's intra-op thread count after the test."""
    n = torch.get_num_threads()
    yield n
    torch.set_num_threads(n)


@pytest.fixture
def untrained_checkpoint(tmp_path):
    """A tiny model's checkpoint, without training (the trainer's end-of-epoch save)."""
    from atss_detector import training
    from atss_detector.config import preset

    cfg = preset("tiny")
    cfg.train.output_dir, cfg.train.threads = str(tmp_path / "run"), 1
    training.Trainer(cfg)._end_epoch(0)
    return tmp_path / "run" / "checkpoint.pt"
