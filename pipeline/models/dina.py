"""Dilated neighbourhood attention (DiNA): one public op, `na2d`, with interchangeable backends,
and the `DiNA` module the generators put in their residual blocks.

Backends (pipeline/models/attention/) compute the same thing on the same weights:
  reference  pure-PyTorch gather; any device, trains with autograd, supports the position bias
  flex       torch flex_attention with a neighbourhood block mask; compiled on CUDA
  natten     natten.na2d; fused kernels when natten has libnatten; no position bias
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.models.attention import flex, natten_backend, reference

BACKENDS = {"reference": reference.na2d, "flex": flex.na2d, "natten": natten_backend.na2d}


def resolve_backend(name: str, bias: bool, device: torch.device | str) -> str:
    """The backend `name` stands for on `device`: "auto" picks natten's fused kernels when
    libnatten is present and no bias is needed, else flex on CUDA, else reference."""
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(f"unknown attention backend '{name}': "
                             f"expected auto or one of {', '.join(BACKENDS)}")
        return name
    if torch.device(device).type != "cuda":
        return "reference"
    if not bias and natten_backend.has_libnatten():
        return "natten"
    return "flex"


def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int = 1,
         rpb: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Neighbourhood attention over a 2-D map, natten semantics (see attention/neighbourhood.py).

    q, k, v: [B, H, W, heads, head_dim]; rpb: [heads, 2k-1, 2k-1] or None.
    Returns [B, H, W, heads, head_dim]. Needs an odd kernel_size and kernel_size*dilation <= H, W.
    """
    if q.dim() != 5 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share a [B, H, W, heads, head_dim] shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    height, width, heads = q.shape[1:4]
    if kernel_size < 1 or kernel_size % 2 == 0 or dilation < 1:
        raise ValueError(f"kernel_size must be odd and dilation >= 1, "
                         f"got {kernel_size}, {dilation}")
    if kernel_size * dilation > min(height, width):
        raise ValueError(f"kernel_size*dilation = {kernel_size * dilation} exceeds the "
                         f"{height}x{width} map")
    span = 2 * kernel_size - 1
    if rpb is not None and tuple(rpb.shape) != (heads, span, span):
        raise ValueError(f"rpb must be [{heads}, {span}, {span}], got {tuple(rpb.shape)}")
    name = resolve_backend(backend, rpb is not None, q.device)
    return BACKENDS[name](q, k, v, kernel_size, dilation, rpb)


class DiNA(nn.Module):
    """x + proj(na2d(qkv(x))) on a channels-first map, with an optional relative position bias.

    When kernel_size*dilation exceeds the smaller side of the map (small images), the dilation
    is clamped to max(1, min(H, W) // kernel_size), so the same model runs at any image size.
    """

    def __init__(self, dim: int, heads: int, kernel_size: int, dilation: int, bias: bool,
                 backend: str = "auto"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads ({heads}) must divide dim ({dim})")
        resolve_backend(backend, bias, "cpu")  # reject unknown names at construction
        self.heads, self.kernel_size, self.dilation = heads, kernel_size, dilation
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rpb = None
        if bias:
            span = 2 * kernel_size - 1
            self.rpb = nn.Parameter(nn.init.trunc_normal_(torch.empty(heads, span, span), std=0.02))

    def effective_dilation(self, height: int, width: int) -> int:
        side = min(height, width)
        if self.kernel_size * self.dilation <= side:
            return self.dilation
        return max(1, side // self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        head_dim = channels // self.heads
        qkv = self.qkv(x.permute(0, 2, 3, 1)).reshape(batch, height, width, 3, self.heads, head_dim)
        q, k, v = qkv.unbind(3)
        out = na2d(q, k, v, self.kernel_size, self.effective_dilation(height, width), self.rpb,
                   self.backend)
        return x + self.proj(out.reshape(batch, height, width, channels)).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f"heads={self.heads}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
                f"bias={self.rpb is not None}, backend={self.backend}")
