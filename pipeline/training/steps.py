"""What one training step of each kind does: D step, then G step (training/stage_table.py says
which stage takes which kind of step).

Masks are 1 in the hole. Every tensor is NCHW float in [0, 1].
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from accelerate import Accelerator
from omegaconf import DictConfig
from torch import nn

from pipeline.models.contract import complete_edges, composite, edge_inputs, texture_inputs
from pipeline.training.losses import (VGGLoss, discriminator_accuracy, discriminator_loss,
                                      feature_matching_loss, generator_adversarial_loss,
                                      hole_edge_bce, hole_weighted_l1)
from pipeline.training.optim import skips_non_finite_on_device
from pipeline.training.stage_table import STAGES


@dataclass
class StepContext:
    """Everything a step needs; built once by train.py."""

    accelerator: Accelerator
    loss_cfg: DictConfig
    stage: str
    nets: dict[str, nn.Module]  # prepared (DDP-wrapped) networks by name: g1, d1, g2, d2
    opts: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    vgg: Optional[VGGLoss] = None  # None when the perceptual and style weights are both 0
    grad_clip: float = 0.0
    check_grads: bool = True  # off under fp16, where GradScaler owns overflow handling

    def plain(self, name: str) -> nn.Module:
        return self.accelerator.unwrap_model(self.nets[name])


def nan_unless(ok: torch.Tensor) -> torch.Tensor:
    """1 where `ok`, NaN elsewhere: a factor that poisons what a skipped step computes. A loss
    times it has NaN in every gradient, on every rank once DDP's all-reduce has summed them: each
    rank sees the same non-finite gradients and skips the same update, with no host sync or vote
    of its own."""
    return torch.where(ok, 1.0, float("nan"))


def optimise(ctx: StepContext, loss: torch.Tensor, names: tuple[str, ...],
             after: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Backward, clip and step the named networks. Returns a device flag, False where the update
    was skipped as non-finite (this rank's view: the loss half differs between ranks, and the step
    loop reduces it). `after`: the flag of an earlier update this one is skipped with."""
    ok = torch.isfinite(loss.detach())
    if after is not None:
        ok = ok & after
    ctx.accelerator.backward(loss * nan_unless(ok))
    grads_ok = None  # a device flag where the gradients are checked
    if ctx.accelerator.sync_gradients:
        for name in names:
            norm = ctx.accelerator.clip_grad_norm_(ctx.nets[name].parameters(),
                                                   ctx.grad_clip or float("inf"))
            if ctx.check_grads:  # all-reduced gradients: every rank reaches the same verdict
                finite = torch.isfinite(norm)
                grads_ok = finite if grads_ok is None else grads_ok & finite
    if grads_ok is not None and len(names) > 1:  # one network's bad gradients skip them all
        grads = [p.grad for n in names for p in ctx.nets[n].parameters() if p.grad is not None]
        torch._foreach_mul_(grads, nan_unless(grads_ok))
    for name in names:
        opt = ctx.opts[name]
        # an optimizer that cannot skip on the device needs the verdict on the host: a sync
        if grads_ok is None or skips_non_finite_on_device(opt) or bool(grads_ok):
            opt.step()
        opt.zero_grad(set_to_none=True)
    return ok if grads_ok is None else ok & grads_ok


def agree_on_step(accelerator: Accelerator, ok: torch.Tensor, stop_requested: bool
                  ) -> tuple[bool, bool]:
    """(every rank's step was finite, some rank was asked to stop): one all-reduce and the step's
    one host sync. Ranks must agree on both, or they would leave the loop at different steps."""
    # full_like, not torch.tensor: a host-to-device copy of a Python value would sync too
    flags = torch.stack([(~ok).float(), torch.full_like(ok, stop_requested, dtype=torch.float)])
    bad, stop = accelerator.reduce(flags, reduction="sum") > 0
    verdict = int((bad.long() + 2 * stop.long()).item())
    return not verdict & 1, bool(verdict & 2)


