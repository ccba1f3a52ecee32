"""MLflow tracking that never stalls training.

Only the main process logs. Calls return at once: metrics, tags and artifacts go into a bounded
buffer that a background thread sends to MLflow. If the tracking server is unreachable (at start
or mid-run) training goes on; the thread retries with backoff and flushes when the server is back.
What cannot be sent (buffer overflow, or still unreachable at the end) is appended to
`<output_dir>/tracking-fallback.jsonl`, and a message says so.

One run per training job: a resumed run continues the MLflow run recorded in its checkpoint, and a
requeued SLURM job finds its run by the `slurm_job_id` tag.

What a run holds besides metrics: a name that says what it trains, MLflow's source tags (script,
git commit), its train/val/mask shards as dataset inputs, config.yaml, a checkpoints.json table
of every checkpoint saved, system metrics (CPU/GPU, memory), and at the end of a finished run
the last checkpoint's generators as its logged model (pipeline/logged_model.py).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Optional

import numpy as np
from omegaconf import DictConfig

from pipeline.checkpoint import GENERATORS
from pipeline.config import TrackingConfig, flatten, to_yaml
from pipeline.dataset_inputs import training_inputs

log = logging.getLogger("dina.tracking")

BUFFER_LIMIT = 50_000  # metric values held while the server is away
FLUSH_INTERVAL_S = 2.0
CLOSE_TIMEOUT_S = 30.0
DEFAULT_EXPERIMENT = TrackingConfig.experiment
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
CHECKPOINT_TABLE = "checkpoints.json"
# tells the MLflow UI that the artifact is a table (what mlflow.log_table records)
LOGGED_TABLE = json.dumps([{"path": CHECKPOINT_TABLE, "type": "table"}])


# How long a command waits for an http(s) MLflow server that does not answer, in seconds; and
# MLflow's own per-request limits, set here only (MLflow's defaults retry for minutes).
WAIT_ENV = "DINA_MLFLOW_WAIT_S"
DEFAULT_WAIT_S = 30.0
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class ServerUnreachable(RuntimeError):
    """The MLflow server did not answer within the wait; the message names it."""


def limit_mlflow_http() -> None:
    """MLflow's HTTP retries and timeout, bounded (a value the user set in the environment wins):
    every command calls this before its first MLflow request."""
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def wait_for_server(uri: str, who: str) -> None:
    """For an http(s) tracking URI: return once the server answers; while it does not, say so at
    once (naming it) and wait up to $DINA_MLFLOW_WAIT_S seconds, then raise ServerUnreachable.
    Other URIs (sqlite:, file paths, databricks) return at once."""
    import urllib.error
    import urllib.request

    limit_mlflow_http()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        wait_s = float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))
    except ValueError:
        raise ServerUnreachable(f"{WAIT_ENV}={os.environ[WAIT_ENV]!r} is not a number of "
                                f"seconds") from None
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
            return
        except urllib.error.HTTPError:
            return  # it answered: whatever the status, a server is there
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
        if not said:
            print(f"{who}: waiting up to {wait_s:g} s for the MLflow server at {uri} "
                  f"({reason}; {WAIT_ENV} sets the wait)", file=sys.stderr, flush=True)
            said = True
        left = deadline - time.monotonic()
        if left <= 0:
            raise ServerUnreachable(f"the MLflow server at {uri} did not answer within "
                                    f"{wait_s:g} s ({reason}); start it, or give another "
                                    f"tracking URI ({WAIT_ENV} sets the wait)")
        time.sleep(min(1.0, left))


def default_uri() -> str:
    """Where runs go when no URI is given: $MLFLOW_TRACKING_URI, else ./mlflow.db (sqlite)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def experiment_id(client, name: str) -> str:
    """Id of the experiment called `name`, created when it does not exist yet (marked as model
    training, so the MLflow UI opens it on its runs rather than on its GenAI pages)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    try:
        return client.create_experiment(name, tags=EXPERIMENT_TAGS)
    except MlflowException:
        # runs starting side by side (an array job, the benchmark's recipes) race to create it:
        # the loser finds the winner's
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def slurm_job() -> Optional[str]:
    """The SLURM job id; array tasks share SLURM_JOB_ID's parent, the task id keeps them apart."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return job


def default_run_name(cfg: DictConfig, backend: str) -> str:
    """stage-data-backend-<when>-<id>: says what ran; the SLURM job id (or a random suffix from
    os.urandom: MLflow's own names come from the seeded `random`, alike in every run) tells
    runs apart."""
    unique = slurm_job() or secrets.token_hex(2)
    attention = backend if cfg.model.attention.enabled else "no-attention"
    return (f"{cfg.train.stage}-{cfg.data.name}-{attention}-"
            f"{time.strftime('%m%d-%H%M')}-{unique}")


