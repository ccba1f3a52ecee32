"""One owner per train.output_dir, with real training processes (and a real 2-rank DDP run)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.training.output_lock import LOCK_NAME
from tests.helpers import PYTHON, TINY
from tests.helpers.mlflow_server import free_port
from tests.helpers.training import TRAIN, start_training, tiny_overrides, train_cli, wait_for

pytestmark = pytest.mark.slow

QUICK = ["train.stage=edge", "train.steps=1", "train.val_every=100"]


def lock_file(out: Path) -> Path:
    return out / "run" / LOCK_NAME


def fake_holder(out: Path, pid: int, slurm_job_id: str | None = None) -> None:
    """A lock as another run on this host would have left it."""
    lock_file(out).parent.mkdir(parents=True, exist_ok=True)
    lock_file(out).write_text(json.dumps({"host": socket.gethostname(), "pid": pid,
                                          "slurm_job_id": slurm_job_id, "since": "earlier"}))


def test_a_second_run_is_refused_and_a_dead_owners_lock_is_taken_over(sample_shards, tmp_path):
    first = start_training(sample_shards, tmp_path, "train.stage=edge", "train.steps=500",
                           "train.val_every=1000", "train.ckpt_every=1000")
    try:
        wait_for(lambda: lock_file(tmp_path).exists(), first)
        second = train_cli(sample_shards, tmp_path, *QUICK, check=False)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"in use by PID {first.pid} on host {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # the owner is not disturbed
    finally:
        first.kill()  # dies without releasing its lock
        first.communicate()
    assert json.loads(lock_file(tmp_path).read_text())["pid"] == first.pid
    third = train_cli(sample_shards, tmp_path, *QUICK)
    assert "taking over" in third.stderr
    assert f"PID {first.pid} is no longer running" in third.stderr
    assert not lock_file(tmp_path).exists()  # released at the end of the run


def test_a_requeued_slurm_job_takes_over_its_own_lock(sample_shards, tmp_path):
    fake_holder(tmp_path, os.getpid(), slurm_job_id="4242")  # a live PID: only the job id helps
    refused = train_cli(sample_shards, tmp_path, *QUICK, check=False)
    assert refused.returncode == 2 and "SLURM job 4242" in refused.stderr
    env = {**os.environ, "SLURM_JOB_ID": "4242"}
    args = [PYTHON, TRAIN, TINY, *tiny_overrides(sample_shards, tmp_path), *QUICK]
    requeued = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "the same SLURM job 4242 (requeued)" in requeued.stderr


def test_ddp_ranks_agree_on_a_refusal(sample_shards, tmp_path):
    fake_holder(tmp_path, os.getpid())
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--main_process_port", str(free_port()), TRAIN, TINY,
              *tiny_overrides(sample_shards, tmp_path), *QUICK]
    proc = subprocess.run(launch, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ACCELERATE_USE_CPU": "1"})
    assert proc.returncode != 0
    assert proc.stderr.count(f"in use by PID {os.getpid()}") == 2, proc.stderr[-3000:]
    assert json.loads(lock_file(tmp_path).read_text())["pid"] == os.getpid()  # left alone
