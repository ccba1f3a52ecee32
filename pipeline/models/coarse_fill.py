"""A smooth fill of the hole from the known pixels around it: pull-push interpolation.

Pull: halve the image repeatedly, each level's pixel the sum of its 2x2 children's known
colour and known weight, the weight capped at 1 (colour scaled with it), so a coarse pixel
with any known child is fully trusted. Push: from the coarsest level back up, each pixel keeps
its own known colour and takes the rest, (1 - weight), from the bilinearly up-sampled level
below. Known pixels come back exact; a hole pixel gets a blend of the known colours around it,
wider the deeper it lies in the hole. It costs about two passes over a pyramid, needs no
training and is differentiable, so G2 can start from it and learn only what it lacks.

Masks are 1 in the hole; images NCHW float in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pull_push_fill(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`image` with every hole pixel replaced by the pull-push interpolation of the known ones
    (an image with no known pixel at all comes back black)."""
    weight = 1 - mask
    levels = [(image * weight, weight)]
    while max(levels[-1][1].shape[-2:]) > 1:
        colour, weight = (4 * F.avg_pool2d(t, 2, ceil_mode=True) for t in levels[-1])
        scale = 1 / weight.clamp(min=1)
        levels.append((colour * scale, weight * scale))
    filled = levels[-1][0] / levels[-1][1].clamp(min=1e-6)
    for colour, weight in reversed(levels[:-1]):
        coarse = F.interpolate(filled, size=colour.shape[-2:], mode="bilinear",
                               align_corners=False)
        filled = colour + (1 - weight) * coarse
    return filled
