"""Fault injection with real processes: kill -9, signals, NaNs, bad shards, a lost MLflow server."""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from pipeline.training import checkpoint
from tests.helpers import PYTHON, REPO, TINY
from tests.helpers.mlflow_server import free_port, start_server, stop_server
from tests.helpers.small_disk import small_disk
from tests.helpers.training import (assert_identical, checkpoint_steps, final_tensors, harness,
                                    only_run, start_training, tiny_overrides, train_cli, wait_for)

TRAIN = str(REPO / "pipeline" / "train.py")

pytestmark = pytest.mark.slow


def test_kill9_at_random_steps_then_resume_is_bit_identical(sample_shards, tmp_path):
    common = ["train.stage=edge", "train.steps=10", "train.ckpt_every=1", "train.val_every=100"]
    train_cli(sample_shards, tmp_path / "straight", *common)
    out = tmp_path / "killed"
    rng = random.Random(7)
    ckpt_root = out / "run" / "checkpoints"
    kills = []
    for attempt in range(5):
        proc = start_training(sample_shards, out, *common, "train.resume=latest")
        start = max(checkpoint_steps(out), default=0)
        if attempt == 2:  # once, in the middle of writing a checkpoint
            wait_for(lambda: any(ckpt_root.glob(".tmp-checkpoint-*")), proc)
        else:
            target = min(start + rng.randint(1, 2), 9)
            wait_for(lambda: max(checkpoint_steps(out), default=0) >= target, proc)
        proc.kill()
        proc.wait()
        kills.append(max(checkpoint_steps(out), default=0))
    proc = start_training(sample_shards, out, *common, "train.resume=latest")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert len(set(kills)) > 1, f"kills did not land at different steps: {kills}"
    assert_identical(final_tensors(tmp_path / "straight" / "run"), final_tensors(out / "run"))


def test_corrupt_checkpoint_is_skipped_with_a_message(sample_shards, tmp_path, caplog):
    train_cli(sample_shards, tmp_path, "train.steps=3", "train.ckpt_every=1",
              "train.ckpt_limit=3")
    root = tmp_path / "run" / "checkpoints"
    newest = root / "checkpoint-00000003" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    (root / ".tmp-checkpoint-00000004").mkdir()  # a write that never finished
    assert checkpoint.find_latest(tmp_path / "run").name == "checkpoint-00000002"
    assert "checkpoint-00000003" in caplog.text and "wrong size" in caplog.text
    resumed = train_cli(sample_shards, tmp_path, "train.steps=4", "train.resume=latest")
    assert "resumed from" in resumed.stderr and "checkpoint-00000002" in resumed.stderr


def test_sigusr1_checkpoints_and_exits_for_requeue_then_resumes(sample_shards, tmp_path):
    common = ["train.stage=edge", "train.steps=30", "train.ckpt_every=3", "train.val_every=100"]
    out = tmp_path / "signalled"
    proc = start_training(sample_shards, out, *common)
    wait_for(lambda: 3 in checkpoint_steps(out), proc)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 124, err[-3000:]
    stopped_at = max(checkpoint_steps(out))
    assert 3 <= stopped_at < 30
    meta = json.loads((out / "run" / "checkpoints" / f"checkpoint-{stopped_at:08d}" /
                       "meta.json").read_text())
    assert meta["reason"] == "signal"
    resumed = train_cli(sample_shards, out, *common, "train.resume=latest")
    assert f"at step {stopped_at}" in resumed.stderr
    train_cli(sample_shards, tmp_path / "straight", *common)
    assert_identical(final_tensors(tmp_path / "straight" / "run"), final_tensors(out / "run"))
    only_run(f"sqlite:///{out / 'mlflow.db'}")  # the resumed run continued the same MLflow run


def test_second_signal_exits_at_once(sample_shards, tmp_path):
    proc = start_training(sample_shards, tmp_path, "train.steps=200", "train.ckpt_every=2")
    wait_for(lambda: checkpoint_steps(tmp_path), proc)
    proc.send_signal(signal.SIGUSR1)  # two different signals: a repeated one could coalesce
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "second signal" in err


