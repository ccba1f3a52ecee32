"""Score an inpainting method per hole-area bucket: the paper's Table 1 for one run.

    python pipeline/evaluate.py --checkpoint CKPT_DIR --images SRC --masks SRC --out OUT_DIR
    python pipeline/evaluate.py --method telea --images SRC --masks SRC --out OUT_DIR

Every test image is scored once in every bucket (0-10 % ... 50-60 %), paired with a mask by
`pipeline.data.eval_pairs`'s fixed rule, so two evaluations see identical inputs. The method
fills the hole, the output is composited (known pixels kept) and scored with PSNR / SSIM on RGB
at [0, 255] by pipeline.scoring, as training validation is. Methods: `model` (G1 -> G2 from a
checkpoint, edges from Canny on the known region as at test time, pipeline.inference), and three
baselines through the same code (pipeline.baselines): `mean` (hole filled with the known
region's mean colour), `telea` (OpenCV's cv2.inpaint, Telea) and `pull-push` (the smooth fill
G2 starts from with model.coarse_fill=pull-push).

Writes OUT_DIR/pairs.json (each pair with its scores), metrics.json, table.md, timing.json,
and with --save-images OUT_DIR/images/<image-stem>__<bucket>.png. Logs the per-bucket metrics
(psnr/10-20, ...) and the table to a new MLflow evaluation run, nested under the checkpoint's
training run when meta.json names one (a run per evaluation keeps each table its own row).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from pipeline import exit_codes
from pipeline.baselines import BASELINES
from pipeline.inference import Fill, InferenceError, load_model, model_fill
from pipeline.metrics import bucket_table, flat_metrics
from pipeline.scoring import evaluate

METHODS = ("model", *BASELINES)


class EvaluationError(RuntimeError):
    """A bad input to evaluation; the message names it."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Evaluate an inpainting checkpoint (or a baseline) per hole-area bucket: "
                    "PSNR and SSIM of the composited output, as the paper's Table 1.",
        epilog="Outputs: OUT/pairs.json, metrics.json, table.md, timing.json, "
               "images/<stem>__<bucket>.png (--save-images).")
    p.add_argument("--checkpoint", help="checkpoint dir, run output dir (latest checkpoint), or "
                                        "an MLflow model URI (runs:/RUN_ID, models:/MODEL_ID, "
                                        "models:/NAME/VERSION); needed for --method model")
    p.add_argument("--edge-checkpoint",
                   help="take G1 from this checkpoint (for a texture-stage checkpoint without G1)")
    p.add_argument("--raw-weights", action="store_true",
                   help="use the raw trained weights; by default a checkpoint's EMA weights "
                        "(train.ema) are used where it holds them")
    p.add_argument("--method", choices=METHODS, default="model",
                   help="model: G1->G2 from --checkpoint; mean / telea / pull-push: baselines")
    p.add_argument("--images", required=True,
                   help="test images: shard dir, index.json or a folder of image files")
    p.add_argument("--masks", required=True,
                   help="masks (white = hole): shard dir, index.json or a folder of image files")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--image-size", type=int,
                   help="side in pixels (default: the checkpoint's data.image_size; 256 for "
                        "baselines)")
    p.add_argument("--per-bucket", type=int,
                   help="use only the first N test images (by key), each scored in every "
                        "bucket (default: all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--save-images", action="store_true", help="write every composited output")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--tracking-uri", help="MLflow URI (default: the checkpoint's run's, else "
                                          "$MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment (default: the checkpoint run's, "
                                        "else dina-inpaint)")
    p.add_argument("--run-name", help="MLflow run name (default: eval-<method>-<checkpoint>)")
    args = p.parse_args(argv)
    if args.method == "model" and not args.checkpoint:
        p.error("--method model needs --checkpoint (or use a baseline: --method mean / telea / "
                "pull-push)")
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")
    if args.per_bucket is not None and args.per_bucket < 1:
        p.error("--per-bucket must be >= 1")
    if args.image_size is not None and args.image_size < 1:  # 0 would fall back to the default
        p.error(f"--image-size {args.image_size}: must be >= 1")
    if args.num_workers < 0:
        p.error(f"--num-workers {args.num_workers}: must be >= 0")
    return args


