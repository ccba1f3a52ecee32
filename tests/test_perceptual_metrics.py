"""LPIPS and FID: our LPIPS against torchmetrics' reference LPIPS with the same weights, our FID
against scipy on the same features, the FID network's weight-file layout, evaluate.py with
untrained backbones (opted into with "random", as loss.vgg_weights=random is) and without any."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from scipy import linalg
from skimage import data

from pipeline.evaluation import perceptual
from pipeline.evaluation.backbones import FidInception, alexnet_features, vgg16_features
from pipeline.evaluation.perceptual import (LPIPS, BucketFid, WeightsError, fid_network,
                                            frechet_accumulator)
from tests.helpers import run_cli


def photos(n: int, side: int = 96, seed: int = 0) -> torch.Tensor:
    """n crops of bundled photos, RGB [n,3,side,side] in [0, 1]."""
    rng = np.random.default_rng(seed)
    sources = [data.astronaut(), data.chelsea(), data.coffee()]
    crops = []
    for i in range(n):
        img = sources[i % len(sources)]
        y, x = rng.integers(0, img.shape[0] - side), rng.integers(0, img.shape[1] - side)
        crops.append(img[y:y + side, x:x + side])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


def torchvision_file(tmp_path, features: torch.nn.Sequential, name: str):
    """A state_dict laid out as torchvision saves its models (features.* plus a classifier)."""
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(4, 4)
    torch.save(state, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("net, build", [("alex", alexnet_features), ("vgg", vgg16_features)])
def test_lpips_equals_the_reference_implementation(monkeypatch, tmp_path, net, build):
    from torchmetrics.functional.image import lpips as reference

    torch.manual_seed(0)
    backbone = build()
    path = torchvision_file(tmp_path, backbone, f"{net}.pth")
    ours = LPIPS(net, str(path))
    # the reference builds its backbone through torchvision (absent here): hand it the same one
    monkeypatch.setattr(reference, "_get_tv_model_features", lambda name, pretrained: backbone)
    ref = reference._LPIPS(pretrained=True, net=net, pnet_rand=True).eval()

    a, b = photos(4, seed=1), photos(4, seed=2)
    b[:2] = (a[:2] + 0.1 * torch.randn_like(a[:2])).clamp(0, 1)
    with torch.no_grad():
        expected = ref(a, b, normalize=True).flatten()
        got = ours(a, b)
    assert got.shape == (4,)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert float(ours(a, a).abs().max()) < 1e-6


def test_no_torchvision_on_these_paths():
    """torchvision does not import beside the project's CPU torch: nothing here may need it."""
    import subprocess
    import sys

    code = ("import sys, torch; from pipeline.evaluation.suite import build_suite; "
            "s, _ = build_suite('psnr,ssim,mae,lpips,fid', 'cpu', 'alex', 'random', 'random'); "
            "x = torch.rand(2, 3, 64, 64); "
            "s.score(x, x.flip(-1), torch.tensor([0, 5]), ['a', 'b']); "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def scipy_fid(real: np.ndarray, fake: np.ndarray) -> float:
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_equals_scipy_on_the_same_features():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 32))
    fake = rng.normal(0.3, 1.2, size=(200, 32)) + 0.2 * rng.normal(size=(200, 1))
    fid = frechet_accumulator(32)
    for chunk in np.array_split(real, 7):  # streamed in batches, as evaluate.py feeds it
        fid.update(torch.from_numpy(chunk), real=True)
    fid.update(torch.from_numpy(fake), real=False)
    assert float(fid.compute()) == pytest.approx(scipy_fid(real, fake), abs=1e-3)


class PooledColours(torch.nn.Module):
    """A small synthetic feature network: 4x4 average colours and their squares (96 numbers)."""

    num_features = 96

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return torch.cat([pooled, pooled ** 2], 1)


def test_fid_per_bucket_takes_each_test_image_once_as_real():
    net = PooledColours()
    images = photos(60, side=32)
    outputs = (images + 0.05 * torch.randn_like(images)).clamp(0, 1)
    keys = [f"img{i % 30}" for i in range(60)]  # 30 test images, each in two buckets
    buckets = ["0-10"] * 30 + ["50-60"] * 30
    fid = BucketFid(net, ["0-10", "50-60", "overall"])
    for lo in range(0, 60, 8):
        fid.add(outputs[lo:lo + 8], images[lo:lo + 8], buckets[lo:lo + 8], keys[lo:lo + 8],
                "overall")
    summary = fid.summary()
    real = net(images[:30]).double().numpy()
    fake = net(outputs).double().numpy()
    assert summary["0-10"]["fid_n"] == 30 and summary["overall"]["fid_n"] == 60
    assert summary["0-10"]["fid"] == pytest.approx(scipy_fid(real, fake[:30]), abs=1e-3)
    assert summary["50-60"]["fid"] == pytest.approx(scipy_fid(real, fake[30:]), abs=1e-3)
    assert summary["overall"]["fid"] == pytest.approx(scipy_fid(real, fake), abs=1e-3)


