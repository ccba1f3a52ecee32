"""Count device-to-host synchronisations: every `.item()`, `bool(tensor)` or `if tensor:` ends in
one `aten::_local_scalar_dense` call, which on a GPU waits for all queued work. The profiler sees
them on CPU too, so a CPU test can pin the count that a GPU run pays."""
from __future__ import annotations

from typing import Callable

from torch.profiler import ProfilerActivity, profile

SYNC_OP = "aten::_local_scalar_dense"
# on CPU, std/var read a scalar internally; on a GPU they do not sync, so they are left out
NOT_A_GPU_SYNC = {"aten::std", "aten::var", "aten::std_mean", "aten::var_mean"}


def _inside(event, names: set[str]) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in names:
            return True
        parent = parent.cpu_parent
    return False


def profiled(fn: Callable[[], object]):
    """(the profiler, after running fn under it; fn's result)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn()
    return prof, result


def host_syncs(events) -> int:
    """Syncs among profiler events. Reads of CPU tensors count too (torch's Adam reads its
    CPU-side step counters so): no GPU sync, but the profiler cannot tell them apart."""
    return sum(1 for e in events if e.name == SYNC_OP and not _inside(e, NOT_A_GPU_SYNC))


def count_host_syncs(fn: Callable[[], object]) -> tuple[int, object]:
    """(host syncs made while running fn, fn's result)."""
    prof, result = profiled(fn)
    return host_syncs(prof.events()), result
