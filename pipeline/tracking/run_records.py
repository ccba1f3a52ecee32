"""What a training run records when it opens: created with its name, tags, every config value as
a param, config.yaml and its shards as dataset inputs; or continued, when a resume or a requeued
SLURM job finds its earlier run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from pipeline.config import flatten, to_yaml
from pipeline.tracking.dataset_inputs import training_inputs
from pipeline.tracking.runs import experiment_id

MAX_PARAMS_PER_BATCH = 100  # MLflow's limit
MAX_PARAM_CHARS = 6000


def find_slurm_run(client, experiment: str, tags: dict[str, str], stage: str) -> Optional[str]:
    """The run of this SLURM job and stage, when a requeued job starts again."""
    job = tags.get("slurm_job_id")
    if not job:
        return None
    runs = client.search_runs([experiment],
                              f"tags.slurm_job_id = '{job}' and tags.stage = '{stage}'",
                              max_results=1)
    return runs[0].info.run_id if runs else None


def open_training_run(client, cfg: DictConfig, run_name: str, tags: dict[str, str],
                      resume_run_id: Optional[str], staging: Path) -> tuple[str, bool]:
    """(run id, whether it continues an earlier run): the resumed one, this SLURM job's, or a
    new run with its records."""
    from mlflow.entities import Param

    experiment = experiment_id(client, cfg.tracking.experiment)
    run_id = resume_run_id or find_slurm_run(client, experiment, tags, cfg.train.stage)
    if run_id:
        client.update_run(run_id, status="RUNNING")
        return run_id, True
    run_id = client.create_run(experiment, run_name=run_name, tags=tags).info.run_id
    params = [Param(k, v[:MAX_PARAM_CHARS]) for k, v in flatten(cfg).items()]
    for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[i:i + MAX_PARAMS_PER_BATCH])
    config_path = staging / "config.yaml"
    config_path.write_text(to_yaml(cfg))
    client.log_artifact(run_id, str(config_path))
    client.log_inputs(run_id, datasets=training_inputs(cfg.data))
    return run_id, False
