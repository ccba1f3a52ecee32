#!/usr/bin/env bash
# Set up and run the whole test suite, as CI does (.ci/run calls this).
# As root with apt available it also brings up the local SLURM cluster (ops/slurm/start.sh) so
# the cluster tests run for real, and stops it afterwards; elsewhere those tests are skipped
# with their reason. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
if [ "$(id -u)" = 0 ] && [ "${DINA_SKIP_SLURM:-0}" != 1 ] && command -v apt-get >/dev/null; then
  bash ops/slurm/start.sh
  trap 'bash ops/slurm/stop.sh || true' EXIT
fi
.venv/bin/python -m pytest -q -ra --durations=15 "$@"
