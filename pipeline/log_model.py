"""Log a checkpoint's generators as an MLflow model, and register a model in the registry.

    python pipeline/log_model.py CHECKPOINT [--run-id RUN_ID] [--register NAME]
    python pipeline/log_model.py models:/MODEL_ID --register NAME

CHECKPOINT is a checkpoint dir or a run output dir (its latest checkpoint). The model is logged
against the training run named in its meta.json (or --run-id) at the checkpoint's step, as
training does for its last checkpoint. --register adds it (or an already logged model) to the
MLflow model registry as a new version of NAME. Prints the model URI (and the version URI).
Exit status: 0 done; 2 bad input (named); 1 MLflow failed.
"""
from __future__ import annotations

import argparse
import json
import sys

from pipeline import exit_codes
from pipeline.checkpoint import CheckpointError, resolve
from pipeline.logged_model import can_inpaint, log_checkpoint
from pipeline.model_source import URI_SCHEMES
from pipeline.tracking import default_uri

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Log a checkpoint's generators as an MLflow model "
                                            "(and/or register a model in the registry).")
    p.add_argument("source", help="checkpoint dir, run output dir, or a models:/ URI (with "
                                  "--register)")
    p.add_argument("--run-id", help="training run to log into (default: the checkpoint's)")
    p.add_argument("--register", metavar="NAME", help="register the model as a version of NAME")
    p.add_argument("--tracking-uri", help="MLflow URI (default: the checkpoint's run's, else "
                                          "$MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    args = p.parse_args(argv)
    if args.source.startswith(URI_SCHEMES) and not args.register:
        p.error(f"{args.source} is already logged; add --register NAME to register it")
    return args


def fail(message: str) -> None:
    exit_codes.refuse(f"log_model.py: error: {message}")


# MLflow's codes for a request that names something that is not there or is malformed: the
# input was bad (exit 2), not MLflow
BAD_INPUT_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND",
                   "BAD_REQUEST")


def main(argv=None) -> None:
    args = parse_args(argv)
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.model_source import ModelSourceError, _model_uri
    from pipeline.tracking import ServerUnreachable, wait_for_server

    uri = args.tracking_uri or default_uri()
    try:
        if args.source.startswith(URI_SCHEMES):
            wait_for_server(uri, "log_model.py")
            # runs:/RUN[/NAME] is that run's logged model (the registry wants the model itself)
            client = mlflow.MlflowClient(uri)
            model_uri = _model_uri(args.source, client)
            # looked up first: register_model would create the registered name even when the
            # model is not there, then fail with MLflow's generic error
            name, _, version = model_uri[len("models:/"):].partition("/")
            try:
                if version.isdigit():
                    client.get_model_version(name, version)
                elif not version and "@" not in name:  # aliases, "latest": MLflow resolves
                    client.get_logged_model(name)
            except MlflowException as err:
                fail(f"{args.source}: no such model in MLflow at {uri} "
                     f"({err.message.splitlines()[0]})")
        else:
            path = resolve(args.source)
            if not can_inpaint(path):
                fail(f"{path} holds no G1+G2 pair (an edge-stage checkpoint cannot inpaint)")
            meta = json.loads((path / "meta.json").read_text())
            uri = args.tracking_uri or meta.get("mlflow_tracking_uri") or uri
            wait_for_server(uri, "log_model.py")
            model_uri = f"models:/{log_checkpoint(path, uri, args.run_id)}"
            print(f"logged {path} (step {meta['step']}) as {model_uri}")
        if args.register:
            mlflow.set_tracking_uri(uri)
            version = mlflow.register_model(model_uri, args.register)
            print(f"registered {model_uri} as models:/{version.name}/{version.version}")
    except (CheckpointError, ModelSourceError, ServerUnreachable) as err:
        fail(str(err))
    except MlflowException as err:
        message = f"MLflow at {uri}: {err.message.splitlines()[0]}"
        if err.error_code in BAD_INPUT_CODES:
            what = f"--run-id {args.run_id}" if args.run_id else args.source
            fail(f"{what}: {message}")
        sys.exit(f"log_model.py: error: {message}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        print("log_model.py: interrupted (Ctrl-C); "
              "a model being logged may be left incomplete in MLflow", file=sys.stderr)
        sys.exit(130)
