"""Benchmark the DiNA op, forward and forward+backward, per backend against dense SDPA.

GPU default (issue 6): B=8, 64x64 map, 8 heads x 32, k=7, d in {2, 4}, bf16, with and without
the relative position bias. CPU default (so every machine can run it): B=2, 32x32 map,
4 heads x 32, k=7, d in {2, 4}, fp32. Dense SDPA attends over all H*W tokens and has no bias; it
is the same number in both bias rows. Prints JSON and writes it to --out.

    python ops/bench/dina.py [--device cuda] [--out runs/bench/dina-cuda.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.models.attention.natten_backend import has_libnatten
from pipeline.models.dina import na2d

GPU_SHAPE = dict(batch=8, size=64, heads=8, head_dim=32, dtype="bf16")
CPU_SHAPE = dict(batch=2, size=32, heads=4, head_dim=32, dtype="fp32")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="default: 8 on GPU, 2 on CPU")
    parser.add_argument("--size", type=int, help="map side; default: 64 on GPU, 32 on CPU")
    parser.add_argument("--heads", type=int, help="default: 8 on GPU, 4 on CPU")
    parser.add_argument("--head-dim", type=int, help="default: 32")
    parser.add_argument("--dtype", choices=DTYPES, help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--kernel-size", type=int, default=7)
    parser.add_argument("--dilations", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--backends", nargs="+", default=["reference", "flex", "natten", "sdpa"],
                        choices=["reference", "flex", "natten", "sdpa"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, help="timed repeats; default 20 on GPU, 5 on CPU")
    parser.add_argument("--out", type=Path, help="JSON path; default runs/bench/dina-<device>.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    defaults = GPU_SHAPE if device.type == "cuda" else CPU_SHAPE
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.iters = args.iters or (20 if device.type == "cuda" else 5)
    args.out = args.out or Path(f"runs/bench/dina-{device.type}.json")
    if args.kernel_size * max(args.dilations) > args.size:
        parser.error(f"kernel_size*dilation = {args.kernel_size * max(args.dilations)} exceeds "
                     f"--size {args.size}")
    return args


def dense_sdpa(q, k, v):
    batch, height, width, heads, head_dim = q.shape
    seq = [t.reshape(batch, height * width, heads, head_dim).transpose(1, 2) for t in (q, k, v)]
    return F.scaled_dot_product_attention(*seq).transpose(1, 2).reshape(q.shape)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(step, device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(op, inputs, device, args) -> dict:
    """Median ms of forward alone and of forward+backward; an error string where unsupported."""
    result = {}
    frozen = [t.detach() if t is not None else None for t in inputs]  # flex: no grad, any device
    with torch.no_grad():
        result["fwd_ms"] = round(time_ms(lambda: op(*frozen), device, args.warmup, args.iters), 3)
    grad = torch.randn_like(inputs[0])

    def fwd_bwd():
        for t in inputs:
            if t is not None:
                t.grad = None
        op(*inputs).backward(grad)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        result["fwd_bwd_ms"] = round(time_ms(fwd_bwd, device, args.warmup, args.iters), 3)
    except (RuntimeError, NotImplementedError) as err:
        result["fwd_bwd_ms"] = None
        result["fwd_bwd_error"] = str(err).splitlines()[0]
    if device.type == "cuda":
        result["peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


def main() -> None:
    args = parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    shape = (args.batch, args.size, args.size, args.heads, args.head_dim)
    span = 2 * args.kernel_size - 1
    cases = [(d, b, name) for d in args.dilations for b in (False, True) for name in args.backends
             if not (b and name == "natten")]  # natten has no bias
    results = []
    for dilation, with_bias, name in tqdm(cases, desc="dina bench"):
        q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
                   for _ in range(3))
        rpb = (torch.zeros(args.heads, span, span, device=device, requires_grad=True)
               if with_bias else None)
        if name == "sdpa":
            op = lambda q, k, v, rpb: dense_sdpa(q, k, v)  # noqa: E731
        else:
            op = lambda q, k, v, rpb, name=name, d=dilation: na2d(  # noqa: E731
                q, k, v, args.kernel_size, d, rpb, backend=name)
        try:
            row = measure(op, (q, k, v, rpb), device, args)
        except Exception as err:  # a backend that cannot run here is reported, not fatal
            row = {"error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
        results.append({"backend": name, "dilation": dilation, "bias": with_bias, **row})
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "libnatten": has_libnatten(),
        "shape": {"batch": args.batch, "height": args.size, "width": args.size,
                  "heads": args.heads, "head_dim": args.head_dim, "kernel_size": args.kernel_size,
                  "dtype": args.dtype},
        "results": results,
        "flex_vs_sdpa_fwd_bwd": ratios(results, "flex", "sdpa"),
    }
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


def ratios(results: list[dict], name: str, baseline: str) -> dict:
    """fwd+bwd time of `name` over `baseline`, per (dilation, bias); the issue's targets."""
    base = {r["dilation"]: r.get("fwd_bwd_ms") for r in results if r["backend"] == baseline}
    out = {}
    for r in results:
        if r["backend"] == name and r.get("fwd_bwd_ms") and base.get(r["dilation"]):
            key = f"d{r['dilation']}{'_bias' if r['bias'] else ''}"
            out[key] = round(r["fwd_bwd_ms"] / base[r["dilation"]], 3)
    return out


if __name__ == "__main__":
    main()
