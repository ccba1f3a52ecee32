"""The submitted callable: one stage (one sweep point) trained inside a SLURM job or a local
process, requeued through submitit when SLURM preempts it.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import submitit

from pipeline import exit_codes

REPO = Path(__file__).resolve().parents[2]


def still_running() -> bool:
    """Whether SLURM still counts this job as running. The trainer stops with the same status
    for SIGTERM (scancel, the time limit, SLURM's own preemption) as for the preemption notice;
    requeueing a cancelled job would bring it back to life."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:  # local processes: no requeue to ask for
        return False
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True)
    return "JobState=RUNNING" in out.stdout


@dataclass
class StageJob:
    """The submitted callable: trains one stage (one sweep point) inside a SLURM job or a local
    process."""

    stage: str
    sources: list[str]  # absolute YAML paths, the stage's own first
    overrides: list[str]
    output_dir: str
    processes: int  # in the whole job

    def __call__(self) -> dict:
        # submitit's preemption and requeue lines into the job's stderr log too, beside the
        # trainer's, so that one log tells what happened in order
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
        # Every process of the job gets SLURM's signals: note USR1 here and let the trainers stop
        # (they install their own handlers); submitit's handlers come back afterwards.
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
        stopped = []
        signal.signal(signal.SIGUSR1, lambda signum, frame: stopped.append(signum))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            # `python` and `accelerate` from this interpreter's environment, activated or not
            path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
            status = subprocess.run(self.command(), cwd=REPO,
                                    env={**os.environ, "PATH": path}).returncode
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        if exit_codes.stopped_for_requeue(status, bool(stopped)) and still_running():
            # submitit's handler calls checkpoint() and requeues (rank 0 only), then exits.
            signal.raise_signal(signal.SIGUSR1)
        if status != 0:
            raise RuntimeError(f"stage {self.stage} failed with exit status {status}; see the "
                               f"job's log")
        return {"exit_code": status, "output_dir": self.output_dir}

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on preemption: the same job again, resuming from its checkpoint."""
        return submitit.helpers.DelayedSubmission(self)  # train.resume=latest is in overrides

    def command(self) -> list[str]:
        """One trainer here, or one `accelerate launch` per node (slurm/node.sh)."""
        train = ["pipeline/train.py", *self.sources, *self.overrides]
        if self.processes == 1:
            return [sys.executable, *train]
        return ["bash", str(REPO / "slurm" / "node.sh"), *train]