@contextmanager
def frozen(module: nn.Module):
    """G steps read D without accumulating gradients into it."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def _edge_losses(ctx: StepContext, batch: dict, pred: torch.Tensor,
                 after: Optional[torch.Tensor] = None) -> tuple[dict, torch.Tensor]:
    """D1 update, then G1's adversarial + feature-matching loss (not yet applied); logs["ok"]
    is D1's flag: a non-finite D loss means G's output or the batch is bad, so G skips with it."""
    w = ctx.loss_cfg
    real = torch.cat([batch["edge"], batch["gray"]], dim=1)
    fake = torch.cat([pred, batch["gray"]], dim=1)
    real_logits, real_features = ctx.nets["d1"](real)
    fake_logits, _ = ctx.nets["d1"](fake.detach())
    d_loss = discriminator_loss(real_logits, fake_logits)
    real_acc, fake_acc = discriminator_accuracy(real_logits, fake_logits)
    logs = {"edge/d": d_loss, "edge/d_real_acc": real_acc, "edge/d_fake_acc": fake_acc,
            "ok": optimise(ctx, d_loss, ("d1",), after)}
    with frozen(ctx.plain("d1")) as d1:
        fake_logits, fake_features = d1(fake)
    adv = generator_adversarial_loss(fake_logits)
    fm = feature_matching_loss(real_features, fake_features)
    g_loss = w.adv_edge * adv + w.feature_matching * fm
    logs.update({"edge/g_adv": adv, "edge/g_fm": fm})
    if w.edge_bce:
        logs["edge/g_bce"] = hole_edge_bce(pred, batch["edge"], batch["mask"], w.edge_bce_balance)
        g_loss = g_loss + w.edge_bce * logs["edge/g_bce"]
    logs["edge/g"] = g_loss
    return logs, g_loss


def _texture_losses(ctx: StepContext, batch: dict, pred: torch.Tensor,
                    after: Optional[torch.Tensor] = None) -> tuple[dict, torch.Tensor]:
    """D2 update, then G2's L1 + adversarial + perceptual + style loss (not yet applied); logs["ok"]
    is D2's flag, as in _edge_losses."""
    w, image = ctx.loss_cfg, batch["image"]
    real_logits, fake_logits = ctx.nets["d2"](image)[0], ctx.nets["d2"](pred.detach())[0]
    d_loss = discriminator_loss(real_logits, fake_logits)
    real_acc, fake_acc = discriminator_accuracy(real_logits, fake_logits)
    logs = {"texture/d": d_loss, "texture/d_real_acc": real_acc, "texture/d_fake_acc": fake_acc,
            "ok": optimise(ctx, d_loss, ("d2",), after)}
    with frozen(ctx.plain("d2")) as d2:
        adv = generator_adversarial_loss(d2(pred)[0])
    l1 = hole_weighted_l1(pred, image, batch["mask"], w.l1_known_pixels)
    perceptual = style = torch.zeros((), device=pred.device)
    if ctx.vgg is not None:
        with ctx.accelerator.autocast():  # VGG is not a prepared model, so autocast it here
            perceptual, style = ctx.vgg(pred, image, batch["mask"])
    g_loss = w.l1 * l1 + w.adv_texture * adv + w.perceptual * perceptual + w.style * style
    logs.update({"texture/g_adv": adv, "texture/g_l1": l1, "texture/g_perceptual": perceptual,
                 "texture/g_style": style, "texture/g": g_loss})
    return logs, g_loss


def edge_step(ctx: StepContext, batch: dict) -> dict:
    pred = ctx.nets["g1"](edge_inputs(batch))
    logs, g_loss = _edge_losses(ctx, batch, pred)
    logs["ok"] = optimise(ctx, g_loss, ("g1",), after=logs["ok"])
    return logs


def texture_step(ctx: StepContext, batch: dict) -> dict:
    if "g1" in STAGES[ctx.stage].frozen:  # edge-texture: G2 learns from G1's edges
        with torch.no_grad():
            edges = complete_edges(ctx.nets["g1"], batch)
    else:
        edges = batch["edge"]
    pred = ctx.nets["g2"](texture_inputs(batch["image"], edges, batch["mask"]))
    logs, g_loss = _texture_losses(ctx, batch, pred)
    logs["ok"] = optimise(ctx, g_loss, ("g2",), after=logs["ok"])
    return logs


def joint_step(ctx: StepContext, batch: dict) -> dict:
    edge_pred = ctx.nets["g1"](edge_inputs(batch))
    edge_logs, edge_g = _edge_losses(ctx, batch, edge_pred)
    edges = composite(edge_pred, batch["edge"], batch["mask"])  # G2's losses flow back into G1
    pred = ctx.nets["g2"](texture_inputs(batch["image"], edges, batch["mask"]))
    logs, texture_g = _texture_losses(ctx, batch, pred, after=edge_logs.pop("ok"))
    logs.update(edge_logs)
    logs["ok"] = optimise(ctx, edge_g + texture_g, ("g1", "g2"), after=logs["ok"])
    return logs


Step = Callable[[StepContext, dict], dict]
STEP_KINDS: dict[str, Step] = {"edge": edge_step, "texture": texture_step, "joint": joint_step}


def step_function(stage: str) -> Step:
    return STEP_KINDS[STAGES[stage].step]
