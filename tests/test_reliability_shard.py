"""shard.py's swap of OUT and its stopping, with real processes and signals (issue 22: #5, #24)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.data_files import photo_files, read_index, run_shard

PICTURES = REPO / "ops" / "pictures"

# shard.py with os.replace wrapped: after the N-th rename it sends itself a signal
PATCHED = """
import os, runpy, sys
real, count, after, signum = os.replace, [], int(sys.argv[1]), int(sys.argv[2])
def replace(a, b):
    real(a, b)
    count.append(1)
    if len(count) == after:
        os.kill(os.getpid(), signum)
os.replace = replace
sys.argv = ["shard.py", *sys.argv[3:]]
runpy.run_path("pipeline/shard.py", run_name="__main__")
"""


def _patched(after: int, signum: int, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PATCHED, str(after), str(signum),
                           *map(str, args)], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _set(out: Path) -> dict:
    index = read_index(out)
    assert index["samples"] > 0 and all((out / s["name"]).is_file() for s in index["shards"])
    return index


@pytest.fixture
def old_set(tmp_path) -> Path:
    out = tmp_path / "o"
    run_shard("images", PICTURES, "--out", out, "--size", "32")
    return out


def test_a_signal_between_the_two_renames_is_held_until_the_swap_is_done(old_set):
    proc = _patched(1, signal.SIGTERM, "images", PICTURES, "--out", old_set, "--size", "48")
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{old_set} already holds the new, complete set" in proc.stderr
    assert _set(old_set)["size"] == 48
    assert _leftovers(old_set) == []


def test_a_kill_between_the_two_renames_is_undone_by_the_next_run(old_set, tmp_path):
    before = (old_set / "index.json").read_bytes()
    proc = _patched(1, signal.SIGKILL, "images", PICTURES, "--out", old_set, "--size", "48")
    assert proc.returncode == -signal.SIGKILL
    assert not old_set.exists()  # the instant the issue is about: OUT moved aside
    assert any(".old-" in name for name in _leftovers(old_set))
    # the next run, even one that then fails on its own input, first puts OUT back
    failed = run_shard("images", tmp_path / "missing", "--out", old_set, check=False)
    assert failed.returncode == 2, failed.stderr
    assert f"restored {old_set}" in failed.stderr
    assert (old_set / "index.json").read_bytes() == before
    assert _leftovers(old_set) == []


def test_a_kill_after_the_second_rename_leaves_the_new_set_and_the_next_run_tidies(old_set):
    proc = _patched(2, signal.SIGKILL, "images", PICTURES, "--out", old_set, "--size", "48")
    assert proc.returncode == -signal.SIGKILL
    assert _set(old_set)["size"] == 48
    again = run_shard("images", PICTURES, "--out", old_set, "--size", "40")
    assert "removed" in again.stderr
    assert _set(old_set)["size"] == 40
    assert _leftovers(old_set) == []


def test_a_running_runs_partial_set_is_not_touched(old_set):
    mine = old_set.parent / f".{old_set.name}.partial-{os.getpid()}"  # a live PID's
    mine.mkdir()
    run_shard("images", PICTURES, "--out", old_set, "--size", "40")
    assert mine.is_dir()


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory) -> Path:
    return photo_files(tmp_path_factory.mktemp("photos"), 400, 64)


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_with_workers_prints_no_traceback_and_keeps_out(old_set, many_photos, presses):
    """#24: Ctrl-C (to the whole process group, as a terminal sends it) once or twice."""
    before = (old_set / "index.json").read_bytes()
    proc = subprocess.Popen([sys.executable, str(REPO / "pipeline" / "shard.py"), "images",
                             str(many_photos), "--out", str(old_set), "--size", "32",
                             "--workers", "2", "--shard-size", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    end = time.monotonic() + 120
    while not list(old_set.parent.glob(f".{old_set.name}.partial-*/shard-000001.tar")):
        assert proc.poll() is None and time.monotonic() < end, proc.communicate()
        time.sleep(0.01)
    for _ in range(presses):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    time.sleep(0.5)  # the workers' output, if any, came through the same pipe
    assert (old_set / "index.json").read_bytes() == before
    if presses == 1:
        assert _leftovers(old_set) == []
    # after a second press a partial set may be left; the next run removes it
    run_shard("images", PICTURES, "--out", old_set, "--size", "32")
    assert _leftovers(old_set) == []
