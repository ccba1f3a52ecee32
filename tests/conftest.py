"""Shared fixtures: sample shards made once per session, an MLflow server, a clean Accelerate."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_cli
from tests.helpers.mlflow_server import mlflow_server  # noqa: F401  (fixture)
from tests.helpers.training import reset_accelerate


@pytest.fixture(scope="session")
def sample_shards(tmp_path_factory) -> Path:
    """The bundled real-photo sample set at 32 px: train/, test/, masks/ shard folders."""
    out = tmp_path_factory.mktemp("shards") / "sample"
    run_cli("shard.py", "sample", "--out", out, "--size", 32, check=True)
    return out


@pytest.fixture
def fresh_accelerate():
    reset_accelerate()
    yield
    reset_accelerate()
