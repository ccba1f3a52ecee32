"""Submitting a chain with submitit (SLURM dependencies, or local processes one stage after the
other) and waiting for the jobs' final states.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import submitit


def make_executor(args: argparse.Namespace) -> submitit.AutoExecutor:
    cluster = None if args.cluster == "auto" else args.cluster
    executor = submitit.AutoExecutor(folder=Path(args.logs).resolve() / "%j", cluster=cluster)
    params = dict(nodes=args.nodes, tasks_per_node=1, timeout_min=args.time,
                  slurm_array_parallelism=args.array_parallelism)
    if args.cpus_per_task:
        params["cpus_per_task"] = args.cpus_per_task
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    for key in ("partition", "account", "qos"):
        if getattr(args, key):
            params[f"slurm_{key}"] = getattr(args, key)
    executor.update_parameters(**params)
    return executor


# SLURM states of a job that has not ended yet (accounting may lag the end by a moment).
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "SUSPENDED",
                 "RESIZING", "UNKNOWN"}


def final_state(job: submitit.Job, settle_s: float = 60.0) -> str:
    """Wait for the job to end; its final state (sacct on SLURM, so a cancelled job ends too)."""
    job.wait()
    if not isinstance(job, submitit.SlurmJob):
        # a local process is FINISHED whatever its outcome; the outcome is in its result file
        state = job.state
        return state if state != "FINISHED" else "FAILED" if job.exception() else "COMPLETED"
    deadline = time.monotonic() + settle_s
    while True:
        info = job.get_info(mode="force")  # the cached state may predate the end
        state = (info.get("State") or "UNKNOWN").split()[0]
        if state not in ACTIVE_STATES or time.monotonic() > deadline:
            return state
        time.sleep(1)


def wait_and_report(jobs: list[tuple[str, submitit.Job]]) -> int:
    """Print every job's final state; 1 if any did not complete."""
    failed = 0
    for stage, job in jobs:
        state = final_state(job)
        failed += state != "COMPLETED"
        print(f"{stage}: job {job.job_id} {state}", flush=True)
    return 1 if failed else 0


class SubmitError(RuntimeError):
    """sbatch refused a stage or could not reach the controller; the message says what was
    submitted before."""


def _submit(executor: submitit.AutoExecutor, stage: str, jobs: list,
            submitted: list[tuple[str, submitit.Job]]) -> list[submitit.Job]:
    try:
        # submitit prints sbatch's stderr itself; the error raised below carries its last line
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():
            return [executor.submit(job) for job in jobs]
    except (submitit.core.utils.FailedJobError, OSError, ValueError) as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        why = lines[-1] if lines else err.__class__.__name__
        done = (f"; already submitted: {', '.join(f'{s} job {h.job_id}' for s, h in submitted)}"
                if submitted else "; nothing was submitted")
        raise SubmitError(f"submitting stage {stage} to {executor.cluster} failed ({why}); is "
                          f"the SLURM controller up (sinfo, scontrol ping)?{done}") from None


def submit_chain(executor: submitit.AutoExecutor, plan: list[tuple[str, list]]
                 ) -> tuple[list[tuple[str, submitit.Job]], bool]:
    """Submit every stage's jobs in order; returns (stage, job) for each one submitted and
    whether a local chain stopped early (an earlier stage did not complete)."""
    submitted: list[tuple[str, submitit.Job]] = []
    previous: list[submitit.Job] = []
    for stage, jobs in plan:
        extra = {}
        if previous and executor.cluster == "slurm":
            # kill_on_invalid_dep: if an earlier stage fails, cancel this one instead of leaving
            # it pending forever
            extra["slurm_additional_parameters"] = {
                "dependency": "afterok:" + ":".join(job.job_id for job in previous),
                "kill_on_invalid_dep": "yes"}
        elif previous:  # local processes know no dependencies: run the stages in turn
            if not all(final_state(job) == "COMPLETED" for job in previous):
                print(f"{stage}: not submitted, as an earlier stage did not complete",
                      file=sys.stderr, flush=True)
                return submitted, True
        executor.update_parameters(name=f"dina-{stage}", **extra)
        handles = _submit(executor, stage, jobs, submitted)
        for job, handle in zip(jobs, handles):
            print(f"{stage}: job {handle.job_id} -> {job.output_dir}  "
                  f"(log: {handle.paths.stdout})", flush=True)
            submitted.append((stage, handle))
        previous = handles
    return submitted, False
