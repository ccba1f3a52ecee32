"""Stop requests: SIGTERM/SIGUSR1 end training at the next step boundary with a checkpoint; a
second signal ends it at once; a stuck data stream cannot hold a stop for long.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Optional

log = logging.getLogger(__name__)




class StoppedWhileWaiting(BaseException):
    """No batch came within DATA_GRACE_S of a stop signal. A BaseException, so that the data
    code's `except Exception` (skip a bad sample, go on) cannot swallow it."""


class StopRequest:
    """SIGTERM/SIGUSR1, and Ctrl-C (SIGINT) alike: finish the step, checkpoint, exit for requeue.
    A second signal: exit now. If the next batch does not come within DATA_GRACE_S of the signal,
    stop without one."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.waiting_for_data = False
        # forked DataLoader workers inherit the handler; only this process acts on a signal
        self.pid = os.getpid()
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, self._handle)
        signal.signal(signal.SIGALRM, self._give_up)

    def _handle(self, signum, frame):
        if os.getpid() != self.pid:
            return  # a data worker: the trainer decides when the workers stop
        if self.signum is not None:
            log.error("second signal %s: exiting at once", signal.Signals(signum).name)
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signum = signum
        log.warning("%s received: stopping after this step with a checkpoint",
                    signal.Signals(signum).name)
        if self.waiting_for_data:
            _arm_grace_timer()

    def _give_up(self, signum, frame):
        if self.waiting_for_data:
            raise StoppedWhileWaiting(signal.Signals(self.signum).name)

    def next_batch(self, batches):
        """next(batches); after a stop signal, given at most DATA_GRACE_S."""
        self.waiting_for_data = True
        if self.signum is not None:
            _arm_grace_timer()
        try:
            return next(batches)
        finally:
            self.waiting_for_data = False
            signal.setitimer(signal.ITIMER_REAL, 0)


# after a stop signal, how long the loop still waits for a batch before it gives up on the
# checkpoint and stops at once (a stuck or endlessly bad data stream must not block a stop)
DATA_GRACE_S = 20.0
# then the alarm repeats this often until the wait ends: a handler that runs inside a finaliser
# (a generator's close, a __del__) has its exception swallowed, and one alarm would be lost
GIVE_UP_REPEAT_S = 1.0


def _arm_grace_timer() -> None:
    signal.setitimer(signal.ITIMER_REAL, DATA_GRACE_S, GIVE_UP_REPEAT_S)
