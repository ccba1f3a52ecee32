"""The output lock under contention and with odd lock files (issue 22: #1, #7).

Real processes race for the lock: they are released together by one event, many times, and the
test fails if two of them ever hold it at once.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.training.output_lock import LOCK_NAME, OutputDirBusy, OutputLock

CTX = multiprocessing.get_context("fork")


def _contender(folder: str, go, results) -> None:
    go.wait()
    try:
        OutputLock(Path(folder)).acquire()
    except OutputDirBusy:
        results.put("busy")
        return
    results.put("acquired")
    time.sleep(0.1)  # still holding it while the others look


def _race(folder: Path, contenders: int) -> list[str]:
    go, results = CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=_contender, args=(str(folder), go, results))
             for _ in range(contenders)]
    for p in procs:
        p.start()
    time.sleep(0.05)  # every one of them waits on the event
    go.set()
    outcome = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return outcome


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("stale", [False, True], ids=["fresh-dir", "over-a-stale-lock"])
def test_contenders_started_together_never_both_win(tmp_path, stale):
    dead = _dead_pid()
    for round_ in range(40):
        folder = tmp_path / f"r{round_}"
        if stale:
            folder.mkdir()
            (folder / LOCK_NAME).write_text(json.dumps(
                {"host": socket.gethostname(), "pid": dead, "since": "earlier"}))
        outcome = _race(folder, 3)
        assert outcome.count("acquired") == 1, (round_, outcome)
        assert outcome.count("busy") == 2, (round_, outcome)
        assert not list(folder.glob(f"{LOCK_NAME}.*")), "a temporary owner file was left"


@pytest.mark.parametrize("content", ['"hi"', "5", "[1]", "null", '{"pid": "abc"}',
                                     '{"pid": null}', '{"pid": "12"}', "", "\xff\xfe"])
def test_a_lock_file_that_names_no_owner_is_taken_over(tmp_path, content):
    (tmp_path / LOCK_NAME).write_bytes(content.encode("latin-1"))
    lock = OutputLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_directory_in_place_of_the_lock_file_is_refused_naming_it(tmp_path):
    (tmp_path / LOCK_NAME).mkdir()
    with pytest.raises(OutputDirBusy, match=f"{LOCK_NAME} is not a lock file"):
        OutputLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).is_dir()
