"""The grid of ``python -m experiments.ablate``: the ATSS paper's Tables 2, 4 and 7 as :class:`Setting` rows.

The bottom floor of the ablation code: :mod:`~experiments.ablate` (the sweep)
and :mod:`~experiments.ablate_report` (its tables and plots) both read it,
and it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

# The sweep of record (docs/experiments.md, "Run time"): 24 runs on the project's 2-core CPU, one
# thread per run, 63.0 minutes of wall time. The one source of the duration that
# `python -m experiments.ablate --help` states; tests/test_ablate.py holds the README and
# docs/experiments.md to it.
RECORD_MINUTES = 63

# The octave scales and ratios of RetinaNet's #A = 9 (times the preset's one anchor scale).
OCTAVE_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
RATIOS = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Setting:
    """One configuration of the grid (the seed apart)."""

    assigner: str
    regression: str = "box"
    topk: int = 9  # ATSS's k; the assignment gets k x anchors_per_location candidates per level
    anchors_per_location: int = 1  # 1, or 9 (3 octave scales x 3 ratios)

    @property
    def name(self) -> str:
        return f"{self.assigner}-{self.regression}-k{self.topk}-A{self.anchors_per_location}"

    def label(self) -> str:
        return f"{self.assigner} {self.regression} k={self.topk} #A={self.anchors_per_location}"


TABLES: Dict[str, Tuple[Setting, ...]] = {
    "table2": tuple(Setting(a, r) for a in ("max_iou", "fcos", "atss") for r in ("box", "point")),
    "table4": tuple(Setting("atss", "box", k) for k in (3, 5, 9, 13, 19)),
    "table7": tuple(Setting(a, "box", 9, n) for a in ("max_iou", "atss") for n in (1, 9)),
}
# --smoke: two configurations that between them use every new piece (fcos, point, atss, box).
SMOKE = (Setting("atss", "box"), Setting("fcos", "point"))


def grid(tables: Sequence[str] = tuple(TABLES)) -> List[Setting]:
    """The distinct settings of ``tables``, in table order (a shared one once)."""
    settings: List[Setting] = []
    for table in tables:
        for setting in TABLES[table]:
            if setting not in settings:
                settings.append(setting)
    return settings


def tables_of(setting: Setting) -> List[str]:
    return [table for table, settings in TABLES.items() if setting in settings]
