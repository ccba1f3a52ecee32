"""The model's contract, shared by training, validation, evaluation and inference: what G1 and G2
see, how their outputs are composited, and the two-stage pass G1 -> G2 -> composite.

Masks are 1 in the hole. Every tensor is NCHW float in [0, 1].
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def edge_inputs(batch: dict) -> torch.Tensor:
    """G1 sees the masked grayscale image (holes white, as EdgeConnect), masked edges and the mask."""
    mask = batch["mask"]
    gray = batch["gray"] * (1 - mask) + mask
    return torch.cat([gray, batch["edge"] * (1 - mask), mask], dim=1)


def texture_inputs(image: torch.Tensor, edge: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G2 sees the masked image I*(1-M) and the completed edge map (paper eq. 3), and the mask
    where model.hole_mask_channel is on (G2 drops the channel otherwise)."""
    return torch.cat([image * (1 - mask), edge, mask], dim=1)


def composite(pred: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Prediction in the hole, known pixels kept bit-exact outside it."""
    return torch.where(mask > 0.5, pred.to(known.dtype), known)


def complete_edges(g1: nn.Module, batch: dict) -> torch.Tensor:
    """C_comp = C_pred in the hole, the batch's (known-region) edges elsewhere."""
    return composite(g1(edge_inputs(batch)), batch["edge"], batch["mask"])


@torch.no_grad()
def inpaint(g1: Optional[nn.Module], g2: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """G1 completes the batch's edges (kept as they are without G1), G2 fills the hole; returns
    (composited output, edges)."""
    edges = complete_edges(g1, batch) if g1 is not None else batch["edge"]
    output = g2(texture_inputs(batch["image"], edges, batch["mask"]))
    return composite(output, batch["image"], batch["mask"]), edges
