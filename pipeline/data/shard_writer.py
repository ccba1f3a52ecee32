"""Writing a shard set: tar shards with fixed metadata (equal input, equal sha256), the set's
index.json (every input either a sample or a skipped entry with its reason), and the swap that
replaces OUT only with a complete new set.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shlex
import shutil
import sys
import tarfile
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Generator, Iterator, Optional

from pipeline.data.masks import BUCKETS, bucket_name
from pipeline.data.samples import Result
from pipeline.data.shards import OWN_FILE, SHARD_PATTERN
from pipeline.stop_signals import held_stop_signals


class ShardError(RuntimeError):
    """Nothing usable was written; the message says why."""


class NoSamplesError(ShardError):
    """Every input was skipped."""


class ShardWriter:
    """Tar shards of `shard_size` samples; fixed tar metadata so equal input gives equal sha256."""

    def __init__(self, out: Path, shard_size: int):
        self.out, self.shard_size = out, shard_size
        self.shards: list[dict] = []
        self._tar: Optional[tarfile.TarFile] = None
        self._count = 0

    def add(self, key: str, files: dict) -> None:
        if self._tar is None:
            name = SHARD_PATTERN.format(len(self.shards))
            self._tar = tarfile.open(self.out / name, "w", format=tarfile.USTAR_FORMAT)
            self._name, self._count = name, 0
        for ext, data in files.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        if self._count == self.shard_size:
            self._finish()

    def _finish(self) -> None:
        self._tar.close()
        digest = hashlib.sha256((self.out / self._name).read_bytes()).hexdigest()
        self.shards.append({"name": self._name, "samples": self._count, "sha256": digest})
        self._tar = None

    def close(self) -> list[dict]:
        if self._tar is not None:
            self._finish()
        return self.shards


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _no_space(out: Path, done: int, inputs: int) -> ShardError:
    """The out-of-disk message: how much this set needs (extrapolated) and how much is free."""
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    needed = written * inputs / max(done, 1)
    free = shutil.disk_usage(out).free + written  # the partial set is removed on the way out
    return ShardError(f"no space left on device for --out: the new set needs about "
                      f"{_mib(needed)} ({_mib(written)} for {done} of {inputs} inputs), "
                      f"{_mib(free)} are free; the old OUT stays until the new one is complete, "
                      f"so both must fit")


def write_set(out: Path, results: Generator[Result, None, None], skipped: list[dict],
              inputs: int, shard_size: int, info: dict) -> dict:
    """Write results (from run_parallel) to shards in order into the new folder `out`; returns
    (and saves) the index."""
    out.mkdir(parents=True)
    writer = ShardWriter(out, shard_size)
    skipped = list(skipped)
    buckets = [0] * len(BUCKETS)
    done = 0
    try:
        with closing(results):  # on an error, too: its progress bar ends before the message
            for done, result in enumerate(results, start=1):
                if result.files is None:
                    skipped.append({"path": result.source, "reason": result.reason})
                    continue
                writer.add(result.key, result.files)
                if result.meta is not None and "bucket" in result.meta:
                    buckets[result.meta["bucket"]] += 1
        shards = writer.close()
        index = {**info, "inputs": inputs, "samples": sum(s["samples"] for s in shards),
                 "shards": shards, "skipped": skipped, "command": shlex.join(sys.argv)}
        if info.get("kind") == "masks":
            index["buckets"] = {bucket_name(i): n for i, n in enumerate(buckets)}
        (out / "index.json").write_text(json.dumps(index, indent=1))
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise _no_space(out, done, inputs) from None
        raise
    return index


def _foreign(path: Path) -> list[Path]:
    """What under `path` shard.py did not write (its own: shards, index.json, split folders)."""
    if not path.is_dir():
        return [path]
    found = []
    for child in sorted(path.iterdir()):
        if child.is_dir() and not child.is_symlink():
            found += _foreign(child)
        elif not OWN_FILE.match(child.name):
            found.append(child)
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _leftovers(out: Path, kind: str) -> list[tuple[Path, int]]:
    """(path, pid) of `.OUT.<kind>-PID` siblings whose shard.py process is gone."""
    found = []
    if not out.parent.is_dir():
        return found
    prefix = f".{out.name}.{kind}-"
    for path in out.parent.iterdir():  # not glob: OUT's name may hold [ or *
        if not path.name.startswith(prefix):
            continue
        pid = path.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            found.append((path, int(pid)))
    return found


def recover_swap(out: Path) -> None:
    """Undo what a shard.py killed mid-swap left (the swap is two renames: OUT -> .OUT.old-PID,
    then .OUT.partial-PID -> OUT). With OUT missing, its old set is moved back; with OUT there,
    the swap had finished and the old set is removed; a killed run's partial set is removed."""
    for old, pid in sorted(_leftovers(out, "old"), key=lambda e: e[0].stat().st_mtime,
                           reverse=True):
        if not (out.exists() or out.is_symlink()):
            os.replace(old, out)
            print(f"shard.py: restored {out} from {old} (its previous set, moved aside by "
                  f"shard.py PID {pid}, which stopped before the new set took its place)",
                  file=sys.stderr)
        else:
            shutil.rmtree(old, ignore_errors=True)
            print(f"shard.py: removed {old} (the set {out} held before shard.py PID {pid} "
                  f"replaced it)", file=sys.stderr)
    for unfinished, pid in _leftovers(out, "partial"):
        shutil.rmtree(unfinished, ignore_errors=True)
        print(f"shard.py: removed {unfinished} (an unfinished set of shard.py PID {pid})",
              file=sys.stderr)


