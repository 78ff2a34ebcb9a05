"""From dataset items to padded batches: resizing, flipping, normalisation, loaders.

Every dataset of the detector (:class:`~atss_detector.synthetic.SyntheticShapes`,
:class:`~atss_detector.coco.CocoDetection`) returns items
``{"image": uint8 Tensor[3, H, W], "boxes": float32 Tensor[N, 4] (x1, y1, x2, y2
pixels), "labels": int64 Tensor[N], "image_id": int}`` (COCO data read with
``ignore_crowd`` adds ``"ignore_boxes": float32 Tensor[M, 4]``, its crowd boxes) and has ``classes``,
``category_ids`` (the COCO id of each label) and ``coco()`` (its ground truth for
pycocotools). This module turns items into :class:`Batch` objects.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from .config import DataConfig
from .errors import DataError, ImageError, UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Batch:
    """A padded batch of images and their targets."""

    images: Tensor  # [B, 3, H, W] float32, normalised, zero-padded to multiples of size_divisible
    image_sizes: Tensor  # [B, 2] int64: (h, w) of each image inside the padding
    boxes: List[Tensor]  # B x [N_i, 4] float32, pixels of the resized image
    labels: List[Tensor]  # B x [N_i] int64
    image_ids: List[int]
    scales: Tensor  # [B, 2] float32: (sx, sy), resized size / original size
    original_sizes: Tensor  # [B, 2] int64: (h, w) of the image as loaded
    # B x [M_i, 4] float32 regions whose anchors take no loss (COCO crowd boxes with
    # ignore_crowd), resized and flipped like boxes; None: the items have none
    ignore_boxes: Optional[List[Tensor]] = None
    # one line per image of this batch that could not be decoded (left out of the tensors above);
    # see BadImages
    bad_images: List[str] = field(default_factory=list)

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        def move(x):
            if isinstance(x, Tensor):
                return x.to(device, non_blocking=non_blocking)
            if isinstance(x, list) and x and isinstance(x[0], Tensor):
                return [t.to(device, non_blocking=non_blocking) for t in x]
            return x

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def __len__(self) -> int:
        return self.images.shape[0]


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple:
    """``(h, w)`` after scaling the shorter side to ``min_size`` unless the longer exceeds ``max_size``."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


_PIXEL_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
_PIXEL_SCALE = 1 / (torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255)


class DetectionTransform:
    """Resize (optional), random horizontal flip, float conversion and normalisation.

    Args:
        min_size, max_size: resize as the paper does (shorter side to
            ``min_size``, longer side at most ``max_size``); ``None``: keep the size.
        flip_prob: probability of a horizontal flip (boxes flipped with the image).
    """

    def __init__(self, min_size: Optional[int] = None, max_size: Optional[int] = None, flip_prob: float = 0.0):
        if (min_size is None) != (max_size is None):
            raise ValueError(f"give both min_size and max_size or neither, got {min_size} and {max_size}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.min_size, self.max_size, self.flip_prob = min_size, max_size, flip_prob

    def __call__(self, item: Dict[str, Any]) -> Dict[str, Any]:
        image = item["image"]
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be a uint8 Tensor[3, H, W], got {image.dtype} {list(image.shape)}")
        H, W = image.shape[1:]
        box_sets = {key: item[key].clone() for key in ("boxes", "ignore_boxes") if key in item}
        h, w = H, W
        if self.min_size is not None:
            h, w = resized_shape(H, W, self.min_size, self.max_size)
        sx, sy = w / W, h / H
        for boxes in box_sets.values():
            boxes *= torch.tensor([sx, sy, sx, sy])
        if self.flip_prob > 0 and torch.rand(()) < self.flip_prob:
            image = image.flip(-1)  # on uint8: a quarter of the bytes of the float image
            box_sets = {
                key: torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1) for key, b in box_sets.items()
            }
        # (x / 255 - mean) / std as one subtraction and one multiplication, in place
        image = image.float().sub_(_PIXEL_MEAN).mul_(_PIXEL_SCALE)
        if (h, w) != (H, W):  # resizing the normalised image equals normalising the resized one
            image = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False, antialias=h < H)[0]
        return {
            "image": image,
            **box_sets,
            "labels": item["labels"],
            "image_id": item["image_id"],
            "scale": (sx, sy),
            "original_size": (H, W),
        }


class TransformedDataset(Dataset):
    """A detector dataset with a transform applied to every item."""

    def __init__(self, dataset, transform: DetectionTransform):
        self.dataset, self.transform = dataset, transform
        self.classes = tuple(dataset.classes)
        self.category_ids = tuple(dataset.category_ids)
        self._coco = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.transform(self.dataset[index])

    def coco(self):
        """The ground truth for pycocotools (built once)."""
        if self._coco is None:
            self._coco = self.dataset.coco()
        return self._coco


