"""The run's output directory, checked before training starts: writable, with room for the kept
checkpoints, and owned by this run alone (its lock, taken by rank 0, the outcome shared)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from pipeline.training.assemble import SetupError
from pipeline.training.output_lock import OutputDirBusy, OutputLock


def check_output_dir(path: Path, needed_bytes: int) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"  # every rank probes: one file each
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise SetupError(f"output directory {path} is not writable: {err}") from None
    free = shutil.disk_usage(path).free
    if free < needed_bytes:
        raise SetupError(f"output directory {path} has {free / 2**20:.0f} MiB free; the kept "
                         f"checkpoints need about {needed_bytes / 2**20:.0f} MiB: free space, "
                         f"lower train.ckpt_limit or change train.output_dir")


def lock_output_dir(acc: Accelerator, path: Path) -> Optional[OutputLock]:
    """Rank 0 takes the output directory's lock; every rank learns the outcome, so all ranks
    stop together or go on together."""
    lock, refusal = None, [None]
    if acc.is_main_process:
        lock = OutputLock(path)
        try:
            lock.acquire()
        except OutputDirBusy as err:
            refusal = [str(err)]
    if acc.num_processes > 1:
        broadcast_object_list(refusal, from_process=0)
    if refusal[0]:
        raise SetupError(refusal[0])
    return lock
