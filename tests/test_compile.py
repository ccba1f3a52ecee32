"""torch.compile on CPU (train.compile=true): the tiny generators give eager's outputs, one compile
serves every following training step (no recompiles), also for a whole training step, and the
DiNA block mask is built before the graph, not inside it."""
import pytest
import torch
from torch._dynamo.utils import counters

from pipeline.config import load_config
from pipeline.models.factory import build_network
from tests.helpers import TINY, run_cli


@pytest.mark.slow  # inductor compiles forward and backward of two generators (~1 min on 2 cores)
@pytest.mark.parametrize("generator,in_channels", [("g1", 3), ("g2", 5)])
def test_compiled_generator_matches_eager_without_recompiles(generator, in_channels):
    cfg = load_config([TINY], ["model.attention.backend=reference"])
    torch.manual_seed(0)
    model = build_network(generator, cfg.model)
    compiled = torch.compile(model)
    batches = [torch.rand(2, in_channels, 32, 32, generator=torch.Generator().manual_seed(s))
               for s in range(2)]
    torch._dynamo.reset()
    counters.clear()
    for step, x in enumerate(batches):  # two training steps: forward, backward, weight update
        expected = model(x)
        expected_grads = torch.autograd.grad(expected.square().mean(), model.parameters())
        got = compiled(x)
        got_grads = torch.autograd.grad(got.square().mean(), model.parameters())
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        for a, b in zip(got_grads, expected_grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)
        with torch.no_grad():
            for param, grad in zip(model.parameters(), expected_grads):
                param -= 0.01 * grad
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["recompiles"], dict(counters["recompiles"])


@pytest.mark.slow  # dynamo traces G2, D2 and the VGG loss, forward and backward
def test_compiled_training_step_compiles_once():
    """train.compile=true: a whole texture step (D then G, every loss) compiled; the steps after
    the first reuse its graphs: no recompile, no new graph. (Graphs and recompiles are dynamo's
    doing; aot_eager skips inductor's code generation, minutes on two cores.)"""
    from tests.helpers.training import batch, one_step, step_context

    ctx = step_context("texture", "train.compile=true", "train.compile_backend=aot_eager")
    torch._dynamo.reset()
    counters.clear()
    assert one_step(ctx, batch()) == (True, False)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 3  # G2, D2, VGG
    for _ in range(2):
        assert one_step(ctx, batch()) == (True, False)
    assert counters["stats"]["unique_graphs"] == graphs, dict(counters["stats"])
    assert not counters["recompiles"], dict(counters["recompiles"])


@pytest.mark.slow  # one inductor compile of flex_attention on CPU
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_block_mask_is_built_before_the_graph_not_in_it(monkeypatch):
    """The compiled graph reads the layout an eager call built; tracing never rebuilds it."""
    from pipeline.models.attention import flex

    builds = []
    real = flex.create_block_mask
    monkeypatch.setattr(flex, "create_block_mask", lambda *a, **k: builds.append(1) or real(*a, **k))
    q, k, v = torch.randn(3, 1, 16, 16, 2, 8, generator=torch.Generator().manual_seed(0))
    rpb = None  # inductor's CPU flex template rejects a bias computed inside the graph
    with torch.no_grad():
        eager = flex.na2d(q, k, v, 5, 3, rpb, compiled=False)  # builds (16, 16, 5, 3)'s layout
        assert len(builds) == 1
        torch._dynamo.reset()
        model = torch.compile(lambda *args: flex.na2d(*args, compiled=False))
        for _ in range(2):
            torch.testing.assert_close(model(q, k, v, 5, 3, rpb), eager, atol=1e-5, rtol=0)
    assert len(builds) == 1


@pytest.mark.slow  # a two-step compiled training run as a process
def test_a_compiled_run_writes_checkpoints_that_inference_loads(sample_shards, tmp_path):
    """The saved generators carry the plain modules' keys, not the compiled wrapper's."""
    from pipeline.evaluation.inference import load_generators

    run_cli("train.py", TINY, f"data.train={sample_shards / 'train'}",
            f"data.val={sample_shards / 'test'}", f"data.masks={sample_shards / 'masks'}",
            f"train.output_dir={tmp_path / 'run'}", "tracking.enabled=false", "train.compile=true",
            "train.compile_backend=aot_eager", "train.steps=2", "model.attention.backend=reference",
            check=True)
    _, _, g2 = load_generators(tmp_path / "run")
    assert g2 is not None