def test_fid_network_reads_the_weight_file_layout(tmp_path):
    state = FidInception().state_dict()
    # names and shapes of the published pt_inception-2015-12-05 file (pytorch-fid's layout)
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    assert state["fc.weight"].shape == (1008, 2048)
    torch.save({k: torch.randn_like(v.float()) if v.is_floating_point() else v
                for k, v in state.items()}, tmp_path / "inception.pth")
    net = fid_network(str(tmp_path / "inception.pth"))
    assert net(photos(2, side=64)).shape == (2, 2048)
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match="does not fit"):
        fid_network(str(tmp_path / "wrong.pth"))


def test_missing_weights_name_the_file_and_where(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError) as err:
        fid_network()
    assert "pt_inception-2015-12-05-6726825d.pth" in str(err.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in str(err.value)
    with pytest.raises(WeightsError, match="alexnet-owt-7be5be79.pth"):
        LPIPS("alex")
    # found in the hub cache without any option
    hub = perceptual.hub_checkpoints()
    hub.mkdir(parents=True)
    torchvision_file(hub, alexnet_features(), "alexnet-owt-7be5be79.pth")
    LPIPS("alex")


def _evaluate(sample_shards, out, *args, env=None):
    return run_cli("evaluate.py", "--method", "mean", "--images", str(sample_shards / "test"),
                   "--masks", str(sample_shards / "masks"), "--image-size", "32",
                   "--per-bucket", "2", "--out", str(out), *args, env=env)


@pytest.mark.slow
def test_evaluate_without_weights_exits_2_with_one_line(sample_shards, tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "empty")}
    result = _evaluate(sample_shards, tmp_path / "out", "--metrics", "psnr,ssim,fid",
                       "--no-mlflow", env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "pt_inception-2015-12-05-6726825d.pth" in lines[0]
    assert str(tmp_path / "empty" / "hub" / "checkpoints") in lines[0]
    # the default ("auto") runs offline, saying what it left out
    result = _evaluate(sample_shards, tmp_path / "out", "--no-mlflow", env=env)
    assert result.returncode == 0, result.stderr
    assert "FID skipped" in result.stderr and "LPIPS skipped" in result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {"psnr", "ssim", "l1", "ec_psnr", "ec_mae"} <= set(metrics["overall"])
    assert "fid" not in metrics["overall"] and "lpips" not in metrics["overall"]
    bad = _evaluate(sample_shards, tmp_path / "out", "--metrics", "psnr,bogus", "--no-mlflow")
    assert bad.returncode == 2 and "bogus" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_evaluate_logs_every_metric_and_compare_reads_them(sample_shards, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _evaluate(sample_shards, tmp_path / "out", "--metrics", "psnr,ssim,mae,lpips,fid",
                       "--lpips-weights", "random", "--fid-weights", "random",
                       "--tracking-uri", uri, "--experiment", "perceptual")
    assert result.returncode == 0, result.stderr
    for label in ("| LPIPS | mean |", "| FID | mean |", "| EC MAE | mean |", "| L1 | mean |"):
        assert label in result.stdout, label
    assert "(n=2)" in result.stdout and "(n=12)" in result.stdout
    compared = run_cli("compare.py", "--experiment", "perceptual", "--tracking-uri", uri,
                       "--reference", "configs/reference/paper_paris.yaml",
                       "--out", str(tmp_path / "cmp"))
    assert compared.returncode == 0, compared.stderr
    table = (tmp_path / "cmp" / "table.md").read_text()
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line.split("|")[-2].strip()
            for line in table.splitlines()[2:]}
    assert rows[("FID", "eval-mean-baseline")] == "pt_inception-2015-12-05"
    assert rows[("EC MAE", "eval-mean-baseline")].startswith("EdgeConnect")
    assert rows[("PSNR", "eval-mean-baseline")].startswith("ours")
    assert rows[("PSNR", "EC (EdgeConnect)")] == "as published"
