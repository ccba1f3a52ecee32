"""VGG19's convolutional stack for the perceptual and style losses, without torchvision.

The `features` Sequential mirrors torchvision's layer indices, so its state_dict keys
(`features.N.weight`, `features.N.bias`) match the ImageNet file `vgg19-dcbb9e9d.pth`.
Inputs are raw [0, 1] images, as EdgeConnect feeds them (no ImageNet normalisation).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"
# conv widths per stage; each stage ends with a 2x2 max pool
STAGES = [[64] * 2, [128] * 2, [256] * 4, [512] * 4, [512] * 4]
OUTPUTS = ("relu1_1", "relu2_1", "relu2_2", "relu3_1", "relu3_4", "relu4_1", "relu4_4",
           "relu5_1", "relu5_2")


class VGGWeightsError(RuntimeError):
    """The VGG19 weights file is missing or is not a torchvision VGG19 state_dict."""


def hub_weights_path() -> Path:
    """Where torch hub caches the file: $TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def _build_features() -> tuple[nn.Sequential, dict[int, str]]:
    """torchvision's vgg19().features, plus the layer index of each named ReLU."""
    layers: list[nn.Module] = []
    relu_names: dict[int, str] = {}
    channels = 3
    for stage, widths in enumerate(STAGES, start=1):
        for conv, width in enumerate(widths, start=1):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            relu_names[len(layers) - 1] = f"relu{stage}_{conv}"
            channels = width
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers), relu_names


class VGG19Features(nn.Module):
    """Frozen VGG19; forward(x in [0, 1]) -> {name: activation} for the names in OUTPUTS.

    weights: a path to vgg19-dcbb9e9d.pth, "" for the torch hub cache, or "random" for an
    untrained network (tests and CPU demos only)."""

    def __init__(self, weights: str = ""):
        super().__init__()
        self.features, relu_names = _build_features()
        self.outputs = {i: name for i, name in relu_names.items() if name in OUTPUTS}
        self.depth = max(self.outputs) + 1  # layers past the last output are never run
        if weights != "random":
            self._load(Path(weights) if weights else hub_weights_path())
        self.requires_grad_(False)
        self.eval()

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise VGGWeightsError(
                f"VGG19 weights not found at {path}. Put {WEIGHTS_FILE} (torchvision's ImageNet "
                f"VGG19) there, or point loss.vgg_weights=/path/to/{WEIGHTS_FILE} at it; the "
                f"default location is $TORCH_HOME/hub/checkpoints/ (TORCH_HOME="
                f"{os.environ.get('TORCH_HOME', 'unset')}). For tests and demos only, "
                f"loss.vgg_weights=random opts into an untrained VGG.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # any unreadable file: say which, keep the cause
            raise VGGWeightsError(f"cannot read VGG19 weights {path}: {err}") from err
        ours = self.state_dict()
        missing = sorted(set(ours) - set(state))
        if missing:
            raise VGGWeightsError(f"{path} is not a torchvision VGG19 state_dict: missing "
                                  f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        try:
            self.load_state_dict({key: state[key] for key in ours})
        except RuntimeError as err:
            raise VGGWeightsError(f"{path} does not fit VGG19: {err}") from err

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i, layer in enumerate(self.features[:self.depth]):
            x = layer(x)
            if i in self.outputs:
                out[self.outputs[i]] = x
        return out
