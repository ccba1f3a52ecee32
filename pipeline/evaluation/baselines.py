"""Baseline fill methods, scored through the same code as the model (evaluation/scoring.py)."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.data.decode import float_images, uint8_images
from pipeline.evaluation.inference import Fill
from pipeline.models.coarse_fill import pull_push_fill

TELEA_RADIUS = 3  # OpenCV's documented example radius


def mean_fill(batch: dict) -> torch.Tensor:
    """Every hole pixel gets the mean colour of its image's known pixels."""
    known = 1 - batch["mask"]
    mean = (batch["image"] * known).sum(dim=(2, 3), keepdim=True) / known.sum(
        dim=(2, 3), keepdim=True).clamp(min=1)
    return mean.expand_as(batch["image"])


def telea_fill(batch: dict) -> torch.Tensor:
    """OpenCV's Telea fast-marching inpainting, image by image."""
    import cv2  # imported here: only this baseline needs OpenCV

    holes = (batch["mask"][:, 0] > 0.5).to(torch.uint8).cpu().numpy()
    filled = [cv2.inpaint(rgb, hole, TELEA_RADIUS, cv2.INPAINT_TELEA)
              for rgb, hole in zip(uint8_images(batch["image"]), holes)]
    return float_images(np.stack(filled)).to(batch["image"])


def pull_push(batch: dict) -> torch.Tensor:
    """The smooth pull-push interpolation G2 starts from with `model.coarse_fill` on."""
    return pull_push_fill(batch["image"], batch["mask"])


BASELINES: dict[str, Fill] = {"mean": mean_fill, "telea": telea_fill, "pull-push": pull_push}
