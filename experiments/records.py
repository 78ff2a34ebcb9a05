"""What every experiment's results file shares: the fingerprint of a run's settings and the
atomic JSON writer.

A record counts as done only for the same settings: each keeps :func:`fingerprint` of them,
and a command finding a record with another fingerprint runs it again. The records of
``docs/experiments/`` all carry this fingerprint (``torchvision.json``'s was a 16-digit sha256
until the experiments moved here; it was recomputed from the settings the file stores).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping


def fingerprint(settings: Mapping[str, Any]) -> str:
    """12 hex digits of the sha1 of ``settings`` as sorted JSON: everything that decides a
    result, nothing about where it is written."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def load_json(path: str, empty: Any) -> Any:
    """The JSON in ``path``, or ``empty`` when there is no such file."""
    if not os.path.isfile(path):
        return empty
    with open(path) as f:
        return json.load(f)


def write_json_atomically(path: str, data: Any) -> None:
    """Writes through a temporary file and a rename: a crash leaves the old file or the new one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
