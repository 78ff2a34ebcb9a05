"""setup.py, CMakeLists.txt and the emulated build compile the same kernel sources with
the same numerics flags (every float operation rounded on its own: no FMA contraction,
never fast-math), so that every build computes the contract's bits."""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name: str) -> str:
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def test_same_source_globs():
    setup = read("setup.py")
    cmake = read("CMakeLists.txt")
    setup_globs = set(re.findall(r'_sources\("(csrc/[^"]+)"\)', setup))
    cmake_globs = {
        g.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "")
        for g in re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/(csrc/[^\s)]+)", cmake)
    }
    # setup.py's csrc/*.cpp adds the Python module stub (python_module.cpp) to the library's
    # schemas (atss_ops.cpp), which is all CMake takes from csrc/ itself.
    assert setup_globs - {"csrc/*.cpp"} == cmake_globs - {"csrc/atss_ops.cpp"}
    assert "csrc/*.cpp" in setup_globs and "csrc/atss_ops.cpp" in cmake_globs
    assert {"csrc/common/*.cpp", "csrc/cpu/*.cpp", "csrc/cuda/*.cu"} <= cmake_globs


def test_same_numerics_flags():
    setup = read("setup.py")
    cmake = read("CMakeLists.txt")
    emu = read("scripts/build_emu.py")
    for text in (setup, cmake, emu):
        assert "-ffp-contract=off" in text
        assert "fast-math" not in text.replace("never fast-math", "").replace("Never fast-math", "")
    for text in (setup, cmake):
        assert "-fmad=false" in text
        assert "-O3" in text
