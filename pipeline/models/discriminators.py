"""70x70 PatchGAN discriminator (EdgeConnect's D1/D2): 4x4 convs of widths w, 2w, 4w, 8w, 1 with
strides 2, 2, 2, 1, 1, LeakyReLU(0.2) between them, spectral norm, no bias, no sigmoid."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.models.blocks import init_normal, spectral_norm_convs


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int, width: int = 64, init_gain: float = 0.02):
        super().__init__()
        widths = [in_channels, width, 2 * width, 4 * width, 8 * width, 1]
        strides = [2, 2, 2, 1, 1]
        self.layers = nn.ModuleList()
        for i, stride in enumerate(strides):
            conv = nn.Conv2d(widths[i], widths[i + 1], 4, stride=stride, padding=1, bias=False)
            last = i == len(strides) - 1
            self.layers.append(conv if last else nn.Sequential(conv, nn.LeakyReLU(0.2)))
        init_normal(self, init_gain)
        spectral_norm_convs(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns (logits [B, 1, h, w], the output of every layer). As in EdgeConnect, the
        feature list ends with the logits; feature matching sums over all of it."""
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return x, features
