"""Submit training stages to SLURM with submitit: one stage, a chain, or a sweep.

    python pipeline/launch.py [--stages edge,texture] [--nodes N] [--gpus-per-node G]
        [--partition P] [--time MIN] [--account A] [--qos Q] [--cpus-per-task C]
        [--sweep key=v1,v2 ...] [--wait] CONFIG.yaml [MORE.yaml ...] [key=value ...]

Each stage trains `configs/stage/<stage>.yaml` + the given YAML files + the overrides (as
pipeline/train.py). A chain runs its stages in order, each starting only after the previous one
succeeded (`afterok`), and each stage gets the checkpoint of every generator it needs or carries
(pipeline/stage_table.py) from the latest earlier stage that trains it: in edge,texture,joint the
joint stage gets train.edge_checkpoint=<edge dir> and train.texture_checkpoint=<texture dir>. A
stage that needs a generator neither the chain nor the config provides is refused before anything
is submitted.
`--sweep key=v1,v2` (repeatable: the product of all) submits each stage as a job array, one task
per point, each with its own output dir. The cluster comes from the environment: SLURM when
`srun` is on PATH, else local processes. Options mirror slurm/*.sbatch.

How a job trains: one process in all (1 node, at most 1 GPU) runs `python pipeline/train.py`;
more, and every node runs slurm/node.sh (one `accelerate launch` per node, as the sbatch scripts
do). Preemption and time limits: SLURM sends SIGUSR1 to the job; the trainers checkpoint and
stop, then submitit's own handler calls StageJob.checkpoint() and requeues the job, which resumes
with train.resume=latest (every job passes it anyway). Without SLURM the jobs are local
processes on this machine (one node), run one stage after the other.

Exit status: 0 submitted (with --wait: every job completed); 1 a job failed (--wait, or a local
chain stopped early); 2 bad arguments or config, nothing submitted.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# submitit reads its preemption signal at import: make it the one the trainer handles.
os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", "USR1")
import submitit  # noqa: E402

from omegaconf import OmegaConf  # noqa: E402

from pipeline import exit_codes  # noqa: E402
from pipeline.config import ConfigError, load_config, merge_config, split_args  # noqa: E402
from pipeline.stage_table import CHECKPOINT_KEY, GENERATOR_NAMES, STAGES  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


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


def sweep_points(specs: list[str]) -> list[list[str]]:
    """['a=1,2', 'b=x'] -> [['a=1', 'b=x'], ['a=2', 'b=x']] (the product; [[]] for no sweep)."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--sweep '{spec}' is not key=v1,v2,...")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(point) for point in itertools.product(*axes)]


def stage_jobs(stage: str, files: list[str], overrides: list[str], points: list[list[str]],
               from_chain: dict[str, list[str]], processes: int) -> list[StageJob]:
    """One StageJob per sweep point; the config is loaded here so a bad one fails before sbatch.

    from_chain: generator -> the output dir (per sweep point) of the earlier stage training it."""
    sources = [str(REPO / "configs" / "stage" / f"{stage}.yaml"), *files]
    wanted = STAGES[stage]
    jobs = []
    for i, point in enumerate(points):
        extra = [f"{CHECKPOINT_KEY[g]}={from_chain[g][i]}"
                 for g in (*wanted.needs, *wanted.carries) if g in from_chain]
        given = merge_config(sources, [*overrides, *point])
        for g in wanted.needs:
            key = CHECKPOINT_KEY[g]
            if g not in from_chain and not OmegaConf.select(given, key):
                trainers = ", ".join(s.name for s in STAGES.values() if g in s.hands_on)
                raise ConfigError(f"stage {stage} needs {key} (a trained {GENERATOR_NAMES[g]}): "
                                  f"no earlier stage of the chain trains it; put one of "
                                  f"{trainers} before {stage} or set {key}=...")
        cfg = load_config(sources, [*overrides, *point, *extra])
        output_dir = Path(cfg.train.output_dir)
        if point:  # each sweep point writes its own run
            output_dir = output_dir / ("sweep-" + "-".join(p.replace("/", "_") for p in point))
        output_dir = output_dir.resolve()  # the job may start in another directory
        # a requeued job resumes from its own latest checkpoint (a fresh start when none yet)
        extra += [f"train.output_dir={output_dir}", "train.resume=latest"]
        jobs.append(StageJob(stage, sources, [*overrides, *point, *extra], str(output_dir),
                             processes))
    return jobs