def collate(items: Sequence[Dict[str, Any]], size_divisible: int = 32) -> Batch:
    """Pads transformed items into one :class:`Batch` (zeros, up to multiples of ``size_divisible``).

    Items that stand for an image that could not be decoded (``{"bad_image": message}``, from
    :func:`build_loader`'s datasets) are left out and their messages kept in ``Batch.bad_images``;
    when every item is one, the batch holds no image."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    bad_images = [it["bad_image"] for it in items if "bad_image" in it]
    items = [it for it in items if "bad_image" not in it]
    if not items:
        return Batch(
            images=torch.zeros(0, 3, size_divisible, size_divisible),
            image_sizes=torch.zeros(0, 2, dtype=torch.int64),
            boxes=[],
            labels=[],
            image_ids=[],
            scales=torch.zeros(0, 2),
            original_sizes=torch.zeros(0, 2, dtype=torch.int64),
            bad_images=bad_images,
        )
    sizes = [tuple(it["image"].shape[1:]) for it in items]
    H = math.ceil(max(h for h, _ in sizes) / size_divisible) * size_divisible
    W = math.ceil(max(w for _, w in sizes) / size_divisible) * size_divisible
    images = items[0]["image"].new_zeros(len(items), 3, H, W)
    for i, it in enumerate(items):
        h, w = sizes[i]
        images[i, :, :h, :w] = it["image"]
    return Batch(
        images=images,
        image_sizes=torch.tensor(sizes, dtype=torch.int64),
        boxes=[it["boxes"] for it in items],
        labels=[it["labels"] for it in items],
        image_ids=[int(it["image_id"]) for it in items],
        scales=torch.tensor([it["scale"] for it in items], dtype=torch.float32),
        original_sizes=torch.tensor([it["original_size"] for it in items], dtype=torch.int64),
        ignore_boxes=(
            [it.get("ignore_boxes", torch.zeros(0, 4)) for it in items]
            if any("ignore_boxes" in it for it in items)
            else None
        ),
        bad_images=bad_images,
    )


class BadImages:
    """The images a run could not decode, met where their pixels are read.

    ``skip=False``: the first one stops the run (:class:`~atss_detector.errors.ImageError`,
    one line naming the file). ``skip=True`` (``--skip-bad-images``): each is left out,
    kept in ``found`` (its message, once per file) and reported at the end.
    """

    def __init__(self, skip: bool = False):
        self.skip = skip
        self.found: Dict[str, None] = {}  # the messages, in the order met (a dict: once each)

    def batches(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        """The batches of a loader with the bad images handled; batches left empty are dropped."""
        for batch in batches:
            self.check(batch.bad_images)
            if len(batch):
                yield batch

    def check(self, messages: Iterable[str]) -> None:
        for message in messages:
            if not self.skip:
                raise ImageError(f"{message} (--skip-bad-images leaves out the images that cannot be decoded)")
            self.found.setdefault(message)

    def summary(self) -> str:
        """One line: how many images were skipped, and the first of them."""
        if not self.found:
            return ""
        first = next(iter(self.found))
        more = f" and {len(self.found) - 1} more" if len(self.found) > 1 else ""
        return f"skipped {len(self.found)} image(s) that cannot be decoded (--skip-bad-images): {first}{more}"


class _ImagesMayFail(Dataset):
    """A dataset whose items stand in as ``{"bad_image": message}`` for an image that cannot be
    decoded: the message reaches the main process with the batch (:func:`collate`), also from
    loader workers, whose own exceptions arrive wrapped in their traceback."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        try:
            return self.dataset[index]
        except ImageError as exc:
            return {"bad_image": str(exc)}


class Collate:
    """Picklable ``collate_fn`` (data-loader workers may be spawned)."""

    def __init__(self, size_divisible: int):
        self.size_divisible = size_divisible

    def __call__(self, items):
        return collate(items, self.size_divisible)


def build_transform(cfg: DataConfig, *, train: bool) -> DetectionTransform:
    """The transform of ``cfg``'s images: synthetic images are drawn at
    ``cfg.image_size`` and kept as they are; other images are resized to
    ``cfg.image_size`` / ``cfg.max_size``. Training flips with ``cfg.flip_prob``."""
    flip = cfg.flip_prob if train else 0.0
    if cfg.data == "synthetic":
        return DetectionTransform(flip_prob=flip)
    max_size = cfg.max_size or int(round(cfg.image_size * 1333 / 800))
    return DetectionTransform(cfg.image_size, max_size, flip_prob=flip)


