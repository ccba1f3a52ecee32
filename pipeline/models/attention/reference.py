"""Pure-PyTorch backend: gather each query's k*k neighbours and attend over them.

Runs anywhere and trains with plain autograd; memory is B*H*W*k*k*C per gathered tensor, so it is
the slow path on GPU (FACTS.md: 16.5 ms vs 1.7 ms for compiled flex at the benchmark shape).
"""
from __future__ import annotations

import functools

import torch

from pipeline.models.attention.neighbourhood import axis_tables


@functools.lru_cache(maxsize=64)
def gather_tables(height: int, width: int, kernel_size: int, dilation: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat key index [H*W*k*k] and bias row/column indices [H, W, k, k] for every query."""
    rows, bias_rows = axis_tables(height, kernel_size, dilation, device)
    cols, bias_cols = axis_tables(width, kernel_size, dilation, device)
    keys = rows[:, None, :, None] * width + cols[None, :, None, :]
    shape = (height, width, kernel_size, kernel_size)
    return (keys.reshape(-1), bias_rows[:, None, :, None].expand(shape),
            bias_cols[None, :, None, :].expand(shape))


def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
         rpb: torch.Tensor | None) -> torch.Tensor:
    batch, height, width, heads, head_dim = q.shape
    keys, bias_rows, bias_cols = gather_tables(height, width, kernel_size, dilation, q.device)
    neighbours = (batch, height, width, kernel_size * kernel_size, heads, head_dim)

    def gather(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, height * width, heads, head_dim)[:, keys].view(neighbours)

    scores = torch.einsum("byxnc,byxjnc->byxnj", q * head_dim ** -0.5, gather(k))
    if rpb is not None:
        bias = rpb[:, bias_rows, bias_cols]  # [heads, H, W, k, k]
        scores = scores + bias.permute(1, 2, 0, 3, 4).reshape(height, width, heads, -1)
    return torch.einsum("byxnj,byxjnc->byxnc", scores.softmax(-1), gather(v))
