"""Building blocks shared by the generators and discriminators."""
from __future__ import annotations

from torch import nn


def init_normal(network: nn.Module, gain: float) -> None:
    """EdgeConnect's init: conv/linear weights ~ N(0, gain), biases 0. Run before spectral norm is
    applied, so the norm's power iteration starts from the final weights."""
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def spectral_norm_convs(network: nn.Module) -> None:
    """Put spectral norm on every (transposed) convolution inside `network`, in place."""
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.utils.parametrizations.spectral_norm(module)


class ResidualBlock(nn.Module):
    """EdgeConnect's residual block (3x3 conv with dilation 2, then a plain 3x3 conv, instance
    norms, identity skip), followed by `attention` (a DiNA module with its own residual) if given.

    conv_bias=False for spectrally normed blocks, as EdgeConnect (the instance norm that follows
    cancels a bias anyway)."""

    def __init__(self, dim: int, conv_bias: bool = True, attention: nn.Module | None = None):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(2),
            nn.Conv2d(dim, dim, 3, dilation=2, bias=conv_bias),
            nn.InstanceNorm2d(dim),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=conv_bias),
            nn.InstanceNorm2d(dim),
        )
        self.attention = attention if attention is not None else nn.Identity()

    def forward(self, x):
        return self.attention(x + self.body(x))
