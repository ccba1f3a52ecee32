"""compare.py against a real MLflow server on loopback: two evaluation runs -> table, CSV, plot."""
import csv
import subprocess
import time

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.helpers import REPO, run_cli

BUCKETS = ["0-10", "10-20", "20-30", "30-40", "40-50", "50-60"]

pytestmark = pytest.mark.slow


def _compare(*args: str, uri: str) -> subprocess.CompletedProcess:
    return run_cli("compare.py", *args, "--tracking-uri", uri, timeout=120)


def _evaluation_run(client: MlflowClient, experiment_id: str, name: str, psnr0: float,
                    ssim0: float, status: str = "FINISHED") -> str:
    """A run shaped like evaluate.py's: tag dina.kind=evaluation, psnr/<bucket>, ssim/<bucket>."""
    run = client.create_run(experiment_id, run_name=name, tags={"dina.kind": "evaluation"})
    now = int(time.time() * 1000)
    metrics = [Metric(f"psnr/{b}", psnr0 - 2.5 * i, now, 0) for i, b in enumerate(BUCKETS)]
    metrics += [Metric(f"ssim/{b}", ssim0 - 0.05 * i, now, 0) for i, b in enumerate(BUCKETS)]
    metrics += [Metric("psnr/overall", psnr0 - 6.25, now, 0),
                Metric("ssim/overall", ssim0 - 0.125, now, 0)]
    client.log_batch(run.info.run_id, metrics=metrics)
    client.log_param(run.info.run_id, "method", name)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture(scope="module")
def two_runs(mlflow_server):
    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment("compare-test")
    ours = _evaluation_run(client, experiment_id, "ours", 33.0, 0.96)
    telea = _evaluation_run(client, experiment_id, "telea", 31.0, 0.97)
    _evaluation_run(client, experiment_id, "crashed", 99.0, 0.99, status="FAILED")
    other = client.create_run(experiment_id, run_name="training")  # not an evaluation run
    client.set_terminated(other.info.run_id, "FINISHED")
    return mlflow_server, ours, telea, other.info.run_id


def test_experiment_table_csv_plot_and_logged_run(two_runs, tmp_path):
    uri, ours, telea, _ = two_runs
    reference = tmp_path / "ref.yaml"
    reference.write_text('rows:\n  - name: "fixture row"\n'
                         '    psnr: {"0-10": 40.0, "10-20": null}\n'
                         '  - name: "empty row"\n    psnr: {"0-10": null}\n')
    result = _compare("--experiment", "compare-test", "--reference", str(reference),
                      "--out", str(tmp_path / "out"), "--log-run", uri=uri)
    assert result.returncode == 0, result.stderr
    assert "'empty row'" in result.stderr and "no values" in result.stderr

    table = (tmp_path / "out" / "table.md").read_text().splitlines()
    labels = [line.split(" | ")[1] for line in table[2:]]
    # the FAILED run is left out; the fixture row has no SSIM, so no SSIM row of dashes
    assert labels == ["ours", "telea", "fixture row", "ours", "telea"]
    assert table[2].startswith("| PSNR | ours | 33.00 | **30.50** |")
    assert table[4].startswith("| PSNR | fixture row | **40.00** | – |")
    assert table[6].startswith("| SSIM | telea | **0.9700** |")

    with (tmp_path / "out" / "table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["run"] == "ours" and float(rows[0]["10-20"]) == 30.5
    assert rows[0]["best_in"] == "10-20 20-30 30-40 40-50 50-60 overall"
    assert rows[2]["10-20"] == ""

    with Image.open(tmp_path / "out" / "plot.png") as plot:
        assert plot.size[0] > 600

    client = MlflowClient(uri)
    logged = client.search_runs([client.get_experiment_by_name("compare-test").experiment_id],
                                "tags.`dina.kind` = 'comparison'")
    assert len(logged) == 1
    names = sorted(f.path for f in client.list_artifacts(logged[0].info.run_id))
    assert names == ["plot.png", "table.csv", "table.md"]


def test_run_ids_select_runs(two_runs, tmp_path):
    uri, ours, telea, _ = two_runs
    result = _compare(telea, ours, "--out", str(tmp_path), uri=uri)
    assert result.returncode == 0, result.stderr
    labels = [line.split(" | ")[1] for line in (tmp_path / "table.md").read_text().splitlines()[2:]]
    assert labels == ["telea", "ours"] * 2


def test_filter_narrows_runs(two_runs, tmp_path):
    uri = two_runs[0]
    result = _compare("--experiment", "compare-test", "--filter", "params.method = 'ours'",
                      "--out", str(tmp_path), uri=uri)
    assert result.returncode == 0, result.stderr
    assert "telea" not in (tmp_path / "table.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["no-such-run-id"], "run 'no-such-run-id' not found"),
    (["--experiment", "nope"], "experiment 'nope' not found"),
    (["--experiment", "compare-test", "--filter", "params.method = 'none'"],
     "no finished evaluation runs"),
    (["--experiment", "compare-test", "--filter", "this is not a filter"], "bad --filter"),
    (["--reference", "/no/such.yaml"], "reference file not found"),
])
def test_bad_inputs_are_named(two_runs, tmp_path, args, message):
    result = _compare(*args, "--out", str(tmp_path), uri=two_runs[0])
    assert result.returncode != 0
    assert message in result.stderr


