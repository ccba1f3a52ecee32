"""EdgeConnect's evaluation protocol, beside ours (pipeline.evaluation.metrics).

EdgeConnect's own script (scripts/metrics.py in its repository; the paper's EC row most likely
comes from it) scores each image pair as:

- both images to [0, 1], then to grayscale with skimage's `rgb2gray` (ITU-R 709 luma:
  0.2125 R + 0.7154 G + 0.0721 B);
- PSNR with data_range 1;
- SSIM with skimage's defaults of its day and `win_size=51`: a 51x51 *uniform* window, sample
  covariances (N-1), K1 0.01, K2 0.03, data_range 1, the map averaged over the pixels at least
  25 from the border;
- "MAE" as sum|a - b| / sum(a + b): a relative error, not the mean absolute error.

Ours is RGB at [0, 255] with Wang et al.'s Gaussian window, so the two give different numbers for
the same images; evaluate.py reports both, named ec_psnr / ec_ssim / ec_mae for this one.
"""
from __future__ import annotations

import torch

from pipeline.evaluation.metrics import _band

LUMA = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray
WINDOW = 51
K1, K2 = 0.01, 0.03


def gray(x: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0-255 float) RGB [B,3,H,W] -> float64 luma [B,H,W] in [0, 1]."""
    x = x.to(torch.float64) / 255.0
    weights = torch.tensor(LUMA, dtype=torch.float64, device=x.device)
    return torch.einsum("bchw,c->bhw", x, weights)


def ec_psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR [B] of grayscale images in [0, 1]."""
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)


def _box_valid(x: torch.Tensor) -> torch.Tensor:
    """Mean over every full 51x51 window (valid mode): skimage's uniform filter, border cropped."""
    window = torch.full((WINDOW,), 1.0 / WINDOW, dtype=x.dtype, device=x.device)
    return _band(x.shape[-2], window) @ x @ _band(x.shape[-1], window).T


def ec_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM [B] of grayscale images in [0, 1], EdgeConnect's setting (module doc)."""
    if min(a.shape[-2:]) < WINDOW:
        raise ValueError(f"EdgeConnect's SSIM needs images of at least {WINDOW}x{WINDOW} pixels, "
                         f"got {a.shape[-2]}x{a.shape[-1]}")
    n = WINDOW * WINDOW
    sample = n / (n - 1)  # skimage's use_sample_covariance=True
    mu_a, mu_b = _box_valid(a), _box_valid(b)
    var_a = sample * (_box_valid(a * a) - mu_a * mu_a)
    var_b = sample * (_box_valid(b * b) - mu_b * mu_b)
    cov = sample * (_box_valid(a * b) - mu_a * mu_b)
    c1, c2 = K1**2, K2**2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(dim=1)


def ec_mae(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image sum|a - b| / sum(a + b) [B] of grayscale images (EdgeConnect's "MAE")."""
    return (a - b).abs().flatten(1).sum(dim=1) / (a + b).flatten(1).sum(dim=1)


def score_edgeconnect(output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"ec_psnr", "ec_ssim", "ec_mae"} per image [B] of uint8 RGB [B,3,H,W] (ec_ssim only for
    images of at least 51x51 pixels)."""
    a, b = gray(output), gray(target)
    scores = {"ec_psnr": ec_psnr(a, b), "ec_mae": ec_mae(a, b)}
    if min(a.shape[-2:]) >= WINDOW:
        scores["ec_ssim"] = ec_ssim(a, b)
    return scores
