"""torch.compile of the tiny generators on CPU (train.compile=true): same outputs as eager, and
one compile that serves every following training step (no recompiles)."""
import pytest
import torch
from torch._dynamo.utils import counters

from pipeline.config import load_config
from pipeline.networks import build_network

from conftest import TINY


@pytest.mark.slow  # inductor compiles forward and backward of two generators (~1 min on 2 cores)
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
@pytest.mark.parametrize("generator,in_channels", [("g1", 3), ("g2", 4)])
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
