"""A real MLflow tracking server on loopback for tests, started and stopped by ops/mlflow/*.sh.

Use the session fixture (tests/conftest.py imports it: `from mlflow_server import mlflow_server`):

    def test_x(mlflow_server):          # mlflow_server is the URI, e.g. http://127.0.0.1:PORT
        client = mlflow.MlflowClient(mlflow_server)

or `start_server(directory)` / `stop_server(directory)` where a test needs its own server (one
it kills or restarts).
"""
from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import REPO

START, STOP = REPO / "ops" / "mlflow" / "start.sh", REPO / "ops" / "mlflow" / "stop.sh"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(directory: Path, port: int | None = None, timeout_s: int = 90) -> str:
    """Start a server storing into `directory`; returns its tracking URI once /health answers."""
    result = subprocess.run(
        [str(START), "--dir", str(directory), "--port", str(port or free_port()),
         "--timeout", str(timeout_s)],
        capture_output=True, text=True, timeout=timeout_s + 30)
    if result.returncode != 0:
        raise RuntimeError(f"ops/mlflow/start.sh failed:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


def stop_server(directory: Path) -> None:
    subprocess.run([str(STOP), "--dir", str(directory)], capture_output=True, text=True,
                   timeout=60, check=True)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of an MLflow server (sqlite + served artifacts) shared by the whole test session."""
    directory = tmp_path_factory.mktemp("mlflow-server")
    uri = start_server(directory)
    try:
        yield uri
    finally:
        stop_server(directory)
