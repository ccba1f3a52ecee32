"""evaluate.py on the sample shards: deterministic pairing, outputs, baselines, MLflow, errors."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.data.eval_pairs import eval_loader, eval_pairs
from pipeline.evaluation.baselines import mean_fill, pull_push, telea_fill
from pipeline.evaluation.scoring import evaluate
from tests.helpers import run_cli
from tests.helpers.checkpoints import make_checkpoint

BUCKETS = ["0-10", "10-20", "20-30", "30-40", "40-50", "50-60"]


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    return run_cli("evaluate.py", *args)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("joint"))


@pytest.mark.slow
def test_model_evaluation_is_deterministic_and_complete(sample_shards, checkpoint, tmp_path):
    common = ["--checkpoint", str(checkpoint), "--images", str(sample_shards / "test"),
              "--masks", str(sample_shards / "masks"), "--per-bucket", "3", "--batch-size", "4",
              "--no-mlflow"]
    first = _evaluate(*common, "--out", str(tmp_path / "a"), "--save-images")
    second = _evaluate(*common, "--out", str(tmp_path / "b"))
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    for name in ("metrics.json", "pairs.json", "table.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert list(metrics) == BUCKETS + ["overall"]
    assert all(metrics[b]["n"] == 3 for b in BUCKETS) and metrics["overall"]["n"] == 18
    pairs = json.loads((tmp_path / "a" / "pairs.json").read_text())
    assert {p["bucket"] for p in pairs} == set(BUCKETS)
    for p in pairs:  # every image is scored once per bucket, with a mask of that bucket
        lo, hi = (int(x) / 100 for x in p["bucket"].split("-"))
        assert lo < p["hole_ratio"] <= hi
    assert len({(p["image_key"], p["bucket"]) for p in pairs}) == 18
    assert "| PSNR | model (checkpoint-" in (tmp_path / "a" / "table.md").read_text()

    # saved outputs: lossless PNGs whose known pixels are the test image's own pixels
    loaded = eval_pairs(str(sample_shards / "test"), str(sample_shards / "masks"), 32, 3)
    for pair in loaded:
        rgb, _ = pair["load_image"](32)
        known = pair["load_mask"](32) == 0
        name = f"{pair['image_key']}__{BUCKETS[pair['bucket']]}.png"
        saved = np.asarray(Image.open(tmp_path / "a" / "images" / name))
        assert np.array_equal(saved[known], rgb[known])
    assert len(list((tmp_path / "a" / "images").iterdir())) == 18


def test_baselines_through_the_same_code(sample_shards):
    pairs = eval_pairs(str(sample_shards / "test"), str(sample_shards / "masks"), 32)
    loader = eval_loader(pairs, 32, batch_size=8)
    mean_summary, per_image = evaluate(loader, mean_fill, progress=False)
    telea_summary, _ = evaluate(loader, telea_fill, progress=False)
    pull_push_summary, _ = evaluate(loader, pull_push, progress=False)
    assert len(per_image) == len(pairs) == 60
    for summary in (mean_summary, telea_summary, pull_push_summary):
        assert summary["overall"]["n"] == 60
        # bigger holes score lower
        assert summary["0-10"]["psnr"] > summary["50-60"]["psnr"]
        assert summary["0-10"]["ssim"] > summary["50-60"]["ssim"]
    # propagating the surroundings beats one flat colour on real photos
    assert telea_summary["overall"]["psnr"] > mean_summary["overall"]["psnr"]
    assert pull_push_summary["overall"]["psnr"] > mean_summary["overall"]["psnr"]

    batch = next(iter(loader))
    filled = mean_fill(batch)
    known = batch["mask"][0, 0] == 0
    expected = batch["image"][0][:, known].mean(dim=1)
    torch.testing.assert_close(filled[0, :, 0, 0], expected)


@pytest.mark.slow
def test_logs_a_nested_evaluation_run_to_mlflow(sample_shards, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("training-exp")
    training = client.create_run(experiment, run_name="train").info.run_id
    ckpt = make_checkpoint(tmp_path / "run", mlflow_run_id=training, mlflow_tracking_uri=uri)
    result = _evaluate("--checkpoint", str(tmp_path / "run"),  # a run dir: its latest checkpoint
                       "--images", str(sample_shards / "test"), "--masks",
                       str(sample_shards / "masks"), "--per-bucket", "1", "--out",
                       str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    run = client.search_runs([experiment], "tags.`dina.kind` = 'evaluation'")[0]
    assert run.data.tags["mlflow.parentRunId"] == training
    assert run.data.tags["dina.source_run_id"] == training
    assert run.data.params["checkpoint"] == str(ckpt)
    assert run.info.status == "FINISHED"
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for bucket in BUCKETS + ["overall"]:
        assert run.data.metrics[f"psnr/{bucket}"] == pytest.approx(summary[bucket]["psnr"])
        assert run.data.metrics[f"ssim/{bucket}"] == pytest.approx(summary[bucket]["ssim"])
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"table.md", "metrics.json", "pairs.json"} <= artifacts


@pytest.mark.slow
def test_baseline_cli_logs_its_own_run(sample_shards, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _evaluate("--method", "telea", "--images", str(sample_shards / "test"),
                       "--masks", str(sample_shards / "masks"), "--image-size", "32",
                       "--per-bucket", "1", "--out", str(tmp_path / "out"),
                       "--tracking-uri", uri, "--experiment", "baselines")
    assert result.returncode == 0, result.stderr
    assert "| PSNR | telea |" in result.stdout
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("baselines").experiment_id])
    assert runs[0].data.params["method"] == "telea" and "psnr/50-60" in runs[0].data.metrics
    timing = json.loads((tmp_path / "out" / "timing.json").read_text())
    assert timing["images"] == 6 and timing["images_per_s"] > 0


@pytest.mark.slow
def test_bad_inputs_are_named(sample_shards, tmp_path):
    edge_only = make_checkpoint(tmp_path / "edge", stage="edge", generators=("g1",))
    texture_only = make_checkpoint(tmp_path / "texture", stage="texture", generators=("g2",))
    empty = tmp_path / "empty"
    empty.mkdir()
    images, masks = str(sample_shards / "test"), str(sample_shards / "masks")
    cases = [
        (["--images", images, "--masks", masks], "--method model needs --checkpoint"),
        (["--checkpoint", str(tmp_path / "nope"), "--images", images, "--masks", masks],
         "no complete checkpoint at"),
        (["--checkpoint", str(edge_only), "--images", images, "--masks", masks],
         "is an edge-stage checkpoint"),
        (["--checkpoint", str(texture_only), "--images", images, "--masks", masks],
         "has no edge generator G1; pass --edge-checkpoint"),
        (["--method", "mean", "--images", str(empty), "--masks", masks], "no images found in"),
        (["--method", "mean", "--images", str(tmp_path / "missing"), "--masks", masks],
         str(tmp_path / "missing")),
        (["--method", "mean", "--images", images, "--masks", str(empty)], "no images found in"),
        (["--method", "mean", "--images", images, "--masks", masks, "--batch-size", "0"],
         "--batch-size must be >= 1"),
    ]
    for args, message in cases:
        result = _evaluate(*args, "--out", str(tmp_path / "out"), "--no-mlflow")
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
    # with an edge model from another checkpoint the texture-only checkpoint evaluates
    result = _evaluate("--checkpoint", str(texture_only), "--edge-checkpoint", str(edge_only),
                       "--images", images, "--masks", masks, "--per-bucket", "1",
                       "--out", str(tmp_path / "out"), "--no-mlflow")
    assert result.returncode == 0, result.stderr


def test_plain_folders_of_any_size(tmp_path):
    from skimage import data

    from pipeline.data.masks import generate_mask

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(data.chelsea()[:200, :260]).save(images / "cat.jpg", quality=95)
    Image.fromarray(data.coffee()[:90, :90]).save(images / "coffee.png")
    rng = np.random.default_rng(0)
    for bucket in range(len(BUCKETS)):
        hole = generate_mask(rng, 32, bucket)  # at the eval size: the bucket cannot shift
        Image.fromarray(hole * 255).save(masks / f"m{bucket}.png")
    result = _evaluate("--method", "mean", "--images", str(images), "--masks", str(masks),
                       "--image-size", "32", "--out", str(tmp_path / "out"), "--no-mlflow",
                       "--save-images")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert all(metrics[b]["n"] == 2 for b in BUCKETS)
    names = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    assert len(names) == 12 and all("__" in n and n.endswith(".png") for n in names)