def with_source_tags(tags: dict[str, str]) -> dict[str, str]:
    """`tags` plus MLflow's standard source tags: script, git commit (in a checkout), user."""
    from mlflow.tracking.context.registry import resolve_tags

    return resolve_tags(tags)


def run_tags(cfg: DictConfig, backend: str) -> dict[str, str]:
    """Source tags plus what the run trains."""
    tags = {"stage": cfg.train.stage, "dataset": cfg.data.name,
            "attention_backend": cfg.model.attention.backend,
            "attention_backend_resolved": backend}
    if slurm_job():
        tags["slurm_job_id"] = slurm_job()
    return with_source_tags(tags)


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


class Tracker:
    """Non-blocking MLflow logger; a no-op on non-main processes or with tracking disabled."""

    def __init__(self, cfg: DictConfig, is_main: bool, backend: str,
                 resume_run_id: Optional[str] = None):
        self.enabled = bool(is_main and cfg.tracking.enabled)
        self.run_id: Optional[str] = None
        self.uri = cfg.tracking.uri or default_uri()
        if not self.enabled:
            return
        # fail fast inside the thread and retry there, instead of MLflow's minutes of retries
        limit_mlflow_http()
        self._client = None  # made on first use: creating a store can fail like any call
        self._cfg = cfg
        self._tags = run_tags(cfg, backend)
        self._run_name = cfg.tracking.run_name or default_run_name(cfg, backend)
        self._resume_run_id = resume_run_id
        self._system_metrics = None  # MLflow's monitor, started once the run exists
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
        self._checkpoints = CheckpointTable(self._staging / CHECKPOINT_TABLE,
                                            continued=resume_run_id is not None)
        self._final_checkpoint: Optional[Path] = None
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
        """Flush, end the run, and spill anything left to the fallback file. A server that is
        away at the end gets up to CLOSE_TIMEOUT_S to come back (a restart takes ~10 s)."""
        if not self.enabled:
            return
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        self._stop.set()
        self._thread.join(CLOSE_TIMEOUT_S)
        if self._system_metrics is not None:
            self._system_metrics.finish()
        while True:
            try:
                self._flush()
                if status == "FINISHED":
                    self._log_final_model()
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
        experiment = experiment_id(client, self._cfg.tracking.experiment)
        run_id = self._resume_run_id or self._find_slurm_run(experiment)
        if run_id:
            client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            self._start_system_metrics(resumed=True)
            return
        run = client.create_run(experiment, run_name=self._run_name, tags=self._tags)
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in flatten(self._cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run.info.run_id, params=params[i:i + 100])
        config_path = self._staging / "config.yaml"
        config_path.write_text(to_yaml(self._cfg))
        client.log_artifact(run.info.run_id, str(config_path))
        client.log_inputs(run.info.run_id, datasets=training_inputs(self._cfg.data))
        self.run_id = run.info.run_id
        self._start_system_metrics(resumed=False)

    def _start_system_metrics(self, resumed: bool) -> None:
        """CPU, memory, disk, network and (with pynvml) GPU use as system/* metrics."""
        if not self._cfg.tracking.system_metrics:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._system_metrics = SystemMetricsMonitor(
            self.run_id, sampling_interval=self._cfg.tracking.system_metrics_interval,
            resume_logging=resumed, tracking_uri=self.uri)
        self._system_metrics.start()

    def _log_final_model(self) -> None:
        """The last checkpoint's generators as the run's logged model; once, and a failure
        only warns: the checkpoint is on disk and can be logged later."""
        path, self._final_checkpoint = self._final_checkpoint, None
        if path is None or not self._cfg.tracking.log_model:
            return
        from pipeline.logged_model import can_inpaint, log_checkpoint

        if not can_inpaint(path):
            log.info("MLflow: %s holds no G1+G2 pair; no model logged", path)
            return
        try:
            model_id = log_checkpoint(path, self.uri, self.run_id)
            log.info("MLflow: generators logged as model %s (models:/%s)", model_id, model_id)
        except Exception as err:  # noqa: BLE001 - the run's metrics are in; the model can wait
            log.warning("MLflow: logging the model failed (%s: %s); log it later with: python "
                        "pipeline/log_model.py %s", type(err).__name__,
                        str(err).splitlines()[0][:200], path)

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
            if self._system_metrics is not None and not self._stop.is_set():
                # MLflow's monitor gives up when the server is away: start a fresh one
                self._system_metrics.finish()
                self._start_system_metrics(resumed=True)

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
