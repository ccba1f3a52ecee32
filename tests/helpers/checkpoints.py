"""Test helpers for evaluation and inference: tiny random-weight checkpoints in the real layout."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator

from pipeline.config import load_config
from pipeline.models.factory import build_network
from pipeline.training.checkpoint import EMA_SUFFIX, save
from pipeline.training.stage_table import CHECKPOINT_KEY, STAGES
from tests.helpers import TINY
from tests.helpers.training import reset_accelerate


def trained_looking(name: str, model_cfg) -> torch.nn.Module:
    """A freshly built network whose output depends on its seed: G2's head starts at zero with
    model.coarse_fill (every seed would return the same fill), so it gets random weights."""
    net = build_network(name, model_cfg)
    if name == "g2":
        torch.nn.init.normal_(net.head.weight, 0.0, 0.02)
    return net


def make_checkpoint(out: Path, stage: str = "joint", generators: tuple[str, ...] = ("g1", "g2"),
                    mlflow_run_id: Optional[str] = None, mlflow_tracking_uri: Optional[str] = None,
                    seed: int = 0, ema_seed: Optional[int] = None,
                    overrides: tuple[str, ...] = ()) -> Path:
    """A checkpoint dir written by training.checkpoint.save: tiny preset (32 px) with
    `overrides`, seeded weights.
    With `ema_seed`, also g1_ema / g2_ema: the weights `seed=ema_seed` would give."""
    overrides = [*overrides, f"train.stage={stage}", f"train.output_dir={out}"]
    overrides += [f"{CHECKPOINT_KEY[g]}=unused-by-evaluation" for g in STAGES[stage].needs]
    cfg = load_config([TINY], overrides)
    torch.manual_seed(seed)
    nets = {name: trained_looking(name, cfg.model) for name in ("g1", "g2")}
    saved = {name: nets[name] for name in generators}
    if ema_seed is not None:
        torch.manual_seed(ema_seed)
        saved.update({name + EMA_SUFFIX: trained_looking(name, cfg.model) for name in generators})
    reset_accelerate()
    try:
        return save(Accelerator(cpu=True), str(out), 1, cfg,
                    saved,
                    {"mlflow_run_id": mlflow_run_id, "mlflow_tracking_uri": mlflow_tracking_uri})
    finally:
        reset_accelerate()
