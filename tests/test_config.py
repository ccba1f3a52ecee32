
import pytest

from pipeline.config import ConfigError, flatten, load_config, split_args
from tests.helpers import TINY, run_cli


def test_defaults_are_the_papers():
    cfg = load_config()
    assert cfg.model.blocks == 8 and cfg.model.attention.kernel_size == 7
    assert cfg.optim.g_lr == 1e-4 and cfg.optim.d_lr == 1e-5
    assert cfg.loss.style == 250 and cfg.loss.perceptual == 0.1 and cfg.loss.feature_matching == 10


def test_files_then_overrides_merge_in_order(tmp_path):
    extra = tmp_path / "more.yaml"
    extra.write_text("train:\n  steps: 7\n  seed: 1\n")
    cfg = load_config([TINY, str(extra)], ["train.seed=3"])
    assert (cfg.train.steps, cfg.train.seed, cfg.model.channels) == (7, 3, 8)
    assert flatten(cfg)["train.steps"] == "7"


@pytest.mark.parametrize("override, key", [
    (["train.stepz=3"], "train.stepz"),
    (["train.steps=abc"], "train.steps"),
    (["train.stage=paint"], "train.stage"),
    (["model.attention.backend=cuda"], "model.attention.backend"),
    (["model.attention.heads=7"], "model.attention.heads"),
    (["model.attention.dilations=[1,2,3]"], "model.attention.dilations"),
    (["data.image_size=64", "model.attention.dilations=[1,20,1,2,1,2,1,2]"],
     "model.attention.dilations"),
    (["train.stage=edge-texture"], "train.edge_checkpoint"),
    (["model.attention.backend=natten"], "model.attention.bias"),
    (["data.num_workers=-1"], "data.num_workers"),
    (["model.channels=0"], "model.channels"),
    (["optim.betas=[2,3]"], "optim.betas"),
    (["optim.betas=[0.9]"], "optim.betas"),
    (["data.max_bad_samples=0"], "data.max_bad_samples"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config([], override)


def test_bad_yaml_key_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*optim\.lr"):
        load_config([str(bad)])
    with pytest.raises(ConfigError, match="not found"):
        load_config([str(tmp_path / "missing.yaml")])


def test_split_args():
    assert split_args(["a.yaml", "x.y=1", "b.yaml"]) == (["a.yaml", "b.yaml"], ["x.y=1"])


def test_train_cli_rejects_bad_key_before_training():
    out = run_cli("train.py", TINY, "optim.g_lrr=1", timeout=120)
    assert out.returncode == 2
    assert "optim.g_lrr" in out.stderr

