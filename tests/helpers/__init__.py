"""What the tests share: the repository's paths, the tiny preset, and running an entry point as a
user types it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
TINY = str(REPO / "configs" / "experiment" / "tiny.yaml")


def run_cli(script: str | Path, *args, cwd=None, env=None, timeout: float = 300,
            check: bool = False) -> subprocess.CompletedProcess:
    """`python pipeline/SCRIPT ARGS...` (SCRIPT: an entry point's file name, or any script's
    path) in its own process, output captured as text; with `check`, a non-zero exit fails
    the test with the end of its stderr."""
    path = REPO / "pipeline" / script if "/" not in str(script) else script
    proc = subprocess.run([PYTHON, str(path), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{Path(script).name} failed ({proc.returncode}):\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def assert_refused(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2 without a traceback, the last line of stderr naming every needle."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, proc.stderr
