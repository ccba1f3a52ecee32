"""The generators as an MLflow logged model (a pyfunc that inpaints), logged from a checkpoint.

A logged model is an MLflow pyfunc whose one artifact is an inference checkpoint: the
checkpoint's generators.safetensors and config.yaml, with a meta.json that lists (and hashes)
just those two, so `training.checkpoint` verifies and loads it like any checkpoint. It is logged
against its training run at the checkpoint's step (MLflow links the run's metrics at that step
to it) and tagged with the generators' sha256, which is how an evaluation of the same weights,
given as a directory or a URI, finds the model to attach its metrics to.

`predict({"image": uint8 [N,]S,S,3, "mask": [N,]S,S (non-zero = hole)})` returns the
composited uint8 images, S being the checkpoint's data.image_size.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import mlflow
import numpy as np
import torch

from pipeline.data.decode import batch_from_arrays, uint8_images
from pipeline.evaluation.inference import load_generators, model_fill
from pipeline.training.checkpoint import GENERATORS, CheckpointError, resolve, saved_networks

log = logging.getLogger("dina.tracking")

MODEL_NAME = "generators"
SHA256_TAG = "dina.generators_sha256"
INFERENCE_FILES = (GENERATORS, "config.yaml")


class Inpainter(mlflow.pyfunc.PythonModel):
    """G1 -> G2 on images at the checkpoint's size; known pixels are kept."""

    def load_context(self, context) -> None:
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        cfg, self.g1, self.g2 = load_generators(context.artifacts["checkpoint"], self.device)
        self.size = int(cfg.data.image_size)
        if self.g1 is None or self.g2 is None:
            raise ValueError("this model lacks G1 or G2 and cannot inpaint")

    def predict(self, context, model_input, params=None):  # no hints: MLflow reads them as a schema
        images = np.asarray(model_input["image"], dtype=np.uint8)
        masks = np.asarray(model_input["mask"]) > 0
        if images.ndim == 3:
            images, masks = images[None], masks[None]
        if images.shape[1:] != (self.size, self.size, 3) or masks.shape != images.shape[:3]:
            raise ValueError(f"expected image [N,{self.size},{self.size},3] and mask "
                             f"[N,{self.size},{self.size}], got {images.shape} and {masks.shape}")
        batch = {k: v.to(self.device) for k, v in batch_from_arrays(images, masks).items()}
        with torch.no_grad():
            out = model_fill(self.g1, self.g2)(batch)  # composited: known pixels kept
        return np.stack(uint8_images(out))


def can_inpaint(checkpoint: Path) -> bool:
    """Whether the checkpoint holds both generators (an edge-stage one holds only G1)."""
    return {"g1", "g2"} <= saved_networks(checkpoint)


def generators_sha256(checkpoint: Path) -> str:
    return json.loads((checkpoint / "meta.json").read_text())["files"][GENERATORS]["sha256"]


def _inference_copy(checkpoint: Path, into: Path) -> Path:
    """The inference files of `checkpoint` with a meta.json that lists only them."""
    meta = json.loads((checkpoint / "meta.json").read_text())
    into.mkdir(parents=True)
    for name in INFERENCE_FILES:
        shutil.copy2(checkpoint / name, into / name)
    meta["files"] = {n: meta["files"][n] for n in INFERENCE_FILES}
    meta["inference_only"] = True  # optimizer and RNG states stayed behind: not resumable
    (into / "meta.json").write_text(json.dumps(meta, indent=1))
    return into


def log_checkpoint(checkpoint: str | Path, tracking_uri: str, run_id: Optional[str] = None) -> str:
    """Log a checkpoint's generators as a model of `run_id` (default: the run in its meta.json)
    at the checkpoint's step; returns the model id. Blocks while the files upload."""
    from mlflow.models import Model

    path = resolve(checkpoint)
    meta = json.loads((path / "meta.json").read_text())
    run_id = run_id or meta.get("mlflow_run_id")
    if not run_id:
        raise CheckpointError(f"{path}: meta.json names no MLflow run; pass the run id")
    mlflow.set_tracking_uri(tracking_uri)  # Model.log talks to the global tracking URI
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    # created here, not by Model.log, which would file it under the active experiment
    model = client.create_logged_model(
        run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id, params=run.data.params,
        tags={SHA256_TAG: generators_sha256(path), "dina.stage": meta["stage"],
              "dina.step": str(meta["step"]), "dina.checkpoint": str(path.resolve())})
    with tempfile.TemporaryDirectory(prefix="dina-model-") as tmp:
        copy = _inference_copy(path, Path(tmp) / "checkpoint")
        Model.log(None, flavor=mlflow.pyfunc, run_id=run_id, model_id=model.model_id,
                  python_model=Inpainter(), artifacts={"checkpoint": str(copy)},
                  step=int(meta["step"]), pip_requirements=["dina-inpaint", "torch"])
    return model.model_id


def find_model(client, experiment_id: str, checkpoint: Path) -> Optional[str]:
    """Id of a logged model holding exactly this checkpoint's generators, if any."""
    found = client.search_logged_models(
        [experiment_id], filter_string=f"tags.`{SHA256_TAG}` = '{generators_sha256(checkpoint)}'",
        max_results=1)
    return found[0].model_id if found else None


def log_run_model(checkpoint: Path, tracking_uri: str, run_id: str) -> None:
    """A finished run's last checkpoint as its logged model; a failure only warns: the
    checkpoint is on disk and can be logged later."""
    if not can_inpaint(checkpoint):
        log.info("MLflow: %s holds no G1+G2 pair; no model logged", checkpoint)
        return
    try:
        model_id = log_checkpoint(checkpoint, tracking_uri, run_id)
        log.info("MLflow: generators logged as model %s (models:/%s)", model_id, model_id)
    except Exception as err:  # noqa: BLE001 - the run's metrics are in; the model can wait
        log.warning("MLflow: logging the model failed (%s: %s); log it later with: python "
                    "pipeline/log_model.py %s", type(err).__name__,
                    str(err).splitlines()[0][:200], checkpoint)
