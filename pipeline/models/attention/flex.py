"""torch flex_attention backend: dense attention restricted by a block mask that encodes the
dilated neighbourhood, so the fused kernel skips the blocks no query needs.

Tokens enter the kernel grouped by dilation group (see `grouped_order`), so each query's
neighbours share few blocks. The block mask depends only on (H, W, k, d, device) and is built
once per combination. The relative position bias is added by a score_mod that reads it per
(query, neighbour).
On CUDA the op runs through torch.compile (the fused kernel); elsewhere flex_attention runs eagerly,
which materialises the full score matrix and has no backward on CPU: use it there only to check
parity with the reference backend. Inside a torch.compile'd model the graph reads the layout
built before compiling (training/assemble.py runs one eager forward first), instead of building it
in the graph on every call.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from pipeline.models.attention.neighbourhood import (AxisBounds, axis_bounds, axis_tables,
                                                     built_once)


class Layout(NamedTuple):
    """How the kernel sees one (H, W, k, d): its token order, the block mask in that order, and
    the per-position lookup tables the mask_mod and score_mod read."""
    mask: BlockMask
    order: torch.Tensor  # kernel position -> row-major token
    inverse: torch.Tensor  # row-major token -> kernel position
    row: torch.Tensor  # kernel position -> image row
    col: torch.Tensor  # kernel position -> image column
    rows: AxisBounds
    cols: AxisBounds


def grouped_order(height: int, width: int, dilation: int, device) -> torch.Tensor:
    """Row-major tokens reordered: dilation groups one after another, each row-major inside.

    A query's neighbours all lie in its own group, within k of its rows there; in this order they
    fill about k group-rows' worth of 128-token blocks, where in plain row-major order they are
    spread over k*d image rows and the kernel visits d times more (mostly masked) blocks.
    (Measured at 64x64, k=7: 84.8/91.4/93.8 % of blocks skipped for d=1/2/4, against 84.8/78/78 %
    row-major, and 78/84/94 % for 8x16 tiles inside each group.)
    """
    r = torch.arange(height, device=device).repeat_interleave(width)
    c = torch.arange(width, device=device).repeat(height)
    group = (r % dilation) * dilation + c % dilation
    return torch.argsort((group * height + r // dilation) * width + c // dilation)


@built_once
def neighbourhood(height: int, width: int, kernel_size: int, dilation: int,
                  device: torch.device) -> Layout:
    """The block mask and the lookup tables its mask_mod reads, built once per shape.

    mask_mod and score_mod read small tensors instead of dividing by the dilation: no integer
    division in the kernel, and no Python int that torch.compile would guard on by value (every
    dilation would be another compile, and past dynamo's recompile limit (8) flex_attention
    silently falls back to its unfused eager path).
    """
    rows = axis_bounds(height, kernel_size, dilation, device)
    cols = axis_bounds(width, kernel_size, dilation, device)
    order = grouped_order(height, width, dilation, device)
    row, col = order // width, order % width

    def mask_mod(b, h, q_idx, kv_idx):
        return (rows.in_window(row[q_idx], row[kv_idx])
                & cols.in_window(col[q_idx], col[kv_idx]))

    tokens = height * width
    mask = create_block_mask(mask_mod, None, None, tokens, tokens, device=device)
    return Layout(mask, order, torch.argsort(order), row, col, rows, cols)


@functools.cache
def compiled_flex_attention():
    return torch.compile(flex_attention, dynamic=False)


def neighbour_bias(rpb: torch.Tensor, height: int, width: int, kernel_size: int,
                   dilation: int) -> torch.Tensor:
    """rpb [heads, 2k-1, 2k-1] spread to every (query, neighbour): [heads, H*W, k*k].

    score_mod reads this instead of rpb itself. Its gradient then lands on one entry per
    (query, neighbour) pair, where indexing rpb directly made every score of a head add into the
    same (2k-1)^2 cells: atomics contention that made the backward ~30x slower than without bias.
    The gather back to rpb is plain autograd (an index_add over H*W*k*k entries).
    """
    bias_rows = axis_tables(height, kernel_size, dilation, rpb.device)[1]  # [H, k]
    bias_cols = axis_tables(width, kernel_size, dilation, rpb.device)[1]  # [W, k]
    full = rpb[:, bias_rows[:, None, :, None], bias_cols[None, :, None, :]]  # [heads, H, W, k, k]
    return full.reshape(rpb.shape[0], height * width, kernel_size * kernel_size)


def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
         rpb: torch.Tensor | None, compiled: bool | None = None) -> torch.Tensor:
    """compiled: run the torch.compile'd kernel; None means on CUDA only."""
    batch, height, width, heads, head_dim = q.shape
    layout = neighbourhood(height, width, kernel_size, dilation, q.device)

    def to_kernel(t: torch.Tensor) -> torch.Tensor:  # -> [B, heads, H*W, head_dim], grouped order
        return t.reshape(batch, height * width, heads, head_dim)[:, layout.order].transpose(1, 2)

    score_mod = None
    if rpb is not None:
        bias = neighbour_bias(rpb.to(q.dtype), height, width, kernel_size, dilation)
        # rows in kernel order too, and one copy per batch element: the kernel's backward then
        # writes each bias cell's gradient from one score only (no atomics shared across the
        # batch); autograd sums the copies back
        bias = bias[:, layout.order].expand(batch, -1, -1, -1).contiguous()
        row, col, rows, cols = layout.row, layout.col, layout.rows, layout.cols

        def score_mod(score, b, h, q_idx, kv_idx):
            j = (rows.neighbour(row[q_idx], row[kv_idx], kernel_size) * kernel_size
                 + cols.neighbour(col[q_idx], col[kv_idx], kernel_size))
            return score + bias[b, h, q_idx, j]

    fused = q.is_cuda if compiled is None else compiled
    # inside a torch.compile'd model dynamo traces flex_attention into the model's own graph;
    # a nested compiled function there only adds a boundary
    attend = (compiled_flex_attention() if fused and not torch.compiler.is_compiling()
              else flex_attention)
    out = attend(to_kernel(q), to_kernel(k), to_kernel(v), score_mod=score_mod,
                 block_mask=layout.mask)
    out = out.transpose(1, 2)[:, layout.inverse]
    return out.reshape(batch, height, width, heads, head_dim)
