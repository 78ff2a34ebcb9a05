"""The CMake build of the library (build-cmake/libatss_ops.so) loads with
torch.ops.load_library and computes the same bits as the setup.py build.

`make cmake-check` builds it (CI does, before `make test`); without it the test
skips. The library is loaded in a fresh interpreter because the setup.py build
registers the same op names in this one.
"""

import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

import atss_ops
from atss_ops import grid_anchors
from atss_ops.testing import random_gt

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "build-cmake" / "libatss_ops.so"


@pytest.mark.skipif(not LIBRARY.exists(), reason="CMake library not built (run `make cmake-check`)")
def test_cmake_library_matches_setup_build(tmp_path):
    anchors, levels = grid_anchors(256, 320, (8, 16, 32, 64))
    gt = random_gt(3, 7, 256, 320, seed=5)
    counts = torch.tensor([7, 0, 4])
    torch.save({"anchors": anchors, "levels": levels, "gt": gt, "counts": counts}, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import torch
        torch.ops.load_library({str(LIBRARY)!r})
        x = torch.load({str(tmp_path / "inputs.pt")!r})
        out = torch.ops.atss_ops.atss_assign(x["anchors"], x["levels"], x["gt"], x["counts"], 9, None, 0.01)
        torch.save(list(out), {str(tmp_path / "out.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    got = torch.load(tmp_path / "out.pt")
    want = atss_ops.atss_assign(anchors, levels, gt, counts)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        if w.dtype == torch.float32:
            g, w = g.view(torch.int32), w.view(torch.int32)
        assert torch.equal(g, w)
