"""How the short commands (shard.py, evaluate.py) stop on Ctrl-C or SIGTERM: the first signal
unwinds like Ctrl-C, so their staging folders are removed and their outputs stay as they were; a
second one, while that happens, exits at once; and a step that must not be cut in two (a swap of
folders) holds the signals until it is done. The trainer has its own (training/signals.py): it
checkpoints first."""
from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def unwind_on_stop_signals(name: str, second_note: str) -> None:
    """From here on the first SIGINT/SIGTERM raises KeyboardInterrupt(signal name); a second one
    prints `name: second signal (...): exiting at once; second_note` and exits 128 + signal."""
    def first(signum, frame):
        for sig in STOP_SIGNALS:
            signal.signal(sig, second)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def second(signum, frame):
        print(f"{name}: second signal ({signal.Signals(signum).name}): exiting at once; "
              f"{second_note}", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, first)


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal an unwinding KeyboardInterrupt names (Ctrl-C's 130 when it names none)."""
    name = interrupt.args[0] if interrupt.args else "SIGINT"
    return 128 + (signal.Signals[name].value if name in signal.Signals.__members__ else 2)


@contextmanager
def held_stop_signals() -> Iterator[None]:
    """SIGINT/SIGTERM during the block are delivered after it. A handler swap, not a signal
    mask: a mask would not hold for the other threads (progress bars, pools)."""
    held: list[int] = []
    handlers = {sig: signal.signal(sig, lambda signum, _frame: held.append(signum))
                for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if held:
        signal.raise_signal(held[0])