def plan_chain(stages: list[str], files: list[str], overrides: list[str],
               points: list[list[str]], processes: int) -> list[tuple[str, list[StageJob]]]:
    """Every stage's jobs, each taking the generators it needs from earlier stages' outputs;
    ConfigError for anything that would fail later, before anything is submitted."""
    plan, from_chain = [], {}
    for stage in stages:
        jobs = stage_jobs(stage, files, overrides, points, from_chain, processes)
        if plan and {j.output_dir for j in plan[-1][1]} & {j.output_dir for j in jobs}:
            raise ConfigError(f"config key 'train.output_dir': stages {plan[-1][0]} and {stage} "
                              "would write to the same directory; keep ${train.stage} in it")
        plan.append((stage, jobs))
        for generator in STAGES[stage].hands_on:
            from_chain[generator] = [job.output_dir for job in jobs]
    return plan


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


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("args", nargs="*", metavar="CONFIG.yaml | key=value",
                   help="config files (merged in order) and key=value overrides")
    p.add_argument("--stages", default="texture",
                   help=f"comma-separated chain of stages ({', '.join(STAGES)}); default texture")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0, help="0: CPU nodes (gloo)")
    p.add_argument("--cpus-per-task", type=int, default=None)
    p.add_argument("--time", type=int, default=2880, help="time limit in minutes")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="sweep a config key over values (repeatable: the product); job arrays")
    p.add_argument("--array-parallelism", type=int, default=256,
                   help="most array tasks running at once")
    p.add_argument("--logs", default="logs/submitit", help="submitit's job folder root")
    p.add_argument("--cluster", choices=("auto", "slurm", "local", "debug"), default="auto",
                   help="auto: slurm when srun is on PATH, else local")
    p.add_argument("--wait", action="store_true",
                   help="wait for every job and report its final state (exit 1 if any failed)")
    # intermixed: config files and key=value overrides may also come after an option
    args = p.parse_intermixed_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        p.error(f"--stages: {', '.join(bad) or 'empty'} not in {', '.join(STAGES)}")
    twice = sorted({s for s in stages if stages.count(s) > 1})
    if twice:  # the second would resume the first's finished run in the same dir: a no-op
        p.error(f"--stages {args.stages}: {', '.join(twice)} given twice; a chain trains each "
                f"stage once (use another train.output_dir to train it again)")
    args.stages = stages
    if args.nodes < 1 or args.gpus_per_node < 0:
        p.error("--nodes must be >= 1 and --gpus-per-node >= 0")
    for option, value in (("--time", args.time), ("--cpus-per-task", args.cpus_per_task),
                          ("--array-parallelism", args.array_parallelism)):
        if value is not None and value < 1:
            p.error(f"{option} {value}: must be at least 1")
    return args


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


def refuse(message: str) -> None:
    """A set-up mistake: one line, exit 2, nothing submitted."""
    exit_codes.refuse(f"launch.py: error: {message}")


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    files, overrides = split_args(args.args)
    files = [str(Path(f).resolve()) for f in files]
    processes = args.nodes * max(args.gpus_per_node, 1)
    on_slurm = args.cluster == "slurm" or (args.cluster == "auto" and bool(shutil.which("srun")))
    if not on_slurm and args.nodes > 1:
        why = "srun is not on PATH" if args.cluster == "auto" else f"--cluster {args.cluster}"
        refuse(f"--nodes {args.nodes} needs SLURM ({why}); local processes run on this machine "
               f"only, use --nodes 1")
    try:
        plan = plan_chain(args.stages, files, overrides, sweep_points(args.sweep), processes)
    except ConfigError as err:
        refuse(str(err))
    if args.cluster == "auto" and not on_slurm:
        print("srun is not on PATH: running the jobs as local processes", file=sys.stderr)

    executor = make_executor(args)
    submitted: list[tuple[str, submitit.Job]] = []
    previous: list[submitit.Job] = []
    chain_stopped = False
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
                chain_stopped = True
                break
        executor.update_parameters(name=f"dina-{stage}", **extra)
        try:
            # submitit prints sbatch's stderr itself; the refusal below carries its last line
            with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                handles = [executor.submit(job) for job in jobs]
        except (submitit.core.utils.FailedJobError, OSError, ValueError) as err:
            # sbatch refused or could not reach the controller: one line, not submitit's trace
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            why = lines[-1] if lines else err.__class__.__name__
            done = (f"; already submitted: {', '.join(f'{s} job {h.job_id}' for s, h in submitted)}"
                    if submitted else "; nothing was submitted")
            refuse(f"submitting stage {stage} to {executor.cluster} failed ({why}); is the "
                   f"SLURM controller up (sinfo, scontrol ping)?{done}")
        for job, handle in zip(jobs, handles):
            print(f"{stage}: job {handle.job_id} -> {job.output_dir}  (log: {handle.paths.stdout})",
                  flush=True)
            submitted.append((stage, handle))
        previous = handles
    if args.wait or chain_stopped:
        status = wait_and_report(submitted)
        sys.exit(1 if chain_stopped else status)


if __name__ == "__main__":
    # Run as pipeline.launch rather than __main__, so that pickled jobs name an importable class.
    from pipeline.launch import main as launch_main

    launch_main()
