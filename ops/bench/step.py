"""Benchmark: one full GAN training step (D then G, every loss incl. VGG) per stage.

Times the real step function of training/steps.py on synthetic batches of the right shape (the
data stream has its own benchmark, ops/bench/data.py), for these variants, all in one run:
  dina-<backend>  the paper's model with each DiNA backend available on the device
  no-attention    the same model without DiNA modules
  edgeconnect     EdgeConnect's recipe: no attention, fp32, Adam(betas 0, 0.9)
With --compile every variant is also measured under torch.compile (rows "<variant>+compile").
Prints one line per variant: img/s, ms/step, peak memory, host syncs per step (from one profiled
step; EdgeConnect's Adam adds reads of its CPU-side step counters, which are no GPU syncs) and
optimizer ms per step (timed around each optimizer step: CUDA events on a GPU); then the ratios the project's targets are stated in; and
writes all of it as JSON.

    python ops/bench/step.py                         # CPU: demo preset, fp32
    python ops/bench/step.py --preset paper --device cuda --precision no,bf16 --compile
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from syncs import host_syncs, profiled

from pipeline.config import load_config
from pipeline.data.masks import generate_mask
from pipeline.models.dina import resolve_backend
from pipeline.training.assemble import build_networks, build_step_context
from pipeline.training.steps import agree_on_step, step_function

REPO = Path(__file__).resolve().parents[2]
PRESETS = {  # config files + overrides per preset
    "demo": ([str(REPO / "configs/experiment/demo.yaml")], ["loss.perceptual=0.1", "loss.style=250"]),
    "paper": ([], ["data.image_size=256", "data.batch_size=16"]),
    "tiny": ([str(REPO / "configs/experiment/tiny.yaml")], []),  # dry runs of gpu.sh on CPU
}


def synthetic_batch(batch: int, size: int, device: torch.device) -> dict:
    rng = np.random.default_rng(0)
    masks = np.stack([generate_mask(rng, size, i % 6) for i in range(batch)])
    image = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    return {
        "image": image.to(device),
        "gray": image.mean(1, keepdim=True).to(device),
        "edge": (torch.rand(batch, 1, size, size) > 0.9).float().to(device),
        "mask": torch.from_numpy(masks).float().unsqueeze(1).to(device),
    }


class OptimizerTimer:
    """Times every step() of one optimizer from here on: CUDA events on a GPU (no host sync; read
    once the run is synchronised), the wall clock on CPU."""

    def __init__(self, optimizer: torch.optim.Optimizer, cuda: bool):
        while hasattr(optimizer, "optimizer"):  # Accelerate's wrapper
            optimizer = optimizer.optimizer
        self.cuda, self.spans, inner = cuda, [], optimizer.step

        def timed(*args, **kwargs):
            if self.cuda:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                result = inner(*args, **kwargs)
                end.record()
                self.spans.append((begin, end))
            else:
                begin = time.perf_counter()
                result = inner(*args, **kwargs)
                self.spans.append(time.perf_counter() - begin)
            return result

        optimizer.step = timed

    def seconds(self) -> float:
        if self.cuda:
            return sum(begin.elapsed_time(end) for begin, end in self.spans) / 1000
        return sum(self.spans)


def variant_overrides(variant: str) -> list[str]:
    if variant == "no-attention":
        return ["model.attention.enabled=false"]
    if variant == "edgeconnect":
        return ["model.attention.enabled=false", "optim.name=adam", "optim.betas=[0.0,0.9]"]
    backend = variant.removeprefix("dina-")
    return [f"model.attention.backend={backend}"] + (["model.attention.bias=false"]
                                                     if backend == "natten" else [])


def measure(preset: str, stage: str, variant: str, precision: str, device: str, steps: int,
            warmup: int, compile_: bool, optim: str) -> dict:
    files, overrides = PRESETS[preset]
    if variant != "edgeconnect":
        overrides = [*overrides, f"optim.name={optim}"]
    if variant == "edgeconnect":
        precision, compile_ = "no", False  # the published recipe: strict fp32, eager
    cfg = load_config(files, [*overrides, *variant_overrides(variant), "train.stage=texture",
                              "loss.vgg_weights=random", f"train.compile={str(compile_).lower()}",
                              "train.edge_checkpoint=null", "train.steps=100000"])
    # set after validation: edge-texture and joint want trained G1/G2 checkpoints, for which
    # freshly built networks stand in here (the same work per step)
    cfg.train.stage = stage
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    acc = Accelerator(mixed_precision=precision, cpu=device == "cpu")
    torch.manual_seed(0)
    ctx = build_step_context(cfg, acc, build_networks(cfg))
    step_fn = step_function(stage)
    batch = synthetic_batch(cfg.data.batch_size, cfg.data.image_size, acc.device)
    cuda = acc.device.type == "cuda"

    def step():  # what the trainer does per step, its one host sync included
        return agree_on_step(acc, step_fn(ctx, batch)["ok"], False)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timers = [OptimizerTimer(opt, cuda) for opt in ctx.opts.values()]
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    optimizer_seconds = sum(t.seconds() for t in timers) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    prof, _ = profiled(step)  # host syncs: one profiled step
    backend = (resolve_backend(cfg.model.attention.backend, cfg.model.attention.bias, acc.device)
               if cfg.model.attention.enabled else "none")
    return {"stage": stage, "variant": variant, "precision": precision, "backend": backend,
            "optim": cfg.optim.name,
            "compile": compile_, "batch": cfg.data.batch_size, "size": cfg.data.image_size,
            "ms_per_step": seconds * 1000, "img_per_s": cfg.data.batch_size / seconds,
            "peak_mem_gib": peak, "host_syncs_per_step": host_syncs(prof.events()),
            "optimizer_ms_per_step": optimizer_seconds * 1000,
            "optimizer_share": optimizer_seconds / seconds}


def ratios(results: list[dict]) -> dict:
    """The target ratios, from rows of this one run."""
    def find(stage, variant, precision, compiled=False):
        return next((r for r in results if (r["stage"], r["variant"], r["precision"],
                                            r["compile"]) == (stage, variant, precision, compiled)),
                    None)

    out = {}
    for r in results:
        key = f"{r['stage']}/{r['variant']}{'+compile' if r['compile'] else ''}/{r['precision']}"
        eager = find(r["stage"], r["variant"], r["precision"]) if r["compile"] else None
        if eager:
            out[f"{key} vs eager img/s"] = r["img_per_s"] / eager["img_per_s"]
        if not r["variant"].startswith("dina-"):
            continue
        plain = find(r["stage"], "no-attention", r["precision"], r["compile"])
        ec = find(r["stage"], "edgeconnect", "no")
        if plain:
            out[f"{key} vs no-attention img/s"] = r["img_per_s"] / plain["img_per_s"]
            if r["peak_mem_gib"]:
                out[f"{key} vs no-attention peak memory"] = r["peak_mem_gib"] / plain["peak_mem_gib"]
        if ec:
            out[f"{key} vs edgeconnect img/s"] = r["img_per_s"] / ec["img_per_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--stages", default="edge,texture")
    parser.add_argument("--backends", default=None,
                        help="DiNA backends (default: reference, plus flex on CUDA)")
    parser.add_argument("--variants", default=None,
                        help="comma list among dina-<backend>, no-attention, edgeconnect "
                             "(default: all)")
    parser.add_argument("--precision", default="no", help="comma list of no,bf16,fp16")
    parser.add_argument("--compile", action="store_true",
                        help="also measure every variant but edgeconnect with train.compile=true")
    parser.add_argument("--optim", default="ranger21", choices=["ranger21", "ranger21-reference"],
                        help="Ranger21 implementation for every variant but edgeconnect (Adam)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, default=REPO / "runs/bench/step.json")
    args = parser.parse_args()
    backends = (args.backends.split(",") if args.backends
                else ["reference"] + (["flex"] if args.device == "cuda" else []))
    variants = [f"dina-{b}" for b in backends] + ["no-attention", "edgeconnect"]
    if args.variants:
        unknown = set(args.variants.split(",")) - set(variants)
        if unknown:
            parser.error(f"--variants: unknown {', '.join(sorted(unknown))}; "
                         f"choose among {', '.join(variants)}")
        variants = args.variants.split(",")
    compile_modes = [False, True] if args.compile else [False]
    results = []
    for stage in args.stages.split(","):
        for precision in args.precision.split(","):
            for variant, compiled in [(v, c) for v in variants for c in compile_modes]:
                if variant == "edgeconnect" and (compiled or
                                                 precision != args.precision.split(",")[0]):
                    continue  # one fp32, eager baseline per stage
                row = measure(args.preset, stage, variant, precision, args.device, args.steps,
                              args.warmup, compiled, args.optim)
                results.append(row)
                mem = f"  peak {row['peak_mem_gib']:6.2f} GiB" if row["peak_mem_gib"] else ""
                name = variant + ("+compile" if compiled else "")
                print(f"{stage:8s} {name:24s} {row['precision']:4s} {row['img_per_s']:8.2f} img/s"
                      f"  {row['ms_per_step']:8.1f} ms/step{mem}  {row['host_syncs_per_step']} "
                      f"host syncs/step  optimizer {row['optimizer_ms_per_step']:.1f} ms/step "
                      f"({100 * row['optimizer_share']:.0f} %)", flush=True)
                write_report(args, results)  # after every row: a run cut short keeps its rows
    for key, value in write_report(args, results)["ratios"].items():
        print(f"{key}: {value:.2f}x")
    print(f"wrote {args.json}")


def write_report(args: argparse.Namespace, results: list[dict]) -> dict:
    report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "torch": torch.__version__, "preset": args.preset, "optim": args.optim,
              "results": results, "ratios": ratios(results)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
