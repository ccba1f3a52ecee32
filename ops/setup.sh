#!/usr/bin/env bash
# Create .venv and install dina-inpaint with everything it needs. Idempotent.
#   TORCH_SPEC   torch requirement installed FIRST (default torch==2.13.0, a CPU build here;
#                on a GPU cluster use the CUDA build matching your driver). Installing torch
#                first matters: an unpinned torch pulled in by another package is a multi-GB
#                CUDA download.
#   VENV         virtualenv path (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PY=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@" --disable-pip-version-check -q; }
echo "[setup] $TORCH_SPEC"
pip install "$TORCH_SPEC"
echo "[setup] dina-inpaint and its dependencies"
pip install -e '.[dev]'
# natten ships as an sdist; with build isolation pip would fill the build env with a CUDA torch.
# Against the CPU torch it builds in seconds without libnatten (forward-only reference kernels).
if ! "$VENV/bin/python" -c "import natten" 2>/dev/null; then
  echo "[setup] natten (no build isolation)"
  pip install --no-build-isolation natten==0.21.7
fi
"$VENV/bin/python" - <<'PY'
import torch, natten, accelerate, webdataset, mlflow, submitit, pytorch_optimizer, omegaconf, torchmetrics
print(f"[setup] ok: torch {torch.__version__}, natten {natten.__version__}, "
      f"accelerate {accelerate.__version__}, mlflow {mlflow.__version__}")
PY
