"""The package's version and the oldest torch it supports, from their one home:
pyproject.toml's ``[project]`` table (``version`` and the ``torch>=X.Y`` dependency).

In a source tree (the package beside its pyproject.toml: a clone, ``pip install -e``)
that file is read; an installed package reads the same facts from its distribution's
metadata, which the build copied from it.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from typing import List, Optional, Tuple

DISTRIBUTION = "atss-ops"
_HERE = os.path.dirname(os.path.abspath(__file__))


def _source_tree_project() -> Optional[Tuple[str, List[str]]]:
    """(version, dependencies) from the pyproject.toml beside this package, if it is
    this project's (Python >= 3.11: tomllib)."""
    path = os.path.join(os.path.dirname(_HERE), "pyproject.toml")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError:
        return None
    try:
        import tomllib

        project = tomllib.loads(text).get("project", {})
    except ImportError:  # Python 3.10: the three keys read by pattern
        name = re.search(r'^name\s*=\s*"([^"]*)"', text, re.M)
        version = re.search(r'^version\s*=\s*"([^"]*)"', text, re.M)
        deps = re.search(r"^dependencies\s*=\s*\[([^\]]*)\]", text, re.M)
        project = {
            **({"name": name.group(1)} if name else {}),
            **({"version": version.group(1)} if version else {}),
            "dependencies": re.findall(r'"([^"]*)"', deps.group(1)) if deps else [],
        }
    except ValueError:
        return None
    if project.get("name") != DISTRIBUTION or "version" not in project:
        return None
    return project["version"], list(project.get("dependencies", []))


def _facts() -> Tuple[str, List[str]]:
    found = _source_tree_project()
    if found is not None:
        return found
    try:
        return importlib.metadata.version(DISTRIBUTION), importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(
            f"atss_ops: neither its pyproject.toml (beside {_HERE}) nor the installed {DISTRIBUTION} "
            "distribution's metadata says its version: install the package (pip install), or use it from a clone"
        ) from None


VERSION, _DEPENDENCIES = _facts()


def torch_minimum() -> Tuple[int, int]:
    """(major, minor) of the ``torch>=X.Y`` dependency."""
    for requirement in _DEPENDENCIES:
        match = re.match(r"\s*torch\s*>=\s*(\d+)\.(\d+)", requirement)
        if match:
            return int(match.group(1)), int(match.group(2))
    raise ImportError(f"atss_ops: its dependencies {_DEPENDENCIES} name no torch>=X.Y")
