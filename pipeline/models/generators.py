"""EdgeConnect-shaped generators with a DiNA module in every residual block.

encoder: reflect pad 3, conv 7x7 -> c, conv 4x4 s2 -> 2c, conv 4x4 s2 -> 4c (IN, ReLU each);
residual attention network: `blocks` ResidualBlocks at 4c, block i with DiNA at dilations[i];
decoder: transposed conv 4x4 s2 (or resize + conv 3x3) -> 2c, -> c (IN, ReLU), reflect pad 3,
conv 7x7 -> output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from pipeline.models.blocks import ResidualBlock, init_normal, spectral_norm_convs
from pipeline.models.coarse_fill import pull_push_fill
from pipeline.models.dina import DiNA


def _down(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.InstanceNorm2d(c_out), nn.ReLU()]


def _up(c_in: int, c_out: int, how: str) -> list[nn.Module]:
    """2x up-sampling: a transposed 4x4 conv, or (`resize`) nearest-neighbour resize then a 3x3
    conv, whose output pixels all see the same kernel, so it has no checkerboard to learn away."""
    if how == "resize":
        conv = [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                nn.Conv2d(c_in, c_out, 3)]
    else:
        conv = [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
    return [*conv, nn.InstanceNorm2d(c_out), nn.ReLU()]


@dataclass(frozen=True)
class AttentionSpec:
    """The DiNA module of every residual block."""

    heads: int
    kernel_size: int
    dilations: tuple[int, ...]  # one per residual block
    bias: bool  # relative position bias
    backend: str  # auto | reference | flex | natten


@dataclass(frozen=True)
class GeneratorSpec:
    """Widths and depth shared by G1 and G2 (their in/out channels are their own)."""

    channels: int = 64  # encoder widths: channels, 2x, 4x
    blocks: int = 8  # residual blocks
    attention: Optional[AttentionSpec] = None  # None: residual blocks without DiNA
    init_gain: float = 0.02
    # G2 also reads the mask as an input channel; without it a zero-filled hole looks like black
    # pixels (EdgeConnect's G2 reads only the masked image and the edges)
    hole_mask_channel: bool = False
    upsample: str = "transposed"  # the decoder's: transposed | resize
    # G2 starts from a smooth fill of the hole and learns a correction to it (TextureGenerator);
    # "none": G2 paints the zero-filled hole from scratch, as EdgeConnect's
    coarse_fill: str = "none"
    # G1 reads the hole of its grayscale input filled the same way instead of white, so the
    # edges of the smooth fill are there to continue; "none": EdgeConnect's white hole
    edge_fill: str = "none"

    def __post_init__(self):
        if self.attention is not None and len(self.attention.dilations) != self.blocks:
            raise ValueError(f"{self.blocks} blocks need as many dilations, got "
                             f"{self.attention.dilations}")


class Generator(nn.Module):
    """Encoder, residual attention network, decoder; `forward` returns the pre-activation map.

    spectral_norm=True (G1, as EdgeConnect) normalises every conv except the output conv."""

    def __init__(self, spec: GeneratorSpec, in_channels: int, out_channels: int,
                 spectral_norm: bool):
        super().__init__()
        c, attn = spec.channels, spec.attention
        self.encoder = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(in_channels, c, 7), nn.InstanceNorm2d(c), nn.ReLU(),
            *_down(c, 2 * c), *_down(2 * c, 4 * c))
        self.blocks = nn.Sequential(*[
            ResidualBlock(4 * c, conv_bias=not spectral_norm,
                          attention=DiNA(4 * c, attn.heads, attn.kernel_size, attn.dilations[i],
                                         attn.bias, attn.backend) if attn else None)
            for i in range(spec.blocks)])
        self.decoder = nn.Sequential(*_up(4 * c, 2 * c, spec.upsample),
                                     *_up(2 * c, c, spec.upsample), nn.ReflectionPad2d(3))
        self.head = nn.Conv2d(c, out_channels, 7)
        init_normal(self, spec.init_gain)
        if spectral_norm:
            for part in (self.encoder, self.blocks, self.decoder):
                spectral_norm_convs(part)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.blocks(self.encoder(x))))


class EdgeGenerator(Generator):
    """G1: [masked gray, masked edges, mask] (3 ch) -> edge probability map (1 ch)."""

    def __init__(self, spec: GeneratorSpec):
        super().__init__(spec, in_channels=3, out_channels=1, spectral_norm=True)
        self.fill_hole = spec.edge_fill == "pull-push"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fill_hole:
            x = torch.cat([pull_push_fill(x[:, :1], x[:, 2:3]), x[:, 1:]], dim=1)
        return torch.sigmoid(super().forward(x))


class TextureGenerator(Generator):
    """G2: [masked RGB, composite edges, mask] (5 ch) -> RGB in [0, 1] via (tanh + 1) / 2.

    The mask channel is read only with `spec.hole_mask_channel`; otherwise G2 is EdgeConnect's,
    which sees the first 4 channels.

    With `spec.coarse_fill="pull-push"` the hole arrives filled by pull_push_fill instead of
    zeros, and the network's output is a correction to that fill in logit space,
    fill + sigmoid(logit(fill) + 2 h) - sigmoid(logit(fill)). Its head starts at zero, so an
    untrained G2 returns the fill exactly: it need not learn each image's colours from scratch
    through instance norms that remove them, only the detail a smooth fill lacks."""

    FILL_EPS = 1e-3  # keeps logit(fill) finite on black and white pixels

    def __init__(self, spec: GeneratorSpec):
        self.reads = 5 if spec.hole_mask_channel else 4
        self.coarse_fill = spec.coarse_fill == "pull-push"
        super().__init__(spec, in_channels=self.reads, out_channels=3, spectral_norm=False)
        if self.coarse_fill:
            nn.init.zeros_(self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.coarse_fill:
            return (torch.tanh(super().forward(x[:, :self.reads])) + 1) / 2
        fill = pull_push_fill(x[:, :3], x[:, 4:5])
        correction = super().forward(torch.cat([fill, x[:, 3:self.reads]], dim=1))
        prior = torch.logit(fill.clamp(self.FILL_EPS, 1 - self.FILL_EPS))
        # the fill plus the change the correction makes, not sigmoid(prior + 2h) itself: that
        # differs from the fill by the clamp and round-off, so on known pixels L1's sign
        # gradient was +-1 noise, twice the hole's and opposed to it; here h = 0 is the fill
        # bit for bit and the known pixels pull only where G2 really moves them
        change = torch.sigmoid(prior + 2 * correction) - torch.sigmoid(prior)
        return (fill + change).clamp(0, 1)
