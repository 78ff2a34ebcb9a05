"""Docs that run: every ```python block of README.md and docs/*.md is a complete program, and runs.

The rule, kept simple: a fenced block opened with ```python is a program a reader can
paste and run as it stands (imports included, CPU, small sizes, a few seconds); every
other block names another language (```sh for shell commands, ```text for anything
else: layouts, tables, signatures) and is never run. Each Python block runs here in a
fresh namespace (``__name__ == "__main__"``) from the repository root. A block that
imports MONAI or torchvision, or loads the emulated CUDA library (``make emu``), is
skipped cleanly when that is missing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LANGUAGES = ("python", "sh", "text")  # a fence names one of these; only python runs
EMU_LIBRARY = "build-emu/libatss_ops_emu.so"


class Block(NamedTuple):
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks(path: Path) -> List[Block]:
    """The fenced blocks of a markdown file."""
    found, opening, language, body = [], None, "", []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if opening is None and line.startswith("```"):
            opening, language, body = number, line[3:].strip(), []
        elif opening is not None and line.strip() == "```":
            found.append(Block(path, opening, language, "\n".join(body) + "\n"))
            opening = None
        elif opening is not None:
            body.append(line)
    assert opening is None, f"{path.relative_to(REPO)}:{opening}: a code fence is never closed"
    return found


ALL_BLOCKS = [block for path in DOCS for block in blocks(path)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.language == "python"]


def test_every_fence_names_a_known_language():
    """An unnamed or misspelt fence (```py, ```Python) would silently never run."""
    odd = [f"{b.where}: ```{b.language}" for b in ALL_BLOCKS if b.language not in LANGUAGES]
    assert not odd, f"fences must name one of {LANGUAGES}:\n" + "\n".join(odd)
    assert len(PYTHON_BLOCKS) >= 6  # README's examples and the MONAI page's at least


def _skip_if_missing(code: str) -> None:
    for module in ("monai", "torchvision"):
        if re.search(rf"^\s*(from|import)\s+{module}\b", code, re.MULTILINE):
            pytest.importorskip(module)
    if EMU_LIBRARY in code and not (REPO / EMU_LIBRARY).is_file():
        pytest.skip(f"needs the emulated CUDA library {EMU_LIBRARY} (`make emu`)")


@pytest.mark.filterwarnings("ignore:atss_ops. using the pure-PyTorch reference")
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.where)
def test_python_block_runs_as_a_complete_program(block, monkeypatch):
    _skip_if_missing(block.code)
    monkeypatch.chdir(REPO)
    code = compile(block.code, block.where, "exec")
    exec(code, {"__name__": "__main__"})
