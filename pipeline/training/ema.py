"""Exponential moving average of the trained generators' weights (`train.ema`, the decay).

After every optimizer step that was applied (the trainer skips the EMA with a skipped,
non-finite update) each EMA copy moves towards the live weights:
    ema <- ema + (1 - d_t) * (param - ema),   d_t = min(decay, (1 + t) / (10 + t))
with t the step just taken. The warm-up of d_t (as TensorFlow's ExponentialMovingAverage with
num_updates) keeps a short run from averaging in its random initial weights: the horizon grows
to about t/10 steps until it reaches 1/(1 - decay).

Buffers (spectral norm's power-iteration vectors) are copied, not averaged: they belong to the
live weights' current estimate and a mean of unit vectors is no unit vector.

The update is two foreach kernels per network with the decay a Python float computed from the
step counter: no host sync. Every DDP rank holds identical parameters after each step, so its
EMA is identical too.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def decay_at(decay: float, step: int) -> float:
    """The decay used for the update after optimizer step `step` (1-based)."""
    return min(decay, (1 + step) / (10 + step))


class GeneratorEMA:
    """EMA copies of `nets` (plain, unwrapped modules), kept in eval mode without gradients."""

    def __init__(self, nets: dict[str, nn.Module], decay: float):
        self.decay = decay
        self.live = nets
        self.models = {name: copy.deepcopy(net).eval().requires_grad_(False)
                       for name, net in nets.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        weight = 1.0 - decay_at(self.decay, step)
        for name, net in self.live.items():
            ema = self.models[name]
            torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), weight)
            buffers = list(ema.buffers())
            if buffers:
                torch._foreach_copy_(buffers, list(net.buffers()))

    @torch.no_grad()
    def reset(self) -> None:
        """Start over from the live weights (a resume from a checkpoint without an EMA)."""
        for name, net in self.live.items():
            self.models[name].load_state_dict(net.state_dict())

    def load_states(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        for name, state in states.items():
            self.models[name].load_state_dict(state)
