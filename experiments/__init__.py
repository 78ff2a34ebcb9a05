"""The paper's experiments on the bundled detector: not part of the installed package.

Run from the root of a source checkout (pyproject.toml installs ``atss_ops`` and
``atss_detector`` only, never this folder)::

    python -m experiments.ablate                # the ATSS paper's Tables 2, 4, 7 (docs/experiments.md)
    python -m experiments.torchvision_table     # torchvision's RetinaNet and FCOS with ATSS (docs/torchvision.md)

Modules: :mod:`~experiments.ablate` (the sweep and its command), over
:mod:`~experiments.ablate_report` (tables and plots) and :mod:`~experiments.ablate_grid`
(the grid); :mod:`~experiments.torchvision_table`; :mod:`~experiments.records` (the
fingerprint and the results writer every experiment shares). They use
``atss_detector``; ``atss_detector`` never imports them.
"""
