"""natten backend: natten.na2d, which uses its fused CUDA kernels when natten was built with
libnatten, and its own flex_attention path otherwise (forward only on CPU). No position bias."""
from __future__ import annotations

import functools

import torch


def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
         rpb: torch.Tensor | None) -> torch.Tensor:
    if rpb is not None:
        raise ValueError("the natten backend has no relative position bias: "
                         "use bias=false or the reference/flex backend")
    import natten  # optional dependency, imported only when this backend is chosen

    return natten.na2d(q, k, v, kernel_size, dilation=dilation)


@torch.compiler.assume_constant_result  # read once while tracing, not imported inside a graph
@functools.cache
def has_libnatten() -> bool:
    """natten is installed with its compiled kernels (not just the pure-Python fallback)."""
    try:
        import natten
    except ImportError:
        return False
    return bool(natten.HAS_LIBNATTEN)