def check_data(cfg: DataConfig, splits: Optional[Sequence[str]] = None) -> List[str]:
    """Checks the data of ``splits`` (default: the train and val splits) before anything is built.

    Synthetic data need nothing (but cannot be used with ``ignore_crowd``). A
    COCO-format folder must be in one of the layouts of :func:`~atss_detector.coco.find_split`,
    and each split must pass :func:`~atss_detector.coco.check_split`: the json,
    every entry, and every listed image file (from its header: fast).

    Returns:
        With ``cfg.skip_bad_images``, the images that fail the check (one line each; they
        will be left out where they are read); otherwise an empty list.

    Raises:
        DataError (a ``ValueError``): one line naming the folder, or the file and the entry;
        UsageError: ``ignore_crowd`` with synthetic data.
    """
    from .coco import check_split, find_split

    if cfg.data == "synthetic":
        if cfg.ignore_crowd:  # two flags that do not go together
            raise UsageError("--ignore-crowd needs COCO data (--data FOLDER): synthetic images have no crowd boxes")
        return []
    if not os.path.isdir(cfg.data):
        raise DataError(f"--data {cfg.data}: no such folder ('synthetic' or a COCO-format folder)")
    bad_images: List[str] = []
    for split in splits if splits is not None else (cfg.train_split, cfg.val_split):
        try:
            annotation_file, image_dir = find_split(cfg.data, split)
        except FileNotFoundError as exc:
            raise DataError(f"--data {cfg.data}: {exc}") from None
        try:
            check_split(annotation_file, image_dir, bad_images if cfg.skip_bad_images else None)
        except ImageError as exc:
            raise ImageError(f"{exc} (--skip-bad-images leaves out the images that cannot be read)") from None
    return bad_images


def build_dataset(cfg: DataConfig, split: str, *, train: bool) -> TransformedDataset:
    """The dataset of ``split`` (built-in synthetic data or a COCO-format folder) with
    :func:`build_transform` applied. Training sets of COCO data skip images without boxes
    and, with ``cfg.ignore_crowd``, keep the crowd boxes as ``ignore_boxes``."""
    if cfg.data == "synthetic":
        if train and cfg.ignore_crowd:
            raise ValueError("ignore_crowd (--ignore-crowd) needs COCO data: synthetic images have no crowd boxes")
        from .synthetic import SyntheticShapes, SyntheticSpec

        spec = SyntheticSpec(
            image_size=cfg.image_size,
            min_object=cfg.synthetic_min_object,
            mean_objects=cfg.synthetic_mean_objects,
            max_objects=cfg.synthetic_max_objects,
            num_classes=cfg.synthetic_classes,
            class_hues=cfg.synthetic_class_hues,
        )
        num = cfg.synthetic_train_images if split == cfg.train_split else cfg.synthetic_val_images
        dataset = SyntheticShapes(split, num, spec, seed=cfg.synthetic_seed)
    else:
        from .coco import CocoDetection, find_split

        annotation_file, image_dir = find_split(cfg.data, split)
        dataset = CocoDetection(annotation_file, image_dir, skip_empty=train, ignore_crowd=train and cfg.ignore_crowd)
    return TransformedDataset(dataset, build_transform(cfg, train=train))


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    seed: int = 0,
    size_divisible: int = 32,
    defer_bad_images: bool = False,
) -> DataLoader:
    """A loader of :class:`Batch` objects for process ``rank`` of ``world_size``.

    Training: a shuffled :class:`DistributedSampler` share (also with a single
    process, so that the order of epoch ``e`` depends only on ``seed`` and ``e``
    and a resumed run sees the same batches; call ``loader.sampler.set_epoch``),
    incomplete last batch dropped so every rank takes the same number of steps.
    Evaluation: in order; with several processes each rank gets a disjoint share
    (the sampler may repeat a few images to even out the shares: deduplicate by
    ``image_id``). An image that cannot be decoded raises an ``ImageError`` naming it;
    with ``defer_bad_images`` it is left out of its batch instead and named in
    ``Batch.bad_images``, for the caller to pass the batches through :class:`BadImages`
    (which stops there or skips it).
    """
    if train and len(dataset) < batch_size * world_size:
        raise DataError(
            f"the training set has {len(dataset)} images, fewer than one batch of {batch_size} "
            f"for each of {world_size} processes: lower --batch-size"
        )
    if train or world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        _ImagesMayFail(dataset) if defer_bad_images else dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=num_workers,
        collate_fn=Collate(size_divisible),
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
