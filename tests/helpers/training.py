"""Training in tests: tiny runs in their own process (the CLI, or the harness that injects
faults) or in this one, one step of a stage, and comparing what runs end with."""
from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from pipeline.config import load_config
from pipeline.models.factory import build_network
from pipeline.training import checkpoint
from pipeline.training.assemble import build_networks, build_step_context
from pipeline.training.steps import agree_on_step, step_function
from tests.helpers import PYTHON, REPO, TINY, run_cli
from tests.helpers.mlflow_server import free_port


@functools.cache
def migrated_mlflow_db() -> Path:
    """An empty MLflow sqlite store with its schema created (that takes ~6 s; a copy is instant)."""
    import mlflow

    path = Path(tempfile.mkdtemp(prefix="dina-mlflow-template-")) / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def tiny_overrides(shards: Path, out: Path, **extra) -> list[str]:
    """key=value list for a tiny CPU run writing into `out` with its own sqlite MLflow store."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "mlflow.db").exists():
        shutil.copy(migrated_mlflow_db(), out / "mlflow.db")
    values = {
        "data.train": shards / "train", "data.val": shards / "test", "data.masks": shards / "masks",
        "train.output_dir": out / "run", "tracking.uri": f"sqlite:///{out / 'mlflow.db'}",
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def reset_accelerate() -> None:
    """Accelerate keeps process-wide state; in-process runs start from a clean slate."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


TRAIN = str(REPO / "pipeline" / "train.py")


def final_tensors(output_dir) -> dict:
    """Every tensor of the newest checkpoint: generators, discriminators, optimizer-free weights."""
    path = checkpoint.find_latest(output_dir)
    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update({f"{file.name}:{k}": v for k, v in load_file(str(file)).items()})
    return tensors


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not a[k].equal(b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def train_cli(sample_shards, out, *extra, check=True):
    return run_cli(TRAIN, TINY, *tiny_overrides(sample_shards, out), *extra, check=check)


HARNESS = str(REPO / "tests" / "scripts" / "train_harness.py")


def start_training(shards, out, *extra) -> subprocess.Popen:
    args = [PYTHON, TRAIN, TINY, *tiny_overrides(shards, out), *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}):\n"
                                 f"{proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def harness(shards, out, *args, nprocs: int = 1, accelerate_config: str | None = None):
    """The trainer through tests/scripts/train_harness.py; with nprocs > 1 under a real
    `accelerate launch` (command-line flags, or an accelerate config file)."""
    launch = [PYTHON, HARNESS]
    if nprocs > 1:
        topology = (["--config_file", accelerate_config] if accelerate_config else
                    ["--multi_gpu", "--num_processes", str(nprocs), "--num_machines", "1",
                     "--mixed_precision", "no"])
        launch = [str(Path(sys.executable).parent / "accelerate"), "launch", *topology,
                  "--main_process_port", str(free_port()), HARNESS]
    cmd = [*launch, *args, "--", TINY, *tiny_overrides(shards, out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def only_run(uri: str):
    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("dina-tests").experiment_id])
    return client, run


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


def checkpoint_steps(out: Path) -> list[int]:
    root = out / "run" / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in root.glob("checkpoint-*")) if root.exists() else []
