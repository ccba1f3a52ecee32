"""The model's contract, shared by training, validation, evaluation and inference: what G1 and G2
see, how their outputs are composited, the test-time path G1 -> G2 -> composite with edges from
the known region only, and loading the generators of a checkpoint.

Masks are 1 in the hole. Every tensor is NCHW float in [0, 1].
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from pipeline.data.decode import uint8_images
from pipeline.data.images import canny_edges
from pipeline.models.contract import composite, inpaint
from pipeline.models.factory import build_network
from pipeline.training.assemble import initial_networks
from pipeline.training.checkpoint import (CheckpointError, generator_states, holds_ema,
                                          pick_weights, resolve, saved_config)

# batch (tensors on the device) -> prediction [B,3,H,W] in [0, 1], to be composited
Fill = Callable[[dict], torch.Tensor]


class InferenceError(RuntimeError):
    """A checkpoint that cannot inpaint; the message says why."""


def known_region_edges(batch: dict) -> torch.Tensor:
    """Canny (σ 2) of each image computed on its known region only, as at test time.

    Eval batches carry the full image's edges; inside the hole those would leak the answer, and
    even near it a full-image Canny sees hole pixels through its smoothing (EdgeConnect's test
    path passes the known region to skimage's canny as its mask for this reason).
    """
    known = (batch["mask"][:, 0] < 0.5).cpu().numpy()
    edges = [canny_edges(rgb, known=k) > 0 for rgb, k in zip(uint8_images(batch["image"]), known)]
    return torch.from_numpy(np.stack(edges)).unsqueeze(1).to(batch["edge"])


# what G2 reads as edges inside the hole: G1's (the test-time path), the ground truth's own
# Canny edges (G2's ceiling), or none; outside it always the known region's
EDGE_SOURCES = ("g1", "true", "none")


def model_fill(g1: nn.Module, g2: nn.Module, edges: str = "g1") -> Fill:
    """The model's fill: edges from the known region, completed in the hole by `edges`
    (EDGE_SOURCES), then G2. Eval batches carry the whole image's edges as `edge`."""
    def fill(batch: dict) -> torch.Tensor:
        known = known_region_edges(batch)
        if edges == "g1":
            return inpaint(g1, g2, {**batch, "edge": known})[0]
        hole = batch["edge"] if edges == "true" else torch.zeros_like(known)
        return inpaint(None, g2, {**batch, "edge": composite(hole, known, batch["mask"])})[0]
    return fill


def load_generators(path: str | Path, device: str | torch.device = "cpu", raw_weights: bool = False
                    ) -> tuple[DictConfig, Optional[nn.Module], Optional[nn.Module]]:
    """(cfg, g1 or None, g2 or None) of a checkpoint (or a run dir's latest), in eval mode: each
    generator's EMA weights where the checkpoint has them, unless `raw_weights`."""
    ckpt = resolve(path)
    cfg = saved_config(ckpt)
    states = generator_states(ckpt)
    nets = {}
    for name in ("g1", "g2"):
        state = pick_weights(states, name, raw_weights)
        if state is not None:
            nets[name] = build_network(name, cfg.model)
            nets[name].load_state_dict(state)
            nets[name].to(device).eval()
    return cfg, nets.get("g1"), nets.get("g2")


def load_model(checkpoint: str, edge_checkpoint: Optional[str], device: str,
               raw_weights: bool = False, untrained: bool = False
               ) -> tuple[nn.Module, nn.Module, dict]:
    """(g1, g2, info) for inference, info = {path, meta, cfg, weights: "ema", "raw" or
    "untrained", which G2's weights are}; InferenceError says why not.
    `untrained`: G2 as its training run started it (same config and seed), G1 as saved: the
    start a trained G2 is measured against."""
    try:
        path = resolve(checkpoint)
        cfg, g1, g2 = load_generators(path, device, raw_weights)
    except CheckpointError as err:
        raise InferenceError(f"checkpoint: {err}") from None
    if edge_checkpoint:
        try:
            g1 = load_generators(edge_checkpoint, device, raw_weights)[1]
        except CheckpointError as err:
            raise InferenceError(f"--edge-checkpoint: {err}") from None
        if g1 is None:  # named as given: the main checkpoint is not the one lacking G1
            raise InferenceError(f"--edge-checkpoint {edge_checkpoint} holds no edge generator "
                                 f"G1; give an edge, edge-texture or joint checkpoint")
    if g2 is None:
        raise InferenceError(f"{path} is an edge-stage checkpoint (no texture generator G2); "
                             f"use a texture, edge-texture or joint checkpoint")
    if g1 is None:
        raise InferenceError(f"{path} has no edge generator G1; pass --edge-checkpoint with an "
                             f"edge-stage checkpoint")
    meta = json.loads((path / "meta.json").read_text())
    weights = "ema" if not raw_weights and holds_ema(path) else "raw"
    if untrained:
        g2, weights = initial_networks(cfg)["g2"].to(device).eval(), "untrained"
    return g1, g2, {"path": str(path), "meta": meta, "cfg": cfg, "weights": weights}
