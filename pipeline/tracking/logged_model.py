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


def _as_uint8(images, what: str = "image") -> np.ndarray:
    """The images as uint8, refusing what a cast would change: floats (a [0, 1] image would turn
    black), integers outside 0..255 (they would wrap), anything non-numeric."""
    arr = np.asarray(images)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind in "iu" or arr.dtype == np.bool_:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"{what} values must lie in 0..255, got {arr.min()}..{arr.max()} "
                             f"({arr.dtype})")
        return arr.astype(np.uint8)
    hint = ("; for floats in [0, 1] pass (x * 255).round().astype(np.uint8)"
            if arr.dtype.kind == "f" else "")
    raise ValueError(f"{what} must be uint8 in 0..255, got dtype {arr.dtype}{hint}")


def _hole_masks(masks) -> np.ndarray:
    arr = np.asarray(masks)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"mask must be numeric (non-zero = hole), got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError("mask holds NaN; use 0 for known pixels and 1 (non-zero) for the hole")
    return arr > 0


class Inpainter(mlflow.pyfunc.PythonModel):
    """G1 -> G2 on images at the checkpoint's size; known pixels are kept."""

    # predict has no type hints on purpose (MLflow would read them as a schema); without this
    # MLflow warns about that at every import of this module, in every command
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        cfg, self.g1, self.g2 = load_generators(context.artifacts["checkpoint"], self.device)
        self.size = int(cfg.data.image_size)
        if self.g1 is None or self.g2 is None:
            raise ValueError("this model lacks G1 or G2 and cannot inpaint")

    def predict(self, context, model_input, params=None):  # no hints: see above
        given = np.shape(model_input["image"])
        images = _as_uint8(model_input["image"])
        masks = _hole_masks(model_input["mask"])
        if images.ndim == 3 and images.shape[-1] == 3:  # one image, no batch axis
            images, masks = images[None], masks[None]
        expected = (f"expected image [N,{self.size},{self.size},3] (RGB, uint8) and mask "
                    f"[N,{self.size},{self.size}]")
        if images.ndim != 4 or images.shape[1:] != (self.size, self.size, 3) \
                or masks.shape != images.shape[:3]:
            gray = " (a grayscale image? give RGB)" if len(given) in (2, 3) else ""
            raise ValueError(f"{expected}, got image {given}{gray} and mask "
                             f"{np.shape(model_input['mask'])}")
        if len(images) == 0:
            raise ValueError(f"{expected} with N >= 1, got no images (N = 0)")
        full = [i for i, m in enumerate(masks) if m.all()]
        if full:
            raise ValueError(f"mask {full[0]} is all hole: no known pixel to inpaint from")
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
