"""evaluation.metrics vs scikit-image on real photos, hand-computed cases, the meter and table."""
import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.evaluation.metrics import BucketMeter, edge_accuracy, psnr, score_batch, ssim
from pipeline.evaluation.tables import bucket_table, flat_metrics, summary_from_flat
from pipeline.models.contract import composite


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=255, channel_axis=-1)


def _degraded_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Crops of bundled photos with noise, a blur, a flat-filled hole and a colour shift."""
    rng = np.random.default_rng(0)
    pairs = []
    for photo in (data.astronaut(), data.chelsea(), data.coffee()):
        a = photo[40:104, 60:124]  # 64 x 64
        noisy = np.clip(a + rng.normal(0, 15, a.shape), 0, 255).astype(np.uint8)
        blurred = ((a.astype(np.uint16)[:-2] + a[1:-1] + a[2:]) // 3).astype(np.uint8)
        blurred = np.concatenate([a[:1], blurred, a[-1:]])
        holed = a.copy()
        holed[10:40, 20:50] = a.reshape(-1, 3).mean(0).astype(np.uint8)
        shifted = np.clip(a.astype(int) + [20, -10, 5], 0, 255).astype(np.uint8)
        pairs += [(a, noisy), (a, blurred), (a, holed), (a, shifted)]
    return pairs


def _nchw(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def test_batched_metrics_match_skimage_on_photos():
    pairs = _degraded_pairs()
    a, b = _nchw([p[0] for p in pairs]), _nchw([p[1] for p in pairs])
    got_psnr, got_ssim = psnr(a, b), ssim(a, b)
    for i, (x, y) in enumerate(pairs):
        assert got_psnr[i].item() == peak_signal_noise_ratio(x, y, data_range=255)
        assert abs(got_ssim[i].item() - _skimage_ssim(x, y)) <= 1e-6
    # float inputs in [0, 255] score the same as uint8
    torch.testing.assert_close(ssim(a.double(), b.float()), got_ssim, rtol=0, atol=1e-12)


def test_ssim_matches_skimage_on_non_square_full_photo():
    photo = data.astronaut()[:200, :300]
    rng = np.random.default_rng(1)
    other = np.clip(photo + rng.normal(0, 25, photo.shape), 0, 255).astype(np.uint8)
    got = ssim(_nchw([photo])[0], _nchw([other])[0]).item()
    assert abs(got - _skimage_ssim(photo, other)) <= 1e-6


def test_psnr_of_a_hand_built_case():
    a = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    b = a.clone()
    b[0, 1, 7, 9] = 255  # one pixel fully wrong: MSE = 255² / (3·32·32), PSNR = 10·log10(3072)
    assert psnr(a, b).item() == pytest.approx(10 * math.log10(3 * 32 * 32), abs=1e-12)
    c = torch.full((1, 3, 16, 16), 5, dtype=torch.uint8)  # off by 5 everywhere: MSE = 25
    assert psnr(a[..., :16, :16], c).item() == pytest.approx(10 * math.log10(255**2 / 25),
                                                             abs=1e-12)
    assert psnr(a, a).item() == math.inf


def test_ssim_of_identical_images_is_one():
    photo = _nchw([data.chelsea()[:64, :64]])
    assert ssim(photo, photo).item() == pytest.approx(1.0, abs=1e-12)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 32), torch.zeros(1, 3, 8, 32))


def test_score_batch_scores_what_a_png_would_hold():
    pairs = _degraded_pairs()[:4]
    target = _nchw([p[0] for p in pairs]).float() / 255
    output = _nchw([p[1] for p in pairs]).float() / 255 + 0.3 / 255  # rounds back to the uint8
    p, s = score_batch(output, target)
    for i, (x, y) in enumerate(pairs):
        assert p[i].item() == peak_signal_noise_ratio(x, y, data_range=255)
        assert abs(s[i].item() - _skimage_ssim(x, y)) <= 1e-6


def test_composite_keeps_known_pixels_bit_exact():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 32, 32, generator=gen)  # not multiples of 1/255 on purpose
    pred = torch.rand(2, 3, 32, 32, generator=gen)
    mask = (torch.rand(2, 1, 32, 32, generator=gen) > 0.7).float()
    out = composite(pred, target, mask)
    known = (mask == 0).expand_as(target)
    assert torch.equal(out[known], target[known])
    assert torch.equal(out[~known], pred[~known])


def test_bucket_meter_summary_and_overall():
    meter = BucketMeter()
    meter.add(torch.tensor([30.0, 20.0]), torch.tensor([0.9, 0.7]), torch.tensor([0, 0]))
    meter.add([10.0], [0.5], [5])
    meter.add(40.0, 1.0, 2)
    s = meter.summary()
    assert list(s) == ["0-10", "20-30", "50-60", "overall"]
    assert s["0-10"] == {"psnr": 25.0, "ssim": pytest.approx(0.8), "n": 2}
    assert s["overall"] == {"psnr": 25.0, "ssim": pytest.approx(0.775), "n": 4}
    assert summary_from_flat(flat_metrics(s)) == {k: {"psnr": v["psnr"], "ssim": v["ssim"]}
                                                  for k, v in s.items()}
    with pytest.raises(ValueError, match="bucket index 6"):
        meter.add([1.0], [1.0], [6])
    with pytest.raises(ValueError, match="lengths differ"):
        meter.add([1.0, 2.0], [1.0], [0, 1])


def test_bucket_table_layout_and_best_marks():
    runs = {"ours": {"0-10": {"psnr": 31.5, "ssim": 0.95}, "overall": {"psnr": 31.5, "ssim": 0.95}},
            "telea": {"0-10": {"psnr": 29.0, "ssim": 0.96}, "10-20": {"psnr": 25.0, "ssim": 0.9},
                      "overall": {"psnr": 27.0, "ssim": 0.93}}}
    lines = bucket_table(runs, mark_best=True).splitlines()
    assert lines[0] == ("| Metric | Run | 0-10 % | 10-20 % | 20-30 % | 30-40 % | 40-50 % "
                        "| 50-60 % | overall | Protocol |")
    assert [line.split(" | ")[:2] for line in lines[2:]] == [
        ["| PSNR", "ours"], ["| PSNR", "telea"], ["| SSIM", "ours"], ["| SSIM", "telea"]]
    assert lines[2].startswith("| PSNR | ours | **31.50** | – |")
    assert lines[5].startswith("| SSIM | telea | **0.9600** | **0.9000** |")
    assert "**" not in bucket_table(runs)


def test_edge_accuracy_counts_the_hole_only():
    truth = torch.zeros(1, 1, 4, 4)
    truth[0, 0, 0, :] = 1  # 4 true edge pixels in row 0, 2 of them in the hole
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, :2, :2] = 1  # hole: top-left 2x2
    pred = torch.zeros(1, 1, 4, 4)
    pred[0, 0, 0, 0] = 0.9  # hit
    pred[0, 0, 1, 1] = 0.7  # false alarm
    pred[0, 0, 0, 3] = 0.9  # outside the hole: not counted
    pred[0, 0, 1, 0] = 0.4  # below 0.5: not an edge
    assert edge_accuracy(pred, truth, mask) == {"edge_precision": 0.5, "edge_recall": 0.5,
                                                "edge_f1": 0.5}
    pred[0, 0, 0, 1] = 0.8  # the other true edge in the hole: recall 1, precision 2/3
    assert edge_accuracy(pred, truth, mask)["edge_f1"] == pytest.approx(0.8)
    silent = edge_accuracy(torch.zeros_like(pred), truth, mask)  # finds nothing: F1 0
    assert silent["edge_precision"] == 1.0 and silent["edge_f1"] == 0.0
    nothing = torch.zeros_like(truth)  # nothing to find, nothing drawn: a perfect score
    assert edge_accuracy(nothing, nothing, mask)["edge_f1"] == 1.0
