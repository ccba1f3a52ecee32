"""Checkpoints: atomic to write, verified before use, enough to resume exactly or to inpaint.

Layout: <output_dir>/checkpoints/checkpoint-<step:08d>/
  Accelerate's save_state files (models, optimizers, GradScaler, every rank's RNG state),
  generators.safetensors (g1.*, g2.*: all inference needs; with train.ema also g1_ema.*,
  g2_ema.* for the generators the stage trains, which inference prefers and a resume restores;
  a generator a stage only carries or uses is saved as loaded, its source's EMA where it had one),
  config.yaml (resolved config),
  meta.json (step, stage, MLflow run, the size and sha256 of every file, complete=true).

A checkpoint is written under a temporary name, fsynced and renamed, so a crash mid-write leaves
nothing that `resume=latest` would pick; one whose files do not match meta.json is skipped with a
message and the previous one is used. A full disk while writing removes the partial copy and
raises CheckpointError("no space left ..."); the checkpoints already there are kept.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.config import to_yaml

log = logging.getLogger("dina.checkpoint")

PATTERN = re.compile(r"^checkpoint-(\d{8})$")
GENERATORS = "generators.safetensors"
EMA_SUFFIX = "_ema"  # g1_ema.* / g2_ema.*: the EMA copies of g1 / g2
# model keys added after checkpoints were first written, with the value such a checkpoint was
# trained with: EdgeConnect's 4-channel G2, transposed up-sampling, no coarse fill for G2 or G1
BEFORE_THE_KEY = {"model.hole_mask_channel": False, "model.upsample": "transposed",
                  "model.coarse_fill": "none", "model.edge_fill": "none"}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, found or trusted; the message says which and why."""


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")) + [root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _out_of_space(err: BaseException, where: Path) -> bool:
    if isinstance(err, OSError):
        return err.errno == errno.ENOSPC
    # torch.save reports a full disk as a C++ stream error ("basic_ios::clear: iostream
    # error"), a RuntimeError without errno: judge it by the space left
    return isinstance(err, RuntimeError) and shutil.disk_usage(where).free < (1 << 20)


def save(accelerator: Accelerator, output_dir: str, step: int, cfg: DictConfig,
         generators: dict[str, nn.Module], meta: dict) -> Optional[Path]:
    """Collective: every rank calls it. Returns the final path (on every rank)."""
    root = checkpoint_root(output_dir)
    final = root / f"checkpoint-{step:08d}"
    tmp = root / f".tmp-checkpoint-{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))  # each rank writes its own RNG state
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _complete(accelerator, tmp, step, cfg, generators, meta)
    except (OSError, RuntimeError) as err:
        if not _out_of_space(err, root):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        kept = [p.name for p in candidates(output_dir)]
        raise CheckpointError(
            f"no space left on device writing {final.name} in {root} "
            f"({shutil.disk_usage(root).free / 2**20:.1f} MiB free with the partial copy "
            f"removed); kept: {', '.join(kept) or 'no earlier checkpoint'}. Free space, then "
            f"resume with train.resume=latest") from None
    if accelerator.is_main_process:
        if final.exists():  # a re-run of the same step replaces the older copy
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_tree(root)
        _prune(root, cfg.train.ckpt_limit)
    accelerator.wait_for_everyone()
    return final


