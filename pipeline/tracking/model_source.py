"""Checkpoints named by MLflow URIs: runs:/RUN_ID[/NAME], models:/MODEL_ID, models:/NAME/VERSION.

`local_checkpoint` turns such a URI into a local checkpoint directory (downloading the logged
model's artifacts, see tracking/logged_model.py) and leaves a directory path as it is, so every
command that takes --checkpoint takes a URI through one call.
"""
from __future__ import annotations

from pathlib import Path

URI_SCHEMES = ("runs:/", "models:/")


class ModelSourceError(ValueError):
    """A checkpoint URI that does not lead to a dina-inpaint model; the message names it."""


def model_uri(source: str, client) -> str:
    """runs:/RUN_ID[/NAME] -> models:/MODEL_ID of that run's newest logged model (of NAME)."""
    from mlflow.exceptions import MlflowException

    if source.startswith("models:/"):
        return source
    run_id, _, name = source[len("runs:/"):].partition("/")
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ModelSourceError(f"{source}: cannot read the run "
                               f"({err.message.splitlines()[0]})") from None
    query = f"source_run_id = '{run_id}'" + (f" AND name = '{name}'" if name else "")
    models = client.search_logged_models([run.info.experiment_id], filter_string=query,
                                         order_by=[{"field_name": "creation_time",
                                                    "ascending": False}], max_results=1)
    if not models:
        raise ModelSourceError(f"{source}: run {run_id} has no logged model"
                               + (f" named '{name}'" if name else ""))
    return f"models:/{models[0].model_id}"


def existing_model_uri(source: str, client) -> str:
    """The models:/ URI a runs:/ or models:/ source names, checked to exist (registering a
    model that is not there would still create its registered name)."""
    from mlflow.exceptions import MlflowException

    uri = model_uri(source, client)
    name, _, version = uri[len("models:/"):].partition("/")
    try:
        if version.isdigit():
            client.get_model_version(name, version)
        elif not version and "@" not in name:  # aliases, "latest": MLflow resolves them
            client.get_logged_model(name)
    except MlflowException as err:
        raise ModelSourceError(f"{source}: no such model ({err.message.splitlines()[0]})"
                               ) from None
    return uri


def local_checkpoint(source: str, tracking_uri: str) -> str:
    """A checkpoint given as a directory stays as is; a runs:/ or models:/ URI is downloaded
    from MLflow and its inference checkpoint directory returned."""
    if not source.startswith(URI_SCHEMES):
        return source
    import mlflow
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.server import ServerUnreachable, wait_for_server

    try:
        wait_for_server(tracking_uri, f"--checkpoint {source}")
    except ServerUnreachable as err:
        raise ModelSourceError(f"{source}: {err}") from None
    uri = model_uri(source, MlflowClient(tracking_uri))
    try:
        # models:/ URIs are looked up through the global tracking and registry URIs
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        local = Path(download_artifacts(artifact_uri=uri))
    except MlflowException as err:
        raise ModelSourceError(f"{source}: cannot download from MLflow at {tracking_uri} "
                               f"({err.message.splitlines()[0]})") from None
    checkpoint = local / "artifacts" / "checkpoint"
    if not (checkpoint / "meta.json").is_file():
        raise ModelSourceError(f"{source} is not a dina-inpaint model (no artifacts/checkpoint)")
    return str(checkpoint)
