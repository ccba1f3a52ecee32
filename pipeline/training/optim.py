"""Optimizers: Ranger21 (the paper's), one per network, each with its own lr and warm-down floor;
Adam for EdgeConnect's published recipe (the baseline the benchmarks compare against).

Ranger21 normalises gradients across all its param groups and warms every group down towards one
constructor-wide floor, so G and D never share an instance, and the floor follows each lr (its
default 3e-5 floor would *raise* a 1e-5 discriminator lr during warm-down).

`ranger21` is the project's sync-free implementation (pipeline/training/ranger21.py), which skips a
non-finite step on the device; `ranger21-reference` is pytorch_optimizer's, the same update with
host syncs inside, kept as the reference and the fallback. Their checkpoints load into each other.
"""
from __future__ import annotations

import pytorch_optimizer
import torch
from omegaconf import DictConfig
from torch import nn

from pipeline.training.ranger21 import Ranger21

RANGER21 = {"ranger21": Ranger21, "ranger21-reference": pytorch_optimizer.Ranger21}


def build_optimizer(model: nn.Module, lr: float, steps: int,
                    optim_cfg: DictConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if optim_cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(optim_cfg.betas))
    return RANGER21[optim_cfg.name](
        params,
        num_iterations=steps,
        lr=lr,
        betas=tuple(optim_cfg.betas),
        weight_decay=optim_cfg.weight_decay,
        warm_down_min_lr=lr * optim_cfg.warm_down_ratio,
        num_warm_up_iterations=optim_cfg.warm_up_steps,
    )


def skips_non_finite_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `step()` itself leaves everything unchanged when a gradient is non-finite."""
    while hasattr(optimizer, "optimizer"):  # Accelerate's wrapper
        optimizer = optimizer.optimizer
    return isinstance(optimizer, Ranger21)