def load_method(args: argparse.Namespace) -> tuple[Fill, Optional[dict], int]:
    """(fill, checkpoint info or None, image size) for the chosen method."""
    if args.method != "model":
        return BASELINES[args.method], None, args.image_size or 256
    from pipeline.model_source import local_checkpoint
    from pipeline.tracking import default_uri

    checkpoint = local_checkpoint(args.checkpoint, args.tracking_uri or default_uri())
    g1, g2, info = load_model(checkpoint, args.edge_checkpoint, args.device, args.raw_weights)
    return model_fill(g1, g2), info, args.image_size or int(info["cfg"].data.image_size)


def tracking_uri(args, info: Optional[dict]) -> str:
    """Where the evaluation run goes: --tracking-uri, else the checkpoint's run's server."""
    from pipeline.tracking import default_uri

    meta = info["meta"] if info else {}
    return args.tracking_uri or meta.get("mlflow_tracking_uri") or default_uri()


def log_to_mlflow(args, info: Optional[dict], summary: dict, out: Path, image_size: int) -> str:
    """A new evaluation run (nested under the checkpoint's run when known); returns its id."""
    from mlflow.entities import LoggedModelInput, Metric
    from mlflow.tracking import MlflowClient

    from pipeline.dataset_inputs import dataset_input, spec_name
    from pipeline.logged_model import find_model
    from pipeline.tracking import (DEFAULT_EXPERIMENT, experiment_id as get_experiment,
                                   with_source_tags)

    meta = info["meta"] if info else {}
    source_run = meta.get("mlflow_run_id")
    uri = tracking_uri(args, info)
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
              "image_size": image_size, "per_bucket": args.per_bucket}
    if info:
        params.update({"checkpoint": info["path"], "checkpoint_step": meta.get("step"),
                       "stage": meta.get("stage"), "weights": info["weights"]})
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
    for name in ("table.md", "metrics.json", "pairs.json"):
        client.log_artifact(run_id, str(out / name))
    client.set_terminated(run_id, "FINISHED")
    return run_id


RESULT_FILES = ("pairs.json", "metrics.json", "table.md", "timing.json")


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (its name): stop, leaving --out as it was."""


def _stop_on_signals() -> None:
    """The first SIGINT/SIGTERM unwinds (staging removed, --out untouched); a second one, while
    that happens, exits at once."""
    def first(signum, frame):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, second)
        raise Interrupted(signal.Signals(signum).name)

    def second(signum, frame):
        print(f"evaluate.py: second signal ({signal.Signals(signum).name}): exiting at once; "
              f"--out holds no result of this run", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, first)


@contextmanager
def _signals_held():
    """SIGINT/SIGTERM during the block are delivered after it (the results go in as a set)."""
    held: list[int] = []
    handlers = {sig: signal.signal(sig, lambda signum, _frame: held.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if held:
        signal.raise_signal(held[0])


def check_out(out: Path) -> None:
    """--out must be, or become, a writable directory: checked before any work is done."""
    folder = out
    while not (folder.exists() or folder.is_symlink()):
        folder = folder.parent
    if not folder.is_dir():
        what = "is a file" if folder == out else f"is below the file {folder}"
        raise EvaluationError(f"--out {out} {what}; give a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass  # a real probe: permission bits say nothing for root or read-only mounts
    except OSError as err:
        raise EvaluationError(f"--out {out}: cannot write there: {err.strerror or err}") from None


def _recover_staging(out: Path) -> None:
    """With --out's lock held, any `.partial-PID` in it is a dead run's: a run killed while
    moving its results in may have left the earlier images/ there, which go back first."""
    for partial in sorted(out.glob(".partial-*")):
        old_images = partial / "images.old"
        if old_images.is_dir() and not (out / "images").exists():
            os.replace(old_images, out / "images")
            print(f"evaluate.py: restored {out / 'images'} from {old_images} (a run killed while "
                  f"replacing it)", file=sys.stderr)
        shutil.rmtree(partial, ignore_errors=True)


def commit_results(staging: Path, out: Path, with_images: bool) -> None:
    """Move the finished results from `staging` into --out, replacing an earlier run's."""
    with _signals_held():
        for name in RESULT_FILES:
            os.replace(staging / name, out / name)
        if with_images:
            old = staging / "images.old"
            if (out / "images").exists():
                os.replace(out / "images", old)
            os.replace(staging / "images", out / "images")


