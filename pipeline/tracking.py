"""MLflow tracking that never stalls training.

Only the main process logs. Calls return at once: metrics, tags and artifacts go into a bounded
buffer that a background thread sends to MLflow. If the tracking server is unreachable (at start
or mid-run) training goes on; the thread retries with backoff and flushes when the server is back.
What cannot be sent (buffer overflow, or still unreachable at the end) is appended to
`<output_dir>/tracking-fallback.jsonl`, and a message says so.

One run per training job: a resumed run continues the MLflow run recorded in its checkpoint, and a
requeued SLURM job finds its run by the `slurm_job_id` tag.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Optional

import numpy as np
from omegaconf import DictConfig

from pipeline.config import flatten, to_yaml

log = logging.getLogger("dina.tracking")

BUFFER_LIMIT = 50_000  # metric values held while the server is away
FLUSH_INTERVAL_S = 2.0
CLOSE_TIMEOUT_S = 30.0


def default_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(cfg: DictConfig) -> dict[str, str]:
    tags = {"stage": cfg.train.stage, "dataset": cfg.data.name, "git_commit": git_commit(),
            "attention_backend": cfg.model.attention.backend}
    if os.environ.get("SLURM_JOB_ID"):
        # array tasks share SLURM_JOB_ID's parent; the task id keeps their runs apart
        job = os.environ["SLURM_JOB_ID"]
        if os.environ.get("SLURM_ARRAY_TASK_ID"):
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        tags["slurm_job_id"] = job
    return tags


class Tracker:
    """Non-blocking MLflow logger; a no-op on non-main processes or with tracking disabled."""

    def __init__(self, cfg: DictConfig, is_main: bool, resume_run_id: Optional[str] = None,
                 extra_tags: Optional[dict] = None):
        self.enabled = bool(is_main and cfg.tracking.enabled)
        self.run_id: Optional[str] = None
        self.uri = cfg.tracking.uri or default_uri()
        if not self.enabled:
            return
        # fail fast inside the thread and retry there, instead of MLflow's minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self._client = None  # made on first use: creating a store can fail like any call
        self._cfg = cfg
        self._tags = {**run_tags(cfg), **(extra_tags or {})}
        self._resume_run_id = resume_run_id
        self._metrics: deque = deque()
        self._tag_queue: dict[str, str] = {}
        self._artifacts: list[tuple[str, Optional[str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failures = 0
        self.dropped = 0
        self.fallback = Path(cfg.train.output_dir) / "tracking-fallback.jsonl"
        self._staging = Path(cfg.train.output_dir) / "tracking"
        self._staging.mkdir(parents=True, exist_ok=True)
        try:
            self._open_run()
            log.info("MLflow run %s at %s", self.run_id, self.uri)
        except Exception as err:  # any transport or server error: keep training
            self._note_failure(err)
        self._thread = threading.Thread(target=self._worker, name="mlflow-tracker", daemon=True)
        self._thread.start()

    # ---- public API (returns immediately) --------------------------------------------------

    def log_metrics(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._lock:
            for key, value in metrics.items():
                self._metrics.append(Metric(key, float(value), now, step))
            while len(self._metrics) > BUFFER_LIMIT:
                self._spill([self._metrics.popleft()])

    def set_tags(self, tags: dict) -> None:
        if self.enabled:
            with self._lock:
                self._tag_queue.update({k: str(v) for k, v in tags.items()})

    def log_file(self, path: Path, artifact_path: Optional[str] = None) -> None:
        if self.enabled:
            with self._lock:
                self._artifacts.append((str(path), artifact_path))

    def log_image(self, image: np.ndarray, name: str, artifact_path: Optional[str] = None) -> None:
        if self.enabled:
            from PIL import Image

            path = self._staging / name
            Image.fromarray(image).save(path)
            self.log_file(path, artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        """Flush, end the run, and spill anything left to the fallback file. A server that is
        away at the end gets up to CLOSE_TIMEOUT_S to come back (a restart takes ~10 s)."""
        if not self.enabled:
            return
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        self._stop.set()
        self._thread.join(CLOSE_TIMEOUT_S)
        while True:
            try:
                self._flush()
                if self.run_id:
                    self._client.set_terminated(self.run_id, status)
                break
            except Exception as err:
                self._note_failure(err)
            if time.monotonic() > deadline:
                break
            time.sleep(FLUSH_INTERVAL_S)
        with self._lock:
            left = list(self._metrics)
            self._metrics.clear()
        if left:
            self._spill(left)
        if self.dropped:
            log.warning("MLflow: %d metric values could not be sent; they are in %s",
                        self.dropped, self.fallback)

    # ---- background side ---------------------------------------------------------------

    def _open_run(self) -> None:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.uri)
        client = self._client
        experiment = client.get_experiment_by_name(self._cfg.tracking.experiment)
        experiment_id = (experiment.experiment_id if experiment
                         else client.create_experiment(self._cfg.tracking.experiment))
        run_id = self._resume_run_id or self._find_slurm_run(experiment_id)
        if run_id:
            client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return
        run = client.create_run(experiment_id, run_name=self._cfg.tracking.run_name,
                                tags=self._tags)
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in flatten(self._cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run.info.run_id, params=params[i:i + 100])
        config_path = self._staging / "config.yaml"
        config_path.write_text(to_yaml(self._cfg))
        client.log_artifact(run.info.run_id, str(config_path))
        self.run_id = run.info.run_id

    def _find_slurm_run(self, experiment_id: str) -> Optional[str]:
        job = self._tags.get("slurm_job_id")
        if not job:
            return None
        runs = self._client.search_runs(
            [experiment_id],
            f"tags.slurm_job_id = '{job}' and tags.stage = '{self._cfg.train.stage}'",
            max_results=1)
        return runs[0].info.run_id if runs else None

    def _flush(self) -> None:
        if self.run_id is None:
            self._open_run()
        from mlflow.entities import RunTag

        with self._lock:
            metrics = [self._metrics.popleft() for _ in range(min(len(self._metrics), 1000))]
            tags, self._tag_queue = self._tag_queue, {}
            artifacts, self._artifacts = self._artifacts, []
        try:
            if metrics or tags:
                self._client.log_batch(self.run_id, metrics=metrics,
                                       tags=[RunTag(k, v) for k, v in tags.items()])
                metrics, tags = [], {}
            while artifacts:
                local, artifact_path = artifacts[0]
                self._client.log_artifact(self.run_id, local, artifact_path)
                artifacts.pop(0)
        finally:  # whatever was not sent goes back to the front of the queues
            with self._lock:
                self._metrics.extendleft(reversed(metrics))
                self._tag_queue = {**tags, **self._tag_queue}
                self._artifacts = artifacts + self._artifacts
        if self._failures:
            log.info("MLflow reachable again at %s; buffered metrics sent", self.uri)
            self._failures = 0

    def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                self._flush()
                pending = len(self._metrics)
            except Exception as err:
                self._note_failure(err)
                pending = 0
            delay = 0 if pending else min(FLUSH_INTERVAL_S * 2 ** self._failures, 30.0)
            self._stop.wait(delay)

    def _note_failure(self, err: Exception) -> None:
        if self._failures == 0:
            log.warning("MLflow unreachable at %s (%s: %s); training continues, metrics are "
                        "buffered and retried (overflow goes to %s)", self.uri,
                        type(err).__name__, str(err).splitlines()[0][:200], self.fallback)
        self._failures = min(self._failures + 1, 4)

    def _spill(self, metrics: list) -> None:
        self.fallback.parent.mkdir(parents=True, exist_ok=True)
        with self.fallback.open("a") as fh:
            for m in metrics:
                fh.write(json.dumps({"run_id": self.run_id, "key": m.key, "value": m.value,
                                     "step": m.step, "timestamp": m.timestamp}) + "\n")
        self.dropped += len(metrics)
