"""One host sync per training step, in every stage: the step function of pipeline/stages.py plus
the step loop's agreement, counted by the profiler on CPU (exact). A non-finite batch still skips
every update without touching a weight or an optimizer state."""
import copy

import pytest
import torch
from accelerate import Accelerator

from pipeline.build import build_ema, build_networks, build_step_context
from pipeline.config import load_config
from pipeline.networks import build_network
from pipeline.stage_table import STAGES as STAGE_TABLE
from pipeline.stages import agree_on_step, step_function
from pipeline.syncs import count_host_syncs

from conftest import TINY, reset_accelerate

STAGES = list(STAGE_TABLE)


def step_context(stage: str, *overrides: str, precision: str = "no"):
    cfg = load_config([TINY], ["model.attention.backend=reference", *overrides])
    # set after validation: the later stages want trained G1/G2 checkpoints, which untrained
    # networks stand in for here (the same work per step)
    cfg.train.stage = stage
    reset_accelerate()
    accelerator = Accelerator(cpu=True, mixed_precision=precision)
    torch.manual_seed(0)
    nets = build_networks(cfg)
    nets.setdefault("g1", build_network("g1", cfg.model))
    return build_step_context(cfg, accelerator, nets)


def batch(poison: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 32, 32, generator=g)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:20, 10:24] = 1
    if poison:
        image = torch.full_like(image, float("nan"))
    return {"image": image, "gray": image.mean(1, keepdim=True), "mask": mask,
            "edge": (torch.rand(2, 1, 32, 32, generator=g) > 0.8).float()}


def one_step(ctx, data: dict) -> tuple[bool, bool]:
    logs = step_function(ctx.stage)(ctx, data)
    return agree_on_step(ctx.accelerator, logs["ok"], False)


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("stage", STAGES)
def test_a_training_step_makes_one_host_sync(stage, precision):
    ctx = step_context(stage, precision=precision)
    one_step(ctx, batch())  # the first step also creates the optimizer state
    syncs, (ok, stop) = count_host_syncs(lambda: one_step(ctx, batch()))
    assert (ok, stop) == (True, False)
    assert syncs == 1


@pytest.mark.parametrize("stage", STAGES)
def test_the_ema_update_adds_no_host_sync(stage):
    ctx = step_context(stage)
    ema = build_ema(stage, 0.999, ctx.accelerator, ctx.nets)
    one_step(ctx, batch())
    ema.update(1)
    before = {n: copy.deepcopy(m.state_dict()) for n, m in ema.models.items()}

    def step_and_average():
        verdict = one_step(ctx, batch())
        ema.update(2)
        return verdict

    syncs, (ok, stop) = count_host_syncs(step_and_average)
    assert (ok, stop) == (True, False)
    assert syncs == 1
    for name, model in ema.models.items():  # the average moved
        assert any(not torch.equal(v, before[name][k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("stage", STAGES)
def test_a_non_finite_batch_skips_every_update(stage):
    ctx = step_context(stage)
    one_step(ctx, batch())
    names = STAGE_TABLE[stage].trains
    trained = {n: copy.deepcopy(dict(ctx.plain(n).named_parameters())) for n in names}
    states = {n: copy.deepcopy(ctx.opts[n].state_dict()) for n in names}
    assert one_step(ctx, batch(poison=True)) == (False, False)
    for name in names:
        for key, value in ctx.plain(name).named_parameters():
            assert torch.equal(value, trained[name][key]), (name, key)
        after = ctx.opts[name].state_dict()
        assert after["param_groups"] == states[name]["param_groups"], name
        for index, entry in after["state"].items():
            for key, value in entry.items():
                assert torch.equal(value, states[name]["state"][index][key]), (name, key)
    assert one_step(ctx, batch()) == (True, False)  # and the next good step trains again


def test_the_reference_optimizer_still_skips_with_host_checks():
    ctx = step_context("texture", "optim.name=ranger21-reference")
    one_step(ctx, batch())
    before = copy.deepcopy(dict(ctx.plain("g2").named_parameters()))
    assert one_step(ctx, batch(poison=True)) == (False, False)
    assert all(torch.equal(v, before[k]) for k, v in ctx.plain("g2").named_parameters())
