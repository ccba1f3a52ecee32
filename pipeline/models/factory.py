"""The four networks by name, built from the `model.*` config keys.

The one place where config becomes constructor arguments: training, checkpoint loading, the
benchmarks and the tests all build through `build_network`, so a network restored from a
checkpoint is the one that was trained.
"""
from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from pipeline.models.discriminators import PatchDiscriminator
from pipeline.models.generators import (AttentionSpec, EdgeGenerator, GeneratorSpec,
                                        TextureGenerator)

# a fixed build order, so that one seed gives the same initial weights whatever the stage builds
NETWORKS = ("g1", "g2", "d1", "d2")
DISCRIMINATORS = {"d1": 2, "d2": 3}  # input channels: D1 sees [edge, gray], D2 sees RGB


def generator_spec(model_cfg: DictConfig) -> GeneratorSpec:
    a = model_cfg.attention
    attention = AttentionSpec(heads=a.heads, kernel_size=a.kernel_size,
                              dilations=tuple(a.dilations), bias=a.bias,
                              backend=a.backend) if a.enabled else None
    return GeneratorSpec(channels=model_cfg.channels, blocks=model_cfg.blocks,
                         attention=attention, init_gain=model_cfg.init_gain,
                         hole_mask_channel=model_cfg.hole_mask_channel,
                         upsample=model_cfg.upsample, coarse_fill=model_cfg.coarse_fill,
                         edge_fill=model_cfg.edge_fill)


def build_network(name: str, model_cfg: DictConfig) -> nn.Module:
    """g1 (edge generator), g2 (texture generator), d1 or d2 (PatchGAN), freshly initialised."""
    if name == "g1":
        return EdgeGenerator(generator_spec(model_cfg))
    if name == "g2":
        return TextureGenerator(generator_spec(model_cfg))
    if name in DISCRIMINATORS:
        return PatchDiscriminator(DISCRIMINATORS[name], model_cfg.d_channels,
                                  model_cfg.init_gain)
    raise ValueError(f"unknown network '{name}' (one of g1, g2, d1, d2)")
