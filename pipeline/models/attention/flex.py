"""torch flex_attention backend: dense attention restricted by a block mask that encodes the
dilated neighbourhood, so the fused kernel skips the blocks no query needs.

Tokens are the H*W map flattened row-major. The block mask depends only on (H, W, k, d, device)
and is built once per combination. The relative position bias is added by a score_mod.
On CUDA the op runs through torch.compile (the fused kernel); elsewhere flex_attention runs eagerly,
which materialises the full score matrix and has no backward on CPU: use it there only to check
parity with the reference backend. Inside a torch.compile'd model, dynamo traces through the
cache, so the block mask is built inside the graph on every call (one graph, no graph breaks).
"""
from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from pipeline.models.attention.neighbourhood import AxisBounds, axis_bounds


@functools.lru_cache(maxsize=64)
def neighbourhood(height: int, width: int, kernel_size: int, dilation: int,
                  device: torch.device) -> tuple[BlockMask, AxisBounds, AxisBounds]:
    """The block mask and the row and column lookup tables its mask_mod reads.

    mask_mod and score_mod read small per-axis tensors instead of dividing by the dilation:
    no integer division in the kernel, and no Python int that torch.compile would guard on by
    value (every dilation would be another compile, and past dynamo's recompile limit (8)
    flex_attention silently falls back to its unfused eager path).
    """
    rows = axis_bounds(height, kernel_size, dilation, device)
    cols = axis_bounds(width, kernel_size, dilation, device)

    def mask_mod(b, h, q_idx, kv_idx):
        return (rows.in_window(q_idx // width, kv_idx // width)
                & cols.in_window(q_idx % width, kv_idx % width))

    tokens = height * width
    mask = create_block_mask(mask_mod, None, None, tokens, tokens, device=device)
    return mask, rows, cols


@functools.cache
def compiled_flex_attention():
    return torch.compile(flex_attention, dynamic=False)


def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
         rpb: torch.Tensor | None, compiled: bool | None = None) -> torch.Tensor:
    """compiled: run the torch.compile'd kernel; None means on CUDA only."""
    batch, height, width, heads, head_dim = q.shape

    def to_sequence(t: torch.Tensor) -> torch.Tensor:  # -> [B, heads, H*W, head_dim]
        return t.reshape(batch, height * width, heads, head_dim).transpose(1, 2)

    mask, rows, cols = neighbourhood(height, width, kernel_size, dilation, q.device)
    score_mod = None
    if rpb is not None:
        def score_mod(score, b, h, q_idx, kv_idx):
            row = rows.bias_index(q_idx // width, kv_idx // width, kernel_size)
            col = cols.bias_index(q_idx % width, kv_idx % width, kernel_size)
            return score + rpb[h, row, col]

    attend = compiled_flex_attention() if (q.is_cuda if compiled is None else compiled) \
        else flex_attention
    out = attend(to_sequence(q), to_sequence(k), to_sequence(v), score_mod=score_mod,
                 block_mask=mask)
    return out.transpose(1, 2).reshape(batch, height, width, heads, head_dim)