def test_a_training_run_is_not_an_evaluation(two_runs, tmp_path):
    uri, _, _, training = two_runs
    result = _compare(training, "--out", str(tmp_path), uri=uri)
    assert result.returncode != 0 and "is it an evaluation run?" in result.stderr


def test_bad_reference_bucket_is_named(two_runs, tmp_path):
    reference = tmp_path / "ref.yaml"
    reference.write_text('rows:\n  - name: x\n    psnr: {"60-70": 20.0}\n')
    result = _compare("--experiment", "compare-test", "--reference", str(reference),
                      "--out", str(tmp_path), uri=two_runs[0])
    assert result.returncode != 0 and "unknown bucket '60-70'" in result.stderr


def test_shipped_reference_files_parse(two_runs, tmp_path):
    references = [str(REPO / "configs" / "reference" / name)
                  for name in ("paper_paris.yaml", "paper_celeba_hq.yaml")]
    result = _compare("--experiment", "compare-test", "--reference", references[0],
                      "--reference", references[1], "--out", str(tmp_path), uri=two_runs[0])
    assert result.returncode == 0, result.stderr


def test_a_run_without_metrics_is_skipped_with_a_warning(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment("compare-skip")
    _evaluation_run(client, experiment_id, "scored", 30.0, 0.9)
    empty = client.create_run(experiment_id, run_name="no-metrics",
                              tags={"dina.kind": "evaluation"})
    client.set_terminated(empty.info.run_id, "FINISHED")
    result = _compare("--experiment", "compare-skip", "--out", str(tmp_path), uri=mlflow_server)
    assert result.returncode == 0, result.stderr
    assert empty.info.run_id in result.stderr and "left out" in result.stderr
    labels = [line.split(" | ")[1] for line in (tmp_path / "table.md").read_text().splitlines()[2:]]
    assert labels == ["scored", "scored"]


def test_paper_rows_print_beside_the_runs_best_marked(two_runs, tmp_path):
    reference = str(REPO / "configs" / "reference" / "paper_paris.yaml")
    result = _compare("--experiment", "compare-test", "--reference", reference,
                      "--out", str(tmp_path), uri=two_runs[0])
    assert result.returncode == 0, result.stderr
    rows = {tuple(line.split(" | ")[:2]): line for line in result.stdout.splitlines()
            if line.startswith("| PSNR") or line.startswith("| SSIM")}
    assert {label for _, label in rows} == {"ours", "telea", "GC (gated conv)",
                                            "EC (EdgeConnect)", "MADF", "DiNA (paper)"}
    # the paper's DiNA row has the best PSNR in every bucket of Table 1
    assert rows[("| PSNR", "DiNA (paper)")].startswith(
        "| PSNR | DiNA (paper) | **36.94** | **31.34** | **28.09** | **25.89** | **24.53** | "
        "**22.25** |")