@contextmanager
def replaced_when_complete(out: Path) -> Iterator[Path]:
    """A fresh temporary sibling of OUT to write into; it replaces OUT only when the block
    succeeds. On any error or interruption it is removed and OUT is left as it was; only where
    OUT holds no shards, a set without samples still goes in for its index.json (it says why).
    What an earlier run killed mid-swap left is recovered first (recover_swap)."""
    recover_swap(out)
    existed = out.exists() or out.is_symlink()
    if existed:
        foreign = _foreign(out)
        if foreign:
            raise ShardError(f"--out {out} holds files shard.py did not write (e.g. "
                             f"{foreign[0]}); give a new folder or a shard folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    swapped = []

    def swap_in() -> None:
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        # a stop signal between the two renames waits until both are done (a SIGKILL there is
        # undone by the next run's recover_swap)
        with held_stop_signals():
            if existed:
                os.replace(out, old)
            os.replace(staging, out)
            swapped.append(True)
            shutil.rmtree(old, ignore_errors=True)

    try:
        try:
            yield staging
            swap_in()
        except NoSamplesError as err:
            if existed and any(out.rglob("shard-*.tar")):
                raise NoSamplesError(f"{err}; {out} is unchanged") from None
            swap_in()
            raise NoSamplesError(f"{err}; {out / 'index.json'} lists them") from None
    except KeyboardInterrupt as err:
        if swapped:  # the signal came during the swap and was held until it was complete
            raise KeyboardInterrupt(err.args[0] if err.args else "Ctrl-C",
                                    f"{out} already holds the new, complete set") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def report(out: Path, index: dict) -> None:
    print(f"{out}: {index['samples']} samples in {len(index['shards'])} shards, "
          f"{len(index['skipped'])} skipped (of {index['inputs']} inputs)", file=sys.stderr)
    for item in index["skipped"][:10]:
        print(f"  skipped {item['path']}: {item['reason']}", file=sys.stderr)
    if len(index["skipped"]) > 10:
        print(f"  ... {len(index['skipped']) - 10} more (index.json lists them)", file=sys.stderr)
    if index["samples"] == 0:
        raise NoSamplesError(f"no samples written to {out}: every input was skipped "
                             f"({index['inputs']} inputs, reasons above)")


def write_summary(out: Path, splits: dict[str, dict]) -> None:
    """OUT/index.json for multi-split commands: per-split totals (shards live in OUT/<split>/)."""
    summary = {"kind": "splits",
               "splits": {name: {"samples": idx["samples"], "inputs": idx["inputs"],
                                 "skipped": len(idx["skipped"])} for name, idx in splits.items()},
               "samples": sum(idx["samples"] for idx in splits.values()),
               "skipped": [item for idx in splits.values() for item in idx["skipped"]],
               "command": shlex.join(sys.argv)}
    (out / "index.json").write_text(json.dumps(summary, indent=1))


def finish_splits(out: Path, staging: Path, indexes: dict[str, dict]) -> None:
    """Summary index into the staging folder, then each split's report (under OUT's name)."""
    write_summary(staging, indexes)
    for name, index in indexes.items():
        report(out / name, index)
