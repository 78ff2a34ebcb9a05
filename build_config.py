"""Release facts the scripts around the build share (the build itself is described by
CMakeLists.txt alone): the CUDA architectures of the release wheel and of CI, and the
oldest supported torch, read from pyproject.toml's ``torch>=X.Y`` (its one home).
Plain Python, no torch import.
"""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.abspath(__file__))

# The CUDA architectures of the release wheel: SASS for each, PTX of the newest
# (so that newer GPUs JIT-compile it). CI builds fewer (CI_CUDA_ARCHS).
WHEEL_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
CI_CUDA_ARCHS = "9.0+PTX"


def torch_minimum() -> tuple:
    """(major, minor) of pyproject.toml's ``torch>=X.Y`` dependency."""
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        text = f.read()
    deps = re.search(r"^dependencies\s*=\s*\[([^\]]*)\]", text, re.M)
    match = re.search(r'"torch\s*>=\s*(\d+)\.(\d+)[^"]*"', deps.group(1) if deps else "")
    if match is None:
        raise RuntimeError('pyproject.toml must require "torch>=X.Y" in [project] dependencies')
    return int(match.group(1)), int(match.group(2))


def torch_target() -> str:
    """The torch version the stable ABI targets, as "X.Y"."""
    return "{}.{}".format(*torch_minimum())
