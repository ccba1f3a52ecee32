"""EdgeConnect's protocol (grayscale PSNR, SSIM with a 51-pixel window, relative MAE) against
scikit-image called the way EdgeConnect's scripts/metrics.py calls it, on real photos."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data
from skimage.color import rgb2gray
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.evaluation.edgeconnect import ec_mae, ec_psnr, ec_ssim, gray, score_edgeconnect


def photo_pair(seed: int, side: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A crop of a bundled photo and a damaged copy (noise plus a flat patch), uint8 HxWx3."""
    rng = np.random.default_rng(seed)
    truth = data.astronaut()[100:100 + side, 150:150 + side + 8 * seed]
    damaged = np.clip(truth + rng.normal(0, 12, truth.shape), 0, 255).astype(np.uint8)
    damaged[20:50, 30:70] = damaged[20:50, 30:70].mean(axis=(0, 1)).astype(np.uint8)
    return truth, damaged


def as_batch(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_skimage_on_grayscale(seed):
    truth, damaged = photo_pair(seed)
    # EdgeConnect: /255 as float, rgb2gray, compare_psnr / compare_ssim(win_size=51), data_range 1
    g_truth, g_damaged = rgb2gray(truth / 255.0), rgb2gray(damaged / 255.0)
    expected_psnr = peak_signal_noise_ratio(g_truth, g_damaged, data_range=1)
    expected_ssim = structural_similarity(g_truth, g_damaged, data_range=1, win_size=51)
    expected_mae = np.abs(g_truth - g_damaged).sum() / (g_truth + g_damaged).sum()

    a, b = gray(as_batch(truth)), gray(as_batch(damaged))
    np.testing.assert_allclose(a[0].numpy(), g_truth, atol=1e-12)
    assert float(ec_psnr(a, b)) == pytest.approx(expected_psnr, abs=1e-4)
    assert float(ec_ssim(a, b)) == pytest.approx(expected_ssim, abs=1e-4)
    assert float(ec_mae(a, b)) == pytest.approx(expected_mae, abs=1e-6)


def test_batch_scores_each_image_and_small_images_skip_ssim():
    pairs = [photo_pair(0, 64) for _ in range(2)]
    out = torch.cat([as_batch(d) for _, d in pairs])
    tgt = torch.cat([as_batch(t) for t, _ in pairs])
    scores = score_edgeconnect(out, tgt)
    assert set(scores) == {"ec_psnr", "ec_ssim", "ec_mae"}
    assert scores["ec_ssim"].shape == (2,)
    small = score_edgeconnect(out[..., :40, :40], tgt[..., :40, :40])
    assert set(small) == {"ec_psnr", "ec_mae"}  # a 51-pixel window does not fit 40x40
    with pytest.raises(ValueError, match="at least 51x51"):
        ec_ssim(gray(out[..., :40, :40]), gray(tgt[..., :40, :40]))


def test_differs_from_our_protocol():
    """The reason both are reported: the same images give other numbers."""
    from pipeline.evaluation.metrics import psnr, ssim

    truth, damaged = photo_pair(1)
    a, b = as_batch(truth), as_batch(damaged)
    assert abs(float(ssim(a, b)) - float(ec_ssim(gray(a), gray(b)))) > 0.01
    assert abs(float(psnr(a, b)) - float(ec_psnr(gray(a), gray(b)))) > 0.1
