"""Checkpoints of a training run: written atomically, read with one-line errors, turned back into a model.

``checkpoint.pt`` holds :data:`CHECKPOINT_KEYS` (model, optimiser and schedule states, epoch,
iteration, the run's :class:`~atss_detector.config.Config` and its classes) and the layout
version :data:`CHECKPOINT_FORMAT`; ``eval``, ``predict`` and ``--resume`` read it.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Tuple

import torch
from torch import nn

from .config import Config
from .errors import CheckpointError, first_line
from .model import ATSSDetector, build_model

CHECKPOINT = "checkpoint.pt"
# The layout of checkpoint.pt; a newer layout is refused in one line (CheckpointError).
CHECKPOINT_FORMAT = 1
# The keys of every checkpoint the trainer writes (and `eval`, `predict` and `--resume` read).
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "iteration", "config", "classes")


def save_checkpoint(path: str, **state: Any) -> None:
    """``torch.save`` through a temporary file, so a crash never leaves half a checkpoint."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> Dict[str, Any]:
    """The checkpoint dict of a training run's ``checkpoint.pt``.

    Raises:
        CheckpointError: one line naming ``path``: no such file, not a file torch can read,
            not an atss-detector checkpoint (another model's weights, a bare state_dict), or
            written by a newer atss-detector.
    """
    if not os.path.isfile(path):
        what = "a folder, not a checkpoint file" if os.path.isdir(path) else "no such file"
        raise CheckpointError(f"no checkpoint at {path}: {what} (a training run writes OUTPUT_DIR/{CHECKPOINT})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises pickle, zip and runtime errors of many kinds
        raise CheckpointError(
            f"{path}: not a checkpoint torch can read ({type(exc).__name__}: {first_line(exc)})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path}: not an atss-detector checkpoint (a {type(checkpoint).__name__}; a training run's "
            f"{CHECKPOINT} is a dict of {', '.join(CHECKPOINT_KEYS)})"
        )
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        keys = ", ".join(map(repr, list(checkpoint)[:4])) + (", ..." if len(checkpoint) > 4 else "")
        raise CheckpointError(
            f"{path}: not an atss-detector checkpoint (no {missing[0]!r}; its keys: {keys or 'none'}; a training "
            f"run's {CHECKPOINT} holds {', '.join(CHECKPOINT_KEYS)})"
        )
    version = checkpoint.get("format", 1)
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: written by a newer atss-detector (checkpoint format {version!r}; this one reads "
            f"{CHECKPOINT_FORMAT}): upgrade atss-ops to use it"
        )
    try:
        Config.from_dict(checkpoint["config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: its settings are not this atss-detector's (another version?): {first_line(exc)}"
        ) from None
    return checkpoint


def check_weights(path: str, model: nn.Module, weights: Dict[str, Any]) -> None:
    """``weights`` fit ``model`` key for key and shape for shape, or a one-line CheckpointError."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    reshaped = [
        f"{k} {list(weights[k].shape)} (expected {list(v.shape)})"
        for k, v in own.items()
        if k in weights and getattr(weights[k], "shape", None) != v.shape
    ]
    if missing or unexpected or reshaped:
        first = (reshaped or [f"missing {k}" for k in missing] or [f"unexpected {k}" for k in unexpected])[0]
        raise CheckpointError(
            f"{path}: its weights do not fit the model its settings describe ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} of another shape; first: {first})"
        )


def model_from_checkpoint(path: str, device: torch.device) -> Tuple[ATSSDetector, Config, Dict[str, Any]]:
    """The trained model (eval mode, on ``device``), its config and the checkpoint dict
    (a :class:`~atss_detector.errors.CheckpointError` for a file that is not one)."""
    checkpoint = load_checkpoint(path)
    cfg = Config.from_dict(checkpoint["config"])
    model = build_model(cfg.model, len(checkpoint["classes"]))
    check_weights(path, model, checkpoint["model"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), cfg, checkpoint
