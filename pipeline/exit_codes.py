"""Exit statuses of the training commands, and when a stopped trainer is to be requeued.

Read by pipeline/train.py and pipeline/launch.py, and by slurm/common.sh through `python -c`, so
the shell and Python sides cannot drift apart.
"""
from __future__ import annotations

import sys
from typing import Callable, NoReturn

SETUP = 2  # bad config, input or set-up; the one-line message names the key or file
NONFINITE = 3  # stopped after too many consecutive non-finite steps
REQUEUE = 124  # stopped by SIGTERM/SIGUSR1 after writing a checkpoint: requeue and resume
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT) where no checkpoint is due


def refuse(message: str) -> NoReturn:
    """A bad input or set-up: `message` as the one line on stderr, exit SETUP (no traceback)."""
    print(message, file=sys.stderr)
    sys.exit(SETUP)


def stopped_for_requeue(status: int, stop_requested: bool) -> bool:
    """Whether a trainer (or the launcher around it) ended to be requeued: it says so with
    REQUEUE, or a stop was requested and it exited non-zero (`accelerate launch` reports any
    worker's status as 1, so the 124 itself may not arrive)."""
    return status == REQUEUE or (stop_requested and status != 0)


def run_interruptible(main: Callable[[], None], name: str, left: str) -> None:
    """A command's main; Ctrl-C ends it with one line saying what it `left` (e.g. "--out is as
    it was"), exit INTERRUPTED, instead of a traceback."""
    try:
        main()
    except KeyboardInterrupt:
        print(f"{name}: interrupted (Ctrl-C); {left}", file=sys.stderr)
        sys.exit(INTERRUPTED)
