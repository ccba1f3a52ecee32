"""evaluate.py and shard.py masks as a hostile user drives them (issue 22: #2, #6, #8, #9, #13,
#22): real processes, real files, a real MLflow store."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO, assert_refused, run_cli
from tests.helpers.data_files import photo, photo_files, run_shard
from tests.helpers.training import migrated_mlflow_db

EVALUATE = [sys.executable, str(REPO / "pipeline" / "evaluate.py")]
PICTURES = REPO / "ops" / "pictures"


def _run(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_cli("evaluate.py", *args, timeout=timeout)


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([*EVALUATE, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """120 plain 32 px image files: an evaluation long enough (720 pairs) to be caught mid-run."""
    return photo_files(tmp_path_factory.mktemp("many"), 120, 32, prefix="img")


def _wait_for(condition, proc, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_a_second_evaluation_on_the_same_out_is_refused(sample_shards, many_images, tmp_path):
    """#2: while one evaluation owns --out, another is refused naming the owner; the owner's
    files and its MLflow run hold its own numbers."""
    shutil.copy(migrated_mlflow_db(), tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "ev"
    common = ["--image-size", "32", "--masks", sample_shards / "masks", "--out", out,
              "--tracking-uri", uri, "--batch-size", "1"]
    first = _start("--method", "mean", "--images", many_images, "--run-name", "mean", *common)
    try:
        _wait_for(lambda: (out / ".owner.json").exists(), first)
        os.kill(first.pid, signal.SIGSTOP)  # it holds --out for as long as the test needs
        second = _run("--method", "telea", "--images", sample_shards / "test", "--run-name",
                      "telea", *common)
        os.kill(first.pid, signal.SIGCONT)
        assert_refused(second, f"--out {out} is in use by PID {first.pid}")
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        first.kill()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("dina-inpaint").experiment_id])
    assert [r.info.run_name for r in runs] == ["mean"]
    from pipeline.evaluation.tables import flat_metrics

    saved = flat_metrics(json.loads((out / "metrics.json").read_text()))
    assert saved and runs[0].data.metrics == pytest.approx(saved)
    artifact = client.download_artifacts(runs[0].info.run_id, "metrics.json", str(tmp_path))
    assert Path(artifact).read_bytes() == (out / "metrics.json").read_bytes()
    assert json.loads((out / "pairs.json").read_text())[0]["image_key"].startswith("img")
    assert not (out / ".owner.json").exists()


def test_photos_given_as_masks_are_refused(sample_shards, tmp_path):
    """#6: evaluate.py --masks and shard.py masks refuse photos, as inpaint.py does."""
    proc = _run("--method", "mean", "--image-size", "32", "--images", sample_shards / "test",
                "--masks", PICTURES, "--out", tmp_path / "ev", "--no-mlflow")
    assert_refused(proc, "no usable masks", "not a mask")
    assert not (tmp_path / "ev").exists()  # a refused run leaves no trace
    proc = run_shard("masks", PICTURES, "--out", tmp_path / "m", "--size", "32", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "not a mask" in proc.stderr
    index = json.loads((tmp_path / "m" / "index.json").read_text())
    assert index["samples"] == 0 and all("not a mask" in s["reason"] for s in index["skipped"])


def test_real_masks_with_jpeg_ringing_are_still_masks(tmp_path):
    from pipeline.data.masks import load_mask

    hole = np.zeros((64, 64), np.uint8)
    hole[10:40, 20:50] = 255
    Image.fromarray(hole).save(tmp_path / "m.jpg", quality=90)
    assert load_mask(tmp_path / "m.jpg", 32).sum() > 0


def test_an_undecodable_image_is_skipped_and_counted(sample_shards, tmp_path):
    """#8: one bad .png among the test images: skipped with a message and counted."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(photo(32, seed=i)).save(images / f"ok{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    proc = _run("--method", "mean", "--image-size", "32", "--images", images,
                "--masks", sample_shards / "masks", "--out", tmp_path / "ev", "--no-mlflow")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"skipped {images / 'broken.png'}" in proc.stderr
    assert "1 unreadable images skipped" in proc.stdout
    timing = json.loads((tmp_path / "ev" / "timing.json").read_text())
    assert [s["path"] for s in timing["skipped_images"]] == [str(images / "broken.png")]
    assert timing["images"] == 3 * 6


@pytest.mark.parametrize("where", ["a-file", "below-a-file"])
def test_a_bad_out_is_refused_before_any_work(sample_shards, tmp_path, where):
    """#9: --out an existing file or below one: refused at once, naming it."""
    (tmp_path / "f").write_text("keep me")
    out = tmp_path / "f" if where == "a-file" else tmp_path / "f" / "sub"
    proc = _run("--method", "mean", "--image-size", "32", "--images", sample_shards / "test",
                "--masks", sample_shards / "masks", "--out", out, "--no-mlflow")
    assert_refused(proc, f"--out {out}")
    assert "images in" not in proc.stdout  # no evaluation ran
    assert (tmp_path / "f").read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_an_unwritable_out_is_refused_before_any_work(sample_shards, tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o555)
    proc = _run("--method", "mean", "--image-size", "32", "--images", sample_shards / "test",
                "--masks", sample_shards / "masks", "--out", locked / "ev", "--no-mlflow")
    assert_refused(proc, f"--out {locked / 'ev'}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_run_leaves_out_as_it_was(sample_shards, many_images, tmp_path, signum):
    """#13, #22: Ctrl-C or SIGTERM mid-evaluation: one line, 128+signal, and --out keeps the
    previous run's results with none of this run's images beside them."""
    out = tmp_path / "ev"
    common = ["--method", "mean", "--image-size", "32", "--masks", sample_shards / "masks",
              "--out", out, "--no-mlflow", "--save-images"]
    done = _run(*common, "--images", sample_shards / "test")
    assert done.returncode == 0, done.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    images_before = sorted(p.name for p in (out / "images").iterdir())
    proc = _start(*common, "--images", many_images, "--batch-size", "1")
    _wait_for(lambda: any(out.glob(".partial-*/images/*.png")), proc)
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "interrupted" in err.strip().splitlines()[-1], err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in (out / "images").iterdir()) == images_before
    assert not list(out.glob(".partial-*"))


def test_a_run_killed_while_moving_its_results_in_is_recovered(sample_shards, tmp_path):
    """Sibling of #5 in evaluate.py: the images/ swap is two renames too; what a kill between
    them leaves is put back by the next run on that --out."""
    out = tmp_path / "ev"
    common = ["--method", "mean", "--image-size", "32", "--images", sample_shards / "test",
              "--masks", sample_shards / "masks", "--out", out, "--no-mlflow"]
    assert _run(*common, "--save-images").returncode == 0
    images = sorted(p.name for p in (out / "images").iterdir())
    dead = out / ".partial-999999999"  # as a run killed after the first rename leaves it
    dead.mkdir()
    os.replace(out / "images", dead / "images.old")
    proc = _run(*common)
    assert proc.returncode == 0, proc.stderr
    assert f"restored {out / 'images'}" in proc.stderr
    assert sorted(p.name for p in (out / "images").iterdir()) == images
    assert not list(out.glob(".partial-*"))


@pytest.mark.parametrize("option, value", [("--image-size", "0"), ("--image-size", "-3"),
                                           ("--num-workers", "-1")])
def test_evaluate_refuses_sizes_that_would_mean_something_else(sample_shards, tmp_path, option,
                                                                value):
    """Sibling of #11: --image-size 0 silently meant the default, 256."""
    proc = _run("--method", "mean", "--images", sample_shards / "test", "--masks",
                sample_shards / "masks", "--out", tmp_path / "ev", "--no-mlflow", option, value)
    assert proc.returncode == 2 and f"{option} {value}: must be" in proc.stderr, proc.stderr
    assert not (tmp_path / "ev").exists()
