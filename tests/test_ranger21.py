"""The project's Ranger21 against pytorch_optimizer's (the reference): the same trajectory over
200 steps, checkpoints that load into either, a non-finite step skipped bit for bit, and no host
sync inside step()."""
import copy

import pytest
import torch
from pytorch_optimizer import Ranger21 as Reference
from torch import nn

from ops.bench.syncs import count_host_syncs
from pipeline.training.ranger21 import Ranger21

SETTINGS = dict(num_iterations=200, lr=1e-3, weight_decay=1e-4, warm_down_min_lr=1e-4,
                num_warm_up_iterations=20)


def network() -> nn.Module:
    """Every parameter rank Ranger21 treats differently (1-D, 2-D, 3-D, 4-D). No conv bias before
    an instance norm: that bias's gradient is rounding noise, which the gradient normalisation
    blows up to full size, so no two implementations (or thread counts) could agree on it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.InstanceNorm2d(8, affine=True),
                        nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, 5))
    net.register_parameter("mix", nn.Parameter(torch.randn(5, 3, 2) * 0.1))  # 3-D
    return net


def loss_of(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net(x).square().mean() + (net.mix.sum(0) ** 2).mean()


def train(net: nn.Module, opt: torch.optim.Optimizer, steps: range, poison: set[int] = frozenset()):
    for step in steps:
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss_of(net, x).backward()
        if step in poison:
            next(net.parameters()).grad[0] = float("nan")
        opt.step()


def max_difference(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def assert_same_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer):
    sa, sb = a.state_dict(), b.state_dict()
    assert {k: v for k, v in sa.items() if k != "state"} == {k: v for k, v in sb.items()
                                                               if k != "state"}
    for pa, pb in zip(sa["state"].values(), sb["state"].values()):
        for key in pa:
            assert torch.equal(pa[key], pb[key]), key


def test_matches_pytorch_optimizer_over_200_steps():
    ours, ref = network(), network()
    our_opt, ref_opt = Ranger21(ours.parameters(), **SETTINGS), Reference(ref.parameters(), **SETTINGS)
    worst = 0.0
    for step in range(200):  # through warm-up, Lookahead merges and the warm-down
        train(ours, our_opt, range(step, step + 1))
        train(ref, ref_opt, range(step, step + 1))
        worst = max(worst, max_difference(ours, ref))
    assert worst < 1e-6, worst
    ours_state, ref_state = our_opt.state_dict(), ref_opt.state_dict()
    assert ours_state["param_groups"][0]["step"] == ref_state["param_groups"][0]["step"] == 200
    assert ours_state["lookahead_step"] == ref_state["lookahead_step"]
    assert ours_state["current_lr"] == pytest.approx(ref_state["current_lr"])


@pytest.mark.parametrize("saver,loader", [(Ranger21, Ranger21), (Reference, Ranger21),
                                          (Ranger21, Reference)])
def test_a_checkpoint_resumes_on_either_implementation(saver, loader):
    straight, first = network(), network()
    straight_opt = saver(straight.parameters(), **SETTINGS)
    train(straight, straight_opt, range(0, 40))
    first_opt = saver(first.parameters(), **SETTINGS)
    train(first, first_opt, range(0, 23))  # mid Lookahead cycle, odd step
    resumed = network()
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    resumed_opt = loader(resumed.parameters(), **SETTINGS)
    resumed_opt.load_state_dict(copy.deepcopy(first_opt.state_dict()))
    train(resumed, resumed_opt, range(23, 40))
    if saver is loader:
        assert max_difference(resumed, straight) == 0.0  # resume is exact
    else:
        assert max_difference(resumed, straight) < 1e-6


def test_a_non_finite_step_changes_nothing():
    skipped, clean = network(), network()
    skipped_opt, clean_opt = Ranger21(skipped.parameters(), **SETTINGS), Ranger21(clean.parameters(), **SETTINGS)
    train(skipped, skipped_opt, range(0, 7))
    train(clean, clean_opt, range(0, 7))
    before = copy.deepcopy(skipped.state_dict())
    train(skipped, skipped_opt, range(7, 8), poison={7})
    for key, value in skipped.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert_same_state(skipped_opt, clean_opt)
    # and afterwards it goes on as if the bad step had never been tried
    train(skipped, skipped_opt, range(8, 20))
    train(clean, clean_opt, range(8, 20))
    assert max_difference(skipped, clean) == 0.0
    assert_same_state(skipped_opt, clean_opt)


def test_a_non_finite_first_step_changes_nothing():
    net = network()
    opt = Ranger21(net.parameters(), **SETTINGS)
    before = copy.deepcopy(net.state_dict())
    train(net, opt, range(0, 1), poison={0})
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert opt.state_dict()["param_groups"][0]["step"] == 0


def test_step_makes_no_host_sync():
    net = network()
    opt = Ranger21(net.parameters(), **SETTINGS)
    train(net, opt, range(0, 1))
    loss_of(net, torch.randn(4, 3, 8, 8)).backward()
    syncs, _ = count_host_syncs(opt.step)
    assert syncs == 0
    # the reference pays at least one, which is what this implementation is for
    ref = network()
    ref_opt = Reference(ref.parameters(), **SETTINGS)
    loss_of(ref, torch.randn(4, 3, 8, 8)).backward()
    assert count_host_syncs(ref_opt.step)[0] >= 1
