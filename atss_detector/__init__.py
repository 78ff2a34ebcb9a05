"""The bundled ATSS detector: a small, complete user of :func:`atss_ops.atss_assign`.

A ResNet-FPN, anchor-based ATSS detector (the paper's RetinaNet #A=1 design)
with training, COCO evaluation and prediction, on built-in synthetic data or any
COCO-format dataset, on one CPU/GPU or many processes under ``torchrun``.

Modules:

* :mod:`~atss_detector.config`: settings and presets (``full``, ``demo``, ``small``, ``tiny``, ``ablate``);
* :mod:`~atss_detector.errors`: the user's mistakes as exceptions of one line, and the exit statuses;
* :mod:`~atss_detector.synthetic`: the built-in synthetic shapes dataset;
* :mod:`~atss_detector.coco`: COCO-format datasets and the whole-split check of their files;
* :mod:`~atss_detector.data`: transforms, padded batches, loaders;
* :mod:`~atss_detector.anchors`: anchors, their validity, box coding;
* :mod:`~atss_detector.loss`: assignment targets and the losses;
* :mod:`~atss_detector.model`: backbone, FPN, head, inference;
* :mod:`~atss_detector.training`: the optimiser, the schedule, the training loop and its run folder;
* :mod:`~atss_detector.checkpoints`: checkpoints, and the model they hold;
* :mod:`~atss_detector.prediction`: the model on batches and on image files;
* :mod:`~atss_detector.evaluation`: COCO metrics, their files, and a model scored on a split;
* :mod:`~atss_detector.runtime`: device, threads, OpenMP, autocast, progress bars;
* :mod:`~atss_detector.visualize`: PNGs (curves, detections);
* :mod:`~atss_detector.cli` (``atss-detector``) and :mod:`~atss_detector.demo`: the commands,
  which call the modules above and are called by none of them.

The paper's experiments (the ablation sweep, torchvision's table) are not part of the
package: they live in the source checkout's ``experiments/`` and use this package.
"""

from .config import Config, DataConfig, ModelConfig, TrainConfig, preset

__all__ = ["ATSSDetector", "Config", "DataConfig", "ModelConfig", "TrainConfig", "build_model", "preset"]


def __getattr__(name: str):
    # The model needs torchvision: imported on first use, so that the command line
    # can say which dependency is missing instead of failing on `import atss_detector`.
    if name in ("ATSSDetector", "build_model"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'atss_detector' has no attribute {name!r}")
