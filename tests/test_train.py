"""Training on CPU with the tiny preset: every stage, checkpoints, resume, set-up errors."""
from __future__ import annotations

import json
import shutil

import mlflow
import pytest

from pipeline.evaluation.inference import load_generators
from pipeline.training import checkpoint
from pipeline.training.trainer import run
from tests.helpers import TINY
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.training import (assert_identical, final_tensors, reset_accelerate,
                                    tiny_overrides, train_cli)


def test_stages_chain_edge_texture_joint(sample_shards, tmp_path, fresh_accelerate):
    edge = run([TINY], tiny_overrides(sample_shards, tmp_path / "edge", **{"train.stage": "edge"}))
    assert edge["exit_code"] == 0 and edge["step"] == 4
    edge_dir = edge["output_dir"]
    results = {}
    for stage in ("texture", "edge-texture", "joint"):
        reset_accelerate()
        overrides = {"train.stage": stage, "train.edge_checkpoint": edge_dir}
        if stage == "joint":
            overrides["train.texture_checkpoint"] = results["texture"]["output_dir"]
        results[stage] = run([TINY], tiny_overrides(sample_shards, tmp_path / stage, **overrides))
        assert results[stage]["exit_code"] == 0
        cfg, g1, g2 = load_generators(results[stage]["output_dir"])
        assert g1 is not None and g2 is not None, f"{stage} checkpoint must hold both generators"
        assert cfg.train.stage == stage
    meta = json.loads((checkpoint.find_latest(edge_dir) / "meta.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'edge' / 'mlflow.db'}")
    run_info = client.get_run(meta["mlflow_run_id"])
    assert run_info.data.tags["stage"] == "edge"
    assert "edge/g" in run_info.data.metrics and "train/samples_per_s" in run_info.data.metrics
    # whether D1 tells real from fake at all: its accuracy on each side
    assert {"edge/d_real_acc", "edge/d_fake_acc"} <= run_info.data.metrics.keys()
    # G1's edges in the held-out holes, beside the edges of a G1 that learned nothing
    edge_keys = [f"val/{p}edge_{k}" for p in ("", "pull_push_canny/")
                 for k in ("precision", "recall", "f1")]
    assert all(0 <= run_info.data.metrics[k] <= 1 for k in edge_keys)
    texture_run = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'texture' / 'mlflow.db'}").get_run(
        results["texture"]["run_id"])
    assert "val/psnr/overall" in texture_run.data.metrics
    assert {"texture/d_real_acc", "texture/d_fake_acc"} <= texture_run.data.metrics.keys()
    assert "val_raw/psnr/overall" in texture_run.data.metrics  # EMA on: raw weights scored too


def test_checkpoint_limit_and_config_saved(sample_shards, tmp_path, fresh_accelerate):
    result = run([TINY], tiny_overrides(sample_shards, tmp_path, **{
        "train.stage": "edge", "train.steps": 5, "train.ckpt_every": 1, "train.ckpt_limit": 2}))
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["checkpoint-00000004", "checkpoint-00000005"]
    saved = (tmp_path / "run" / "checkpoints" / names[-1] / "config.yaml").read_text()
    assert "stage: edge" in saved and result["step"] == 5


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(sample_shards, tmp_path):
    """texture stage, 6 steps straight vs 3 steps + resume: bit-identical weights."""
    common = ["train.steps=6", "train.ckpt_every=3"]
    train_cli(sample_shards, tmp_path / "straight", *common)
    # the same 6-step run, cut after its step-3 checkpoint (as a crash right after it would),
    # then resumed from there
    train_cli(sample_shards, tmp_path / "resumed", *common)
    shutil.rmtree(tmp_path / "resumed" / "run" / "checkpoints" / "checkpoint-00000006")
    train_cli(sample_shards, tmp_path / "resumed", *common, "train.resume=latest")
    straight = final_tensors(tmp_path / "straight" / "run")
    assert_identical(straight, final_tensors(tmp_path / "resumed" / "run"))
    # the default train.ema is on: the EMA is compared too, and it is an average, not a copy
    ema = {k: v for k, v in straight.items() if k.startswith("generators.safetensors:g2_ema.")}
    assert ema and any(not v.equal(straight[k.replace("g2_ema.", "g2.")]) for k, v in ema.items())


def test_missing_vgg_weights_stop_before_training(sample_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    proc = train_cli(sample_shards, tmp_path, "loss.vgg_weights=''", check=False)
    assert proc.returncode == 2
    for needle in ("vgg19-dcbb9e9d.pth", "loss.vgg_weights", "random"):
        assert needle in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bf16_with_gradient_accumulation_and_clipping(sample_shards, tmp_path, fresh_accelerate):
    result = run([TINY], tiny_overrides(sample_shards, tmp_path, **{
        "train.stage": "texture", "train.steps": 2, "train.mixed_precision": "bf16",
        "train.grad_accum": 2, "train.grad_clip": 1.0}))
    assert result["exit_code"] == 0 and result["step"] == 2
    params = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(
        result["run_id"]).data.params
    assert params["train.mixed_precision"] == "bf16" and params["train.grad_accum"] == "2"


@pytest.mark.parametrize("overrides, message", [
    (["data.train=/nonexistent/shards"], "no shards match"),
    (["train.stage=edge-texture", "train.edge_checkpoint=/nonexistent/run"], "cannot load g1"),
])
def test_bad_inputs_fail_before_training_with_a_message(sample_shards, tmp_path, overrides,
                                                        message):
    proc = train_cli(sample_shards, tmp_path, *overrides, check=False)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_edge_checkpoint_of_another_model_shape_is_refused(sample_shards, tmp_path):
    edge = make_checkpoint(tmp_path / "edge", stage="edge", generators=("g1",))
    proc = train_cli(sample_shards, tmp_path, "train.stage=texture",
                     f"train.edge_checkpoint={edge}", "model.upsample=resize",
                     check=False)  # the edge run had transposed convs
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"cannot load g1 from {edge}" in proc.stderr
    assert "other model.* settings" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_incomplete_shard_sets_are_refused_naming_what_is_missing(sample_shards, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(sample_shards / "train", partial)
    (partial / "index.json").unlink()  # tars without the index shard.py writes last
    proc = train_cli(sample_shards, tmp_path, f"data.train={partial}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{partial} holds shard.py shards but no index.json" in proc.stderr
    pattern = str(sample_shards / "train" / "shard-{000000..000009}.tar")
    proc = train_cli(sample_shards, tmp_path, f"data.train={pattern}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "8 of 10 shards" in proc.stderr and "shard-000002.tar" in proc.stderr
