"""Evaluation runs read back from MLflow for comparison, and the comparison logged as a run.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from pipeline.evaluation.metrics import OVERALL
from pipeline.evaluation.reference import CompareError
from pipeline.evaluation.tables import summary_from_flat
from pipeline.tracking.runs import experiment_id

EVALUATION_FILTER = "tags.`dina.kind` = 'evaluation' and attributes.status = 'FINISHED'"


def find_runs(client, run_ids: list[str], experiments: list[str], filter_string: Optional[str]):
    """The runs to compare: the given ids, else finished evaluation runs of the experiments."""
    from mlflow.exceptions import MlflowException

    if run_ids:
        runs = []
        for run_id in run_ids:
            try:
                runs.append(client.get_run(run_id))
            except MlflowException as err:
                raise CompareError(f"run '{run_id}' not found: {err.message}") from None
        return runs
    ids = []
    for name in experiments:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise CompareError(f"experiment '{name}' not found")
        ids.append(found.experiment_id)
    query = EVALUATION_FILTER + (f" and {filter_string}" if filter_string else "")
    try:
        runs = client.search_runs(ids, filter_string=query, order_by=["attributes.start_time ASC"])
    except MlflowException as err:
        raise CompareError(f"bad --filter '{filter_string}': {err.message}") from None
    if not runs:
        raise CompareError(f"no finished evaluation runs in experiment(s) "
                           f"{', '.join(experiments)} match: {query}")
    return runs


def run_summaries(runs) -> tuple[dict[str, dict], list]:
    """({row label: summary}, the runs in it); the label is the run name, with a short id where
    names repeat. A run without per-bucket metrics (a crashed or unrelated run) is skipped with
    a warning; none with metrics at all is an error."""
    names = [r.info.run_name or r.info.run_id for r in runs]
    out, used = {}, []
    for run, name in zip(runs, names):
        summary = summary_from_flat(run.data.metrics)
        if not any(c != OVERALL for c in summary):
            print(f"compare.py: warning: run {run.info.run_id} ('{name}') has no psnr/<bucket> "
                  f"or ssim/<bucket> metrics; left out of the table", file=sys.stderr)
            continue
        label = f"{name} ({run.info.run_id[:8]})" if names.count(name) > 1 else name
        out[label] = summary
        used.append(run)
    if not out:
        raise CompareError(f"none of the {len(runs)} run(s) has psnr/<bucket> or ssim/<bucket> "
                           f"metrics: is it an evaluation run?")
    return out, used


def log_comparison(client, experiment: str, out: Path, runs) -> str:
    run = client.create_run(experiment_id(client, experiment), run_name="comparison", tags={
        "dina.kind": "comparison", "dina.compared_runs": " ".join(r.info.run_id for r in runs)})
    for name in ("table.md", "table.csv", "plot.png"):
        client.log_artifact(run.info.run_id, str(out / name))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
