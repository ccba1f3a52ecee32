"""The background side of tracking: metrics, tags and artifacts wait in a bounded buffer that a
thread sends to one MLflow run. A server that is away costs training nothing: the thread retries
with backoff and sends the backlog when it is back; what cannot be sent (overflow, or still away
at the end) goes to a JSON-lines fallback file."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger("dina.tracking")

BUFFER_LIMIT = 50_000  # metric values held while the server is away
FLUSH_INTERVAL_S = 2.0
CLOSE_TIMEOUT_S = 30.0


class Sender:
    """Sends to the run that `open_run(client)` creates or continues (called again until it
    succeeds); `on_reconnect()` runs when the server comes back after failures."""

    def __init__(self, uri: str, fallback: Path, open_run: Callable[[object], str],
                 on_reconnect: Callable[[], None] = lambda: None):
        self.uri, self.fallback = uri, fallback
        self._open_run, self._on_reconnect = open_run, on_reconnect
        self.client = None  # made on first use: creating a store can fail like any call
        self.run_id: Optional[str] = None
        self._metrics: deque = deque()
        self._tags: dict[str, str] = {}
        self._artifacts: list[tuple[str, Optional[str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failures = 0
        self.dropped = 0
        try:
            self._ensure_run()
            log.info("MLflow run %s at %s", self.run_id, self.uri)
        except Exception as err:  # any transport or server error: keep training
            self._note_failure(err)
        self._thread = threading.Thread(target=self._worker, name="mlflow-tracker", daemon=True)
        self._thread.start()

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._lock:
            for key, value in metrics.items():
                self._metrics.append(Metric(key, float(value), now, step))
            while len(self._metrics) > BUFFER_LIMIT:
                self._spill([self._metrics.popleft()])

    def set_tags(self, tags: dict) -> None:
        with self._lock:
            self._tags.update({k: str(v) for k, v in tags.items()})

    def log_file(self, path: Path, artifact_path: Optional[str] = None) -> None:
        with self._lock:
            self._artifacts.append((str(path), artifact_path))

    def close(self, last_words: Callable[[], None]) -> None:
        """Stop the thread, send what is left, then `last_words()` (e.g. end the run); a server
        that is away gets up to CLOSE_TIMEOUT_S to come back (a restart takes ~10 s)."""
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        self._stop.set()
        self._thread.join(CLOSE_TIMEOUT_S)
        while True:
            try:
                self._flush()
                last_words()
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

    def _ensure_run(self) -> None:
        if self.client is None:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(self.uri)
        if self.run_id is None:
            self.run_id = self._open_run(self.client)

    def _flush(self) -> None:
        self._ensure_run()
        from mlflow.entities import RunTag

        with self._lock:
            metrics = [self._metrics.popleft() for _ in range(min(len(self._metrics), 1000))]
            tags, self._tags = self._tags, {}
            artifacts, self._artifacts = self._artifacts, []
        try:
            if metrics or tags:
                self.client.log_batch(self.run_id, metrics=metrics,
                                      tags=[RunTag(k, v) for k, v in tags.items()])
                metrics, tags = [], {}
            while artifacts:
                local, artifact_path = artifacts[0]
                self.client.log_artifact(self.run_id, local, artifact_path)
                artifacts.pop(0)
        finally:  # whatever was not sent goes back to the front of the queues
            with self._lock:
                self._metrics.extendleft(reversed(metrics))
                self._tags = {**tags, **self._tags}
                self._artifacts = artifacts + self._artifacts
        if self._failures:
            log.info("MLflow reachable again at %s; buffered metrics sent", self.uri)
            self._failures = 0
            if not self._stop.is_set():
                self._on_reconnect()

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
