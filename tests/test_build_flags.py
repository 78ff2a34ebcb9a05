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
    """build_config.py holds the numerics flags; setup.py uses them, CMakeLists.txt spells
    the same ones, the emulated build turns off contraction too."""
    import build_config

    assert "-ffp-contract=off" in build_config.CXX_NUMERICS and "-O3" in build_config.CXX_NUMERICS
    assert "-fmad=false" in build_config.NVCC_NUMERICS and "-O3" in build_config.NVCC_NUMERICS
    setup = read("setup.py")
    assert "build_config.CXX_NUMERICS" in setup and "build_config.NVCC_NUMERICS" in setup
    cmake = read("CMakeLists.txt")
    cxx = re.search(r"COMPILE_LANGUAGE:CXX>:([^>]*)>", cmake).group(1).split()
    cuda = re.search(r"COMPILE_LANGUAGE:CUDA>:([^>]*)>", cmake).group(1).split()
    assert set(build_config.CXX_NUMERICS) <= set(cxx)
    assert set(build_config.NVCC_NUMERICS) <= set(cuda)
    assert "-ffp-contract=off" in read("scripts/build_emu.py")
    for name in ("setup.py", "CMakeLists.txt", "scripts/build_emu.py", "build_config.py"):
        text = read(name)
        assert "fast-math" not in text.replace("never fast-math", "").replace("Never fast-math", "")


def test_same_stable_abi_target():
    """Every build compiles against the stable ABI of pyproject.toml's torch minimum:
    setup.py and the emulated build through build_config, CMake by reading the same line."""
    import build_config

    assert build_config.stable_abi_define() == "-DTORCH_TARGET_VERSION=0x{:02x}{:02x}000000000000".format(
        *build_config.torch_minimum()
    )
    assert "build_config.stable_abi_define()" in read("setup.py")
    assert "stable_abi_define" in read("scripts/build_emu.py")
    cmake = read("CMakeLists.txt")
    assert "pyproject.toml" in cmake and "TORCH_TARGET_VERSION=${ATSS_TORCH_TARGET}" in cmake


def test_isolated_build_refusal_says_why(tmp_path):
    """An isolated build (plain `pip install .`) runs setup.py where torch cannot be
    imported: the one-line refusal says that the isolated environment cannot see the
    installed torch, and what to run instead (not just "install torch first")."""
    import subprocess
    import sys

    (tmp_path / "torch.py").write_text("raise ImportError('No module named torch')\n")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "setup.py"), "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
        timeout=120,
    )
    assert proc.returncode != 0
    message = proc.stderr.strip().splitlines()[-1]
    assert "isolated environment that cannot see the torch you installed" in message, message
    assert "pip install --no-build-isolation ." in message and "make wheel" in message, message
