"""Real 2-process DDP on CPU (gloo) through `accelerate launch`."""
from __future__ import annotations

import json

import pytest

from tests.helpers import REPO
from tests.helpers.training import harness, only_run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stage, accelerate_config", [
    ("edge", None),  # accelerate launch --multi_gpu --num_processes 2 ...
    ("texture", str(REPO / "configs" / "accelerate" / "cpu_ddp.yaml")),  # the README's way
])
def test_two_ranks_end_identical_with_one_mlflow_run(sample_shards, tmp_path, stage,
                                                     accelerate_config):
    proc = harness(sample_shards, tmp_path, "--digest-dir", str(tmp_path / "digests"),
                   f"train.stage={stage}", "train.steps=3", nprocs=2,
                   accelerate_config=accelerate_config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stderr
    ranks = [json.loads((tmp_path / "digests" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and len(ranks[0]) == 2  # G and D of the stage
    emas = [json.loads((tmp_path / "digests" / f"rank{r}-ema.json").read_text()) for r in (0, 1)]
    assert emas[0] == emas[1] and len(emas[0]) == 1  # the EMA of the stage's generator
    client, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.data.tags["num_processes"] == "2" and run.data.tags["stage"] == stage
