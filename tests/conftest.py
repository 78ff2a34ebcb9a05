"""Shared pytest configuration: markers, the CUDA skip, import paths, hypothesis profile.

Markers:

* ``cuda``: needs a CUDA GPU *and* the compiled CUDA kernels; skipped cleanly otherwise.
* ``slow``: takes more than a few seconds (deselect with ``-m "not slow"``).
"""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
# The package is used in place (not installed) and `benchmarks` / `cases` are plain modules.
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

import atss_ops  # noqa: E402

settings.register_profile("atss", deadline=None, max_examples=50, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "atss"))


def cuda_available() -> bool:
    """A CUDA device is visible and ``atss_ops`` has CUDA kernels."""
    return torch.cuda.is_available() and atss_ops.has_kernel("atss_assign", "cuda")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU and the atss_ops CUDA kernels (skipped otherwise)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    why = (
        "no CUDA device" if not torch.cuda.is_available() else "atss_ops was built without CUDA kernels"
    )
    skip = pytest.mark.skip(reason=f"cuda test skipped: {why}")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def restore_threads():
    """Restores torch's intra-op thread count after the test."""
    n = torch.get_num_threads()
    yield n
    torch.set_num_threads(n)
