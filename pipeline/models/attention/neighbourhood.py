"""The dilated, border-clamped neighbourhood (natten's semantics), as integer tensor maths.

Along one axis of length L with kernel k and dilation d, the indices split into d interleaved
groups (index % d). A query attends to k consecutive members of its own group, centred on it
where possible and shifted to stay inside the group at the borders (never zero-padded).
The relative position bias of a (query, key) pair is indexed by the key's offset from the query
counted in group members, in [-(k-1), k-1], shifted to [0, 2k-2] (`axis_tables`).

Both backends build per-axis lookup tables from `window_start`: the reference backend gathers
with `axis_tables`; flex_attention's mask_mod and score_mod read `axis_bounds`.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch


def built_once(build: Callable) -> Callable:
    """Memoise a layout builder (block mask, lookup tables) by its arguments (the map's shape).

    Unlike functools.lru_cache, which torch.compile traces straight through (so the layout was
    rebuilt inside the graph on every call), a plain dict lookup is something dynamo reads: a
    layout built before compiling (one eager forward, see training/assemble.py) enters the graph as
    an input, never as ops.
    """
    layouts: dict = {}

    @functools.wraps(build)
    def layout(*key):
        if key not in layouts:
            if len(layouts) >= 64:  # inference over many image sizes: drop the oldest
                del layouts[next(iter(layouts))]
            layouts[key] = build(*key)
        return layouts[key]

    return layout


def window_start(i: torch.Tensor, length: int, kernel_size: int, dilation: int) -> torch.Tensor:
    """Position, counted inside i's dilation group, of the first key in i's window."""
    group_len = (length - i % dilation + dilation - 1) // dilation
    centred = torch.clamp(i // dilation - kernel_size // 2, min=0)
    return torch.minimum(centred, group_len - kernel_size)


def axis_tables(length: int, kernel_size: int, dilation: int,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Per query index along one axis: its k key indices and their bias indices, both [L, k]."""
    i = torch.arange(length, device=device)[:, None]
    offsets = torch.arange(kernel_size, device=device)
    slots = window_start(i, length, kernel_size, dilation) + offsets
    keys = i % dilation + dilation * slots
    return keys, slots - i // dilation + kernel_size - 1


class AxisBounds(NamedTuple):
    """Per index along one axis, all [L]: its window's first and last key, its dilation group,
    its position inside that group, and its window's first position inside the group."""
    first: torch.Tensor
    last: torch.Tensor
    group: torch.Tensor
    slot: torch.Tensor
    start: torch.Tensor

    def in_window(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (self.first[q] <= kv) & (kv <= self.last[q]) & (self.group[kv] == self.group[q])

    def neighbour(self, q: torch.Tensor, kv: torch.Tensor, kernel_size: int) -> torch.Tensor:
        """kv's position in q's window, 0..k-1; clamped, so that pairs outside any window (which
        the mask drops) index in range."""
        return torch.clamp(self.slot[kv] - self.start[q], 0, kernel_size - 1)


def axis_bounds(length: int, kernel_size: int, dilation: int,
                device: torch.device | str = "cpu") -> AxisBounds:
    i = torch.arange(length, device=device)
    group = i % dilation
    start = window_start(i, length, kernel_size, dilation)
    first = group + dilation * start
    return AxisBounds(first, first + dilation * (kernel_size - 1), group, i // dilation, start)
