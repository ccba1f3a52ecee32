"""How runs are told apart: default run names and dataset digests (no server needed)."""
import json
import random
import shutil

from pipeline.config import load_config
from pipeline.tracking.dataset_inputs import dataset_input, describe, spec_name
from pipeline.tracking.runs import default_run_name
from tests.helpers import TINY


def test_run_names_differ_although_random_is_seeded(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cfg = load_config([TINY], ["train.stage=edge"])
    names = set()
    for _ in range(5):
        random.seed(42)  # what the trainer does; MLflow's own names would all be equal
        names.add(default_run_name(cfg, "flex"))
    assert len(names) == 5
    assert all(name.startswith("edge-sample-flex-") for name in names)


def test_run_name_carries_the_slurm_job_and_says_when_attention_is_off(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    cfg = load_config([TINY], ["model.attention.enabled=false"])
    name = default_run_name(cfg, "reference")
    assert name.startswith("texture-sample-no-attention-") and name.endswith("-4242")


def test_digest_follows_the_shard_hashes(sample_shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sample_shards / "train", copy)
    assert describe(str(copy))[0] == describe(str(sample_shards / "train"))[0]
    assert describe(str(copy / "index.json")) == describe(str(copy))
    digest, profile = describe(str(copy))
    assert profile["shards"] >= 1 and profile["samples"] > 0
    index = json.loads((copy / "index.json").read_text())
    index["shards"][0]["sha256"] = "0" * 64  # a re-sharded set: another digest
    (copy / "index.json").write_text(json.dumps(index))
    assert describe(str(copy))[0] != digest


def test_image_folder_digest_and_dataset_entity(tmp_path):
    folder = tmp_path / "paris" / "test"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"12345")
    before = describe(str(folder))
    (folder / "b.png").write_bytes(b"678")
    after = describe(str(folder))
    assert before[0] != after[0] and after[1] == {"files": 2}
    entry = dataset_input(str(folder), spec_name(str(folder)), "evaluation")
    assert entry.dataset.name == "paris-test" and entry.dataset.digest == after[0]
    assert json.loads(entry.dataset.source)["uri"] == str(folder.resolve())
    assert [(t.key, t.value) for t in entry.tags] == [("mlflow.data.context", "evaluation")]
