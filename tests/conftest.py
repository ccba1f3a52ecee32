"""Shared fixtures: sample shards made once per session, tiny training runs, an MLflow server."""
from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
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


@functools.cache
def migrated_mlflow_db() -> Path:
    """An empty MLflow sqlite store with its schema created (that takes ~6 s; a copy is instant)."""
    import mlflow

    path = Path(tempfile.mkdtemp(prefix="dina-mlflow-template-")) / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def tiny_overrides(shards: Path, out: Path, **extra) -> list[str]:
    """key=value list for a tiny CPU run writing into `out` with its own sqlite MLflow store."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "mlflow.db").exists():
        shutil.copy(migrated_mlflow_db(), out / "mlflow.db")
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
