"""Score an inpainting method per hole-area bucket: the paper's Table 1 for one run.

    python pipeline/evaluate.py --checkpoint CKPT_DIR --images SRC --masks SRC --out OUT_DIR
    python pipeline/evaluate.py --method telea --images SRC --masks SRC --out OUT_DIR

Every test image is scored once in every bucket (0-10 % ... 50-60 %), paired with a mask by
`pipeline.data.eval_pairs`'s fixed rule, so two evaluations see identical inputs. The method
fills the hole, the output is composited (known pixels kept) and scored with PSNR / SSIM on RGB
at [0, 255] by pipeline.evaluation.scoring, as training validation is. Methods: `model` (G1 -> G2
from a checkpoint, edges from Canny on the known region as at test time,
pipeline.evaluation.inference; --edges true / none feed G2 the ground truth's edges in the hole
or none instead of G1's, --untrained scores G2 as its run started it: the decomposition of what
each stage learned), and three baselines through the same code
(pipeline.evaluation.baselines): `mean` (hole filled with the known
region's mean colour), `telea` (OpenCV's cv2.inpaint, Telea) and `pull-push` (the smooth fill
G2 starts from with model.coarse_fill=pull-push).

Writes OUT_DIR/pairs.json (each pair with its scores), metrics.json, table.md, timing.json,
and with --save-images OUT_DIR/images/<image-stem>__<bucket>.png. Logs the per-bucket metrics
(psnr/10-20, ...) and the table to a new MLflow evaluation run, nested under the checkpoint's
training run when meta.json names one (a run per evaluation keeps each table its own row).

--metrics (pipeline.evaluation.suite): PSNR, SSIM and L1/MAE in our protocol and EdgeConnect's
(grayscale, SSIM window 51: ec_psnr, ec_ssim, ec_mae), LPIPS, and FID per bucket with its image
count (fid, fid_n). The default, auto, adds LPIPS and FID where their weight files are found
(pipeline.evaluation.perceptual); naming them without the files exits 2 naming the file.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from pipeline import exit_codes
from pipeline.data.eval_pairs import eval_loader, eval_pairs
from pipeline.data.shards import DataError
from pipeline.evaluation.inference import EDGE_SOURCES, InferenceError
from pipeline.evaluation.methods import METHODS, load_fill
from pipeline.evaluation.output_folder import (OutputFolderError, check_out, commit_results,
                                               recover_staging, staging_folder)
from pipeline.evaluation.perceptual import WeightsError
from pipeline.evaluation.results import write_results
from pipeline.evaluation.scoring import evaluate
from pipeline.evaluation.suite import AUTO, build_suite
from pipeline.stop_signals import exit_status, unwind_on_stop_signals
from pipeline.tracking.evaluation_runs import evaluation_uri, log_to_mlflow
from pipeline.tracking.model_source import ModelSourceError, local_checkpoint
from pipeline.tracking.runs import default_uri
from pipeline.tracking.server import ServerUnreachable, wait_for_server
from pipeline.training.output_lock import OutputDirBusy, OutputLock


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
    p.add_argument("--edges", choices=EDGE_SOURCES, default="g1",
                   help="what G2 reads as edges in the hole: g1 (G1's, the test-time path; "
                        "default), true (the ground truth's own Canny edges: G2's ceiling) or "
                        "none; outside the hole always the known region's Canny")
    p.add_argument("--untrained", action="store_true",
                   help="score G2 as its training run started it (same config and seed): the "
                        "start a trained G2 is measured against")
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
    p.add_argument("--metrics", default=AUTO,
                   help="comma list of psnr, ssim, mae (each in our protocol and EdgeConnect's), "
                        "lpips, fid; 'auto' (default): psnr,ssim,mae plus lpips and fid where "
                        "their weights are found. An asked-for lpips/fid without weights exits 2")
    p.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex",
                   help="LPIPS backbone (alex: the LPIPS authors' default; vgg: LaMa's)")
    p.add_argument("--lpips-weights", help="torchvision's alexnet-owt-7be5be79.pth or "
                                           "vgg16-397923af.pth (default: the torch hub cache)")
    p.add_argument("--fid-weights", help="pt_inception-2015-12-05-6726825d.pth (default: the "
                                         "torch hub cache)")
    args = p.parse_args(argv)
    _check_args(p, args)
    return args


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.method == "model" and not args.checkpoint:
        p.error("--method model needs --checkpoint (or use a baseline: --method mean / telea / "
                "pull-push)")
    if args.method != "model" and (args.untrained or args.edges != "g1"):
        p.error("--untrained and --edges apply to --method model only")
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


def _prepare(args) -> tuple:
    """(fill, checkpoint info, image size, loader, metric suite, skipped images), every input
    checked and the --out lock held (released at exit) before any work; a bad input exits 2
    with one line."""
    out = Path(args.out)
    created, lock = not (out.exists() or out.is_symlink()), None
    try:
        check_out(out)
        # one evaluation per --out: two would interleave their files and log each other's
        lock = OutputLock(out, what="--out")
        lock.acquire()
        recover_staging(out, "evaluate.py")
        checkpoint = args.checkpoint and local_checkpoint(args.checkpoint,
                                                          args.tracking_uri or default_uri())
        fill, info = load_fill(args.method, checkpoint, args.edge_checkpoint, args.device,
                               args.raw_weights, args.edges, args.untrained)
        size = args.image_size or (int(info["cfg"].data.image_size) if info else 256)
        pairs = eval_pairs(args.images, args.masks, size, per_bucket=args.per_bucket)
        loader = eval_loader(pairs, size, args.batch_size, num_workers=args.num_workers)
        suite, notes = build_suite(args.metrics, args.device, args.lpips_net, args.lpips_weights,
                                   args.fid_weights)
        if not args.no_mlflow:  # before the work, not after it
            wait_for_server(evaluation_uri(args.tracking_uri, info), "evaluate.py")
    except (OutputFolderError, OutputDirBusy, InferenceError, ModelSourceError, DataError,
            ServerUnreachable, WeightsError, FileNotFoundError, ValueError) as err:
        if lock is not None and lock.held:
            lock.release()
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a refused run leaves no trace
        exit_codes.refuse(f"evaluate.py: error: {err}")
    for item in pairs.skipped[:10]:
        print(f"evaluate.py: skipped {item['path']}: {item['reason']}", file=sys.stderr)
    if len(pairs.skipped) > 10:
        print(f"evaluate.py: ... {len(pairs.skipped) - 10} more skipped (timing.json lists "
              f"them)", file=sys.stderr)
    for note in notes:
        print(f"evaluate.py: note: {note}", file=sys.stderr)
    return fill, info, size, loader, suite, pairs.skipped


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    unwind_on_stop_signals("evaluate.py", "--out holds no result of this run")
    staging = staging_folder(out)
    try:
        fill, info, size, loader, suite, skipped = _prepare(args)
        staging.mkdir()
        start = time.perf_counter()
        summary, per_image = evaluate(loader, fill, args.device,
                                      staging / "images" if args.save_images else None,
                                      suite=suite)
        seconds = time.perf_counter() - start
        label = args.method if info is None else f"{args.method} ({Path(info['path']).name})"
        timing = {"images": len(per_image), "seconds": seconds,
                  "images_per_s": len(per_image) / seconds, "device": str(args.device),
                  "batch_size": args.batch_size, "image_size": size, "skipped_images": skipped}
        table = write_results(staging, label, summary, per_image, timing)
        if args.save_images:
            (staging / "images").mkdir(exist_ok=True)
        commit_results(staging, out, args.save_images)
    except KeyboardInterrupt as err:
        print(f"evaluate.py: interrupted ({err}); {out} is as it was (no result of this run "
              f"was written)", file=sys.stderr)
        sys.exit(exit_status(err))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(table)
    notes = (f", {info['weights']} weights, G2 fed {info['edges']} edges" if info else "") + (
        f", {len(skipped)} unreadable images skipped" if skipped else "")
    print(f"{len(per_image)} images in {seconds:.1f} s ({timing['images_per_s']:.3g} images/s "
          f"on {args.device}{notes}); results in {out}")
    if not args.no_mlflow:
        try:
            run_id = log_to_mlflow(args, info, summary, out, size)
        except Exception as err:  # noqa: BLE001 - any MLflow failure: results are on disk
            sys.exit(f"evaluate.py: error: logging to MLflow failed ({err}); the results are in "
                     f"{out}; rerun with --no-mlflow or another --tracking-uri")
        # the run's id beside its results: scripts find the run without searching MLflow
        (out / "run.json").write_text(json.dumps({"run_id": run_id}) + "\n")
        print(f"MLflow evaluation run {run_id}")


if __name__ == "__main__":
    main()