def metric_history(out: Path, key: str) -> list:
    client, run = only_run(f"sqlite:///{out / 'mlflow.db'}")
    return client.get_metric_history(run.info.run_id, key)


def test_nan_batch_skips_the_step_and_counts_it(sample_shards, tmp_path):
    proc = harness(sample_shards, tmp_path, "--poison-steps", "2", "train.steps=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 2: non-finite" in proc.stderr
    assert [m.value for m in metric_history(tmp_path, "train/skipped_steps")] == [1]


def test_consecutive_nans_stop_with_checkpoint_before_first_bad_step(sample_shards, tmp_path):
    proc = harness(sample_shards, tmp_path, "--poison-steps", "3,4,5", "train.steps=10",
                   "train.max_bad_steps=3", "train.ckpt_every=100")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "3 consecutive non-finite steps (from step 3)" in proc.stderr
    assert checkpoint_steps(tmp_path) == [2]
    meta = checkpoint.verify(tmp_path / "run" / "checkpoints" / "checkpoint-00000002")
    assert meta["reason"] == "non-finite"


def test_nan_on_one_ddp_rank_both_skip_without_hang(sample_shards, tmp_path):
    proc = harness(sample_shards, tmp_path, "--poison-steps", "2", "--poison-rank", "1",
                   "--digest-dir", str(tmp_path / "digests"), "train.steps=4", nprocs=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = [json.loads((tmp_path / "digests" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert digests[0] == digests[1]
    assert [m.value for m in metric_history(tmp_path, "train/skipped_steps")] == [1]


def corrupt_shards(shards: Path, dest: Path) -> Path:
    """A copy of the train shards where one shard is truncated and one sample is garbage."""
    dest.mkdir(parents=True)
    tars = sorted((shards / "train").glob("*.tar"))
    for tar in tars:
        shutil.copy(tar, dest / tar.name)
    shutil.copy(shards / "train" / "index.json", dest / "index.json")
    truncated = dest / tars[0].name
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    good = dest / tars[1].name
    with tarfile.open(good) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    with tarfile.open(good, "w") as out:
        for i, (member, data) in enumerate(members):
            if i == 0 and member.name.endswith((".jpg", ".png")):
                data = b"not an image at all" * 10
                member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return dest


def test_bad_shards_are_skipped_and_counted(sample_shards, tmp_path):
    bad = corrupt_shards(sample_shards, tmp_path / "bad-train")
    proc = train_cli(sample_shards, tmp_path, f"data.train={bad}", "train.steps=12",
                     "data.samples_per_epoch=16")
    assert "skipped bad data" in proc.stderr
    assert metric_history(tmp_path, "data/skipped_samples")[-1].value >= 1


def test_mlflow_server_lost_mid_run_and_back(sample_shards, tmp_path):
    server_dir, port = tmp_path / "server", free_port()
    uri = start_server(server_dir, port)
    out = tmp_path / "run-out"
    args = [PYTHON, TRAIN, TINY, *tiny_overrides(sample_shards, out), f"tracking.uri={uri}",
            "train.steps=60", "train.val_every=1000", "train.ckpt_every=2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "run" / "checkpoints").exists(), proc)
    stop_server(server_dir)
    time.sleep(4.0)
    start_server(server_dir, port)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "MLflow unreachable" in err
    client, run = only_run(uri)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "texture/d")]
    assert sorted(steps) == list(range(1, 61))
    stop_server(server_dir)


def test_unwritable_or_full_output_dir_fails_before_training(sample_shards, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = train_cli(sample_shards, tmp_path, f"train.output_dir={blocker / 'run'}", check=False)
    assert proc.returncode == 2 and "not writable" in proc.stderr
    proc = train_cli(sample_shards, tmp_path, "train.ckpt_limit=1000000000", check=False)
    assert proc.returncode == 2 and "MiB free" in proc.stderr


def test_training_on_undecodable_data_stops_with_exit_2_naming_the_shards(sample_shards,
                                                                          tmp_path):
    masks = sample_shards / "masks"  # mask shards given as training images
    proc = train_cli(sample_shards, tmp_path, f"data.train={masks}", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "samples in a row failed to decode" in last and str(masks / "shard-") in last
    assert proc.stderr.count("skipped bad data") <= 5  # not a line per bad sample


def test_sigterm_is_honoured_while_the_loader_finds_nothing(sample_shards, tmp_path):
    proc = start_training(sample_shards, tmp_path, f"data.train={sample_shards / 'masks'}",
                          "data.max_bad_samples=1000000000")
    wait_for(lambda: (tmp_path / "run" / ".owner.json").exists(), proc)
    time.sleep(3)  # inside the endless bad-sample stream by now
    proc.send_signal(signal.SIGTERM)
    # the 20 s grace starts when the loop first waits for data; on a loaded machine the set-up
    # after the lock (MLflow store, loader workers) can itself take half a minute
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 124, err[-3000:]
    assert "SIGTERM: no training data came within" in err


def test_resume_latest_with_no_valid_checkpoint_lists_each(sample_shards, tmp_path):
    train_cli(sample_shards, tmp_path, "train.stage=edge", "train.steps=2", "train.ckpt_every=1",
              "train.val_every=100")
    root = tmp_path / "run" / "checkpoints"
    (root / "checkpoint-00000002" / "meta.json").unlink()
    weights = root / "checkpoint-00000001" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    proc = train_cli(sample_shards, tmp_path, "train.stage=edge", "train.steps=4",
                     "train.resume=latest", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "none of the 2 checkpoints" in last
    assert "checkpoint-00000002: no readable meta.json" in last
    assert "checkpoint-00000001: model.safetensors is missing or has the wrong size" in last
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-00000001",
                                                      "checkpoint-00000002"]  # untouched


def test_resume_with_another_model_shape_names_the_keys(sample_shards, tmp_path):
    train_cli(sample_shards, tmp_path, "train.stage=edge", "train.steps=1", "train.val_every=100")
    proc = train_cli(sample_shards, tmp_path, "train.stage=edge", "train.steps=2",
                     "train.resume=latest", "model.channels=16", "model.attention.heads=4",
                     check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "model.channels=8 (this run: 16)" in last
    assert "model.attention.heads=2 (this run: 4)" in last


def test_a_fresh_run_on_an_earlier_runs_checkpoints_is_refused(sample_shards, tmp_path):
    """Without train.resume a second run would interleave its checkpoints with the first's and
    prune its own (the lower steps) at the checkpoint limit: refused, the first's left intact."""
    common = ["train.stage=edge", "train.ckpt_every=2", "train.ckpt_limit=2",
              "train.val_every=100"]
    train_cli(sample_shards, tmp_path, *common, "train.steps=4")
    root = tmp_path / "run" / "checkpoints"
    before = {p.name: (p / "meta.json").read_bytes() for p in root.iterdir()}
    proc = train_cli(sample_shards, tmp_path, *common, "train.steps=2", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "checkpoint-00000004" in last and "train.resume=latest" in last
    assert {p.name: (p / "meta.json").read_bytes() for p in root.iterdir()} == before
    resumed = train_cli(sample_shards, tmp_path, *common, "train.steps=4", "train.resume=latest")
    assert "at step 4" in resumed.stderr


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(sample_shards, tmp_path):
    with small_disk(tmp_path / "disk", 32 * 1024) as disk:
        proc = start_training(sample_shards, tmp_path, f"train.output_dir={disk / 'run'}",
                              "train.stage=edge", "train.steps=6", "train.ckpt_every=2",
                              "train.val_every=100", "train.ckpt_limit=1")
        first = disk / "run" / "checkpoints" / "checkpoint-00000002"
        wait_for(first.exists, proc)
        size = sum(p.stat().st_size for p in first.rglob("*") if p.is_file())
        with open(disk / "filler", "wb") as fh:  # something else fills the disk
            os.posix_fallocate(fh.fileno(), 0, shutil.disk_usage(disk).free - size // 2)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert "no space left on device writing checkpoint-00000004" in last, err[-3000:]
        assert "kept: checkpoint-00000002" in last and "iostream" not in err
        checkpoint.verify(first)  # the previous checkpoint is whole
        assert not list((disk / "run" / "checkpoints").glob(".tmp-*"))
