"""compare.py and launch.py refusals, as real processes (issue 22: #9, #10, #11, #12, #19, #23).

#12 puts failing `srun`/`sbatch`/`sinfo` scripts first on PATH: what a node sees when the SLURM
controller is down (the real commands answer "Unable to contact slurm controller")."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY
from tests.helpers.training import migrated_mlflow_db

COMPARE, LAUNCH = str(REPO / "pipeline" / "compare.py"), str(REPO / "pipeline" / "launch.py")


def _run(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd or REPO, env={**os.environ, **(env or {})})


def _one_line_refusal(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def store(tmp_path) -> str:
    shutil.copy(migrated_mlflow_db(), tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.parametrize("text, needle", [
    ('rows:\n- {name: X, psnr: {"0-10": abc}}\n', "rows[0].psnr.0-10 must be a number, got 'abc'"),
    ('rows:\n- {name: X, psnr: [1, 2]}\n', "rows[0].psnr must map buckets to numbers"),
    ('rows:\n- {name: X, ssim: {"0-10": true}}\n', "must be a number, got True"),
    ('rows:\n- {name: X, psnr: {"0-10": [1\n', "is not valid YAML at line 3"),  # 19
    ("rows: [\n  {name: X,\n  psnr: : }\n", "is not valid YAML at line"),
])
def test_a_bad_reference_file_is_named_in_one_line(tmp_path, store, text, needle):
    """#10, #19."""
    (tmp_path / "r.yaml").write_text(text)
    proc = _run(COMPARE, "--reference", tmp_path / "r.yaml", "--out", tmp_path / "c",
                "--tracking-uri", store)
    _one_line_refusal(proc, str(tmp_path / "r.yaml"), needle)


def test_a_reference_that_is_a_directory_is_named(tmp_path, store):
    proc = _run(COMPARE, "--reference", tmp_path, "--out", tmp_path / "c", "--tracking-uri", store)
    _one_line_refusal(proc, f"reference file {tmp_path} cannot be read")


@pytest.mark.parametrize("where", ["a-file", "below-a-file"])
def test_compare_checks_out_first(tmp_path, store, where):
    """#9 for compare.py: refused before the runs are read (here there are none to read)."""
    (tmp_path / "f").write_text("keep me")
    out = tmp_path / "f" if where == "a-file" else tmp_path / "f" / "sub"
    proc = _run(COMPARE, "--out", out, "--tracking-uri", store)
    _one_line_refusal(proc, f"--out {out}", "give a directory")
    assert (tmp_path / "f").read_text() == "keep me"


def _launch(tmp_path: Path, *args, env=None) -> subprocess.CompletedProcess:
    return _run(LAUNCH, "--logs", tmp_path / "logs", *args, env=env)


@pytest.mark.parametrize("option, value", [("--time", "0"), ("--time", "-5"),
                                           ("--cpus-per-task", "0"),
                                           ("--array-parallelism", "0")])
def test_launch_refuses_non_positive_limits(tmp_path, option, value):
    """#11 (and its siblings)."""
    proc = _launch(tmp_path, "--cluster", "local", option, value, TINY)
    assert proc.returncode == 2 and f"{option} {value}: must be at least 1" in proc.stderr
    assert not (tmp_path / "logs").exists()


def test_launch_refuses_a_stage_given_twice(tmp_path):
    """#23: the third job of edge,texture,edge would resume a finished run and do nothing."""
    proc = _launch(tmp_path, "--cluster", "local", "--stages", "edge,texture,edge", TINY)
    assert proc.returncode == 2 and "edge given twice" in proc.stderr, proc.stderr
    assert not (tmp_path / "logs").exists()


def test_launch_takes_key_value_after_an_option(tmp_path):
    """#23: overrides after an option reach the config (here refused for the key, not as an
    unrecognized argument)."""
    proc = _launch(tmp_path, "--cluster", "local", TINY, "--wait", "train.no_such_key=1")
    _one_line_refusal(proc, "train.no_such_key")


def test_launch_with_the_slurm_controller_down_says_so_in_one_line(tmp_path):
    """#12: srun and sbatch on PATH, the controller unreachable."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("srun", "sbatch", "sinfo", "squeue", "scontrol", "sacct"):
        (fake / tool).write_text(f'#!/bin/sh\necho "{tool}: error: Unable to contact slurm '
                                 f'controller (connect failure)" >&2\nexit 1\n')
        (fake / tool).chmod(0o755)
    proc = _launch(tmp_path, "--stages", "edge", TINY, f"train.output_dir={tmp_path}/run",
                   env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"})
    _one_line_refusal(proc, "submitting stage edge to slurm failed",
                      "Unable to contact slurm controller", "nothing was submitted")
