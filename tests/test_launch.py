"""pipeline/launch.py without SLURM: jobs as local processes (submitit's local executor).

Real `launch.py` processes starting real trainers: refusals before anything is submitted, the
final state of failed jobs, and a chain handing every generator on (the joint chain).
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, TINY, run_cli
from tests.helpers.training import tiny_overrides


def launch(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return run_cli("launch.py", "--cluster", "local", "--logs", tmp_path / "logs", *args,
                   cwd=REPO, timeout=timeout)


def assert_refused(out: subprocess.CompletedProcess, tmp_path: Path, *needles: str) -> None:
    """Exit 2, one line naming what is wrong, and no job submitted."""
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert out.stdout == "" and not (tmp_path / "logs").exists()


def test_nodes_without_slurm_is_refused(tmp_path):
    out = launch(tmp_path, "--nodes", "2", TINY, f"train.output_dir={tmp_path}/run")
    assert_refused(out, tmp_path, "--nodes 2", "SLURM")


def test_chain_that_cannot_provide_a_stage_input_is_refused(tmp_path):
    # joint needs G2; nothing in edge,joint trains one and the config names none
    out = launch(tmp_path, "--stages", "edge,joint", TINY,
                 f"train.output_dir={tmp_path}/${{train.stage}}")
    assert_refused(out, tmp_path, "stage joint", "train.texture_checkpoint", "texture")


def test_bad_config_is_refused_in_one_line(tmp_path):
    out = launch(tmp_path, TINY, "train.no_such_key=1")
    assert_refused(out, tmp_path, "train.no_such_key")


@pytest.mark.slow
def test_wait_reports_a_failed_local_job_and_stops_the_chain(tmp_path):
    out = launch(tmp_path, "--stages", "edge,texture", "--wait", TINY,
                 f"data.train={tmp_path}/no-such-shards",
                 f"train.output_dir={tmp_path}/${{train.stage}}")
    assert out.returncode == 1, out.stdout + out.stderr
    assert re.search(r"^edge: job \d+ FAILED$", out.stdout, re.M), out.stdout
    assert "texture: not submitted" in out.stderr, out.stderr
    assert "texture: job" not in out.stdout and not (tmp_path / "texture").exists()


@pytest.mark.slow
def test_joint_chain_gets_the_edge_and_texture_checkpoints(sample_shards, tmp_path):
    overrides = tiny_overrides(sample_shards, tmp_path, **{
        "train.output_dir": f"{tmp_path}/${{train.stage}}", "train.steps": 2,
        "tracking.log_images": "false"})
    out = launch(tmp_path, "--stages", "edge,texture,joint", "--wait", TINY, *overrides)
    assert out.returncode == 0, out.stdout + out.stderr
    for stage in ("edge", "texture", "joint"):
        assert re.search(rf"^{stage}: job \d+ COMPLETED$", out.stdout, re.M), out.stdout
        assert (tmp_path / stage / "checkpoints" / "checkpoint-00000002").is_dir()
    train = yaml.safe_load((tmp_path / "joint" / "config.yaml").read_text())["train"]
    assert train["edge_checkpoint"] == f"{tmp_path}/edge"
    assert train["texture_checkpoint"] == f"{tmp_path}/texture"
    job = re.search(r"^joint: job (\d+) ", out.stdout, re.M).group(1)
    log = (tmp_path / "logs" / job / f"{job}_0_log.err").read_text()
    assert f"g1 loaded from {tmp_path}/edge/checkpoints" in log, log[-3000:]
    assert f"g2 loaded from {tmp_path}/texture/checkpoints" in log, log[-3000:]


def test_shell_scripts_take_exit_codes_and_requeue_rule_from_python():
    from pipeline.exit_codes import REQUEUE, stopped_for_requeue

    script = ('DINA_SBATCH_SCRIPT=slurm/texture.sbatch; source slurm/common.sh; '
              'echo "$REQUEUE_EXIT_CODE"; for case in "124 0" "1 1" "1 0" "0 1"; do '
              'stopped_for_requeue $case && echo requeue || echo stay; done')
    out = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True,
                         check=True)
    cases = [(124, False), (1, True), (1, False), (0, True)]
    expected = [str(REQUEUE)] + ["requeue" if stopped_for_requeue(*c) else "stay" for c in cases]
    assert out.stdout.split() == expected == [str(REQUEUE), "requeue", "requeue", "stay", "stay"]


def test_every_stage_has_its_config_and_sbatch_script():
    from pipeline.training.stage_table import STAGES

    assert {p.stem for p in (REPO / "configs" / "stage").glob("*.yaml")} == set(STAGES)
    scripts = {p.stem for p in (REPO / "slurm").glob("*.sbatch")} - {"eval"}
    assert scripts == set(STAGES)
    for name in STAGES:
        assert yaml.safe_load((REPO / "configs" / "stage" / f"{name}.yaml").read_text()
                              )["train"]["stage"] == name
        text = (REPO / "slurm" / f"{name}.sbatch").read_text()
        assert f"#SBATCH --job-name=dina-{name}\n" in text and "/stage.sh" in text
