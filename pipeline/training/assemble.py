"""Assemble a stage: its networks (pretrained parts loaded), optimizers and losses, prepared by
Accelerate. Shared by the trainer and the step benchmark, so both measure the same thing."""
from __future__ import annotations

import logging
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf

from pipeline.models.dina import DiNA
from pipeline.models.factory import NETWORKS, build_network
from pipeline.models.vgg import VGGWeightsError
from pipeline.training import checkpoint
from pipeline.training.ema import GeneratorEMA
from pipeline.training.losses import VGGLoss
from pipeline.training.optim import build_optimizer
from pipeline.training.stage_table import CHECKPOINT_KEY, STAGES
from pipeline.training.steps import StepContext

log = logging.getLogger("dina.build")


class SetupError(RuntimeError):
    """Something to fix before training can start; the message says what."""


def checkpoint_sources(cfg: DictConfig) -> dict[str, str]:
    """Generator -> the checkpoint it is loaded from, for each whose checkpoint key is set."""
    sources = {g: OmegaConf.select(cfg, key) for g, key in CHECKPOINT_KEY.items()}
    return {g: source for g, source in sources.items() if source}


def initial_networks(cfg: DictConfig) -> dict[str, torch.nn.Module]:
    """The stage's networks freshly initialised from train.seed: identical on every rank, and
    rebuilt by evaluation as the untrained start of a trained run."""
    set_seed(cfg.train.seed)
    wanted = STAGES[cfg.train.stage].networks(set(checkpoint_sources(cfg)))
    return {name: build_network(name, cfg.model) for name in NETWORKS if name in wanted}


def build_networks(cfg: DictConfig) -> dict[str, torch.nn.Module]:
    """The stage's networks; a generator whose checkpoint key is set is loaded from it: the
    weights that were trained when this stage trains it further, its EMA (where saved) when it
    is only used or carried, as inference would use it."""
    stage = STAGES[cfg.train.stage]
    nets = initial_networks(cfg)
    for name, source in checkpoint_sources(cfg).items():
        if name in nets:
            try:
                path = checkpoint.resolve(source)
                checkpoint.load_generator_weights(path, name, nets[name],
                                                  raw_weights=name in stage.trains)
            except checkpoint.CheckpointError as err:
                raise SetupError(f"cannot load {name} from {source}: {err}") from None
            log.info("%s loaded from %s", name, path)
    return nets


def build_ema(stage: str, decay: float, accelerator: Accelerator,
              nets: dict[str, torch.nn.Module]) -> Optional[GeneratorEMA]:
    """EMA copies of the generators `stage` trains (None when `decay` is 0, train.ema's off),
    made from the prepared networks, so they live on the training device."""
    trained = STAGES[stage].hands_on
    if not decay or not trained:
        return None
    # the plain module under DDP and torch.compile: the same parameters, a state dict without
    # the compile wrapper's key prefix
    plain = {n: accelerator.unwrap_model(nets[n], keep_torch_compile=False) for n in trained}
    return GeneratorEMA(plain, decay)


def build_attention_layouts(net: torch.nn.Module, size: int, device: torch.device) -> None:
    """One eager no-grad forward at the training size builds every DiNA layout (block masks,
    lookup tables), so a compiled graph reads them instead of rebuilding them on each call."""
    if not any(isinstance(m, DiNA) for m in net.modules()):
        return
    in_channels = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    was_training = net.training
    net.to(device).eval()  # eval: no spectral-norm power iteration, the weights' state unchanged
    with torch.no_grad():
        net(torch.zeros(1, in_channels, size, size, device=device))
    net.train(was_training)


def build_step_context(cfg: DictConfig, accelerator: Accelerator,
                       nets: dict[str, torch.nn.Module]) -> StepContext:
    """Optimizers and losses for the trained networks; everything moved and wrapped for DDP."""
    t, trained = cfg.train, STAGES[cfg.train.stage].trains
    vgg = None
    if "g2" in trained and (cfg.loss.perceptual or cfg.loss.style):
        try:
            vgg = VGGLoss(cfg.loss.vgg_weights).to(accelerator.device)
        except VGGWeightsError as err:
            raise SetupError(str(err)) from None
    if t.compile:  # G, D and the VGG loss
        for name in trained:
            build_attention_layouts(nets[name], cfg.data.image_size, accelerator.device)
        nets = {n: (torch.compile(m, backend=t.compile_backend) if n in trained else m)
                for n, m in nets.items()}
        vgg = torch.compile(vgg, backend=t.compile_backend) if vgg is not None else None
    lrs = {"g1": cfg.optim.g_lr, "g2": cfg.optim.g_lr, "d1": cfg.optim.d_lr, "d2": cfg.optim.d_lr}
    opts = {n: build_optimizer(nets[n], lrs[n], t.steps, cfg.optim) for n in trained}
    prepared = accelerator.prepare(*[nets[n] for n in trained], *[opts[n] for n in trained])
    for i, name in enumerate(trained):
        nets[name], opts[name] = prepared[i], prepared[len(trained) + i]
    for name in set(nets) - set(trained):  # carried G1: frozen, used or only saved
        nets[name] = nets[name].to(accelerator.device).eval().requires_grad_(False)
    return StepContext(accelerator=accelerator, loss_cfg=cfg.loss, stage=t.stage, nets=nets,
                       opts=opts, vgg=vgg, grad_clip=t.grad_clip,
                       check_grads=accelerator.mixed_precision != "fp16")
