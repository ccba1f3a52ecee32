"""Pure-PyTorch backend: exact neighbourhood attention with plain autograd, on any device.

Two formulations of the same op, picked by map size:
  dense   small maps (<= DENSE_MAX_TOKENS tokens): attention over all H*W tokens through fused
          SDPA, with an additive mask that is -inf outside each query's neighbourhood (and the
          relative position bias inside it). exp(-inf) = 0, so this is the neighbourhood op, not
          an approximation; at a 16x16 map it is several times faster than gathering.
  gather  larger maps: index_select each query's k*k neighbours and attend over them; memory is
          B*H*W*k*k*C per gathered tensor, so the slow path on GPU (measured on an H200: 16.5 ms
          vs 1.7 ms for compiled flex at the benchmark shape).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.models.attention.neighbourhood import axis_tables, built_once

# Dense scores cost (H*W)^2 against the gather's H*W*k*k; measured on CPU, dense still wins at a
# 32x32 map with k=7 (2-4x) and its mask stays small (heads*1024^2 floats).
DENSE_MAX_TOKENS = 1024


@built_once
def gather_tables(height: int, width: int, kernel_size: int,
                  dilation: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query (row-major token), its k*k key tokens and their flat bias indices into a
    [2k-1, 2k-1] table; both [H*W, k*k]."""
    rows, bias_rows = axis_tables(height, kernel_size, dilation, device)
    cols, bias_cols = axis_tables(width, kernel_size, dilation, device)
    keys = rows[:, None, :, None] * width + cols[None, :, None, :]
    bias = bias_rows[:, None, :, None] * (2 * kernel_size - 1) + bias_cols[None, :, None, :]
    tokens, window = height * width, kernel_size * kernel_size
    return keys.reshape(tokens, window), bias.reshape(tokens, window)


@built_once
def neighbourhood_mask(height: int, width: int, kernel_size: int, dilation: int,
                       device: torch.device) -> torch.Tensor:
    """[H*W, H*W] additive mask: 0 on each query's neighbours, -inf elsewhere."""
    keys, _ = gather_tables(height, width, kernel_size, dilation, device)
    tokens = height * width
    return torch.full((tokens, tokens), float("-inf"), device=device).scatter_(1, keys, 0.0)


def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
          rpb: torch.Tensor | None) -> torch.Tensor:
    batch, height, width, heads, head_dim = q.shape
    tokens = height * width
    if rpb is None:
        mask = neighbourhood_mask(height, width, kernel_size, dilation, q.device).to(q.dtype)
    else:  # scatter the bias into the -inf background: autograd carries its gradient to rpb
        keys, bias_index = gather_tables(height, width, kernel_size, dilation, q.device)
        background = torch.full((heads, tokens, tokens), float("-inf"), device=q.device,
                                dtype=q.dtype)
        mask = background.scatter(2, keys.expand(heads, -1, -1),
                                  rpb.to(q.dtype).flatten(1)[:, bias_index])

    def to_sequence(t: torch.Tensor) -> torch.Tensor:  # -> [B, heads, H*W, head_dim]
        return t.reshape(batch, tokens, heads, head_dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(to_sequence(q), to_sequence(k), to_sequence(v),
                                         attn_mask=mask)
    return out.transpose(1, 2).reshape(q.shape)


def gather(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
           rpb: torch.Tensor | None) -> torch.Tensor:
    batch, height, width, heads, head_dim = q.shape
    tokens, window = height * width, kernel_size * kernel_size
    keys, bias_index = gather_tables(height, width, kernel_size, dilation, q.device)
    flat_keys = keys.reshape(-1)

    def neighbours(t: torch.Tensor) -> torch.Tensor:  # -> [B, H*W, heads, k*k, head_dim]
        # index_select on the token axis: its backward is index_add, far cheaper than the
        # accumulating index_put behind advanced indexing
        picked = t.reshape(batch, tokens, heads * head_dim).index_select(1, flat_keys)
        return picked.view(batch, tokens, window, heads, head_dim).transpose(2, 3)

    queries = (q * head_dim ** -0.5).reshape(batch, tokens, heads, 1, head_dim)
    scores = (queries @ neighbours(k).transpose(-1, -2)).squeeze(-2)  # [B, H*W, heads, k*k]
    if rpb is not None:
        scores = scores + rpb.to(q.dtype).flatten(1)[:, bias_index].transpose(0, 1)
    out = scores.softmax(-1).unsqueeze(-2) @ neighbours(v)
    return out.reshape(q.shape)


def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
         rpb: torch.Tensor | None) -> torch.Tensor:
    formulation = dense if q.shape[1] * q.shape[2] <= DENSE_MAX_TOKENS else gather
    return formulation(q, k, v, kernel_size, dilation, rpb)
