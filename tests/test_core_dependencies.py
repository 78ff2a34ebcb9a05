"""The core needs torch alone: ``import atss_ops`` and an assignment work with the
detector's dependencies blocked from import, and ``atss_ops`` never imports ``atss_detector``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLOCKED = ("torchvision", "tqdm", "matplotlib", "pycocotools", "PIL", "atss_detector", "monai")

SCRIPT = textwrap.dedent(
    """
    import sys

    BLOCKED = {blocked!r}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked by the test")
            return None

    sys.meta_path.insert(0, Blocker())

    import torch
    import atss_ops

    anchors, levels = atss_ops.grid_anchors(64, 96, strides=(8, 16))
    gt_boxes = torch.tensor([[[4.0, 6.0, 40.0, 30.0], [50.0, 10.0, 90.0, 60.0]]])
    result = atss_ops.atss_assign(anchors, levels, gt_boxes, topk=9)
    targets = atss_ops.assign_targets(result, gt_boxes, torch.tensor([[1, 2]]))
    assert result.gt_index.shape == (1, anchors.shape[0])
    assert int(result.num_positive.sum()) > 0
    assert int(targets.positive.sum()) == int(result.num_positive.sum())
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("ok", atss_ops.extension_available())
    """
)


def test_import_and_assign_without_the_detector_dependencies():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(blocked=BLOCKED)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok"), proc.stdout
