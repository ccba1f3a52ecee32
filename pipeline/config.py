"""Run configuration: a structured OmegaConf schema with the paper's defaults.

A config is built as: schema defaults <- YAML files in order <- `key=value` overrides.
Unknown keys and wrong types are errors that name the key (OmegaConf's struct mode does the
checking; `load_config` turns its exceptions into one readable `ConfigError`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

STAGES = ("edge", "texture", "edge-texture", "joint")
BACKENDS = ("auto", "reference", "flex", "natten")
PRECISIONS = ("no", "bf16", "fp16")


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


@dataclass
class DataConfig:
    name: str = "sample"  # dataset tag for MLflow
    train: str = "shards/sample/train"  # shard directory, brace pattern or index.json
    masks: str = "shards/sample/masks"
    val: Optional[str] = "shards/sample/test"  # None: no validation
    val_masks: Optional[str] = None  # None: same as `masks`
    image_size: int = 256
    batch_size: int = 8  # per process
    num_workers: int = 2  # DataLoader workers per process
    shuffle_buffer: int = 500
    mask_buckets: Optional[List[int]] = None  # bucket indices 0..5 (0-10 % .. 50-60 %); None: all
    samples_per_epoch: int = 10000  # per worker: the resampled stream restarts after this many
    flip: bool = True
    val_per_bucket: int = 2  # fixed validation subset: images scored in every bucket
    # resume: "skip" replays the consumed batches (exact, costs decode time), "reseed" starts a
    # fresh stream seeded by (seed, step) (instant, reproducible, not the same samples).
    resume: str = "skip"


@dataclass
class AttentionConfig:
    enabled: bool = True
    backend: str = "auto"  # auto | reference | flex | natten
    heads: int = 8
    kernel_size: int = 7
    # one per residual block; DiNAT alternates dense (1) and sparse (larger) neighbourhoods
    dilations: List[int] = field(default_factory=lambda: [1, 2, 1, 4, 1, 2, 1, 4])
    bias: bool = True  # relative position bias B (eq. 5); not available with natten


@dataclass
class ModelConfig:
    channels: int = 64  # encoder widths are channels, 2x, 4x
    blocks: int = 8
    d_channels: int = 64  # PatchGAN widths are d_channels x 1, 2, 4, 8
    init_gain: float = 0.02
    attention: AttentionConfig = field(default_factory=AttentionConfig)


@dataclass
class LossConfig:
    adv_edge: float = 1.0  # G1 adversarial
    feature_matching: float = 10.0  # G1 FM over D1 activations
    l1: float = 1.0
    adv_texture: float = 0.1  # G2 adversarial
    perceptual: float = 0.1
    style: float = 250.0
    # path to vgg19-dcbb9e9d.pth; "" looks in the torch hub cache; "random" opts into an
    # untrained VGG (tests and the CPU demo only)
    vgg_weights: str = ""


@dataclass
class OptimConfig:
    # ranger21 (paper; the project's sync-free implementation) | ranger21-reference
    # (pytorch_optimizer's, the same update) | adam (EdgeConnect's recipe, for baselines)
    name: str = "ranger21"
    g_lr: float = 1e-4
    d_lr: float = 1e-5
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    # Ranger21 warm-down floor = lr * this ratio, per optimizer (its default 3e-5 floor would
    # raise a 1e-5 D lr during warm-down)
    warm_down_ratio: float = 0.1
    warm_up_steps: Optional[int] = None  # None: Ranger21's default rule


@dataclass
class TrainConfig:
    stage: str = "texture"  # edge | texture | edge-texture | joint
    steps: int = 200000  # optimizer steps (each = D step then G step)
    seed: int = 42
    mixed_precision: Optional[str] = None  # no | bf16 | fp16; None: what `accelerate launch` says
    grad_accum: int = 1
    grad_clip: float = 0.0  # max grad norm per network; 0 disables
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: no codegen, for debugging)
    output_dir: str = "runs/${train.stage}"
    log_every: int = 10
    val_every: int = 1000
    ckpt_every: int = 1000
    ckpt_limit: int = 3  # keep this many newest checkpoints
    resume: Optional[str] = None  # "latest" or a checkpoint path
    edge_checkpoint: Optional[str] = None  # G1 source for edge-texture and joint
    texture_checkpoint: Optional[str] = None  # G2 source for joint
    max_bad_steps: int = 5  # consecutive non-finite steps before the run stops


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str = "dina-inpaint"
    run_name: Optional[str] = None
    log_images: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = (getattr(err, "msg", None) or str(err)).splitlines()[0]
    return f"config key '{key}': {msg}" if key else msg


def load_config(sources: Sequence[str] = (), overrides: Sequence[str] = ()) -> DictConfig:
    """Schema defaults, then each YAML file in `sources`, then `key=value` overrides."""
    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg, True)
    for source in sources:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {source}")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        except OmegaConfBaseException as err:
            raise ConfigError(f"{source}: {_describe(err)}") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise ConfigError(f"override: {_describe(err)}") from None
    validate(cfg)
    return cfg


def split_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """CLI arguments -> (YAML files, key=value overrides)."""
    files = [a for a in args if "=" not in a]
    return files, [a for a in args if "=" in a]


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {msg}")


def validate(cfg: DictConfig) -> None:
    """Value checks the schema's types cannot express."""
    t, m, d = cfg.train, cfg.model, cfg.data
    _check(t.stage in STAGES, "train.stage", f"'{t.stage}' is not one of {', '.join(STAGES)}")
    _check(m.attention.backend in BACKENDS, "model.attention.backend",
           f"'{m.attention.backend}' is not one of {', '.join(BACKENDS)}")
    _check(t.mixed_precision in (None, *PRECISIONS), "train.mixed_precision",
           f"'{t.mixed_precision}' is not one of {', '.join(PRECISIONS)}")
    _check(d.resume in ("skip", "reseed"), "data.resume", "must be 'skip' or 'reseed'")
    _check(cfg.optim.name in ("ranger21", "ranger21-reference", "adam"), "optim.name",
           "must be 'ranger21', 'ranger21-reference' or 'adam'")
    _check(t.steps > 0, "train.steps", "must be positive")
    _check(t.grad_accum >= 1, "train.grad_accum", "must be >= 1")
    _check(t.ckpt_every > 0 and t.log_every > 0 and t.val_every > 0, "train.ckpt_every",
           "ckpt_every, log_every and val_every must be positive")
    _check(t.ckpt_limit >= 1, "train.ckpt_limit", "must be >= 1")
    _check(d.batch_size >= 1, "data.batch_size", "must be >= 1")
    _check(d.image_size % 4 == 0 and d.image_size >= 16, "data.image_size",
           "must be a multiple of 4 (two stride-2 downsamplings), at least 16")
    _check(m.blocks >= 1, "model.blocks", "must be >= 1")
    a = m.attention
    if a.enabled:
        _check(len(a.dilations) == m.blocks, "model.attention.dilations",
               f"needs one dilation per block ({m.blocks}), got {len(a.dilations)}")
        _check(all(x >= 1 for x in a.dilations), "model.attention.dilations", "must be >= 1")
        _check(a.kernel_size % 2 == 1 and a.kernel_size > 1, "model.attention.kernel_size",
               "must be odd and > 1")
        _check((4 * m.channels) % a.heads == 0, "model.attention.heads",
               f"must divide the attention width {4 * m.channels}")
        feature = d.image_size // 4
        worst = max(a.dilations) * a.kernel_size
        _check(worst <= feature, "model.attention.dilations",
               f"kernel_size*dilation = {worst} exceeds the {feature}x{feature} feature map "
               f"of a {d.image_size}px image")
        _check(not (a.bias and a.backend == "natten"), "model.attention.bias",
               "natten has no relative position bias; set bias=false or another backend")
    if t.stage in ("edge-texture", "joint"):
        _check(bool(t.edge_checkpoint), "train.edge_checkpoint",
               f"stage '{t.stage}' needs a trained edge model (an edge-stage checkpoint)")
    for key in ("g_lr", "d_lr"):
        _check(cfg.optim[key] > 0, f"optim.{key}", "must be positive")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def flatten(cfg: DictConfig) -> dict[str, str]:
    """Dotted key -> value string, for MLflow params."""
    out: dict[str, str] = {}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            else:
                out[name] = str(value)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out
