"""train.py and the inference loader facing Ctrl-C, odd lock files, old checkpoints and changed
settings on resume (issue 22: #7, #13, #14, #16, #20), with real training processes."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import PYTHON, TINY
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.training import TRAIN, checkpoint_steps, tiny_overrides, train_cli

pytestmark = pytest.mark.slow

QUICK = ["train.stage=edge", "train.steps=2", "train.val_every=100"]


def _start(shards, out, *extra) -> subprocess.Popen:
    # its own session: Ctrl-C goes to the whole group, data workers too, as from a terminal
    return subprocess.Popen([PYTHON, TRAIN, TINY, *tiny_overrides(shards, out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


class Lines:
    """A process's stderr lines as they come (read on a thread)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        self.thread = threading.Thread(target=lambda: self.lines.extend(proc.stderr), daemon=True)
        self.thread.start()

    def wait_for(self, text: str, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            assert self.proc.poll() is None, "".join(self.lines)[-3000:]
            assert time.monotonic() < end, "timed out waiting for " + text
            time.sleep(0.01)

    def all(self, timeout: float = 180) -> str:
        self.proc.wait(timeout=timeout)
        self.thread.join(timeout=30)
        return "".join(self.lines)


def test_ctrl_c_checkpoints_and_stops_like_sigterm(sample_shards, tmp_path):
    """#13: one Ctrl-C: a checkpoint at the next step, exit for requeue, no traceback."""
    proc = _start(sample_shards, tmp_path, "train.stage=edge", "train.steps=500",
                  "train.ckpt_every=1000", "train.val_every=1000", "train.log_every=1")
    lines = Lines(proc)
    lines.wait_for("stage edge |")  # in the step loop
    os.killpg(proc.pid, signal.SIGINT)
    err = lines.all()
    assert proc.returncode == 124, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert "SIGINT received" in err
    (step,) = checkpoint_steps(tmp_path)
    meta = json.loads((tmp_path / "run" / "checkpoints" / f"checkpoint-{step:08d}" /
                       "meta.json").read_text())
    assert meta["reason"] == "signal"


def test_ctrl_c_twice_exits_at_once_without_a_traceback(sample_shards, tmp_path):
    proc = _start(sample_shards, tmp_path, "train.stage=edge", "train.steps=500",
                  "train.ckpt_every=1000", "train.val_every=1000")
    lines = Lines(proc)
    lines.wait_for("stage edge |")  # in the step loop
    os.killpg(proc.pid, signal.SIGINT)
    lines.wait_for("SIGINT received")  # handled: a second press now is a second signal
    os.killpg(proc.pid, signal.SIGINT)
    err = lines.all()
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "second signal SIGINT" in err
    assert "Traceback" not in err, err[-3000:]


@pytest.mark.parametrize("content", ["[1]", '"hi"', '{"pid": null}'])
def test_a_lock_file_naming_no_owner_is_taken_over_by_train(sample_shards, tmp_path, content):
    """#7 through the CLI: taken over with a message, no traceback."""
    (tmp_path / "run").mkdir(parents=True)
    (tmp_path / "run" / ".owner.json").write_text(content)
    proc = train_cli(sample_shards, tmp_path, *QUICK)
    assert "taking over" in proc.stderr and "Traceback" not in proc.stderr


def test_a_directory_in_place_of_the_lock_is_refused_in_one_line(sample_shards, tmp_path):
    (tmp_path / "run" / ".owner.json").mkdir(parents=True)
    proc = train_cli(sample_shards, tmp_path, *QUICK, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"{tmp_path / 'run' / '.owner.json'} is not a lock file" in proc.stderr


def _as_saved_before_the_model_keys(checkpoint: Path) -> None:
    """Rewrite a checkpoint's config.yaml as one from before model.hole_mask_channel, upsample
    and coarse_fill existed, with meta.json's record of it updated to match."""
    config = yaml.safe_load((checkpoint / "config.yaml").read_text())
    for key in ("hole_mask_channel", "upsample", "coarse_fill"):
        config["model"].pop(key)
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(config))
    meta = json.loads((checkpoint / "meta.json").read_text())
    data = (checkpoint / "config.yaml").read_bytes()
    meta["files"]["config.yaml"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "meta.json").write_text(json.dumps(meta))


def test_an_old_checkpoint_resumes_with_the_legacy_model_settings(sample_shards, tmp_path):
    """#14: refused with the settings that would resume it named, and resumed with them."""
    legacy = ["model.hole_mask_channel=false", "model.upsample=transposed",
              "model.coarse_fill=none"]
    train_cli(sample_shards, tmp_path, "train.stage=edge", "train.steps=1", "train.val_every=100",
              *legacy)
    (checkpoint,) = (tmp_path / "run" / "checkpoints").glob("checkpoint-*")
    _as_saved_before_the_model_keys(checkpoint)
    common = ["train.stage=edge", "train.steps=2", "train.val_every=100", "train.resume=latest"]
    project = ["model.coarse_fill=pull-push", "model.hole_mask_channel=true"]
    refused = train_cli(sample_shards, tmp_path, *common, *project, check=False)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "model.coarse_fill=none (saved before the key existed) (this run: pull-push)" \
        in refused.stderr
    assert "resume with the same model (model.coarse_fill=none model.hole_mask_channel=False)" \
        in refused.stderr
    resumed = train_cli(sample_shards, tmp_path, *common, *legacy)
    assert "at step 1" in resumed.stderr


def test_resuming_with_the_ema_switched_off_says_so_and_tags_the_run(sample_shards, tmp_path):
    """#16."""
    train_cli(sample_shards, tmp_path, *QUICK[:2], "train.steps=1", "train.val_every=100",
              "train.ema=0.999")
    resumed = train_cli(sample_shards, tmp_path, *QUICK, "train.ema=0", "train.resume=latest")
    assert "its EMA weights are dropped" in resumed.stderr
    assert "train.ema: 0.999 -> 0" in resumed.stderr
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert "train.ema: 0.999 -> 0" in run.data.tags["dina.resume_changes"]
    assert run.data.params["train.ema"] == "0.999"  # params are immutable: the tag says more


def test_an_edge_checkpoint_without_g1_is_named_as_given(tmp_path):
    """#20."""
    from pipeline.evaluation.inference import InferenceError, load_model

    texture = make_checkpoint(tmp_path / "texture", stage="texture", generators=("g2",))
    other = make_checkpoint(tmp_path / "other", stage="texture", generators=("g2",))
    with pytest.raises(InferenceError, match=f"--edge-checkpoint {other} holds no edge "):
        load_model(str(texture), str(other), "cpu")
