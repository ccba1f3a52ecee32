"""LPIPS and FID: the backbones of pipeline.evaluation.backbones with their published weights,
the arithmetic from torchmetrics (LPIPS' scaling, unit-normalised feature differences, the
shipped linear heads and spatial mean; FID's streamed mean/covariance and Fréchet distance).

Weights: no wheel ships the backbones, so they are read from a file: a path given on the command
line, else torch's hub cache ($TORCH_HOME/hub/checkpoints/, where torchvision, pytorch-fid and
LaMa put them). A missing file is a `WeightsError` naming the file and where to put it. "random"
opts into untrained backbones, for tests only: their numbers mean nothing.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn

from pipeline.evaluation.backbones import (LPIPS_CHANNELS, LPIPS_TAPS, FidInception,
                                           alexnet_features, vgg16_features)

RANDOM = "random"
# pytorch-fid's (and LaMa's) conversion of TensorFlow's 2015-12-05 Inception; torch-fidelity
# publishes the same weights under its own name
FID_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
LPIPS_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
BACKBONES = {"alex": alexnet_features, "vgg": vgg16_features}


class WeightsError(RuntimeError):
    """A backbone's weights are missing or do not fit; the message names the file."""


def hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(given: Optional[str], names: Iterable[str], option: str, what: str) -> str:
    """The weight file to read: `given` (a path or "random"), else the first of `names` in the
    hub cache; WeightsError naming the file to place, and where, when there is none."""
    if given:
        if given != RANDOM and not Path(given).is_file():
            raise WeightsError(f"{what}: weight file not found: {given} ({option})")
        return given
    names = list(names)
    for name in names:
        if (hub_checkpoints() / name).is_file():
            return str(hub_checkpoints() / name)
    raise WeightsError(f"{what} needs {names[0]}: place it in {hub_checkpoints()}/ "
                       f"($TORCH_HOME/hub/checkpoints) or pass {option} PATH; "
                       f"--metrics psnr,ssim,mae runs without it")


def _read_state(path: str, what: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise WeightsError(f"{what}: cannot read {path}: {err}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{what}: {path} is not a state_dict")
    return state


def _fit(module: nn.Module, state: dict, path: str, what: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise WeightsError(f"{what}: {path} does not fit the network ({first})") from None


class LPIPS(nn.Module):
    """LPIPS v0.1 (Zhang et al. 2018): per-image distance [B] of RGB [B,3,H,W] in [0, 1].

    net: "alex" (the LPIPS authors' recommended metric) or "vgg" (LaMa's choice); weights: the
    torchvision backbone file, "random", or None for the hub cache.
    """

    def __init__(self, net: str = "alex", weights: Optional[str] = None):
        super().__init__()
        from torchmetrics.functional.image import lpips as tm

        self._tm = tm
        what = f"LPIPS ({net})"
        self.scaling = tm.ScalingLayer()
        self.features = BACKBONES[net]()
        self.taps = LPIPS_TAPS[net]
        self.lins = nn.ModuleList(tm.NetLinLayer(c, use_dropout=True)
                                  for c in LPIPS_CHANNELS[net])
        path = find_weights(weights, [LPIPS_FILES[net]], "--lpips-weights", what)
        if path != RANDOM:
            state = _read_state(path, what)
            _fit(self.features, {k[len("features."):]: v for k, v in state.items()
                                 if k.startswith("features.")}, path, what)
        # the linear heads ship inside torchmetrics (lpips_models/<net>.pth: lin0.model.1.weight)
        heads = Path(inspect.getfile(tm)).parent / "lpips_models" / f"{net}.pth"
        head_state = torch.load(heads, map_location="cpu", weights_only=True)
        self.lins.load_state_dict({k.replace("lin", "", 1): v for k, v in head_state.items()})
        self.requires_grad_(False).eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features[:self.taps[-1] + 1]):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        tm = self._tm
        fa = self._taps(self.scaling(2 * a.float() - 1))
        fb = self._taps(self.scaling(2 * b.float() - 1))
        dist = sum(tm._spatial_average(lin((tm._normalize_tensor(x) - tm._normalize_tensor(y))
                                           ** 2))
                   for lin, x, y in zip(self.lins, fa, fb))
        return dist.flatten()


def fid_network(weights: Optional[str] = None) -> FidInception:
    """The FID Inception with pt_inception-2015-12-05's weights (or "random"), in eval mode."""
    net = FidInception()
    path = find_weights(weights, FID_FILES, "--fid-weights", "FID")
    if path != RANDOM:
        _fit(net, _read_state(path, "FID"), path, "FID")
    return net.requires_grad_(False).eval()


class _Given(nn.Module):
    """Features already computed: torchmetrics' FID accumulates them as they are."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_accumulator(num_features: int):
    """A torchmetrics FrechetInceptionDistance fed with features (update(features, real))."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=_Given(num_features), reset_real_features=False)


class BucketFid:
    """FID per hole-area bucket and overall: every test image once as the real set, each
    bucket's composited outputs (and all of them, "overall") as the generated set."""

    def __init__(self, net: nn.Module, columns: Iterable[str]):
        self.net = net
        self.sets = {c: frechet_accumulator(net.num_features) for c in columns}
        self.seen: set = set()

    def add(self, output: torch.Tensor, target: torch.Tensor, columns: list[str],
            keys: list[str], overall: str) -> None:
        """output, target: RGB [B,3,H,W] in [0, 1]; columns[i]: image i's bucket name."""
        fake = self.net(output).double().cpu()
        new = [i for i, k in enumerate(keys) if k not in self.seen and k not in keys[:i]]
        if new:
            real = self.net(target[new]).double().cpu()
            for fid in self.sets.values():
                fid.update(real, real=True)
            self.seen.update(keys[i] for i in new)
        for column in set(columns):
            rows = [i for i, c in enumerate(columns) if c == column]
            self.sets[column].update(fake[rows], real=False)
        self.sets[overall].update(fake, real=False)

    def summary(self) -> dict[str, dict[str, float]]:
        """{column: {"fid", "fid_n"}} for every column with at least two generated images."""
        out = {}
        for column, fid in self.sets.items():
            n = int(fid.fake_features_num_samples)
            if n >= 2 and len(self.seen) >= 2:
                out[column] = {"fid": float(fid.compute()), "fid_n": n}
        return out
