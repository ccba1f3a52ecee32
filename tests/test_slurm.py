"""End to end on a real SLURM cluster (ops/slurm/start.sh: slurmctld, slurmdbd, nodes n1/n2).

sbatch scripts: a 2-node gloo DDP run, preemption -> checkpoint -> requeue -> resume, a bad config
failing fast. submitit (pipeline/launch.py): a two-stage chain, a sweep array, a cancelled job.
Tiny CPU models, a few steps each; every test has its own output dir and MLflow database.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import REPO, run_cli


def cluster_missing() -> str:
    """Why the SLURM tests cannot run here ('' when they can)."""
    if not shutil.which("sinfo"):
        return "sinfo is not on PATH: start the local cluster with ops/slurm/start.sh"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True,
                             text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: is slurmctld running? (ops/slurm/start.sh)"
    ready = {line.split()[0] for line in out.stdout.splitlines()
             if line.split()[-1] in ("idle", "mixed", "allocated", "completing")}
    if out.returncode != 0 or len(ready) < 2:
        found = out.stdout.strip() or out.stderr.strip()
        return f"no SLURM cluster with 2 usable nodes ({found}): start it with ops/slurm/start.sh"
    return ""


CLUSTER_MISSING = cluster_missing()
pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(bool(CLUSTER_MISSING), reason=CLUSTER_MISSING or "ready")]

# Nodes without GPUs: the documented override of the scripts' `#SBATCH --gres=gpu:8`; one CPU
# per task so that jobs fit on the 2-CPU emulated nodes.
CPU_JOB = ["--gres=none", "--cpus-per-task=1"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    run_cli("shard.py", "sample", "--out", out, "--size", 64, cwd=REPO, check=True)
    return out


@pytest.fixture
def env(tmp_path) -> dict:
    """Environment for submissions (sbatch passes it on to the job): a private MLflow db."""
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}


def tiny(shards: Path, *overrides: str) -> list[str]:
    return ["configs/experiment/tiny.yaml", f"data.train={shards / 'train'}",
            f"data.val={shards / 'test'}", f"data.masks={shards / 'masks'}",
            "tracking.log_images=false", *overrides]


def sbatch(args: list[str], env: dict, timeout: float = 240) -> tuple[int, str]:
    """Submit; returns (exit status of `sbatch`, job id). --wait blocks until the job ends."""
    out = subprocess.run(["sbatch", "--parsable", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=timeout)
    job_id = out.stdout.strip().split(";")[0]
    assert job_id.isdigit(), f"sbatch failed: {out.stderr}"
    return out.returncode, job_id


def job_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().split("\n")[0].split(" ")[0]


def read_log(path: Path) -> str:
    # two ranks' progress bars interleave in one job log and can split a multi-byte character
    return path.read_text(errors="replace")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.5)


def wait_until_ended(job_id: str, timeout: float) -> str:
    ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
    wait_for(lambda: job_state(job_id) in ended, timeout, f"job {job_id} to end")
    return job_state(job_id)


def mlflow_runs(env: dict):
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(experiments)


def test_sbatch_two_node_ddp(shards, env, tmp_path):
    log = tmp_path / "job.out"
    status, job_id = sbatch(["--wait", "--nodes=2", *CPU_JOB, f"--output={log}",
                             "slurm/texture.sbatch",
                             *tiny(shards, f"train.output_dir={tmp_path / 'run'}")], env)
    text = read_log(log)
    assert status == 0, text
    # node.sh runs once per node and names it; the trainer counts the processes of the job
    assert "node n1 (node id 0 of 2)" in text and "node n2 (node id 1 of 2)" in text, text
    assert "stage texture | 2 processes" in text, text
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-00000004" / "meta.json").is_file()
    _, runs = mlflow_runs(env)
    assert len(runs) == 1
    assert runs[0].data.tags["slurm_job_id"] == job_id
    assert runs[0].data.tags["num_processes"] == "2"
    assert runs[0].info.status == "FINISHED"


def test_sbatch_preemption_requeues_and_resumes(shards, env, tmp_path):
    log, run_dir = tmp_path / "job.out", tmp_path / "run"
    steps = 40
    _, job_id = sbatch(["--nodes=2", *CPU_JOB, f"--output={log}", "slurm/texture.sbatch",
                        *tiny(shards, f"train.output_dir={run_dir}", f"train.steps={steps}",
                              "train.ckpt_every=1000", "train.val_every=1000")], env)
    try:
        # The trainers handle signals from their start; this line comes once they are training.
        wait_for(lambda: log.exists() and "stage texture |" in read_log(log), 120,
                 "training to start")  # signal at once: on an idle machine a step is ~0.15 s
        # A preemption notice as `#SBATCH --signal=B:USR1@120` gives it: to the batch shell.
        subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
        state = wait_until_ended(job_id, 240)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
    text = read_log(log)
    assert state == "COMPLETED", text
    stopped = re.search(r"stopped at step (\d+) by signal", text)
    assert stopped, text
    step = int(stopped.group(1))
    assert 0 < step < steps
    assert f"scontrol requeue {job_id}" in text and "(restart 1)" in text, text
    assert f"resumed from {run_dir}/checkpoints/checkpoint-{step:08d} at step {step}" in text
    assert (run_dir / "checkpoints" / f"checkpoint-{steps:08d}").is_dir()
    client, runs = mlflow_runs(env)
    assert len(runs) == 1, "the requeued job must continue the same MLflow run"
    assert runs[0].data.tags["slurm_job_id"] == job_id
    assert runs[0].info.status == "FINISHED"
    logged_steps = {m.step for m in client.get_metric_history(runs[0].info.run_id, "texture/g")}
    assert {1, step, step + 1, steps} <= logged_steps


def test_sbatch_bad_config_fails_fast(shards, env, tmp_path):
    log = tmp_path / "job.out"
    start = time.monotonic()
    status, job_id = sbatch(["--wait", "--nodes=1", *CPU_JOB, f"--output={log}",
                             "slurm/texture.sbatch",
                             *tiny(shards, f"train.output_dir={tmp_path / 'run'}",
                                   "train.no_such_key=1")], env, timeout=120)
    assert status != 0
    assert time.monotonic() - start < 90
    assert "train.no_such_key" in read_log(log)
    assert job_state(job_id) == "FAILED"


def launch(args: list[str], env: dict, tmp_path: Path, timeout: float = 240):
    return subprocess.run([sys.executable, "pipeline/launch.py", "--logs", str(tmp_path / "logs"),
                           *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_submitit_two_stage_chain(shards, env, tmp_path):
    out = launch(["--stages", "edge,texture", "--wait",
                  *tiny(shards, f"train.output_dir={tmp_path}/${{train.stage}}", "train.steps=2")],
                 env, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^edge: job \d+ COMPLETED$", out.stdout, re.M), out.stdout
    assert re.search(r"^texture: job \d+ COMPLETED$", out.stdout, re.M), out.stdout
    for stage in ("edge", "texture"):
        assert (tmp_path / stage / "checkpoints" / "checkpoint-00000002").is_dir()
    # the texture stage carried the edge stage's G1
    assert f"edge_checkpoint: {tmp_path}/edge" in (tmp_path / "texture" / "config.yaml").read_text()


def test_submitit_sweep_array(shards, env, tmp_path):
    # Two tasks creating one new sqlite MLflow db at once race in its schema migration: make it
    # first (a tracking server is the way for real sweeps).
    mlflow_runs(env)
    out = launch(["--sweep", "optim.g_lr=0.0001,0.0002", "--wait",
                  *tiny(shards, f"train.output_dir={tmp_path}/run", "train.steps=2")],
                 env, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    ids = re.findall(r"^texture: job (\d+_\d) COMPLETED$", out.stdout, re.M)
    assert len(ids) == 2 and ids[0].split("_")[0] == ids[1].split("_")[0], out.stdout
    for lr in ("0.0001", "0.0002"):
        assert (tmp_path / "run" / f"sweep-optim.g_lr={lr}" / "checkpoints" /
                "checkpoint-00000002").is_dir()


@contextmanager
def launched_training(shards, env, tmp_path, *overrides):
    """`launch.py --wait` of a tiny texture run; yields (proc, job_id, job log) once it trains."""
    logs, job_id = tmp_path / "logs", None
    proc = subprocess.Popen([sys.executable, "pipeline/launch.py", "--logs", str(logs), "--wait",
                             *tiny(shards, f"train.output_dir={tmp_path}/run", *overrides)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        job_id = re.match(r"texture: job (\d+)", proc.stdout.readline()).group(1)
        log = logs / job_id / f"{job_id}_0_log.err"
        wait_for(lambda: log.exists() and "stage texture |" in read_log(log), 120,
                 "training to start")  # signal at once: on an idle machine a step is ~0.2 s
        yield proc, job_id, log
    finally:
        proc.kill()
        if job_id:
            subprocess.run(["scancel", job_id], capture_output=True)


def test_submitit_preempted_job_checkpoints_requeues_and_resumes(shards, env, tmp_path):
    steps = 40
    with launched_training(shards, env, tmp_path, f"train.steps={steps}",
                           "train.ckpt_every=1000", "train.val_every=1000") as (proc, job_id, log):
        # submitit's preemption signal (SUBMITIT_PREEMPT_SIGNAL=USR1, set by launch.py)
        subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
        out, err = proc.communicate(timeout=240)
    text = read_log(log)
    assert proc.returncode == 0 and f"texture: job {job_id} COMPLETED" in out, out + err + text
    step = int(re.search(r"stopped at step (\d+) by signal", text).group(1))
    assert "Calling checkpoint method" in text and f"Requeued job {job_id}" in text, text
    assert step < steps and f"checkpoint-{step:08d} at step {step}" in text, text  # resumed
    assert (tmp_path / "run" / "checkpoints" / f"checkpoint-{steps:08d}").is_dir()
    _, runs = mlflow_runs(env)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_submitit_cancelled_job_is_reported(shards, env, tmp_path):
    with launched_training(shards, env, tmp_path, "train.steps=100000") as (proc, job_id, log):
        # cancel while training: the trainer then checkpoints on SIGTERM, as on a preemption
        subprocess.run(["scancel", job_id], check=True)
        rest, err = proc.communicate(timeout=120)
        # ... but a cancelled job stays cancelled: not requeued once its processes are gone
        wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True,
                                            text=True).stdout.strip(), 90, "the job to leave")
    assert proc.returncode == 1, err
    assert re.search(rf"^texture: job {job_id} CANCELLED", rest, re.M), rest + err
    assert job_state(job_id) == "CANCELLED"
