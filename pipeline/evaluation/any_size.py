"""Inpainting an image of any size with a model trained at one size: reflect-pad to a square,
resize to the model, fill, resize the prediction back, and replace only the hole's pixels.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.decode import batch_from_arrays, float_images, uint8_images
from pipeline.evaluation.image_files import InpaintError
from pipeline.evaluation.inference import model_fill


def pad_to_square(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad [B,C,H,W] to a square (centred); returns it and the (top, left) offsets."""
    h, w = x.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    pad = (left, side - w - left, top, side - h - top)
    # reflection needs the pad to be shorter than the side; replicate covers thin strips
    mode = "reflect" if max(pad) < min(h, w) else "replicate"
    return F.pad(x, pad, mode=mode), (top, left)


def inpaint_image(rgb: np.ndarray, hole: np.ndarray, g1, g2, size: int, device: str
                  ) -> tuple[np.ndarray, dict]:
    """Full-resolution output (known pixels untouched) and a record of what was done."""
    h, w = hole.shape
    image = float_images(rgb[None])
    mask = torch.from_numpy(hole)[None, None].float()
    square, (top, left) = pad_to_square(torch.cat([image, mask], dim=1))
    side = square.shape[-1]
    small_image = F.interpolate(square[:, :3], size=(size, size), mode="bicubic",
                                antialias=True, align_corners=False).clamp(0, 1)
    # the padding is known context; any hole pixel under a low-resolution pixel makes it a hole
    small_mask = (F.adaptive_max_pool2d(square[:, 3:], size) if side >= size else
                  F.interpolate(square[:, 3:], size=(size, size), mode="nearest"))
    if bool(small_mask.min() > 0):  # the same black output as an all-hole mask
        raise InpaintError(f"at the model's {size}x{size} every pixel touches the hole: no "
                           f"known pixel is left to inpaint from")
    # what a saved size x size image holds
    batch = batch_from_arrays(np.stack(uint8_images(small_image)), small_mask[:, 0].numpy() > 0)
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        pred = model_fill(g1, g2)(batch).cpu()
    full = F.interpolate(pred, size=(side, side), mode="bicubic", align_corners=False)
    full = uint8_images(full[..., top:top + h, left:left + w])[0]
    out = np.where(hole[..., None], full, rgb)
    return out, {"square": side, "model_size": size, "hole_pixels": int(hole.sum())}