def _complete(accelerator: Accelerator, tmp: Path, step: int, cfg: DictConfig,
              generators: dict[str, nn.Module], meta: dict) -> None:
    """Main process: add the generators, config and meta.json to the state in `tmp`, fsynced."""
    tensors = {f"{name}.{k}": v.detach().cpu().contiguous()
               for name, net in generators.items()
               for k, v in accelerator.unwrap_model(net, keep_torch_compile=False).state_dict().items()}
    save_file(tensors, str(tmp / GENERATORS))
    (tmp / "config.yaml").write_text(to_yaml(cfg))
    files = {p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    record = {"step": step, "stage": cfg.train.stage, **meta, "files": files, "complete": True}
    (tmp / "meta.json").write_text(json.dumps(record, indent=1))
    _fsync_tree(tmp)


def _prune(root: Path, keep: int) -> None:
    for old in sorted(p for p in root.iterdir() if PATTERN.match(p.name))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def verify(path: Path) -> dict:
    """meta.json of a complete checkpoint whose files match it; CheckpointError otherwise."""
    try:
        stamp = (path / "meta.json").stat().st_mtime_ns
    except OSError as err:
        raise CheckpointError(f"{path}: no readable meta.json ({err})") from None
    return dict(_verified(str(path), stamp))


@functools.lru_cache(maxsize=32)
def _verified(path_str: str, stamp: int) -> dict:
    """Hashing a checkpoint costs a read of every file: done once per process per checkpoint
    (resume=latest, then loading it, would otherwise hash it twice)."""
    path = Path(path_str)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: no readable meta.json ({err})") from None
    if not meta.get("complete"):
        raise CheckpointError(f"{path}: not marked complete")
    for name, want in meta.get("files", {}).items():
        file = path / name
        if not file.is_file() or file.stat().st_size != want["size"]:
            raise CheckpointError(f"{path}: {name} is missing or has the wrong size")
        if _sha256(file) != want["sha256"]:
            raise CheckpointError(f"{path}: {name} does not match its checksum")
    return meta


def candidates(output_dir: str | Path) -> list[Path]:
    """Every checkpoint directory of a run, newest first (verified or not)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if PATTERN.match(p.name)), reverse=True)


def latest_valid(output_dir: str | Path) -> tuple[Optional[Path], list[str]]:
    """(newest checkpoint that verifies or None, why each newer one was skipped)."""
    broken = []
    for path in candidates(output_dir):
        try:
            verify(path)
            return path, broken
        except CheckpointError as err:
            log.warning("skipping checkpoint: %s", err)
            broken.append(str(err))
    return None, broken


def find_latest(output_dir: str | Path) -> Optional[Path]:
    """Newest checkpoint that verifies; broken ones are reported and skipped."""
    return latest_valid(output_dir)[0]


def resolve(path_or_run: str | Path) -> Path:
    """A checkpoint dir, or a run output dir (its newest good checkpoint)."""
    path = Path(path_or_run)
    if (path / "meta.json").is_file():
        verify(path)
        return path
    latest = find_latest(path)
    if latest is None:
        raise CheckpointError(f"no complete checkpoint at {path} (expected a checkpoint-* "
                              f"directory or a run directory holding checkpoints/)")
    return latest


def generator_states(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """generators.safetensors split by network: {"g1": state_dict, "g2_ema": state_dict, ...}."""
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(path / GENERATORS)).items():
        name, param = key.split(".", 1)
        states.setdefault(name, {})[param] = value
    return states


def pick_weights(states: dict[str, dict[str, torch.Tensor]], name: str, raw_weights: bool
                 ) -> Optional[dict[str, torch.Tensor]]:
    """Generator `name`'s state: its EMA where the checkpoint has one unless `raw_weights`;
    None where the checkpoint holds no such generator."""
    if not raw_weights and name + EMA_SUFFIX in states:
        return states[name + EMA_SUFFIX]
    return states.get(name)


def saved_networks(path: Path) -> set[str]:
    """Names of the networks in generators.safetensors (reads only its header)."""
    from safetensors import safe_open

    with safe_open(str(path / GENERATORS), framework="pt") as fh:
        return {key.split(".", 1)[0] for key in fh.keys()}


def holds_ema(path: Path) -> bool:
    """Whether the checkpoint saved EMA weights."""
    return any(name.endswith(EMA_SUFFIX) for name in saved_networks(path))


def load_generator_weights(path: Path, name: str, net: nn.Module, raw_weights: bool) -> None:
    state = pick_weights(generator_states(path), name, raw_weights)
    if state is None:
        raise CheckpointError(f"{path} holds no '{name}' generator")
    try:
        net.load_state_dict(state)
    except RuntimeError:  # torch's message lists every mismatched tensor
        raise CheckpointError(f"{path}'s '{name}' was built with other model.* settings than "
                              f"this run's (they are in its config.yaml)") from None


def predated_keys(path: Path) -> list[str]:
    """The later model keys a checkpoint's config.yaml does not hold (saved before they were)."""
    cfg = OmegaConf.load(path / "config.yaml")
    return [k for k in BEFORE_THE_KEY if OmegaConf.select(cfg, k, default=KeyError) is KeyError]


def saved_config(path: Path) -> DictConfig:
    """A checkpoint's config.yaml, with the keys it predates set to what it was trained with."""
    cfg = OmegaConf.load(path / "config.yaml")
    for key in predated_keys(path):
        OmegaConf.update(cfg, key, BEFORE_THE_KEY[key])
    return cfg
