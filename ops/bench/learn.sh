#!/usr/bin/env bash
# The learning benchmark from a fresh clone: set up .venv, then run ops/bench/learn.py with the
# given arguments (default: the paper's recipe, the project's and the project's without attention
# side by side at the full budget, about 80 minutes on 2 cores).
#   bash ops/bench/learn.sh [--tiny] [--recipe paper,project,...|both] [--out DIR] [--no-apt]
#                           [--edge-steps N] [--texture-steps N] [--set KEY=VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
bash ops/setup.sh
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python ops/bench/learn.py "$@"
