"""One owner per output directory: a lock file naming the run that writes there.

`<output_dir>/.owner.json` holds the owner's host, PID, process start time and SLURM job id.
A second run on the same directory is refused, naming the owner. A lock is taken over when its
owner is gone: same host and that process no longer runs (or the PID now belongs to another
process), or the same SLURM job (a requeued job resumes its own run, on any node).
"""
from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

log = logging.getLogger("dina.lock")

LOCK_NAME = ".owner.json"


class OutputDirBusy(RuntimeError):
    """Another live run owns the output directory; the message names it."""


class LockFileUnusable(OutputDirBusy):
    """The lock path is something no run wrote (a directory, ...); the message names it."""


def _holder_or_none(text: str) -> Optional[dict]:
    """The owner record in a lock file's text, or None when it is not one (not JSON, not an
    object, no integer PID): such a file names nobody who could still own the directory."""
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    if not isinstance(holder, dict):
        return None
    pid = holder.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return None
    return holder


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None
    if no such live process: it tells a reused PID from the one that wrote the lock."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "(comm)", which may hold spaces
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has finished


def _me() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start_time": _start_time(pid),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _stale_reason(holder: dict, me: dict) -> Optional[str]:
    """Why the holder's lock may be taken over, or None while the holder may still be running."""
    if holder.get("slurm_job_id") and holder["slurm_job_id"] == me["slurm_job_id"]:
        return f"the same SLURM job {me['slurm_job_id']} (requeued)"
    if holder.get("host") != me["host"]:
        return None  # its process cannot be checked from here
    if holder.get("pid") == me["pid"]:
        return "this process"
    started = _start_time(holder["pid"])
    if started is None:
        return f"PID {holder.get('pid')} is no longer running"
    if holder.get("start_time") and started != holder["start_time"]:
        return f"PID {holder['pid']} now belongs to another process"
    return None


@contextmanager
def _directory_guard(folder: Path) -> Iterator[None]:
    """An exclusive flock on `folder` for the block; where the file system refuses flock, none
    (the lock file's own O_EXCL-like link still keeps fresh directories safe)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing the last descriptor drops the flock


class OutputLock:
    """Held from acquire() to release() (also released at interpreter exit)."""

    def __init__(self, output_dir: Path, what: str = "train.output_dir"):
        self.path = Path(output_dir) / LOCK_NAME
        self.what = what  # how messages name the directory: the option or key that gave it
        self.held = False

    def acquire(self) -> None:
        me = _me()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Contenders are serialised by an flock on the directory (released by the kernel when a
        # process dies, so it can never go stale): without it two processes could both judge the
        # same stale lock and both replace it. The lock file itself appears only complete
        # (written to a temporary name, then hard-linked into place), so no reader ever sees a
        # half-written owner record.
        with _directory_guard(self.path.parent):
            tmp = self.path.with_name(f"{LOCK_NAME}.{me['pid']}.tmp")
            tmp.write_text(json.dumps(me))
            try:
                os.link(tmp, self.path)  # fails if any lock file (or anything) is there
            except FileExistsError:
                self._take_over(me, tmp)
            finally:
                tmp.unlink(missing_ok=True)
        self.held = True
        atexit.register(self.release)

    def _take_over(self, me: dict, tmp: Path) -> None:
        if not self.path.exists() and not self.path.is_symlink():
            os.replace(tmp, self.path)  # its owner released it just now
            return
        if self.path.is_dir() or self.path.is_symlink():
            raise LockFileUnusable(
                f"{self.what} {self.path.parent}: {self.path} is not a lock file (a "
                f"directory or link); remove it")
        try:
            holder = _holder_or_none(self.path.read_text())
        except (OSError, UnicodeDecodeError):
            holder = None
        # unreadable or not an owner record: a crash mid-write by an older version, or a
        # foreign file; nobody can be shown to own the directory
        reason = _stale_reason(holder, me) if holder else "its lock file is unreadable"
        if reason is None:
            job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
            raise OutputDirBusy(
                f"{self.what} {self.path.parent} is in use by PID {holder.get('pid')} on "
                f"host {holder.get('host')}{job} (since {holder.get('since')}); wait for it, stop "
                f"it, or choose another {self.what} (remove {self.path} only if that run "
                f"is surely gone)")
        if reason != "this process":
            log.warning("taking over %s from PID %s on %s: %s", self.path,
                        holder.get("pid") if holder else None,
                        holder.get("host") if holder else None, reason)
        os.replace(tmp, self.path)

    def release(self) -> None:
        """Remove the lock if it is still this process's."""
        if not self.held:
            return
        self.held = False
        atexit.unregister(self.release)
        try:
            holder = _holder_or_none(self.path.read_text())
            if holder is not None and holder["pid"] == os.getpid():
                self.path.unlink()
        except (OSError, UnicodeDecodeError):
            pass  # gone or replaced: nothing of ours to remove
