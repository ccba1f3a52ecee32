"""MLflow tracking that never stalls training.

Only the main process logs. Calls return at once: what they log is sent by a background thread
(`sender.Sender`), so a tracking server that is unreachable at start or mid-run costs training
nothing, and what cannot be sent ends up in `<output_dir>/tracking-fallback.jsonl`.

One run per training job: a resumed run continues the MLflow run recorded in its checkpoint, and a
requeued SLURM job finds its run by the `slurm_job_id` tag (`run_records`).

What a run holds besides metrics: a name that says what it trains, MLflow's source tags (script,
git commit), its train/val/mask shards as dataset inputs, config.yaml, a checkpoints.json table
of every checkpoint saved (`checkpoint_table`), system metrics (CPU/GPU, memory), and at the end
of a finished run the last checkpoint's generators as its logged model (`logged_model`).
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
from omegaconf import DictConfig

from pipeline.tracking.checkpoint_table import CHECKPOINT_TABLE, LOGGED_TABLE, CheckpointTable
from pipeline.tracking.run_records import open_training_run
from pipeline.tracking.runs import default_run_name, default_uri, run_tags
from pipeline.tracking.sender import Sender
from pipeline.tracking.server import limit_mlflow_http

log = logging.getLogger("dina.tracking")


class Tracker:
    """Non-blocking MLflow logger; a no-op on non-main processes or with tracking disabled."""

    def __init__(self, cfg: DictConfig, is_main: bool, backend: str,
                 resume_run_id: Optional[str] = None):
        self.enabled = bool(is_main and cfg.tracking.enabled)
        self.uri = cfg.tracking.uri or default_uri()
        self._sender: Optional[Sender] = None
        if not self.enabled:
            return
        # fail fast inside the thread and retry there, instead of MLflow's minutes of retries
        limit_mlflow_http()
        self._cfg = cfg
        self._system_metrics = None  # MLflow's monitor, started once the run exists
        self._staging = Path(cfg.train.output_dir) / "tracking"
        self._staging.mkdir(parents=True, exist_ok=True)
        self._checkpoints = CheckpointTable(self._staging / CHECKPOINT_TABLE,
                                            continued=resume_run_id is not None)
        self._final_checkpoint: Optional[Path] = None
        open_run = partial(self._open_run, cfg.tracking.run_name or default_run_name(cfg, backend),
                           run_tags(cfg, backend), resume_run_id)
        self._sender = Sender(self.uri, Path(cfg.train.output_dir) / "tracking-fallback.jsonl",
                              open_run, on_reconnect=self._restart_system_metrics)

    @property
    def run_id(self) -> Optional[str]:
        return self._sender.run_id if self._sender else None

    @property
    def dropped(self) -> int:
        return self._sender.dropped if self._sender else 0

    def log_metrics(self, metrics: dict, step: int) -> None:
        if self.enabled:
            self._sender.log_metrics(metrics, step)

    def set_tags(self, tags: dict) -> None:
        if self.enabled:
            self._sender.set_tags(tags)

    def log_file(self, path: Path, artifact_path: Optional[str] = None) -> None:
        if self.enabled:
            self._sender.log_file(path, artifact_path)

    def log_image(self, image: np.ndarray, name: str, artifact_path: Optional[str] = None) -> None:
        if self.enabled:
            from PIL import Image

            path = self._staging / name
            Image.fromarray(image).save(path)
            self.log_file(path, artifact_path)

    def record_checkpoint(self, path: Path, reason: str) -> None:
        """Add a saved checkpoint to the run's checkpoint table; the last one recorded is
        logged as the run's model when the run finishes."""
        if self.enabled:
            self._checkpoints.add(path, reason)
            self._final_checkpoint = path
            self.set_tags({"last_checkpoint": str(path.resolve()),
                           "mlflow.loggedArtifacts": LOGGED_TABLE})
            self.log_file(self._checkpoints.path)

    def close(self, status: str = "FINISHED") -> None:
        """Send what is left, log the model of a finished run, end the run."""
        if not self.enabled:
            return
        if self._system_metrics is not None:
            self._system_metrics.finish()
        self._sender.close(partial(self._end_run, status))

    def _open_run(self, run_name: str, tags: dict, resume_run_id: Optional[str], client) -> str:
        run_id, continued = open_training_run(client, self._cfg, run_name, tags, resume_run_id,
                                              self._staging)
        self._start_system_metrics(run_id, resumed=continued)
        return run_id

    def _end_run(self, status: str) -> None:
        if status == "FINISHED" and self._final_checkpoint is not None:
            path, self._final_checkpoint = self._final_checkpoint, None  # once, even on retry
            if self._cfg.tracking.log_model:
                # imported here: defining the MLflow model class costs every run start a warning
                from pipeline.tracking.logged_model import log_run_model

                log_run_model(path, self.uri, self.run_id)
        if self.run_id:
            self._sender.client.set_terminated(self.run_id, status)

    def _start_system_metrics(self, run_id: str, resumed: bool) -> None:
        """CPU, memory, disk, network and (with pynvml) GPU use as system/* metrics."""
        if not self._cfg.tracking.system_metrics:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._system_metrics = SystemMetricsMonitor(
            run_id, sampling_interval=self._cfg.tracking.system_metrics_interval,
            resume_logging=resumed, tracking_uri=self.uri)
        self._system_metrics.start()

    def _restart_system_metrics(self) -> None:
        # MLflow's monitor gives up when the server is away: start a fresh one
        if self._system_metrics is not None:
            self._system_metrics.finish()
            self._start_system_metrics(self.run_id, resumed=True)
