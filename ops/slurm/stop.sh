#!/usr/bin/env bash
# Stop the local SLURM cluster started by ops/slurm/start.sh: cancel its jobs, then stop the
# daemons it started (by their pid files, never by name). munged and MariaDB are stopped only if
# start.sh started them. --purge also deletes the state dir (accounting DB, logs).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/lib.sh"

purge=0
case ${1:-} in
  -h|--help) sed -n '2,4p' "$0" | cut -c3-; exit 0 ;;
  --purge) purge=1 ;;
  "") ;;
  *) die "unknown argument '$1' (see --help)" ;;
esac

stop_pidfile() {  # stop_pidfile NAME PIDFILE: SIGTERM, wait up to 30 s, then SIGKILL
  local name=$1 pidfile=$2 pid i
  if pid=$(live_pid "$pidfile"); then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 120; i++)); do
      live_pid "$pidfile" >/dev/null || break
      sleep 0.25
    done
    if live_pid "$pidfile" >/dev/null; then
      log "$name ignored SIGTERM: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

if live_pid "$STATE/run/slurmctld.pid" >/dev/null; then
  jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [[ -n ${jobs// /} ]]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086  # one id per word
    scancel $jobs || true
    for ((i = 0; i < 60; i++)); do
      [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
      sleep 0.5
    done
  fi
fi
for node in "${NODES[@]}"; do
  stop_pidfile "slurmd $node" "$STATE/run/slurmd-$node.pid"
done
stop_pidfile slurmctld "$STATE/run/slurmctld.pid"
stop_pidfile slurmdbd "$STATE/run/slurmdbd.pid"
# MariaDB and munged may serve others: only the pid copies start.sh made mark them as ours (and
# only while the daemon's own pid file still names the same process).
stop_owned() {  # stop_owned NAME OWNED_COPY DAEMON_PIDFILE
  if [[ -s $2 && $(live_pid "$2") == $(live_pid "$3") ]]; then
    stop_pidfile "$1" "$2"
  fi
  rm -f "$2"
}
stop_owned MariaDB "$OWNED/mariadbd.pid" "$MYSQL_PIDFILE"
stop_owned munged "$OWNED/munged.pid" "$MUNGE_PIDFILE"

if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$SLURM_CONF" ]]; then
  rm -f "$SYSTEM_CONF"
fi
if ((purge)); then
  log "deleting $STATE"
  rm -rf "$STATE"
fi
log "stopped"
