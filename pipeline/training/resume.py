"""Where a run starts: fresh, or from a checkpoint (`train.resume`: latest or a path) whose stage
and model match this run's; the state it restores and the MLflow run it continues."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from accelerate import Accelerator
from omegaconf import DictConfig

from pipeline.config import flatten
from pipeline.training import checkpoint
from pipeline.training.assemble import SetupError
from pipeline.training.ema import GeneratorEMA

log = logging.getLogger("dina.train")

# model keys that change no tensor shape: a resume may change them
RESUME_MAY_DIFFER = ("model.attention.backend", "model.init_gain")


def _changed_model_keys(saved: DictConfig, cfg: DictConfig) -> dict[str, tuple[str, str]]:
    """{key: (saved value, this run's)} for each model key (and optim.name) whose change breaks
    a resume."""
    def shaping(c: DictConfig) -> dict[str, str]:
        return {k: v for k, v in flatten(c).items()
                if (k.startswith("model.") or k == "optim.name") and k not in RESUME_MAY_DIFFER}

    before, now = shaping(saved), shaping(cfg)
    return {k: (before.get(k), now.get(k))
            for k in sorted(before.keys() | now.keys()) if before.get(k) != now.get(k)}


def refusal(path: Path, cfg: DictConfig) -> Optional[str]:
    """Why this run cannot resume from the checkpoint's model (None: it can): each changed key
    as `key=saved (this run: now)`, then the settings that would resume it."""
    saved = checkpoint.saved_config(path)
    changed = _changed_model_keys(saved, cfg)
    if not changed:
        return None
    predates = checkpoint.predated_keys(path)
    differences = ", ".join(
        f"{k}={a}{' (saved before the key existed)' if k in predates else ''} (this run: {b})"
        for k, (a, b) in changed.items())
    same = " ".join(f"{k}={a}" for k, (a, _) in changed.items())
    return (f"checkpoint {path} was trained with {differences}; resume with the same model "
            f"({same}), or use a new train.output_dir")


def changed_settings(path: Path, cfg: DictConfig, ema: Optional[GeneratorEMA]) -> str:
    """Every setting that differs from the checkpoint's, said in the log (the MLflow run's
    params, logged once and immutable, keep the first values); "" when none."""
    before, now = flatten(checkpoint.saved_config(path)), flatten(cfg)
    changed = "; ".join(f"{k}: {before.get(k)} -> {now.get(k)}"
                        for k in sorted(before.keys() | now.keys())
                        if k != "train.resume" and before.get(k) != now.get(k))
    if changed:
        log.warning("resuming %s with changed settings (the MLflow run's params keep the first "
                    "values; tag dina.resume_changes records these): %s", path, changed)
    if ema is None and float(before.get("train.ema") or 0) > 0:
        log.warning("train.ema=%s (the checkpoint's: %s): its EMA weights are dropped; "
                    "validation, the checkpoints from here on and inference use the raw weights",
                    now.get("train.ema"), before.get("train.ema"))
    return changed


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> Optional[Path]:
    """The checkpoint `train.resume` names (None: start fresh); refuses a fresh start over an
    earlier run's checkpoints and a `latest` whose every checkpoint is broken."""
    spec = cfg.train.resume
    if not spec:
        earlier = checkpoint.candidates(output_dir)
        if earlier:  # a fresh run's checkpoints would interleave with them and be pruned
            raise SetupError(
                f"{checkpoint.checkpoint_root(output_dir)} already holds checkpoints of an "
                f"earlier run (newest {earlier[0].name}); continue it with train.resume=latest, "
                f"or train afresh with a new train.output_dir")
        return None
    if spec != "latest":
        return checkpoint.resolve(spec)
    path, broken = checkpoint.latest_valid(output_dir)
    if path is None and broken:
        raise checkpoint.CheckpointError(
            f"train.resume=latest: none of the {len(broken)} checkpoints in "
            f"{checkpoint.checkpoint_root(output_dir)} is usable ({'; '.join(broken)}); move "
            f"them away to start fresh, or resume from a good copy with train.resume=PATH")
    if path is None:
        log.info("resume=latest: no checkpoint in %s yet, starting fresh", output_dir)
    return path


def restore(path: Path, cfg: DictConfig, accelerator: Accelerator,
            ema: Optional[GeneratorEMA]) -> dict:
    """Load the checkpoint's state into the prepared networks, optimizers, RNGs and EMA;
    returns its meta.json (step, MLflow run) and, on the main process, `changed_settings`."""
    meta = checkpoint.verify(path)
    if meta.get("stage") != cfg.train.stage:
        raise SetupError(f"checkpoint {path} is of stage '{meta.get('stage')}', this run is "
                         f"'{cfg.train.stage}'")
    refused = refusal(path, cfg)
    if refused:
        raise SetupError(refused)
    if accelerator.is_main_process:
        meta["changed_settings"] = changed_settings(path, cfg, ema)
    accelerator.load_state(str(path))
    if ema is not None:
        restore_ema(path, ema)
    log.info("resumed from %s at step %d", path, meta["step"])
    return meta


def restore_ema(path: Path, ema: GeneratorEMA) -> None:
    """The EMA saved with the checkpoint's generators; the resumed weights where it has none
    (it was trained with train.ema=0)."""
    states = checkpoint.generator_states(path)
    saved = {n: states.get(n + checkpoint.EMA_SUFFIX) for n in ema.models}
    if all(state is not None for state in saved.values()):
        ema.load_states(saved)
    else:
        log.warning("%s holds no EMA weights: the EMA starts from the resumed weights", path)
        ema.reset()
