"""The generators' weight EMA: its arithmetic, its place in a checkpoint, and the weights
inference picks (EMA by default, raw with --raw-weights, through the real CLIs)."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torch import nn

from pipeline.config import ConfigError, load_config
from pipeline.evaluation.inference import load_model
from pipeline.training.checkpoint import generator_states
from pipeline.training.ema import GeneratorEMA
from tests.helpers import TINY, run_cli
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.training import harness


def test_update_follows_the_hand_computed_average():
    net = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0]]))
        net[0].bias.fill_(0.5)
    ema = GeneratorEMA({"g": net}, decay=0.9)
    steps = {1: 2.0, 2: -1.0, 500: 4.0}  # step -> a new value of every weight
    with torch.no_grad():
        net[1].running_mean.fill_(7.0)  # buffers follow the live net, not its average
        for step, value in steps.items():
            for p in net.parameters():
                p.fill_(value)
            ema.update(step)
    # decays: step 1 min(0.9, 2/11), step 2 min(0.9, 3/12) = 0.25, step 500: 0.9
    w1, b1 = (2 / 11) * 1.0 + (9 / 11) * 2.0, (2 / 11) * 0.5 + (9 / 11) * 2.0
    w1b = (2 / 11) * -2.0 + (9 / 11) * 2.0
    expect = [0.25 * x + 0.75 * -1.0 for x in (w1, w1b, b1)]
    expect = [0.9 * x + 0.1 * 4.0 for x in expect]
    got = ema.models["g"][0]
    assert torch.allclose(got.weight, torch.tensor([expect[:2]]), atol=1e-6)
    assert torch.allclose(got.bias, torch.tensor([expect[2]]), atol=1e-6)
    assert float(ema.models["g"][1].running_mean) == 7.0
    assert not any(p.requires_grad for p in ema.models["g"].parameters())


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_a_decay_outside_0_1_is_named(value):
    with pytest.raises(ConfigError, match="train.ema"):
        load_config([TINY], [f"train.ema={value}"])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """With EMA (raw = seed 0, EMA = seed 1), and the two weight sets as plain checkpoints."""
    root = tmp_path_factory.mktemp("ema")
    return {"ema": make_checkpoint(root / "ema", seed=0, ema_seed=1),
            "raw": make_checkpoint(root / "raw", seed=0),
            "avg": make_checkpoint(root / "avg", seed=1)}


def test_load_model_picks_the_ema_unless_raw_weights(checkpoints):
    states = generator_states(checkpoints["ema"])
    assert {"g1", "g2", "g1_ema", "g2_ema"} <= states.keys()
    assert load_model(str(checkpoints["raw"]), None, "cpu")[2]["weights"] == "raw"
    for raw, suffix in ((False, "_ema"), (True, "")):
        g1, g2, info = load_model(str(checkpoints["ema"]), None, "cpu", raw_weights=raw)
        assert info["weights"] == ("raw" if raw else "ema")
        for name, net in (("g1", g1), ("g2", g2)):
            saved = states[name + suffix]
            assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items()), name


def _cli(script: str, *args: str) -> subprocess.CompletedProcess:
    return run_cli(script, *args, check=True)


@pytest.mark.slow
def test_inpaint_uses_the_ema_by_default_and_raw_with_the_flag(checkpoints, tmp_path):
    photo = data.astronaut()[:64, :64]
    hole = np.zeros(photo.shape[:2], np.uint8)
    hole[16:40, 20:48] = 255
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(hole).save(tmp_path / "mask.png")

    def inpainted(name: str, *flags: str) -> np.ndarray:
        out = tmp_path / f"{name}{''.join(flags)}.png"
        _cli("inpaint.py", "--checkpoint", str(checkpoints[name]), "--image",
             str(tmp_path / "photo.png"), "--mask", str(tmp_path / "mask.png"), "--out", str(out),
             *flags)
        return np.asarray(Image.open(out))

    default, raw = inpainted("ema"), inpainted("ema", "--raw-weights")
    assert not np.array_equal(default, raw)
    assert np.array_equal(default, inpainted("avg"))
    assert np.array_equal(raw, inpainted("raw"))


@pytest.mark.slow
def test_evaluate_uses_the_ema_by_default_and_raw_with_the_flag(checkpoints, sample_shards,
                                                                tmp_path):
    def metrics(name: str, *flags: str) -> dict:
        out = tmp_path / f"{name}{''.join(flags)}"
        _cli("evaluate.py", "--checkpoint", str(checkpoints[name]), "--images",
             str(sample_shards / "test"), "--masks", str(sample_shards / "masks"),
             "--per-bucket", "1", "--out", str(out), "--no-mlflow", *flags)
        return json.loads((out / "metrics.json").read_text())

    default, raw = metrics("ema"), metrics("ema", "--raw-weights")
    assert default != raw
    assert default == metrics("avg")
    assert raw == metrics("raw")


@pytest.mark.slow
def test_skipped_steps_leave_the_ema_as_it_was(sample_shards, tmp_path):
    """Steps 3-5 non-finite: the checkpoint written at the stop (step 2) holds the EMA of an
    unpoisoned run's step 2, not one pulled further towards the unchanged weights."""
    stopped = harness(sample_shards, tmp_path / "stopped", "--poison-steps", "3,4,5",
                      "train.steps=10", "train.max_bad_steps=3", "train.ckpt_every=100")
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    # the same 10-step schedule (Ranger21's depends on train.steps), with a step-2 checkpoint
    straight = harness(sample_shards, tmp_path / "straight", "train.steps=10",
                       "train.ckpt_every=2", "train.ckpt_limit=5")
    assert straight.returncode == 0, straight.stderr[-3000:]
    name = "run/checkpoints/checkpoint-00000002"
    got, want = (generator_states(tmp_path / run / name) for run in ("stopped", "straight"))
    assert "g2_ema" in want
    for net in want:
        assert all(torch.equal(v, got[net][k]) for k, v in want[net].items()), net
