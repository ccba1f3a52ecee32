"""An evaluation as an MLflow run: nested under the checkpoint's training run, linked to the logged
model holding the same weights, with the test sets as dataset inputs.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from pipeline.evaluation.results import RESULT_FILES
from pipeline.evaluation.tables import flat_metrics


def evaluation_uri(tracking_uri: Optional[str], info: Optional[dict]) -> str:
    """Where an evaluation run goes: the URI given, else the checkpoint's training run's."""
    from pipeline.tracking.runs import default_uri

    meta = info["meta"] if info else {}
    return tracking_uri or meta.get("mlflow_tracking_uri") or default_uri()


def log_to_mlflow(args, info: Optional[dict], summary: dict, out: Path, image_size: int) -> str:
    """A new evaluation run (nested under the checkpoint's run when known); returns its id."""
    from mlflow.entities import LoggedModelInput, Metric
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.dataset_inputs import dataset_input, spec_name
    from pipeline.tracking.logged_model import find_model
    from pipeline.tracking.runs import DEFAULT_EXPERIMENT
    from pipeline.tracking.runs import experiment_id as get_experiment
    from pipeline.tracking.runs import with_source_tags

    meta = info["meta"] if info else {}
    source_run = meta.get("mlflow_run_id")
    uri = evaluation_uri(args.tracking_uri, info)
    client = MlflowClient(uri)
    source_experiment = client.get_run(source_run).info.experiment_id if source_run else None
    experiment_id = ((args.experiment is None and source_experiment)
                     or get_experiment(client, args.experiment or DEFAULT_EXPERIMENT))
    # the logged model holding these weights (logged by the training run or log_model.py)
    model_id = info and find_model(client, source_experiment or experiment_id, Path(info["path"]))
    label = Path(info["path"]).name if info else "baseline"
    tags = {"dina.kind": "evaluation", "dina.method": args.method}
    if source_run:
        tags.update({"dina.source_run_id": source_run, "mlflow.parentRunId": source_run})
    run = client.create_run(experiment_id, run_name=args.run_name or f"eval-{args.method}-{label}",
                            tags=with_source_tags(tags))
    run_id = run.info.run_id
    params = {"method": args.method, "images": args.images, "masks": args.masks,
              "image_size": image_size, "per_bucket": args.per_bucket,
              "metrics": getattr(args, "metrics", None),
              "lpips_net": getattr(args, "lpips_net", None)}
    if info:
        params.update({"checkpoint": info["path"], "checkpoint_step": meta.get("step"),
                       "stage": meta.get("stage"), "weights": info["weights"],
                       "edges": info["edges"]})
    for key, value in params.items():
        client.log_param(run_id, key, str(value))
    test_set = dataset_input(args.images, spec_name(args.images), "evaluation")
    client.log_inputs(run_id, datasets=[test_set, dataset_input(args.masks, spec_name(args.masks),
                                                                "evaluation")],
                      models=[LoggedModelInput(model_id)] if model_id else None)
    now = int(time.time() * 1000)
    # with model_id and the test set named, the metrics also show on the logged model's page
    metrics = [Metric(k, v, now, 0, model_id=model_id,
                      dataset_name=test_set.dataset.name, dataset_digest=test_set.dataset.digest)
               for k, v in flat_metrics(summary).items()]
    client.log_batch(run_id, metrics=metrics)
    for name in RESULT_FILES:
        client.log_artifact(run_id, str(out / name))
    client.set_terminated(run_id, "FINISHED")
    return run_id
