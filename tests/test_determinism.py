"""Determinism of the CPU kernels: the same inputs give the same bits on every run and thread count."""

from __future__ import annotations

import pytest
import torch
from backends import kernel
from bits import assert_bits_equal
from cases import compute_reference_stages, op_args, pad_counts

from atss_ops import grid_anchors
from atss_ops._extension import OPS
from atss_ops.testing import random_gt


@pytest.fixture(scope="module")
def medium_case():
    """B = 2, G = 50 on the 800x1344 COCO grid (A = 22,400), one image padded to 37 GTs, random mask."""
    anchors, levels = grid_anchors(800, 1344)
    gt, counts = pad_counts(random_gt(2, 50, 800, 1344, seed=7), [50, 37])
    valid = torch.rand(2, anchors.shape[0], generator=torch.Generator().manual_seed(7)) < 0.9
    case = dict(
        anchors=anchors,
        num_anchors_per_level=levels,
        gt_boxes=gt,
        gt_counts=counts,
        topk=9,
        anchor_valid=valid,
        center_eps=0.01,
    )
    return case, compute_reference_stages(case)


@pytest.mark.parametrize("op", OPS)
def test_same_inputs_same_bits(op, medium_case):
    """Two calls on the same inputs return identical bits (fresh tensors, not aliases)."""
    case, stages = medium_case
    args = op_args(op, case, stages)
    first, second = kernel(op)(*args), kernel(op)(*args)
    assert_bits_equal(first, second, op)
    assert_bits_equal(first, stages[op], f"{op} vs reference")


@pytest.mark.parametrize("op", OPS)
def test_thread_count_does_not_matter(op, medium_case, restore_threads):
    """One thread and two threads (and the default) give the same bits."""
    case, stages = medium_case
    args = op_args(op, case, stages)
    results = {}
    for threads in (1, 2, restore_threads):
        torch.set_num_threads(threads)
        results[threads] = kernel(op)(*args)
    for threads, out in results.items():
        assert_bits_equal(out, results[1], f"{op}: {threads} threads vs 1")
