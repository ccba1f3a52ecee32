"""The table of every checkpoint a run saved, kept beside the run and logged as an MLflow table.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pipeline.training.checkpoint import GENERATORS

CHECKPOINT_TABLE = "checkpoints.json"


# tells the MLflow UI that the artifact is a table (what mlflow.log_table records)
LOGGED_TABLE = json.dumps([{"path": CHECKPOINT_TABLE, "type": "table"}])


class CheckpointTable:
    """Every checkpoint a run saved: step, path, sha256 of its generators, reason, and whether
    it is still kept on disk; MLflow's table layout ({"columns", "data"}), one row each."""

    COLUMNS = ["step", "path", "generators_sha256", "reason", "saved_at", "kept"]

    def __init__(self, path: Path, continued: bool):
        self.path = path
        self.rows: list[list] = []
        if continued and path.is_file():  # a resumed run keeps the rows it wrote before
            self.rows = json.loads(path.read_text())["data"]

    def add(self, checkpoint: Path, reason: str) -> None:
        meta = json.loads((checkpoint / "meta.json").read_text())
        sha = meta["files"][GENERATORS]["sha256"]
        self.rows = [r for r in self.rows if r[1] != str(checkpoint.resolve())]  # a re-save
        self.rows.append([meta["step"], str(checkpoint.resolve()), sha, reason,
                          time.strftime("%Y-%m-%dT%H:%M:%S%z"), True])
        for row in self.rows:
            row[5] = Path(row[1]).is_dir()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"columns": self.COLUMNS, "data": self.rows}, indent=1))
        os.replace(tmp, self.path)
