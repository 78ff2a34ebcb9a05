"""Running a trained model: on batches of a loader, and on image files (``atss-detector predict``)."""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from .coco import load_image
from .data import BadImages, Batch, DetectionTransform, collate
from .errors import DataError, ImageError
from .model import ATSSDetector, Detections, rescale_detections
from .runtime import autocast, bar_interval

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@torch.no_grad()
def predict_batches(
    model: ATSSDetector,
    batches: Iterable[Batch],
    device: torch.device,
    amp: Optional[torch.dtype] = None,
    progress: bool = False,
) -> Tuple[List[int], List[Detections]]:
    """Runs ``model`` on every batch; detections in the original images' pixels (on the CPU)."""
    model.eval()
    image_ids, detections = [], []
    bar = tqdm(batches, desc="eval", disable=not progress, leave=False, dynamic_ncols=True, mininterval=bar_interval())
    with bar:  # cleared on the way out too, so that an error's line starts a line of its own
        for batch in bar:
            batch = batch.to(device, non_blocking=True)
            with autocast(device, amp):
                out = model(batch.images, batch.image_sizes)
            out = rescale_detections(out, batch.scales, batch.original_sizes)
            image_ids += batch.image_ids
            detections += [{k: v.cpu() for k, v in d.items()} for d in out]
    return image_ids, detections


def image_files(paths: Sequence[str], recursive: bool = False) -> List[str]:
    """The image files among ``paths``: files as given, folders listed (sorted; with
    ``recursive``, their subfolders too)."""
    files: List[str] = []
    for path in paths:
        if os.path.isdir(path):
            if recursive:
                found = [os.path.join(d, f) for d, _, names in os.walk(path) for f in names]
            else:
                found = [os.path.join(path, f) for f in os.listdir(path)]
            files += sorted(f for f in found if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(f))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise DataError(f"no image or folder at {path}")
    seen: set = set()  # a file given twice, or also found in a given folder: once
    files = [f for f in files if not (os.path.abspath(f) in seen or seen.add(os.path.abspath(f)))]
    if not files:
        where = "or their subfolders" if recursive else "(--recursive looks into subfolders too)"
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(paths)} {where}")
    return files


def output_paths(files: Sequence[str], inputs: Sequence[str], output_dir: str, suffix: str = ".png") -> List[str]:
    """Where the pictures of ``files`` go: ``output_dir`` mirrors the input tree, so no two
    outputs share a path.

    Each file keeps its path relative to the deepest folder that holds every input
    (the folder given, a given file's folder, or their common parent): ``predict pics
    --recursive`` maps ``pics/a.jpg`` to ``OUT/a.png`` and ``pics/sub/a.jpg`` to
    ``OUT/sub/a.png``. Two files of one folder that differ only in their image suffix
    (``a.jpg``, ``a.png``) keep it: ``OUT/a.jpg.png``, ``OUT/a.png.png``.
    """
    roots = [os.path.abspath(p) if os.path.isdir(p) else os.path.dirname(os.path.abspath(p)) for p in inputs]
    root = os.path.commonpath(roots) if roots else os.getcwd()
    relative = [os.path.relpath(os.path.abspath(f), root) for f in files]
    stems = [os.path.splitext(r)[0] for r in relative]
    counts: Dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    names = [(stem if counts[stem] == 1 else rel) + suffix for rel, stem in zip(relative, stems)]
    if len(set(names)) < len(names):  # e.g. a.jpg, a.png and a.png.jpg: whole names are always distinct
        names = [rel + suffix for rel in relative]
    return [os.path.join(output_dir, name) for name in names]


def predict_files(
    model: ATSSDetector,
    files: Sequence[str],
    transform: DetectionTransform,
    device: torch.device,
    batch_size: int = 8,
    size_divisible: int = 32,
    bad_images: Optional[BadImages] = None,
) -> List[Optional[Detections]]:
    """Detections (original pixels) for image files, in order.

    Each image is decoded here (:func:`~atss_detector.coco.load_image`): one that cannot be
    stops with an ``ImageError`` naming it, or with ``bad_images`` skipping gets ``None`` and
    is recorded there."""
    bad_images = bad_images or BadImages(skip=False)
    detections: List[Optional[Detections]] = []
    for start in range(0, len(files), batch_size):
        items, decoded = [], []
        for i, path in enumerate(files[start : start + batch_size]):
            try:
                pixels = load_image(path)
            except ImageError as exc:
                bad_images.check([str(exc)])
                decoded.append(False)
                continue
            decoded.append(True)
            image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
            items.append(
                transform(
                    {
                        "image": image,
                        "boxes": torch.zeros(0, 4),
                        "labels": torch.zeros(0, dtype=torch.int64),
                        "image_id": start + i,
                    }
                )
            )
        found = iter(predict_batches(model, [collate(items, size_divisible)], device)[1] if items else [])
        detections += [next(found) if ok else None for ok in decoded]
    return detections
