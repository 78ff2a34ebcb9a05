"""What the MONAI and torchvision integrations share: one assignment per group of images
with the same anchors, the ignore mask of an optional per-image key, and the matchers'
sentinels. Imports neither library."""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor

import atss_ops


def per_anchor_group(
    anchors: Sequence[Tensor], assign: Callable[[Tensor, List[int]], Sequence], same_by_construction: bool = False
) -> list:
    """One result per image: ``assign(group_anchors, image_indices)`` runs once for the
    whole batch when every image has the same anchors (``same_by_construction``, or
    equal tensors), else once per image, and returns one result per image of its group."""
    shared = anchors[0]
    if same_by_construction or all(a is shared or torch.equal(a, shared) for a in anchors[1:]):
        groups = [(shared, list(range(len(anchors))))]
    else:
        groups = [(a, [b]) for b, a in enumerate(anchors)]
    results: list = [None] * len(anchors)
    for group_anchors, images in groups:
        for b, result in zip(images, assign(group_anchors, images)):
            results[b] = result
    return results


def ignore_mask_of(
    anchors: Tensor, targets: Sequence[dict], key: Optional[str], iof_threshold: float
) -> Optional[Tensor]:
    """``atss_ops.ignore_mask`` of the boxes under ``key`` of each target dict (none where
    a dict lacks it); None when ``key`` is None."""
    if key is None:
        return None
    empty = anchors.new_zeros(0, anchors.shape[1])
    boxes, counts = atss_ops.pad_gt_boxes([t.get(key, empty).to(anchors.device) for t in targets])
    return atss_ops.ignore_mask(anchors, boxes, counts, iof_threshold)


def to_sentinels(gt_index: Tensor, background: int, ignored: int) -> Tensor:
    """atss_ops' -1 (background) and -2 (ignored) in a matcher's own sentinels."""
    if background == -1 and ignored == -2:
        return gt_index
    matches = torch.where(gt_index == -1, torch.full_like(gt_index, background), gt_index)
    return torch.where(gt_index == -2, torch.full_like(gt_index, ignored), matches)
