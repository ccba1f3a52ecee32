"""What a run read, as MLflow dataset inputs: the runs table's Dataset column tells runs apart.

A shard folder (or its index.json) is named by its path and digested from the sha256 of every
shard that index.json lists, so two folders holding the same shards get the same digest and a
re-sharded set a new one. A folder of image files or a shard pattern without an index is
digested from its file names and sizes (cheap; enough to notice a changed set).
"""
from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path
from typing import Optional

import braceexpand

DIGEST_CHARS = 16  # MLflow shows digests short; 64 bits keep sets apart


def _index_of(spec: str) -> Optional[Path]:
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        return path
    if (path / "index.json").is_file():
        return path / "index.json"
    return None


def _listed_files(spec: str) -> list[Path]:
    path = Path(spec)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    found = []
    for item in braceexpand.braceexpand(spec):
        found.extend(Path(p) for p in sorted(glob.glob(item)))
    return found


def describe(spec: str) -> tuple[str, dict]:
    """(digest, profile) of a data spec; profile counts shards/samples or files."""
    index_path = _index_of(spec)
    if index_path is not None:
        index = json.loads(index_path.read_text())
        shards = index.get("shards") or []
        if shards and all("sha256" in s for s in shards):
            hashes = "".join(f"{s['name']}:{s['sha256']}\n" for s in shards)
            profile = {"shards": len(shards), "samples": sum(s.get("samples", 0) for s in shards)}
            return hashlib.sha256(hashes.encode()).hexdigest()[:DIGEST_CHARS], profile
    files = _listed_files(spec)
    listing = "".join(f"{p.name}:{p.stat().st_size}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:DIGEST_CHARS], {"files": len(files)}


def spec_name(spec: str) -> str:
    """A readable dataset name from a path: shards/paris/test -> paris-test."""
    path = Path(spec).resolve()
    if path.suffix == ".json":
        path = path.parent
    return f"{path.parent.name}-{path.name}" if path.parent.name else path.name


def dataset_input(spec: str, name: str, context: str):
    """An MLflow DatasetInput for a data spec (path kept as given, resolved when local)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    digest, profile = describe(spec)
    source = str(Path(spec).resolve()) if Path(spec).exists() else spec
    dataset = Dataset(name=name, digest=digest, source_type="local",
                      source=json.dumps({"uri": source}), profile=json.dumps(profile))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


def training_inputs(data_cfg) -> list:
    """Train, validation and mask shards of a training run's data config."""
    inputs = [dataset_input(data_cfg.train, f"{data_cfg.name}-train", "training"),
              dataset_input(data_cfg.masks, f"{data_cfg.name}-masks", "training")]
    if data_cfg.val:
        inputs.append(dataset_input(data_cfg.val, f"{data_cfg.name}-val", "validation"))
        if data_cfg.val_masks:
            inputs.append(dataset_input(data_cfg.val_masks, f"{data_cfg.name}-val-masks",
                                        "validation"))
    return inputs
