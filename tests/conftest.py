"""Shared fixtures: sample shards made once per session, tiny training runs, an MLflow server."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helper modules (mlflow_server, ...)

from mlflow_server import mlflow_server  # noqa: E402,F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TINY = str(REPO / "configs" / "experiment" / "tiny.yaml")


@pytest.fixture(scope="session")
def sample_shards(tmp_path_factory) -> Path:
    """The bundled real-photo sample set at 32 px: train/, test/, masks/ shard folders."""
    out = tmp_path_factory.mktemp("shards") / "sample"
    subprocess.run([PYTHON, str(REPO / "pipeline" / "shard.py"), "sample", "--out", str(out),
                    "--size", "32"], check=True, capture_output=True, text=True)
    return out


def tiny_overrides(shards: Path, out: Path, **extra) -> list[str]:
    """key=value list for a tiny CPU run writing into `out` with its own sqlite MLflow store."""
    values = {
        "data.train": shards / "train", "data.val": shards / "test", "data.masks": shards / "masks",
        "train.output_dir": out / "run", "tracking.uri": f"sqlite:///{out / 'mlflow.db'}",
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def reset_accelerate() -> None:
    """Accelerate keeps process-wide state; in-process runs start from a clean slate."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture
def fresh_accelerate():
    reset_accelerate()
    yield
    reset_accelerate()