def main(argv=None) -> None:
    args = parse_args(argv)
    _stop_on_signals()
    out = Path(args.out)
    staging = out / f".partial-{os.getpid()}"
    try:
        _evaluate(args, out, staging)
    except Interrupted as err:
        print(f"evaluate.py: interrupted ({err}); {out} is as it was (no result of this run "
              f"was written)", file=sys.stderr)
        sys.exit(128 + signal.Signals[str(err)].value)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _evaluate(args, out: Path, staging: Path) -> None:
    from pipeline.data import DataError, eval_loader, eval_pairs
    from pipeline.output_lock import OutputDirBusy, OutputLock
    from pipeline.tracking import ServerUnreachable, wait_for_server

    created = not (out.exists() or out.is_symlink())
    lock = None
    try:
        check_out(out)
        # one evaluation per --out: two would interleave their files and log each other's
        lock = OutputLock(out, what="--out")
        lock.acquire()
        _recover_staging(out)
        fill, info, size = load_method(args)
        pairs = eval_pairs(args.images, args.masks, size, per_bucket=args.per_bucket)
        if not pairs:
            raise EvaluationError(f"no image/mask pairs from --images {args.images} and "
                                  f"--masks {args.masks}")
        loader = eval_loader(pairs, size, args.batch_size, num_workers=args.num_workers)
        if not args.no_mlflow:  # before the work, not after it
            wait_for_server(tracking_uri(args, info), "evaluate.py")
    except (EvaluationError, InferenceError, DataError, OutputDirBusy, ServerUnreachable,
            FileNotFoundError, ValueError) as err:
        if lock is not None and lock.held:
            lock.release()
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a refused run leaves no trace
        exit_codes.refuse(f"evaluate.py: error: {err}")
    skipped = getattr(pairs, "skipped", [])
    for item in skipped[:10]:
        print(f"evaluate.py: skipped {item['path']}: {item['reason']}", file=sys.stderr)
    if len(skipped) > 10:
        print(f"evaluate.py: ... {len(skipped) - 10} more skipped (timing.json lists them)",
              file=sys.stderr)

    staging.mkdir()
    image_dir = staging / "images" if args.save_images else None
    start = time.perf_counter()
    summary, per_image = evaluate(loader, fill, args.device, image_dir)
    seconds = time.perf_counter() - start

    label = args.method if info is None else f"{args.method} ({Path(info['path']).name})"
    table = bucket_table({label: summary})
    (staging / "pairs.json").write_text(json.dumps(per_image, indent=1))
    (staging / "metrics.json").write_text(json.dumps(summary, indent=1))
    (staging / "table.md").write_text(table)
    timing = {"images": len(per_image), "seconds": seconds,
              "images_per_s": len(per_image) / seconds, "device": str(args.device),
              "batch_size": args.batch_size, "image_size": size,
              "skipped_images": skipped}
    (staging / "timing.json").write_text(json.dumps(timing, indent=1))
    if args.save_images:
        (staging / "images").mkdir(exist_ok=True)
    commit_results(staging, out, args.save_images)
    print(table)
    skipped_note = f", {len(skipped)} unreadable images skipped" if skipped else ""
    weights = f", {info['weights']} weights" if info else ""
    print(f"{len(per_image)} images in {seconds:.1f} s ({timing['images_per_s']:.3g} images/s "
          f"on {args.device}{weights}{skipped_note}); results in {out}")
    if not args.no_mlflow:
        try:
            run_id = log_to_mlflow(args, info, summary, out, size)
        except Exception as err:  # noqa: BLE001 - any MLflow failure: results are on disk
            sys.exit(f"evaluate.py: error: logging to MLflow failed ({err}); the results are in "
                     f"{out}; rerun with --no-mlflow or another --tracking-uri")
        print(f"MLflow evaluation run {run_id}")
    lock.release()


if __name__ == "__main__":
    main()
