"""Drop-ins that put :func:`atss_ops.atss_assign` inside other libraries' detectors.

Each submodule imports its library only when it is itself imported, so
``atss_ops`` keeps needing torch alone:

- :mod:`atss_ops.integrations.monai`: MONAI's ``ATSSMatcher`` and ``RetinaNetDetector``.
- :mod:`atss_ops.integrations.torchvision`: torchvision's ``RetinaNet`` and ``FCOS``.
- :mod:`atss_ops.integrations.ultralytics`: Ultralytics YOLO's ``TaskAlignedAssigner`` (on ``tal_assign``; Ultralytics
  is imported only when ``use_atss_ops`` runs).
"""
