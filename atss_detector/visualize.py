"""PNG output: training curves, and images with their detections drawn."""

from __future__ import annotations

import colorsys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

LOSS_KEYS = ("loss", "loss_cls", "loss_box", "loss_ctr")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(records: Sequence[Dict], path: str) -> None:
    """Loss parts and validation AP / AP50 / AP75 against iterations, from ``train_log.jsonl`` records."""
    plt = _pyplot()
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 4))
    for key in LOSS_KEYS:
        points = [(r["iteration"], r[key]) for r in train if key in r]
        if points:
            ax_loss.plot(*zip(*points), label=key, linewidth=2 if key == "loss" else 1)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.set_title("training losses")
    if ax_loss.lines:
        ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    for key in ("AP", "AP50", "AP75"):
        points = [(r["iteration"], 100 * r[key]) for r in evals if key in r]
        if points:
            ax_ap.plot(*zip(*points), marker="o", label=key)
    ax_ap.set_xlabel("iteration (evaluated after each epoch)")
    ax_ap.set_ylabel("%")
    ax_ap.set_title("validation AP")
    ax_ap.grid(alpha=0.3)
    if evals:
        ax_ap.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def class_colour(label: int) -> tuple:
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.9, 1.0)
    return int(255 * r), int(255 * g), int(255 * b)


def draw_detections(
    image: np.ndarray,
    detections: Dict[str, Tensor],
    classes: Sequence[str],
    *,
    score_threshold: float = 0.3,
    ground_truth: Optional[np.ndarray] = None,
    min_side: int = 384,
) -> Image.Image:
    """``image`` (uint8 ``[H, W, 3]``) enlarged to at least ``min_side`` px, with the
    detections scoring ``>= score_threshold`` drawn as coloured boxes and labels,
    and ``ground_truth`` boxes (``[N, 4]``) as thin white boxes when given."""
    H, W = image.shape[:2]
    zoom = max(1, int(np.ceil(min_side / min(H, W))))
    canvas = Image.fromarray(image).resize((W * zoom, H * zoom), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    if ground_truth is not None:
        for box in np.asarray(ground_truth).reshape(-1, 4) * zoom:
            draw.rectangle(box.tolist(), outline=GROUND_TRUTH_COLOUR, width=1)
    keep = detections["scores"] >= score_threshold
    for box, score, label in zip(
        (detections["boxes"][keep] * zoom).tolist(),
        detections["scores"][keep].tolist(),
        detections["labels"][keep].tolist(),
    ):
        colour = class_colour(label)
        draw.rectangle(box, outline=colour, width=2)
        text = f"{classes[label]} {score:.2f}"
        x, y = box[0], max(0, box[1] - 11)
        draw.rectangle([x, y, x + 6 * len(text) + 2, y + 10], fill=colour)
        draw.text((x + 1, y - 1), text, fill=(0, 0, 0))
    return canvas


GROUND_TRUTH_COLOUR = (255, 255, 255)
LEGEND_ROW = 16  # pixels per legend line


def detection_legend(classes: Sequence[str], score_threshold: float) -> List[Tuple[tuple, str]]:
    """The ``(colour, text)`` entries that explain :func:`draw_detections`' colours."""
    entries = [(GROUND_TRUTH_COLOUR, "thin white box: ground truth")]
    entries += [
        (class_colour(label), f"{name}: detection (score >= {score_threshold:g})") for label, name in enumerate(classes)
    ]
    return entries


def draw_legend(entries: Sequence[Tuple[tuple, str]], width: int) -> Image.Image:
    """A strip ``width`` px wide: one swatch and its text per entry, as many per line as fit."""
    cell = max(6 * len(text) + 28 for _, text in entries) if entries else width
    per_line = max(1, width // cell)
    lines = (len(entries) + per_line - 1) // per_line
    strip = Image.new("RGB", (width, LEGEND_ROW * lines + 4), (32, 32, 32))
    draw = ImageDraw.Draw(strip)
    for i, (colour, text) in enumerate(entries):
        x, y = 4 + (i % per_line) * cell, 2 + (i // per_line) * LEGEND_ROW
        draw.rectangle([x, y + 2, x + 16, y + 12], outline=colour, width=2)
        draw.text((x + 22, y + 1), text, fill=(235, 235, 235))
    return strip


def save_grid(
    tiles: List[Image.Image],
    path: str,
    columns: int = 4,
    legend: Optional[Sequence[Tuple[tuple, str]]] = None,
) -> None:
    """Pastes images into a grid PNG (cells sized by the largest tile), with ``legend``
    (``(colour, text)`` entries, e.g. :func:`detection_legend`) in a strip below it."""
    if not tiles:
        raise ValueError("no images to put in the grid")
    cw, ch = max(t.width for t in tiles), max(t.height for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    width = cw * min(columns, len(tiles))
    strip = draw_legend(legend, width) if legend else None
    grid = Image.new("RGB", (width, ch * rows + (strip.height if strip else 0)), (32, 32, 32))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % columns) * cw, (i // columns) * ch))
    if strip is not None:
        grid.paste(strip, (0, ch * rows))
    grid.save(path)
