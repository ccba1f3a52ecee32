"""Image quality metrics and per-bucket aggregation, as the paper reports them.

PSNR and SSIM are computed on RGB in [0, 255], one value per image, batched in torch (float64)
so training validation and evaluate.py share them on CPU or GPU:

- `psnr(a, b)`: 10·log10(255² / MSE) from each image's own MSE (skimage's
  `peak_signal_noise_ratio(data_range=255)`); identical images give +inf.
- `ssim(a, b)`: Wang et al.'s setting, i.e. skimage's `structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)`: an 11×11 Gaussian
  window (σ 1.5 truncated at 3.5σ), population covariances, and the SSIM map averaged over the
  pixels at least 5 from the border. Those pixels never see skimage's border padding, so a
  valid-mode convolution reproduces it exactly.

`edge_accuracy(pred, truth, mask)`: G1's edge precision, recall and F1 inside the hole, as
EdgeConnect reports them (predicted edge: probability above 0.5).

`score_batch(output, target)` scores model outputs in [0, 1] the way saved PNGs would score
(both quantised to uint8 first); `BucketMeter` averages per hole-area bucket; `bucket_table`
renders the paper's Table 1 layout (rows: metric × run, columns: buckets).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

from pipeline.data.decode import to_uint8
from pipeline.data.masks import BUCKETS, bucket_name

DATA_RANGE = 255.0
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # skimage's truncation for gaussian_weights=True
SSIM_K1, SSIM_K2 = 0.01, 0.03
METRICS = ("psnr", "ssim")
OVERALL = "overall"

Scores = Union[torch.Tensor, Sequence[float], float]


def bucket_columns() -> list[str]:
    """Summary/table column names in order: "0-10" ... "50-60", "overall"."""
    return [bucket_name(i) for i in range(len(BUCKETS))] + [OVERALL]


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] or [3,H,W], uint8 or float in [0,255] -> float64 [B,C,H,W]."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected images [B,C,H,W] or [C,H,W], got shape {tuple(x.shape)}")
    return x.to(torch.float64)


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return _as_batch(a), _as_batch(b)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR [B] (float64) of images in [0, 255]."""
    a, b = _pair(a, b)
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(DATA_RANGE**2 / mse)


def _gaussian_window(device: torch.device) -> torch.Tensor:
    """scipy.ndimage's normalised 1-D Gaussian kernel (σ 1.5, radius int(3.5σ + 0.5) = 5)."""
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    w = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return w / w.sum()


def _band(n: int, window: torch.Tensor) -> torch.Tensor:
    """[n-k+1, n] matrix whose row i holds the window at columns i..i+k-1 (valid 1-D filter)."""
    k = window.numel()
    band = torch.zeros(n - k + 1, n, dtype=window.dtype, device=window.device)
    cols = (torch.arange(n - k + 1, device=window.device)[:, None]
            + torch.arange(k, device=window.device))
    return band.scatter_(1, cols, window.expand(n - k + 1, k))


def _blur_valid(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter per channel, valid mode (each side shrinks by 2·radius).

    Two matrix products with banded matrices: BLAS makes this ~5x faster than a float64
    grouped conv2d on CPU, with the same result to rounding (1e-16).
    """
    return _band(x.shape[-2], window) @ x @ _band(x.shape[-1], window).T


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM [B] (float64) of images in [0, 255], Wang et al.'s setting (module doc)."""
    a, b = _pair(a, b)
    window = _gaussian_window(a.device)
    if min(a.shape[-2:]) < window.numel():
        raise ValueError(f"SSIM needs images of at least {window.numel()}x{window.numel()} "
                         f"pixels, got {a.shape[-2]}x{a.shape[-1]}")
    mu_a, mu_b = _blur_valid(a, window), _blur_valid(b, window)
    var_a = _blur_valid(a * a, window) - mu_a * mu_a
    var_b = _blur_valid(b * b, window) - mu_b * mu_b
    cov = _blur_valid(a * b, window) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(dim=1)


def score_batch(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (psnr [B], ssim [B]) of [B,3,H,W] float images in [0, 1], on CPU.

    Both are quantised to uint8 first, so the scores equal those of the saved PNGs.
    """
    out, tgt = to_uint8(output), to_uint8(target)
    return psnr(out, tgt).cpu(), ssim(out, tgt).cpu()


def edge_accuracy(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor
                  ) -> dict[str, float]:
    """{"edge_precision", "edge_recall", "edge_f1"} of predicted edge maps [B,1,H,W] against the
    true Canny edges, counted over the hole pixels of the whole batch (1.0 where nothing is
    predicted or nothing is there to find, as a perfect score of an empty set)."""
    hole = mask > 0.5
    predicted, actual = (pred > 0.5) & hole, (truth > 0.5) & hole
    # one device-to-host copy for the three counts
    hits, n_pred, n_true = torch.stack([(predicted & actual).sum(), predicted.sum(),
                                        actual.sum()]).tolist()
    precision = hits / n_pred if n_pred else 1.0
    recall = hits / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"edge_precision": precision, "edge_recall": recall, "edge_f1": f1}


def _as_list(values: Scores) -> list[float]:
    if isinstance(values, torch.Tensor):
        return [float(v) for v in values.detach().reshape(-1).cpu()]
    if isinstance(values, (int, float)):
        return [float(values)]
    return [float(v) for v in values]


class BucketMeter:
    """Running per-bucket means of PSNR and SSIM.

    `add(psnr, ssim, bucket)` takes matching tensors / sequences (or scalars) with bucket
    indices 0..5; `summary()` returns {"0-10": {"psnr", "ssim", "n"}, ..., "overall": {...}}
    with only the buckets that received images; "overall" averages all images.
    """

    def __init__(self) -> None:
        self._sums = {i: [0.0, 0.0, 0] for i in range(len(BUCKETS))}

    def add(self, psnr_values: Scores, ssim_values: Scores, bucket: Scores) -> None:
        p, s, k = _as_list(psnr_values), _as_list(ssim_values), _as_list(bucket)
        if not len(p) == len(s) == len(k):
            raise ValueError(f"psnr, ssim and bucket lengths differ: {len(p)}, {len(s)}, {len(k)}")
        for pv, sv, kv in zip(p, s, k):
            if int(kv) not in self._sums:
                raise ValueError(f"bucket index {int(kv)} is not in 0..{len(BUCKETS) - 1}")
            entry = self._sums[int(kv)]
            entry[0] += pv
            entry[1] += sv
            entry[2] += 1

    def summary(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        total = [0.0, 0.0, 0]
        for i, (p, s, n) in self._sums.items():
            if n:
                out[bucket_name(i)] = {"psnr": p / n, "ssim": s / n, "n": n}
                total = [total[0] + p, total[1] + s, total[2] + n]
        if total[2]:
            out[OVERALL] = {"psnr": total[0] / total[2], "ssim": total[1] / total[2],
                            "n": total[2]}
        return out


