"""The learning benchmark (ops/bench/learn.py): its photo split, and a --tiny run end to end."""
import json
import math
import subprocess
import sys

import mlflow
import numpy as np
import pytest

from ops.bench.photo_pool import Photo, random_crops, split
from tests.helpers import REPO

LEARN = REPO / "ops" / "bench" / "learn.py"
BUCKETS = ("0-10", "10-20", "20-30", "30-40", "40-50", "50-60")


def photo(name: str, group: str, side: int = 80, flat: bool = False) -> Photo:
    shape = (side, side + 20, 3)
    rgb = (np.zeros(shape, np.uint8) if flat
           else np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    return Photo("test", name, group, rgb)


def test_split_keeps_each_scene_on_one_side():
    photos = [photo(f"p{i}", f"g{i // 2}") for i in range(20)]  # 10 scenes of 2 views
    train, test = split(photos, held_out=0.3, seed=0)
    assert len(train) + len(test) == 20
    assert {p.group for p in train}.isdisjoint({p.group for p in test})
    assert len({p.group for p in test}) == 3
    assert split(photos, 0.3, seed=0) == (train, test)  # seeded: the same split every run
    one_each = split(photos[:4], held_out=0.9, seed=1)  # never empties the training side
    assert one_each[0] and one_each[1]


def test_random_crops_are_the_size_asked():
    crops = random_crops(photo("a", "a", side=300), 5, 64, np.random.default_rng(0))
    assert len(crops) == 5 and all(c.shape == (64, 64, 3) for c in crops)
    small = random_crops(photo("b", "b", side=40), 2, 64, np.random.default_rng(0))
    assert all(c.shape == (64, 64, 3) for c in small)  # upscaled, never short


def test_flat_crops_are_left_out():
    """A crop of one colour would score +inf dB for mean fill; a flat photo gives none."""
    assert random_crops(photo("flat", "flat", side=300, flat=True), 5, 64,
                        np.random.default_rng(0)) == []
    half = photo("half", "half", side=300)
    half.rgb[:, :200] = 7  # the left two thirds are flat: crops there are redrawn
    crops = random_crops(half, 8, 64, np.random.default_rng(0))
    assert len(crops) == 8 and all(c.std() >= 4 for c in crops)


def test_existing_out_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "learn"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = subprocess.run([sys.executable, str(LEARN), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--out" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_a_set_that_is_not_key_value_is_refused(tmp_path):
    out = tmp_path / "learn"
    proc = subprocess.run([sys.executable, str(LEARN), "--tiny", "--out", str(out), "--set",
                           "model.hole_mask_channel"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "model.hole_mask_channel" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(tmp_path, mlflow_server):
    out = tmp_path / "learn"
    recipes = ("project", "project-no-dina")  # a recipe and its DiNA share
    proc = subprocess.run([sys.executable, str(LEARN), "--tiny", "--no-apt", "--out", str(out),
                           "--tracking-uri", mlflow_server, "--recipe", ",".join(recipes),
                           "--set", "loss.l1_known_pixels=true"],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    variants = ("", "-true", "-none", "-start", "-raw", "-texture")
    for row in ("| PSNR | mean |", "| PSNR | telea |", "| PSNR | project |",
                "| SSIM | project |", "| PSNR | project-raw |", "| PSNR | project-start |"):
        assert row in proc.stdout
    report = json.loads((out / "learn.json").read_text())
    client = mlflow.MlflowClient(mlflow_server)
    pool = report["pool"]
    assert set(pool["train_photos"]).isdisjoint(pool["test_photos"])
    # the stereo pair is one scene: both views on the same side
    assert ("motorcycle_left" in pool["train_photos"]) == ("motorcycle_right" in pool["train_photos"])
    methods = ["mean", "telea", "pull-push", *(r + v for r in recipes for v in variants)]
    assert list(report["results"]) == methods
    for method in methods:
        for bucket in BUCKETS:
            assert math.isfinite(report["results"][method][bucket]["psnr"])
    results, gains = report["results"], report["gains"]
    for recipe in recipes:
        for stage in ("edge", "texture", "edge-texture"):  # the paper's schedule
            assert report["trained"][recipe][stage]["steps"] == report["budget"][
                stage.replace("-", "_") + "_steps"]
        for bucket in BUCKETS:  # validation every 2 of 4 steps
            assert [step for step, _ in report["curves"][recipe][bucket]] == [2, 4]
        # the headline: each trained row minus the same G2 untrained, per bucket
        for bucket in (*BUCKETS, "overall"):
            assert gains[recipe]["true_edges-start"][bucket] == pytest.approx(
                results[recipe + "-true"][bucket]["psnr"] - results[recipe + "-start"][bucket][
                    "psnr"])
            assert gains[recipe]["whole_model-start"][bucket] == pytest.approx(
                results[recipe][bucket]["psnr"] - results[recipe + "-start"][bucket]["psnr"])
            assert gains[recipe]["edge_texture-texture"][bucket] == pytest.approx(
                results[recipe][bucket]["psnr"] - results[recipe + "-texture"][bucket]["psnr"])
        # G1's edge accuracy and its no-learning baseline, from the edge run's last validation
        edge_run = client.get_run(report["trained"][recipe]["edge"]["run_id"])
        for key in ("edge_precision", "edge_recall", "edge_f1", "pull_push_canny/edge_f1"):
            assert 0 <= report["stages"][recipe][key] <= 1
            assert report["stages"][recipe][key] == edge_run.data.metrics[f"val/{key}"]
        met = report["targets"][recipe]["D1 accuracy >= 60 % at the end"][1]
        assert isinstance(met, bool)
    assert set(gains["project"]) > set(gains["project-no-dina"])  # the DiNA share: project's
    assert gains["project"]["dina-no_dina"]["overall"] == pytest.approx(
        results["project"]["overall"]["psnr"] - results["project-no-dina"]["overall"]["psnr"])
    # a coarse-fill G2 starts at the pull-push fill, bit for bit
    assert results["project-start"] == results["pull-push"]
    # each variant is its own evaluation run, of the weights and edges it names
    evals = {run.info.run_name: run.data.params
             for run in map(client.get_run, report["eval_run_ids"])}
    assert evals["learn-eval-project-raw"]["weights"] == "raw"
    assert evals["learn-eval-project"]["weights"] == "ema"
    assert evals["learn-eval-project-start"]["weights"] == "untrained"
    assert [evals[f"learn-eval-project{v}"]["edges"] for v in ("", "-true", "-none")] == [
        "g1", "true", "none"]
    # the whole model is the last stage's; G2 alone and the texture row the texture stage's
    stage_dirs = {s: report["trained"]["project"][s]["output_dir"]
                  for s in ("texture", "edge-texture")}
    assert evals["learn-eval-project"]["checkpoint"].startswith(stage_dirs["edge-texture"])
    for variant in ("-true", "-none", "-start", "-texture"):
        assert evals[f"learn-eval-project{variant}"]["checkpoint"].startswith(
            stage_dirs["texture"])
    # the mean-fill baseline is what the pipeline's own evaluation scores it at
    mean = json.loads((out / "eval" / "mean" / "metrics.json").read_text())
    assert report["results"]["mean"] == mean
    for picture in ("curve.png", "gain.png", "grid.png"):
        assert (out / picture).stat().st_size > 0
    # per held-out photo: every photo that gave crops, every method, over all its pairs
    pairs = json.loads((out / "eval" / "project" / "pairs.json").read_text())
    assert set(report["photos"]) == {p["image_key"].rsplit("_", 2)[0] for p in pairs}
    assert set(report["photos"]) <= set(pool["test_photos"])
    one = next(iter(report["photos"]))
    ours = [min(p["psnr"], 60) for p in pairs if p["image_key"].rsplit("_", 2)[0] == one]
    assert report["photos"][one]["project"] == pytest.approx(np.mean(ours))
    assert "held-out photos" in (out / "photos.md").read_text()

    bench_id = proc.stdout.strip().splitlines()[-1].split("MLflow run ")[1].split()[0]
    bench = client.get_run(bench_id)
    assert bench.data.metrics["project/psnr/30-40"] == report["results"]["project"]["30-40"][
        "psnr"]
    assert bench.data.metrics["gain/project/true_edges-start/overall"] == pytest.approx(
        gains["project"]["true_edges-start"]["overall"])
    assert {a.path for a in client.list_artifacts(bench_id)} >= {
        "learn.json", "table.md", "photos.md", "curve.png", "gain.png", "grid.png"}
    # the project's texture stages train with its texture layer on top of the project's recipe,
    # and --set comes last, over both
    for stage in ("texture", "edge-texture"):
        run = client.get_run(report["trained"]["project"][stage]["run_id"])
        assert run.data.tags["mlflow.parentRunId"] == bench_id
        assert run.data.params["loss.style"] == "0.0"
        assert run.data.params["loss.l1_known_pixels"] == "True"


def test_an_unknown_recipe_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(LEARN), "--tiny", "--out", str(tmp_path / "l"),
                           "--recipe", "paper,nope"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 2 and "nope" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "l").exists()
