"""An evaluation's --out folder: checked writable before any work, results written to a staging
folder inside it and moved in as a set, so that an interrupted or failed run leaves the earlier
results as they were, and what a killed run left is tidied by the next one."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline.evaluation.results import RESULT_FILES
from pipeline.stop_signals import held_stop_signals


class OutputFolderError(ValueError):
    """--out cannot take the results; the message says why."""


def check_out(out: Path) -> None:
    """--out must be, or become, a writable directory: checked before any work is done."""
    folder = out
    while not (folder.exists() or folder.is_symlink()):
        folder = folder.parent
    if not folder.is_dir():
        what = "is a file" if folder == out else f"is below the file {folder}"
        raise OutputFolderError(f"--out {out} {what}; give a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass  # a real probe: permission bits say nothing for root or read-only mounts
    except OSError as err:
        raise OutputFolderError(f"--out {out}: cannot write there: {err.strerror or err}"
                                ) from None


def staging_folder(out: Path) -> Path:
    return out / f".partial-{os.getpid()}"


def recover_staging(out: Path, who: str) -> None:
    """With --out's lock held, any `.partial-PID` in it is a dead run's: a run killed while
    moving its results in may have left the earlier images/ there, which go back first."""
    for partial in sorted(out.glob(".partial-*")):
        old_images = partial / "images.old"
        if old_images.is_dir() and not (out / "images").exists():
            os.replace(old_images, out / "images")
            print(f"{who}: restored {out / 'images'} from {old_images} (a run killed while "
                  f"replacing it)", file=sys.stderr)
        shutil.rmtree(partial, ignore_errors=True)


def commit_results(staging: Path, out: Path, with_images: bool) -> None:
    """Move the finished results from `staging` into --out, replacing an earlier run's."""
    with held_stop_signals():
        for name in RESULT_FILES:
            os.replace(staging / name, out / name)
        if with_images:
            old = staging / "images.old"
            if (out / "images").exists():
                os.replace(out / "images", old)
            os.replace(staging / "images", out / "images")
