"""The bundled ATSS detector: a small, complete user of :func:`atss_ops.atss_assign`.

A ResNet-FPN, anchor-based ATSS detector (the paper's RetinaNet #A=1 design)
with training, COCO evaluation and prediction, on built-in synthetic data or any
COCO-format dataset, on one CPU/GPU or many processes under ``torchrun``.

Modules:

* :mod:`~atss_ops.detector.config`: settings and presets (``full``, ``demo``, ``tiny``);
* :mod:`~atss_ops.detector.synthetic`: the built-in synthetic shapes dataset;
* :mod:`~atss_ops.detector.coco`: COCO-format datasets;
* :mod:`~atss_ops.detector.data`: transforms, padded batches, loaders;
* :mod:`~atss_ops.detector.anchors`: anchors, their validity, box coding;
* :mod:`~atss_ops.detector.loss`: assignment targets and the losses;
* :mod:`~atss_ops.detector.model`: backbone, FPN, head, inference;
* :mod:`~atss_ops.detector.engine`: training, evaluation, prediction, checkpoints;
* :mod:`~atss_ops.detector.evaluation`, :mod:`~atss_ops.detector.visualize`: metrics, PNGs;
* :mod:`~atss_ops.detector.cli` (``atss-detector``) and :mod:`~atss_ops.detector.demo`.
"""

from .config import Config, DataConfig, ModelConfig, TrainConfig, preset
from .model import ATSSDetector, build_model

__all__ = ["ATSSDetector", "Config", "DataConfig", "ModelConfig", "TrainConfig", "build_model", "preset"]
