"""One host sync per training step, in every stage: the step function of training/steps.py plus
the step loop's agreement, counted by the profiler on CPU (exact). A non-finite batch still skips
every update without touching a weight or an optimizer state."""
import copy

import pytest
import torch

from ops.bench.syncs import count_host_syncs
from pipeline.training.assemble import build_ema
from pipeline.training.stage_table import STAGES as STAGE_TABLE
from tests.helpers.training import batch, one_step, step_context

STAGES = list(STAGE_TABLE)


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
