"""How many CPU cores this process may use.

`os.cpu_count()` counts the machine's cores; under SLURM (its cpuset), `taskset` or a container
limit a process may run on fewer, and sizing worker pools or torch threads by the machine's count
oversubscribes the cores it has. The affinity mask is what the scheduler gives it.
"""
from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores in this process's CPU affinity mask (the machine's count where the platform
    has no affinity call)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
