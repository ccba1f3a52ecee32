#!/usr/bin/env bash
# Stop the MLflow server that ops/mlflow/start.sh started from DIR (by its recorded pid: TERM to
# its process group, KILL after 15 s), then remove DIR/server.pid. Data in DIR stays.
#
#   ops/mlflow/stop.sh [--dir DIR]        (default DIR=outputs/mlflow)
set -euo pipefail

dir="outputs/mlflow"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "stop.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

pidfile="$dir/server.pid"
[[ -f "$pidfile" ]] || { echo "stop.sh: no $pidfile: no server started from $dir" >&2; exit 1; }
pid="$(cat "$pidfile")"

# A stopped process may linger as a zombie that `kill -0` still reaches: read its state instead.
alive() { [[ -r "/proc/$1/stat" ]] && [[ "$(cut -d' ' -f3 "/proc/$1/stat")" != "Z" ]]; }

if alive "$pid"; then
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do alive "$pid" || break; sleep 0.5; done
  if alive "$pid"; then
    echo "stop.sh: pid $pid ignored TERM for 15 s; sending KILL" >&2
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
fi
rm -f "$pidfile"
echo "stopped mlflow server (pid $pid) from $dir" >&2
