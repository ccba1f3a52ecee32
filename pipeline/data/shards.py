"""Shard files: how they are named and found (a folder, an index.json, a brace pattern) and read
at random (a sample's bytes by offset, without unpacking the tar).
"""
from __future__ import annotations

import glob
import json
import re
import tarfile
from pathlib import Path
from typing import Sequence

import braceexpand

from pipeline.data.images import IMAGE_EXTS


class DataError(ValueError):
    """A data spec that yields nothing usable; the message names it."""

    def __init__(self, message: str):
        # raised in a DataLoader worker, it is rebuilt in the main process from the worker's
        # whole traceback text, whose last line holds the original message
        if message.startswith("Caught DataError"):
            message = message.rstrip().splitlines()[-1].split("DataError: ", 1)[-1]
        super().__init__(message)


SHARD_NAME = re.compile(r"^shard-\d{6}\.tar$")  # how shard.py names its shards


def list_names(paths: Sequence[str], limit: int = 5) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(str(p) for p in paths[:limit]) + more


def _from_index(index_path: Path) -> list[str]:
    """The shards index.json lists, which must be exactly the tars beside it."""
    index = json.loads(index_path.read_text())
    if "shards" not in index:
        splits = ", ".join(sorted(index.get("splits", {}))) or "none"
        raise DataError(f"{index_path} lists no shards (splits: {splits}); "
                        f"point at a split's folder or its index.json instead")
    folder = index_path.parent
    listed = [s["name"] for s in index["shards"]]
    missing = [name for name in listed if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{index_path} lists shards that do not exist: {list_names(missing)}")
    unlisted = sorted(p.name for p in folder.glob("*.tar") if p.name not in set(listed))
    if unlisted:
        raise DataError(f"{folder} holds tars its index.json does not list: {list_names(unlisted)} "
                        f"(two shard runs mixed?); re-run shard.py into a new folder")
    return [str(folder / name) for name in listed]


def resolve_shards(spec: str) -> list[str]:
    """A directory (its *.tar, sorted), an index.json, or a brace/glob pattern -> shard paths.

    Only complete sets: a folder of shard.py's shards must hold the index.json that shard.py
    writes last and that lists exactly its tars; every local shard a brace pattern names must
    exist."""
    path = Path(spec)
    if path.is_dir():
        if (path / "index.json").is_file():
            return _from_index(path / "index.json")
        shards = sorted(str(p) for p in path.glob("*.tar"))
        ours = [s for s in shards if SHARD_NAME.match(Path(s).name)]
        if ours or any(path.glob("*.tar.part")):
            raise DataError(f"{spec} holds shard.py shards but no index.json: an incomplete set "
                            f"(interrupted or out of disk?); re-run shard.py")
        if shards:
            return shards  # tars made by another tool: nothing says what a full set is
        raise DataError(f"no *.tar shards in directory {spec}")
    if path.suffix == ".json":
        if not path.is_file():
            raise DataError(f"index file not found: {spec}")
        return _from_index(path)
    shards: list[str] = []
    missing: list[str] = []
    for item in braceexpand.braceexpand(spec):
        if "://" in item or item.startswith("pipe:"):
            shards.append(item)  # remote: the stream reports failures per shard
        elif any(c in item for c in "*?["):
            shards.extend(sorted(glob.glob(item)))
        elif Path(item).is_file():
            shards.append(item)
        else:
            missing.append(item)
    if not shards:
        raise DataError(f"no shards match '{spec}' (expected a directory of .tar files, an "
                        f"index.json, or a brace pattern like data/shard-{{000000..000009}}.tar)")
    if missing:
        raise DataError(f"{len(missing)} of {len(shards) + len(missing)} shards named by "
                        f"'{spec}' do not exist: {list_names(missing)}")
    return shards


def tar_members(path: str) -> dict[str, dict[str, tuple[int, int]]]:
    """key -> {extension: (data offset, size)} for a shard, in tar order."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, name = member.name.rpartition("/")
                stem, _, ext = name.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                samples.setdefault(key, {})[ext.lower()] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"{path} is not a readable tar shard ({err.__class__.__name__}: "
                        f"{str(err).splitlines()[0]})") from None
    return samples


def read_at(path: str, where: tuple[int, int]) -> bytes:
    with open(path, "rb") as f:
        f.seek(where[0])
        return f.read(where[1])


def has_shards(spec: str) -> bool:
    path = Path(spec)
    if path.is_file() and path.suffix.lower() in IMAGE_EXTS:
        return False  # one image file, not a shard
    return not path.is_dir() or any(path.glob("*.tar")) or (path / "index.json").is_file()


SHARD_PATTERN = "shard-{:06d}.tar"


# what shard.py writes into a set (a .part shard: left by an interrupted older version)
OWN_FILE = re.compile(r"^(shard-\d{6}\.tar(\.part)?|index\.json)$")
