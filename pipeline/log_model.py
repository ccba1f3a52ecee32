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
from pipeline.tracking.logged_model import can_inpaint, log_checkpoint
from pipeline.tracking.model_source import URI_SCHEMES, ModelSourceError, existing_model_uri
from pipeline.tracking.runs import default_uri
from pipeline.tracking.server import ServerUnreachable, wait_for_server
from pipeline.training.checkpoint import CheckpointError, resolve


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


def _fail(message: str) -> None:
    exit_codes.refuse(f"log_model.py: error: {message}")


# MLflow's codes for a request that names something that is not there or is malformed: the
# input was bad (exit 2), not MLflow
BAD_INPUT_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND",
                   "BAD_REQUEST")


def main(argv=None) -> None:
    args = parse_args(argv)
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = args.tracking_uri or default_uri()
    try:
        if args.source.startswith(URI_SCHEMES):
            wait_for_server(uri, "log_model.py")
            # runs:/RUN[/NAME] is that run's logged model (the registry wants the model itself)
            model_uri = existing_model_uri(args.source, mlflow.MlflowClient(uri))
        else:
            path = resolve(args.source)
            if not can_inpaint(path):
                _fail(f"{path} holds no G1+G2 pair (an edge-stage checkpoint cannot inpaint)")
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
        _fail(str(err))
    except MlflowException as err:
        message = f"MLflow at {uri}: {err.message.splitlines()[0]}"
        if err.error_code in BAD_INPUT_CODES:
            _fail(f"{f'--run-id {args.run_id}' if args.run_id else args.source}: {message}")
        sys.exit(f"log_model.py: error: {message}")


if __name__ == "__main__":
    exit_codes.run_interruptible(main, "log_model.py", "a model being logged may be left "
                                                       "incomplete in MLflow")
