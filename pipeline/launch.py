"""Submit training stages to SLURM with submitit: one stage, a chain, or a sweep.

    python pipeline/launch.py [--stages edge,texture] [--nodes N] [--gpus-per-node G]
        [--partition P] [--time MIN] [--account A] [--qos Q] [--cpus-per-task C]
        [--sweep key=v1,v2 ...] [--wait] CONFIG.yaml [MORE.yaml ...] [key=value ...]

Each stage trains `configs/stage/<stage>.yaml` + the given YAML files + the overrides (as
pipeline/train.py). A chain runs its stages in order, each starting only after the previous one
succeeded (`afterok`), and each stage gets the checkpoint of every generator it needs or carries
(pipeline/training/stage_table.py) from the latest earlier stage that trains it: in
edge,texture,joint the joint stage gets train.edge_checkpoint=<edge dir> and
train.texture_checkpoint=<texture dir>. A stage that needs a generator neither the chain nor the
config provides is refused before anything is submitted.
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
import shutil
import sys
from pathlib import Path
from typing import Optional

from pipeline import exit_codes
from pipeline.cluster.chain import plan_chain, sweep_points
from pipeline.cluster.submit import SubmitError, make_executor, submit_chain, wait_and_report
from pipeline.config import ConfigError, split_args
from pipeline.training.stage_table import STAGES


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


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    files, overrides = split_args(args.args)
    files = [str(Path(f).resolve()) for f in files]
    processes = args.nodes * max(args.gpus_per_node, 1)
    on_slurm = args.cluster == "slurm" or (args.cluster == "auto" and bool(shutil.which("srun")))
    if not on_slurm and args.nodes > 1:
        why = "srun is not on PATH" if args.cluster == "auto" else f"--cluster {args.cluster}"
        exit_codes.refuse(f"launch.py: error: --nodes {args.nodes} needs SLURM ({why}); local "
                          f"processes run on this machine only, use --nodes 1")
    try:
        plan = plan_chain(args.stages, files, overrides, sweep_points(args.sweep), processes)
    except ConfigError as err:
        exit_codes.refuse(f"launch.py: error: {err}")
    if args.cluster == "auto" and not on_slurm:
        print("srun is not on PATH: running the jobs as local processes", file=sys.stderr)

    try:
        submitted, chain_stopped = submit_chain(make_executor(args), plan)
    except SubmitError as err:
        exit_codes.refuse(f"launch.py: error: {err}")
    if args.wait or chain_stopped:
        status = wait_and_report(submitted)
        sys.exit(1 if chain_stopped else status)


if __name__ == "__main__":
    main()
