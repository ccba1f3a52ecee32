"""The logged model, inpaint.py and log_model.py against a real MLflow store, and commands facing
an MLflow server that does not answer (issue 22: #3, #4, #15, #17, #18, #21)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO, assert_refused, run_cli
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.mlflow_server import free_port
from tests.helpers.training import migrated_mlflow_db

LOG_MODEL, INPAINT = str(REPO / "pipeline" / "log_model.py"), str(REPO / "pipeline" / "inpaint.py")
EVALUATE = str(REPO / "pipeline" / "evaluate.py")


def _run(*args, cwd: Path, env: dict | None = None, timeout: int = 300):
    return run_cli(args[0], *args[1:], cwd=cwd, timeout=timeout,
                   env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny checkpoint of a real MLflow run (sqlite), logged as a model by log_model.py."""
    import mlflow

    root = tmp_path_factory.mktemp("logged")
    shutil.copy(migrated_mlflow_db(), root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("reliability",
                                                     artifact_location=str(root / "artifacts")))
    ckpt = make_checkpoint(root / "run", mlflow_run_id=run.info.run_id,
                           mlflow_tracking_uri=uri, ema_seed=1)
    proc = _run(LOG_MODEL, ckpt, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "Add type hints" not in proc.stderr  # #21
    model_uri = proc.stdout.split(" as ")[-1].strip()
    return {"root": root, "uri": uri, "run_id": run.info.run_id, "model": model_uri,
            "checkpoint": ckpt}


@pytest.fixture(scope="module")
def model(logged):
    import mlflow

    mlflow.set_tracking_uri(logged["uri"])
    return mlflow.pyfunc.load_model(logged["model"])


def _inputs(n: int = 1):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    mask = np.zeros((n, 32, 32), np.uint8)
    mask[:, 8:20, 8:20] = 1
    return image, mask


def test_predict_takes_uint8_and_lossless_integer_images(model):
    image, mask = _inputs(2)
    out = model.predict({"image": image, "mask": mask})
    assert out.dtype == np.uint8 and out.shape == (2, 32, 32, 3)
    assert np.array_equal(out[:, mask[0] == 0], image[:, mask[0] == 0])  # known pixels kept
    image.setflags(write=False)  # a read-only input is fine too
    assert np.array_equal(model.predict({"image": image.astype(np.int64), "mask": mask}), out)


@pytest.mark.parametrize("case, message", [
    ("float01", "must be uint8"), ("wraps", "must lie in 0..255"), ("nan", "must be uint8"),
    ("gray", "grayscale"), ("empty", "N = 0"), ("all-hole", "all hole"),
    ("nan-mask", "mask holds NaN"),
])
def test_predict_refuses_what_it_would_silently_get_wrong(model, case, message):
    """#3, #17, #18: no silent cast, no black image for an all-hole mask, messages that say
    what was given."""
    image, mask = _inputs()
    given = {
        "float01": {"image": image / 255.0, "mask": mask},
        "wraps": {"image": image.astype(np.int64) + 256, "mask": mask},
        "nan": {"image": np.full((1, 32, 32, 3), np.nan), "mask": mask},
        "gray": {"image": image[..., 0].repeat(2, 0), "mask": mask.repeat(2, 0)},
        "empty": {"image": image[:0], "mask": mask[:0]},
        "all-hole": {"image": image, "mask": np.ones_like(mask)},
        "nan-mask": {"image": image, "mask": np.full((1, 32, 32), np.nan)},
    }[case]
    with pytest.raises(Exception, match=message) as err:
        model.predict(given)
    if case == "gray":
        assert "(2, 32, 32)" in str(err.value)


def _image_and_mask(folder: Path, hole: str) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(folder / "a.png")
    mask = np.zeros((40, 30), np.uint8)
    if hole == "all":
        mask[:] = 255
    else:
        mask[10:25, 5:20] = 255
    Image.fromarray(mask).save(folder / f"m-{hole}.png")
    return folder / "a.png", folder / f"m-{hole}.png"


def test_inpaint_says_which_weights_and_warns_nothing(logged, tmp_path):
    """#21: EMA or raw named; no read-only-array or MLflow type-hint warning."""
    image, mask = _image_and_mask(tmp_path, "part")
    for flag, named in ([], "EMA weights"), (["--raw-weights"], "raw weights (--raw-weights)"):
        proc = _run(INPAINT, "--checkpoint", logged["checkpoint"], "--image", image, "--mask",
                    mask, "--out", tmp_path / "o.png", "--device", "cpu", *flag, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert named in proc.stdout
        assert "Warning" not in proc.stderr, proc.stderr


def test_inpaint_refuses_an_all_hole_mask(logged, tmp_path):
    """#17: nothing known to inpaint from: exit 2, not a black image."""
    image, mask = _image_and_mask(tmp_path, "all")
    proc = _run(INPAINT, "--checkpoint", logged["checkpoint"], "--image", image, "--mask", mask,
                "--out", tmp_path / "o.png", "--device", "cpu", cwd=tmp_path)
    assert_refused(proc, "all hole", str(mask))
    assert not (tmp_path / "o.png").exists()


def test_log_model_bad_ids_exit_2_and_a_run_uri_registers(logged, tmp_path):
    """#15: an unknown model or run is bad input (2); runs:/RUN --register registers the run's
    logged model."""
    uri = ["--tracking-uri", logged["uri"]]
    assert_refused(_run(LOG_MODEL, "models:/m-nope", "--register", "x", *uri, cwd=tmp_path),
             "models:/m-nope", "no such model")
    assert_refused(_run(LOG_MODEL, logged["checkpoint"], "--run-id", "0123abc", *uri, cwd=tmp_path),
             "--run-id 0123abc", "not found")
    assert_refused(_run(LOG_MODEL, "runs:/0123abc", "--register", "x", *uri, cwd=tmp_path),
             "runs:/0123abc")
    import mlflow

    assert not mlflow.MlflowClient(logged["uri"]).search_registered_models()  # nothing half-made
    done = _run(LOG_MODEL, f"runs:/{logged['run_id']}", "--register", "rel", *uri, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "as models:/rel/1" in done.stdout


@pytest.mark.parametrize("command", ["log_model", "inpaint", "evaluate-runs", "evaluate-log"])
def test_an_unreachable_server_is_named_at_once_and_waited_for_a_bounded_time(
        logged, tmp_path, command):
    """#4: a first line within seconds naming the server, a wait of $DINA_MLFLOW_WAIT_S, then
    exit 2 naming the server, before any work."""
    server = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    image, mask = _image_and_mask(tmp_path, "part")
    shards = REPO / "ops" / "pictures"
    args = {
        "log_model": [LOG_MODEL, logged["checkpoint"], "--tracking-uri", server],
        "inpaint": [INPAINT, "--checkpoint", "runs:/0123abc", "--image", image, "--mask", mask,
                    "--out", tmp_path / "o.png", "--device", "cpu"],
        "evaluate-runs": [EVALUATE, "--checkpoint", "runs:/0123abc", "--images", shards,
                          "--masks", tmp_path, "--out", tmp_path / "ev",
                          "--tracking-uri", server],
        "evaluate-log": [EVALUATE, "--method", "mean", "--image-size", "32",
                         "--images", image, "--masks", mask, "--out", tmp_path / "ev",
                         "--tracking-uri", server],
    }[command]
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "DINA_MLFLOW_WAIT_S": "4",
                                 "MLFLOW_TRACKING_URI": server})
    first = ""
    while "waiting" not in first:  # past any data warnings, to the line about the server
        line = proc.stderr.readline()
        first += line
        if not line:
            break
    first_at = time.monotonic() - start
    out, rest = proc.communicate(timeout=120)
    took = time.monotonic() - start
    assert f"waiting up to 4 s for the MLflow server at {server}" in first, first + rest
    assert first_at < 30  # the imports, then at once
    assert took < first_at + 15, took
    proc.stderr = first + rest
    assert_refused(proc, server, "did not answer within 4 s")
    assert "images in" not in out
