"""Optimizers: Ranger21 (the paper's), one per network, each with its own lr and warm-down floor;
Adam for EdgeConnect's published recipe (the baseline the benchmarks compare against).

Ranger21 normalises gradients across all its param groups and warms every group down towards one
constructor-wide floor, so G and D never share an instance, and the floor follows each lr (its
default 3e-5 floor would *raise* a 1e-5 discriminator lr during warm-down).
"""
from __future__ import annotations

from omegaconf import DictConfig
import torch
from pytorch_optimizer import Ranger21
from torch import nn


def build_optimizer(model: nn.Module, lr: float, steps: int,
                    optim_cfg: DictConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if optim_cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(optim_cfg.betas))
    return Ranger21(
        params,
        num_iterations=steps,
        lr=lr,
        betas=tuple(optim_cfg.betas),
        weight_decay=optim_cfg.weight_decay,
        warm_down_min_lr=lr * optim_cfg.warm_down_ratio,
        num_warm_up_iterations=optim_cfg.warm_up_steps,
    )
