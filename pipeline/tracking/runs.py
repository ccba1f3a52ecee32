"""MLflow run identity: the tracking URI, the experiment (created once, race-free), run names and
tags that say what a run trains and where it ran.
"""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from pipeline.config import TrackingConfig

DEFAULT_EXPERIMENT = TrackingConfig.experiment


EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


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
