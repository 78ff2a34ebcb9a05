"""The mistakes a user can make, as exceptions that ``atss-detector`` turns into one line and an exit code.

Each class here stands for a mistake of the user's (a path, a file, a flag), never a bug. Its
message is a single line that names the file or the flag and says what is wrong; the command
line prints it as ``atss-detector <command>: error: <message>`` and exits with the class's
``exit_code`` (:data:`EXIT_CODES`, listed by ``atss-detector --help``). ``--debug`` prints the
traceback as well. This module imports nothing of the package: every other module may use it.
"""

from __future__ import annotations

import os
from typing import Dict

# Every exit status of `atss-detector`, and what it means (shown by --help and the README).
EXIT_CODES: Dict[int, str] = {
    0: "done",
    1: "the run failed: the loss diverged, or an unexpected error (a bug: --debug shows its traceback)",
    2: "usage: a flag, a value or a combination the command does not take (its usage is printed)",
    3: "input: a missing path, an image that cannot be decoded, bad annotations",
    4: "checkpoint: missing, unreadable, or not one of this atss-detector's",
    5: "output: the output folder cannot be made or written",
    130: "interrupted (Ctrl-C)",
}


class UserError(Exception):
    """A mistake of the user's: a one-line message and the exit status of :data:`EXIT_CODES`."""

    exit_code = 1


class UsageError(UserError, ValueError):
    """Flags that do not go together; printed after the command's usage, as argparse does."""

    exit_code = 2


class DeviceError(UsageError, RuntimeError):
    """A device asked for (``--device cuda``) that this machine or process group cannot give."""


class DataError(UserError, ValueError):
    """Input that cannot be used (a path, a data file, an image): the message names the file and the entry."""

    exit_code = 3


class ImageError(DataError):
    """An image file that cannot be decoded: missing, not an image, truncated or corrupt."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable, or not one this atss-detector can load."""

    exit_code = 4


class OutputError(UserError, OSError):
    """An output folder that cannot be made or written."""

    exit_code = 5


class DivergedError(UserError, FloatingPointError):
    """Training stopped on a loss that is not finite."""

    exit_code = 1


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` (Python 3.11+), or its equivalent on 3.10: the note ends the one line
    the command prints for ``exc``."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]


def first_line(text: str) -> str:
    """The first non-empty line of ``text`` (an exception of a library may span many)."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def check_writable(flag: str, path: str) -> None:
    """Raises :class:`OutputError` unless ``path`` is a folder this process can write in, or one it
    can make (its nearest existing parent is a writable folder). Nothing is created."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise OutputError(f"{flag} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: cannot write in {probe} (permission denied)")
