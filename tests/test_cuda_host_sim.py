"""The CUDA kernels' selection and claim logic, checked on the CPU (no GPU needed).

``csrc/cuda/host_sim/*.cpp`` run the logic of the CUDA kernels on the host:
the shared host-and-device code of ``csrc/cuda/select_core.h`` (ordering keys,
the per-lane top-K list, the level table, the claim keys) inside loops that
mirror ``select_kernel`` / ``finish_row`` lane by lane and block by block (in a
random block order), and the claim / decode kernels of step 7 with claims
applied in a random order. Their outputs must equal the CPU kernels'
(``csrc/cpu/steps.h``) on adversarial inputs. This runs wherever a C++
compiler is, so CI checks the CUDA logic even though it has no GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM_DIR = os.path.join(ROOT, "csrc", "cuda", "host_sim")
CXX = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
@pytest.mark.parametrize(
    "program,runs",
    [("select_sim", [("1", "60"), ("2", "60")]), ("resolve_sim", [("1", "4000"), ("2", "4000")])],
)
def test_cuda_logic_matches_cpu_kernels(program, runs, tmp_path):
    exe = str(tmp_path / program)
    # -ffp-contract=off: the same rounding as the CPU kernels' build.
    build = subprocess.run(
        [CXX, "-O2", "-std=c++17", "-ffp-contract=off", os.path.join(SIM_DIR, program + ".cpp"), "-o", exe],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    for seed, trials in runs:
        run = subprocess.run([exe, seed, trials], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0 and run.stdout.startswith("OK"), run.stdout[-2000:] + run.stderr[-2000:]
