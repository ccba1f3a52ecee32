"""What a user finds in MLflow after a tiny training and an evaluation, read back through the
client from a real `mlflow server` on loopback: dataset inputs, run name and source, the
checkpoint table, the logged model (loaded and run on one image), system metrics, and the
evaluation linked to the model. Plus the documented log/register command and URI checkpoints."""
import hashlib
import json
import os
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.helpers import REPO, TINY, run_cli
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.training import tiny_overrides

pytestmark = pytest.mark.slow

TRAIN, EVALUATE = str(REPO / "pipeline" / "train.py"), str(REPO / "pipeline" / "evaluate.py")
INPAINT, LOG_MODEL = str(REPO / "pipeline" / "inpaint.py"), str(REPO / "pipeline" / "log_model.py")


def _run(*args: str, cwd: Path, env=None) -> subprocess.CompletedProcess:
    """A CLI as its own process, in `cwd` (a default ./mlflow.db must not land in the repo)."""
    return run_cli(args[0], *args[1:], cwd=cwd, env=env)


@pytest.fixture(scope="module")
def trained(mlflow_server, sample_shards, tmp_path_factory):
    """A texture run (G1 carried from an edge checkpoint) and its evaluation from runs:/RUN."""
    out = tmp_path_factory.mktemp("records")
    edge = make_checkpoint(out / "edge", stage="edge", generators=("g1",))
    overrides = [o for o in tiny_overrides(sample_shards, out) if not o.startswith("tracking.uri")]
    train = _run(TRAIN, TINY, *overrides, "train.stage=texture", f"train.edge_checkpoint={edge}",
                 f"tracking.uri={mlflow_server}", "tracking.experiment=records",
                 "tracking.system_metrics_interval=0.5", cwd=out)
    assert train.returncode == 0, train.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("records").experiment_id
    (run,) = client.search_runs([experiment], "tags.stage = 'texture'")
    evaluation = _run(EVALUATE, "--checkpoint", f"runs:/{run.info.run_id}",
                      "--images", str(sample_shards / "test"), "--masks",
                      str(sample_shards / "masks"), "--out", str(out / "eval"),
                      "--per-bucket", "1", "--tracking-uri", mlflow_server, cwd=out)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    (eval_run,) = client.search_runs([experiment], "tags.`dina.kind` = 'evaluation'")
    return {"client": client, "uri": mlflow_server, "run": run, "eval": eval_run,
            "out": out, "shards": sample_shards}


def _inputs(run) -> dict[str, tuple[str, str]]:
    """{dataset name: (digest, context)} of a run's dataset inputs."""
    return {d.dataset.name: (d.dataset.digest, {t.key: t.value for t in d.tags}[
        "mlflow.data.context"]) for d in run.inputs.dataset_inputs}


def test_runs_show_their_datasets(trained):
    train, evaluation = _inputs(trained["run"]), _inputs(trained["eval"])
    assert {k: v[1] for k, v in train.items()} == {
        "sample-train": "training", "sample-masks": "training", "sample-val": "validation"}
    assert len({digest for digest, _ in train.values()}) == 3  # three different shard sets
    # the evaluation read the same test shards the training validated on: same digest
    assert evaluation[f"{trained['shards'].name}-test"][0] == train["sample-val"][0]
    assert evaluation[f"{trained['shards'].name}-masks"][0] == train["sample-masks"][0]


def test_run_name_and_source_say_what_ran(trained):
    run = trained["run"]
    experiment = trained["client"].get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # UI: runs
    assert run.info.run_name.startswith("texture-sample-reference-")
    assert run.data.tags["mlflow.source.name"].endswith("train.py")
    assert run.data.tags["mlflow.source.type"] == "LOCAL"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    assert run.data.tags.get("mlflow.source.git.commit") == (commit or None)


