#!/usr/bin/env bash
# The learning benchmark from a fresh clone: set up .venv, then run ops/bench/learn.py with the
# given arguments (default: the paper's recipe, the project's and the project's without attention
# side by side at the full budget; the project's two alone take about 35 minutes on 2 cores, the
# paper's VGG losses make its recipe the slow one).
#   bash ops/bench/learn.sh [--tiny] [--recipe paper,project,...|both] [--out DIR] [--no-apt]
#                           [--edge-steps N] [--texture-steps N] [--edge-texture-steps N]
#                           [--set KEY=VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
bash ops/setup.sh
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python ops/bench/learn.py "$@"
