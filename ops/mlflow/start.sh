#!/usr/bin/env bash
# Start a local MLflow tracking server in the background: sqlite backend store, artifacts served
# by the server from a folder on disk, listening on loopback only. Waits for /health, writes
# DIR/server.pid (the server's process group) and DIR/server.log, prints the tracking URI.
#
#   ops/mlflow/start.sh [--dir DIR] [--port PORT] [--host HOST] [--workers N] [--timeout SECONDS]
#
# Defaults: DIR=outputs/mlflow (git-ignored), PORT=5000, HOST=127.0.0.1, 1 worker, timeout 60 s.
# MLflow's GenAI job runner is off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true (it starts
# seven extra processes that tracking does not need).
# Then: export MLFLOW_TRACKING_URI=http://127.0.0.1:5000 ; open it in a browser for the UI.
# The mlflow executable is $MLFLOW_BIN, else `mlflow` on PATH, else the repo's .venv/bin/mlflow.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="outputs/mlflow" port=5000 host=127.0.0.1 workers=1 timeout=60
usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --host) host="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "start.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

mlflow_bin="${MLFLOW_BIN:-$(command -v mlflow || echo "$repo/.venv/bin/mlflow")}"
[[ -x "$mlflow_bin" ]] || { echo "start.sh: mlflow executable not found ($mlflow_bin); pip install mlflow or set MLFLOW_BIN" >&2; exit 1; }

mkdir -p "$dir/artifacts"
dir="$(cd "$dir" && pwd)"
pidfile="$dir/server.pid" log="$dir/server.log"
if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "start.sh: a server from $dir is already running (pid $(cat "$pidfile")); stop it with ops/mlflow/stop.sh --dir $dir" >&2
  exit 1
fi

# setsid: the server and its uvicorn workers form one process group that stop.sh ends together.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
  setsid "$mlflow_bin" server \
  --backend-store-uri "sqlite:///$dir/mlflow.db" \
  --serve-artifacts --artifacts-destination "$dir/artifacts" \
  --host "$host" --port "$port" --workers "$workers" >"$log" 2>&1 < /dev/null &
pid=$!
echo "$pid" > "$pidfile"

uri="http://$host:$port"
deadline=$((SECONDS + timeout))
healthy() {  # python3 rather than curl: CI machines may have only Python
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "$uri/health" >/dev/null 2>&1
}
until healthy; do
  if ! kill -0 "$pid" 2>/dev/null; then
    rm -f "$pidfile"
    echo "start.sh: mlflow server exited during start-up; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  if (( SECONDS >= deadline )); then
    echo "start.sh: no answer from $uri/health after ${timeout}s; stopping it (log: $log)" >&2
    "$repo/ops/mlflow/stop.sh" --dir "$dir" >&2 || true
    exit 1
  fi
  sleep 0.5
done
echo "mlflow server pid $pid, store $dir, log $log" >&2
echo "$uri"
