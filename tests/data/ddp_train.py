"""Run by tests/test_detector_cli.py under torchrun: a few steps of the tiny preset, then
every rank saves its parameters and step count to OUT/rank<r>.pt.

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/data/ddp_train.py OUT
"""

import sys

import torch

from atss_detector import distributed as dist
from atss_detector import training
from atss_detector.config import preset
from atss_detector.model import build_model

ITERATIONS = 3


def main(out: str) -> None:
    cfg = preset("tiny")
    cfg.train.output_dir = f"{out}/run"
    cfg.train.iterations = ITERATIONS
    cfg.train.threads = 1
    cfg.train.eval_every = 0
    torch.manual_seed(cfg.train.seed)
    initial = build_model(cfg.model, 6).state_dict()  # train() starts from these weights
    summary = training.train(cfg)
    torch.save(
        {
            "world_size": summary["world_size"],
            "iterations": summary["iterations"],
            "initial": initial,
            "final": summary["model"].state_dict(),
        },
        f"{out}/rank{summary['rank']}.pt",
    )
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
