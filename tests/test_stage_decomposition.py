"""What the learning benchmark decomposes a model with: G2 fed G1's, the true or no edges in the
hole (evaluate.py --edges), and G2 as its run started it (--untrained)."""
import json

import pytest
import torch

from pipeline.config import load_config
from pipeline.data.eval_pairs import eval_loader, eval_pairs
from pipeline.evaluation.inference import (known_region_edges, load_generators, load_model,
                                         model_fill)
from pipeline.models.contract import complete_edges
from pipeline.training.assemble import build_networks, initial_networks
from tests.helpers import TINY, assert_refused, run_cli
from tests.helpers.checkpoints import make_checkpoint

EDGE_CHANNEL = 3  # G2's input: the masked RGB image, the edge map, the mask


@pytest.fixture(scope="module")
def eval_batch(sample_shards) -> dict:
    pairs = eval_pairs(str(sample_shards / "test"), str(sample_shards / "masks"), 32, 1)
    return next(iter(eval_loader(pairs, 32, batch_size=len(pairs))))


class InputRecorder(torch.nn.Module):
    """G2 with its last input kept: what it was fed is what this test reads."""

    def __init__(self, g2: torch.nn.Module):
        super().__init__()
        self.g2, self.seen = g2, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return self.g2(x)


def test_g2_reads_the_edges_it_is_told_in_the_hole(tmp_path, eval_batch):
    g1, g2, _ = load_model(str(make_checkpoint(tmp_path / "joint")), None, "cpu")
    recorder, batch = InputRecorder(g2), eval_batch
    hole, known = batch["mask"] > 0.5, known_region_edges(batch)
    g1_edges = complete_edges(g1, {**batch, "edge": known})
    fed = {}
    for source in ("g1", "true", "none"):
        model_fill(g1, recorder, source)(batch)
        fed[source] = recorder.seen[:, EDGE_CHANNEL:EDGE_CHANNEL + 1]
        assert torch.equal(fed[source][~hole], known[~hole])  # outside: the known region's
    assert torch.equal(fed["g1"][hole], g1_edges[hole])
    assert torch.equal(fed["true"][hole], batch["edge"][hole])  # the whole image's Canny
    assert batch["edge"][hole].sum() > 0 and fed["none"][hole].sum() == 0


def test_the_untrained_start_is_the_run_start():
    """evaluate.py --untrained rebuilds G2 from the run's config and seed, as the trainer did."""
    cfg = load_config([TINY], ["train.stage=texture", "train.seed=7"])
    first, again = initial_networks(cfg), build_networks(cfg)
    assert list(first) == ["g2", "d2"]
    for name, net in first.items():
        for a, b in zip(net.state_dict().values(), again[name].state_dict().values()):
            assert torch.equal(a, b)
    other = initial_networks(load_config([TINY], ["train.stage=texture", "train.seed=8"]))
    assert not torch.equal(other["g2"].head.weight, first["g2"].head.weight)


@pytest.mark.slow
def test_an_untrained_coarse_fill_g2_scores_as_the_pull_push_fill(tmp_path, sample_shards):
    """A coarse-fill G2 starts at zero correction: its untrained score is the fill's, and the
    trained weights of the same checkpoint score otherwise."""
    ckpt = make_checkpoint(tmp_path / "ckpt", overrides=("model.coarse_fill=pull-push",
                                                             "model.hole_mask_channel=true"))
    common = ["--images", str(sample_shards / "test"), "--masks", str(sample_shards / "masks"),
              "--per-bucket", "2", "--no-mlflow", "--metrics", "psnr,ssim"]
    scores, printed = {}, {}
    for name, args in (("start", ["--checkpoint", str(ckpt), "--untrained", "--edges", "true"]),
                       ("trained", ["--checkpoint", str(ckpt), "--edges", "true"]),
                       ("fill", ["--method", "pull-push", "--image-size", "32"])):
        proc = run_cli("evaluate.py", *common, *args, "--out", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr
        scores[name] = json.loads((tmp_path / name / "metrics.json").read_text())
        printed[name] = proc.stdout
    assert "untrained weights, G2 fed true edges" in printed["start"]
    assert scores["start"] == scores["fill"]
    assert scores["trained"] != scores["fill"]


def test_edges_and_untrained_are_refused_for_a_baseline(tmp_path, sample_shards):
    for flags in (["--untrained"], ["--edges", "true"]):
        proc = run_cli("evaluate.py", "--method", "telea", *flags, "--images",
                       str(sample_shards / "test"), "--masks", str(sample_shards / "masks"),
                       "--out", str(tmp_path / "out"), "--no-mlflow")
        assert_refused(proc, flags[0])
        assert not (tmp_path / "out").exists()


def test_edge_texture_goes_on_from_the_texture_run(tmp_path):
    """The project's schedule: edge-texture with train.texture_checkpoint starts G2 from the
    weights the texture stage trained (raw, not its average, as a resume would), and takes G1
    as inference uses it (its EMA)."""
    edge = make_checkpoint(tmp_path / "edge", stage="edge", generators=("g1",), seed=1,
                           ema_seed=2)
    texture = make_checkpoint(tmp_path / "texture", stage="texture", generators=("g2",), seed=3,
                              ema_seed=4)
    cfg = load_config([TINY], ["train.stage=edge-texture", f"train.edge_checkpoint={edge}",
                               f"train.texture_checkpoint={texture}"])
    nets = build_networks(cfg)
    g1_ema = load_generators(edge)[1]  # the EMA, as evaluation picks it
    g2_raw = load_generators(texture, raw_weights=True)[2]
    for built, saved in ((nets["g1"], g1_ema), (nets["g2"], g2_raw)):
        for a, b in zip(built.state_dict().values(), saved.state_dict().values()):
            assert torch.equal(a, b)
    assert not torch.equal(nets["g2"].head.weight, load_generators(texture)[2].head.weight)
    fresh = build_networks(load_config([TINY], ["train.stage=edge-texture",
                                                f"train.edge_checkpoint={edge}"]))
    assert not torch.equal(fresh["g2"].head.weight, nets["g2"].head.weight)  # afresh without it
