"""The image networks behind LPIPS and FID, written here because their usual source
(torchvision) does not import beside the project's CPU torch. Layers and parameter names follow
the published weight files, so those files load with `load_state_dict(strict=True)`:

- `alexnet_features()` / `vgg16_features()`: torchvision's `features` stacks (keys "0.weight",
  ...), for LPIPS. LPIPS reads five ReLU outputs: `LPIPS_TAPS`.
- `FidInception`: Inception-v3 as converted from TensorFlow's 2015-12-05 graph for FID
  (pytorch-fid's and LaMa's `pt_inception-2015-12-05-6726825d.pth`; keys "Conv2d_1a_3x3.conv.
  weight", ...). Its blocks differ from torchvision's ImageNet Inception-v3 where TensorFlow's
  did: average pools that ignore the padding, a max pool in the last block, 1008 classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# indices in the features stack whose outputs LPIPS compares (after each block's ReLU)
LPIPS_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
LPIPS_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}


def alexnet_features() -> nn.Sequential:
    """torchvision's AlexNet `features` (the "one weird trick" variant its weights come from)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))


def vgg16_features() -> nn.Sequential:
    """torchvision's VGG16 `features` (configuration D, no batch norm)."""
    layers: list[nn.Module] = []
    channels = 3
    for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                  512, 512, 512, "M"):
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
    return nn.Sequential(*layers)


class _Conv(nn.Module):
    """Convolution without bias, batch norm (TensorFlow's epsilon 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


# pooling steps a branch may start with
AVG = "avg3"        # 3x3, stride 1, padding not counted (TensorFlow's behaviour)
MAX_S1 = "max3s1"   # 3x3, stride 1, padded
MAX_S2 = "max3s2"   # 3x3, stride 2, no padding (a reduction block's pool branch)


def _pool(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == AVG:
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    if kind == MAX_S1:
        return F.max_pool2d(x, 3, stride=1, padding=1)
    return F.max_pool2d(x, 3, stride=2)


class _Mixed(nn.Module):
    """An Inception block: parallel branches, their outputs concatenated on channels.

    `convs` names every convolution (the names are the weight file's keys); each branch is a
    list of steps: a conv name, a pooling kind, or a pair of conv names applied to the same
    input and concatenated (the split ends of the last two blocks).
    """

    def __init__(self, convs: dict[str, _Conv], branches: list[list]):
        super().__init__()
        for name, module in convs.items():
            self.add_module(name, module)
        self.branches = branches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for branch in self.branches:
            h = x
            for step in branch:
                if isinstance(step, tuple):
                    h = torch.cat([self.get_submodule(name)(h) for name in step], 1)
                elif step in (AVG, MAX_S1, MAX_S2):
                    h = _pool(h, step)
                else:
                    h = self.get_submodule(step)(h)
            outputs.append(h)
        return torch.cat(outputs, 1)


def _block_a(cin: int, pool_features: int) -> _Mixed:
    return _Mixed({"branch1x1": _Conv(cin, 64, 1), "branch5x5_1": _Conv(cin, 48, 1),
                   "branch5x5_2": _Conv(48, 64, 5, padding=2),
                   "branch3x3dbl_1": _Conv(cin, 64, 1),
                   "branch3x3dbl_2": _Conv(64, 96, 3, padding=1),
                   "branch3x3dbl_3": _Conv(96, 96, 3, padding=1),
                   "branch_pool": _Conv(cin, pool_features, 1)},
                  [["branch1x1"], ["branch5x5_1", "branch5x5_2"],
                   ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
                   [AVG, "branch_pool"]])


def _block_b(cin: int) -> _Mixed:
    return _Mixed({"branch3x3": _Conv(cin, 384, 3, stride=2),
                   "branch3x3dbl_1": _Conv(cin, 64, 1),
                   "branch3x3dbl_2": _Conv(64, 96, 3, padding=1),
                   "branch3x3dbl_3": _Conv(96, 96, 3, stride=2)},
                  [["branch3x3"], ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
                   [MAX_S2]])


def _block_c(cin: int, c7: int) -> _Mixed:
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    return _Mixed({"branch1x1": _Conv(cin, 192, 1),
                   "branch7x7_1": _Conv(cin, c7, 1), "branch7x7_2": _Conv(c7, c7, **row),
                   "branch7x7_3": _Conv(c7, 192, **col),
                   "branch7x7dbl_1": _Conv(cin, c7, 1), "branch7x7dbl_2": _Conv(c7, c7, **col),
                   "branch7x7dbl_3": _Conv(c7, c7, **row), "branch7x7dbl_4": _Conv(c7, c7, **col),
                   "branch7x7dbl_5": _Conv(c7, 192, **row),
                   "branch_pool": _Conv(cin, 192, 1)},
                  [["branch1x1"], ["branch7x7_1", "branch7x7_2", "branch7x7_3"],
                   [f"branch7x7dbl_{i}" for i in range(1, 6)], [AVG, "branch_pool"]])


def _block_d(cin: int) -> _Mixed:
    return _Mixed({"branch3x3_1": _Conv(cin, 192, 1),
                   "branch3x3_2": _Conv(192, 320, 3, stride=2),
                   "branch7x7x3_1": _Conv(cin, 192, 1),
                   "branch7x7x3_2": _Conv(192, 192, (1, 7), padding=(0, 3)),
                   "branch7x7x3_3": _Conv(192, 192, (7, 1), padding=(3, 0)),
                   "branch7x7x3_4": _Conv(192, 192, 3, stride=2)},
                  [["branch3x3_1", "branch3x3_2"],
                   [f"branch7x7x3_{i}" for i in range(1, 5)], [MAX_S2]])


def _block_e(cin: int, pool: str) -> _Mixed:
    row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
    return _Mixed({"branch1x1": _Conv(cin, 320, 1),
                   "branch3x3_1": _Conv(cin, 384, 1), "branch3x3_2a": _Conv(384, 384, **row),
                   "branch3x3_2b": _Conv(384, 384, **col),
                   "branch3x3dbl_1": _Conv(cin, 448, 1),
                   "branch3x3dbl_2": _Conv(448, 384, 3, padding=1),
                   "branch3x3dbl_3a": _Conv(384, 384, **row),
                   "branch3x3dbl_3b": _Conv(384, 384, **col),
                   "branch_pool": _Conv(cin, 192, 1)},
                  [["branch1x1"], ["branch3x3_1", ("branch3x3_2a", "branch3x3_2b")],
                   ["branch3x3dbl_1", "branch3x3dbl_2", ("branch3x3dbl_3a", "branch3x3dbl_3b")],
                   [pool, "branch_pool"]])


class FidInception(nn.Module):
    """The FID network: RGB [B,3,H,W] in [0, 1] -> pool features [B, 2048].

    Input handling as pytorch-fid (and LaMa) do it: bilinear resize to 299x299, then scaled to
    [-1, 1].
    """

    num_features = 2048  # read by torchmetrics' FrechetInceptionDistance

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = (_block_a(192, 32), _block_a(256, 64),
                                                       _block_a(288, 64))
        self.Mixed_6a = _block_b(288)
        self.Mixed_6b, self.Mixed_6c = _block_c(768, 128), _block_c(768, 160)
        self.Mixed_6d, self.Mixed_6e = _block_c(768, 160), _block_c(768, 192)
        self.Mixed_7a = _block_d(768)
        self.Mixed_7b, self.Mixed_7c = _block_e(1280, AVG), _block_e(2048, MAX_S1)
        self.fc = nn.Linear(2048, 1008)  # unused for FID; present so the weight file loads whole

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)
