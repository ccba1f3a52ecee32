"""Parity and gradient check of the flex (and natten) DiNA backends against the reference backend.

For a lent GPU: compiled flex forward and backward (q, k, v and the position bias) in fp32 and
bf16, against the reference computed in float64 from the same inputs; natten likewise where it
runs (no bias); and the DiNA module with backend=flex, plain and under torch.compile, in bf16
autocast, against the same module on the reference backend. Errors are relative to the largest
reference magnitude. Prints JSON, writes --out, exits 1 if a check fails.

On a machine without a GPU, `--device cpu` runs the forward checks only (flex_attention has no
CPU backward): a dry run of the script itself.

    python ops/bench/gpu_check.py [--out runs/bench/gpu_check.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.models.attention.natten_backend import has_libnatten
from pipeline.models.dina import DiNA, na2d

# (height, width, kernel_size, dilation, dtype): the benchmark map, odd sizes (a partial last
# block of the block mask), each border case of the neighbourhood
CASES = [(64, 64, 7, 2, "fp32"), (64, 64, 7, 2, "bf16"), (64, 64, 7, 4, "bf16"),
         (13, 11, 3, 3, "fp32"), (20, 17, 5, 1, "fp32")]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


def check_op(backend: str, height: int, width: int, kernel_size: int, dilation: int,
             dtype: str, with_bias: bool, device: torch.device, backward: bool) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(0)
    shape = (2, height, width, 4, 32)
    base = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3)]
    span = 2 * kernel_size - 1
    if with_bias:
        base.append(torch.randn(4, span, span, generator=gen, dtype=torch.float64) * 0.5)
    grad_out = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)

    def run(name, dtype):
        # the bias stays fp32 (as the module's parameter) unless the whole run is float64
        bias_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        inputs = [t.to(device, dtype).requires_grad_(backward) for t in base[:3]]
        inputs += [t.to(device, bias_dtype).requires_grad_(backward) for t in base[3:]]
        out = na2d(*inputs[:3], kernel_size, dilation, inputs[3] if with_bias else None,
                   backend=name)
        if not backward:
            return out, []
        out.backward(grad_out.to(out.dtype))
        return out, [t.grad for t in inputs]

    want, want_grads = run("reference", torch.float64)
    got, got_grads = run(backend, DTYPES[dtype])
    errors = {"out": rel_err(got, want)}
    for name, g, w in zip(["dq", "dk", "dv", "drpb"], got_grads, want_grads):
        errors[name] = rel_err(g, w)
    return {k: round(v, 7) for k, v in errors.items()}


def check_module(device: torch.device, compiled: bool) -> dict:
    """DiNA(backend=flex) vs the same weights on reference, bf16 autocast, fwd+bwd; the output is
    compared without the residual input, which would hide attention errors."""
    torch.manual_seed(0)
    modules = {name: DiNA(256, 8, 7, 2, bias=True, backend=name).to(device)
               for name in ("reference", "flex")}
    modules["flex"].load_state_dict(modules["reference"].state_dict())
    x = torch.randn(4, 256, 64, 64, device=device)
    results = {}
    for name, module in modules.items():
        run = torch.compile(module) if compiled and name == "flex" else module
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = run(x)
        out.float().square().mean().backward()
        results[name] = (out.float() - x, module.rpb.grad, module.qkv.weight.grad)
    return {key: round(rel_err(got, want.double()), 7) for key, got, want in
            zip(["attention_out", "drpb", "dqkv_weight"], results["flex"], results["reference"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/gpu_check.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible (use --device cpu for a forward-only dry run)")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 parity means true fp32 matmuls
    on_gpu = device.type == "cuda"
    jobs = [("flex", *case, bias) for case in CASES for bias in (False, True)]
    jobs += [("natten", *case, False) for case in CASES if case[4] == "fp32"]
    rows, failed = [], False
    for backend, h, w, k, d, dtype, bias in tqdm(jobs, desc="gpu check"):
        row = {"backend": backend, "map": [h, w], "kernel_size": k, "dilation": d,
               "dtype": dtype, "bias": bias}
        start = time.perf_counter()
        try:
            errors = check_op(backend, h, w, k, d, dtype, bias, device, backward=on_gpu)
            row.update(errors=errors, ok=max(errors.values()) <= TOLERANCE[dtype])
        except Exception as err:  # natten may be absent or unable to run here: report it
            row.update(error=f"{type(err).__name__}: {str(err).splitlines()[0]}",
                       ok=backend == "natten")
        row["seconds"] = round(time.perf_counter() - start, 1)
        failed |= not row["ok"]
        rows.append(row)
    report = {"device": torch.cuda.get_device_name(device) if on_gpu else "cpu (forward only)",
              "torch": torch.__version__, "libnatten": has_libnatten(), "ops": rows}
    if on_gpu:
        for compiled in (False, True):
            errors = check_module(device, compiled)
            ok = max(errors.values()) <= TOLERANCE["bf16"]
            report[f"module_bf16{'_compiled' if compiled else ''}"] = {"errors": errors, "ok": ok}
            failed |= not ok
    report["ok"] = not failed
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
