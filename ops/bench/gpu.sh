#!/usr/bin/env bash
# The GPU benchmarks in one script, for a lent H100/H200 (torch 2.11 preinstalled, no internet),
# in under 6 minutes (the per-step limits below add up to 390 s), tracking off. Writes JSON into
# "${OUT:-runs/bench}":
#   gpu_check.json   flex/natten parity and gradients (position bias included) vs the reference
#   dina.json        DiNA op fwd+bwd per backend vs dense SDPA: B=8, 64x64, 8x32, k=7, d 2/4, bf16,
#                    with and without bias
#   step.json        full GAN step, paper preset (256^2, batch 16, every loss), dina-flex,
#                    no-attention and the EdgeConnect recipe, fp32 and bf16: img/s, ms/step, peak
#                    memory, host syncs/step, optimizer ms/step, and the target ratios
#   step-compiled.json  texture stage, bf16: dina-flex and no-attention, eager and torch.compile
#   step-reference-optim.json  texture stage, bf16, pytorch_optimizer's Ranger21 (the optimizer
#                    share before the sync-free one)
#   imports.txt, gpu.log
#
# Wheels to carry (the GPU image lacks these two; it has accelerate, safetensors, numpy, PyYAML,
# scikit-image, tqdm, pillow). In the repo root, once:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl omegaconf==2.4.0 pytorch_optimizer==4.1.0
# (natten is optional: without libnatten its rows are reported as errors or skipped.)
#
# Device command (the `run` tool; timeout leaves room for the machine's start):
#   run(command="bash ops/bench/gpu.sh", carry=[".whl"], timeout_s=540)
#
# CPU dry run of the same logic at tiny shapes (no GPU needed):
#   DEVICE=cpu OUT=/tmp/gpu-dry bash ops/bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR="${OUT:-runs/bench}"
DEVICE="${DEVICE:-cuda}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MLFLOW_TRACKING_URI="" TQDM_MININTERVAL=5

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

# Which imports the benchmarks need are missing here: print them, stop if a required one is.
"$PYTHON" - <<'EOF' | tee "$OUT_DIR/imports.txt"
import importlib, sys
required = ["torch", "numpy", "omegaconf", "accelerate", "pytorch_optimizer", "safetensors",
            "tqdm", "yaml", "PIL", "skimage"]
optional = ["natten", "webdataset", "mlflow"]
missing = []
for name in required + optional:
    try:
        module = importlib.import_module(name)
        print(f"ok       {name} {getattr(module, '__version__', '')}")
    except Exception as err:
        print(f"MISSING  {name} ({type(err).__name__}: {err})")
        missing += [name] if name in required else []
if missing:
    sys.exit(f"required packages missing: {' '.join(missing)} (carry them as wheels, see top)")
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1

status=0
run() {  # run a step, keep going on failure, remember it
    local limit=$1; shift
    echo "== $* (limit ${limit}s) $(date -u +%T)"
    timeout "$limit" "$@" || { echo "!! failed ($?): $*"; status=1; }
}

if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    run 50 "$PYTHON" ops/bench/gpu_check.py --out "$OUT_DIR/gpu_check.json"
    run 50 "$PYTHON" ops/bench/dina.py --device cuda --out "$OUT_DIR/dina.json"
    run 110 "$PYTHON" ops/bench/step.py --preset paper --device cuda --precision no,bf16 \
        --backends flex --steps 6 --warmup 2 --json "$OUT_DIR/step.json"
    run 140 "$PYTHON" ops/bench/step.py --preset paper --device cuda --precision bf16 --compile \
        --stages texture --backends flex --variants dina-flex,no-attention --steps 6 --warmup 3 \
        --json "$OUT_DIR/step-compiled.json"
    run 40 "$PYTHON" ops/bench/step.py --preset paper --device cuda --precision bf16 \
        --stages texture --backends flex --variants dina-flex,no-attention --steps 5 --warmup 2 \
        --optim ranger21-reference --json "$OUT_DIR/step-reference-optim.json"
else  # dry run: the same calls at shapes a CPU finishes in a few minutes
    run 120 "$PYTHON" ops/bench/gpu_check.py --device cpu --out "$OUT_DIR/gpu_check.json"
    run 120 "$PYTHON" ops/bench/dina.py --device cpu --batch 1 --size 16 --heads 2 \
        --kernel-size 3 --dilations 2 4 --warmup 1 --iters 1 --out "$OUT_DIR/dina.json"
    run 300 "$PYTHON" ops/bench/step.py --preset tiny --device cpu --precision no,bf16 \
        --backends reference --steps 1 --warmup 1 --json "$OUT_DIR/step.json"
    run 300 "$PYTHON" ops/bench/step.py --preset tiny --device cpu --precision no --compile \
        --stages texture --backends reference --variants dina-reference,no-attention \
        --steps 1 --warmup 1 --json "$OUT_DIR/step-compiled.json"
    run 300 "$PYTHON" ops/bench/step.py --preset tiny --device cpu --precision no \
        --stages texture --backends reference --variants dina-reference,no-attention \
        --steps 1 --warmup 1 --optim ranger21-reference --json "$OUT_DIR/step-reference-optim.json"
fi
echo "== done $(date -u +%T), status $status; JSON in $OUT_DIR"
exit $status