def test_every_checkpoint_is_recorded(trained):
    client, run = trained["client"], trained["run"]
    table = json.loads(Path(client.download_artifacts(
        run.info.run_id, "checkpoints.json", str(trained["out"]))).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [r["step"] for r in rows] == [2, 4] and {r["reason"] for r in rows} == {"periodic"}
    for row in rows:
        weights = Path(row["path"]) / "generators.safetensors"
        assert row["kept"] and row["generators_sha256"] == hashlib.sha256(
            weights.read_bytes()).hexdigest()
    assert run.data.tags["last_checkpoint"] == rows[-1]["path"]


def test_logged_model_loads_and_inpaints_one_image(trained):
    client, run = trained["client"], trained["run"]
    (output,) = run.outputs.model_outputs
    assert output.step == 4
    model = client.get_logged_model(output.model_id)
    assert model.source_run_id == run.info.run_id and model.status == LoggedModelStatus.READY
    mlflow.set_tracking_uri(trained["uri"])
    inpainter = mlflow.pyfunc.load_model(f"models:/{output.model_id}")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    hole = np.zeros((32, 32), dtype=bool)
    hole[8:20, 10:24] = True
    result = inpainter.predict({"image": image, "mask": hole})
    assert result.shape == (1, 32, 32, 3) and result.dtype == np.uint8
    assert (result[0][~hole] == image[~hole]).all()  # known pixels kept
    assert (result[0][hole] != image[hole]).any()  # the hole was filled by the networks
    # MLflow links the run's metrics at the logged step, and the evaluation's, to the model
    keys = {m.key for m in model.metrics}
    assert {"val/psnr/overall", "psnr/overall", "ssim/10-20"} <= keys


def test_evaluation_is_linked_to_the_model(trained):
    evaluation = trained["client"].get_run(trained["eval"].info.run_id)  # search omits models
    run = trained["run"]
    assert evaluation.data.tags["mlflow.parentRunId"] == run.info.run_id
    assert evaluation.data.tags["mlflow.source.name"].endswith("evaluate.py")
    assert [m.model_id for m in evaluation.inputs.model_inputs] == [
        run.outputs.model_outputs[0].model_id]


def test_system_metrics_are_logged(trained):
    metrics = trained["run"].data.metrics
    assert {"system/cpu_utilization_percentage",
            "system/system_memory_usage_megabytes"} <= set(metrics)


def test_register_and_inpaint_from_the_registry(trained, tmp_path):
    model_id = trained["run"].outputs.model_outputs[0].model_id
    uri = trained["uri"]
    registered = _run(LOG_MODEL, f"models:/{model_id}", "--register", "dina-records",
                      "--tracking-uri", uri, cwd=tmp_path)
    assert registered.returncode == 0, registered.stderr
    assert "models:/dina-records/1" in registered.stdout
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    mask = np.zeros((40, 30), dtype=np.uint8)
    mask[10:25, 5:20] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    result = _run(INPAINT, "--checkpoint", "models:/dina-records/1", "--image",
                  str(tmp_path / "a.png"), "--mask", str(tmp_path / "m.png"), "--out",
                  str(tmp_path / "out.png"), "--device", "cpu", cwd=tmp_path,
                  env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "out.png").size == (30, 40)


def test_log_model_logs_a_given_checkpoint(trained, tmp_path):
    client, run = trained["client"], trained["run"]
    first = Path(run.data.tags["last_checkpoint"]).parent / "checkpoint-00000002"
    logged = _run(LOG_MODEL, str(first), "--tracking-uri", trained["uri"], cwd=tmp_path)
    assert logged.returncode == 0, logged.stderr
    outputs = client.get_run(run.info.run_id).outputs.model_outputs
    assert sorted(o.step for o in outputs) == [2, 4]


@pytest.mark.parametrize("source, message", [
    ("runs:/0123456789abcdef", "runs:/0123456789abcdef: cannot read the run"),
    ("models:/m-nope", "models:/m-nope: cannot download"),
])
def test_bad_model_uri_is_named(trained, tmp_path, source, message):
    result = _run(EVALUATE, "--checkpoint", source, "--images", str(trained["shards"] / "test"),
                  "--masks", str(trained["shards"] / "masks"), "--out", str(tmp_path),
                  "--tracking-uri", trained["uri"], cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr


def test_system_metrics_and_model_can_be_switched_off(sample_shards, tmp_path):
    edge = make_checkpoint(tmp_path / "edge", stage="edge", generators=("g1",))
    overrides = tiny_overrides(sample_shards, tmp_path)
    result = _run(TRAIN, TINY, *overrides, f"train.edge_checkpoint={edge}", "train.steps=2",
                  "tracking.system_metrics=false", "tracking.log_model=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("dina-tests").experiment_id])
    assert not [k for k in run.data.metrics if k.startswith("system/")]
    assert not run.outputs.model_outputs
    assert "val/psnr/overall" in run.data.metrics


def test_an_experiment_created_by_a_run_starting_alongside_is_joined(tmp_path):
    """Two runs start at once on a new experiment: both see none, the second's create fails
    because the first's landed in between; it joins that experiment instead of failing."""
    from pipeline.tracking.runs import experiment_id

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    class LateClient(MlflowClient):
        def get_experiment_by_name(self, name):
            found = super().get_experiment_by_name(name)
            if found is None and not hasattr(self, "raced"):
                self.raced = MlflowClient(uri).create_experiment(name)  # the other run
            return found

    client = LateClient(uri)
    assert experiment_id(client, "side-by-side") == client.raced
    assert experiment_id(MlflowClient(uri), "side-by-side") == client.raced
