#!/usr/bin/env bash
# Start a real single-machine SLURM cluster: munge, MariaDB + slurmdbd (accounting: submitit reads
# job states from sacct), slurmctld and two emulated compute nodes n1/n2 (two slurmd on this host).
# Idempotent: installs the packages if missing, starts only what is not running yet, and returns
# once both nodes are idle. Needs root. State: $DINA_SLURM_STATE (default /tmp/dina-slurm).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/lib.sh"

case ${1:-} in
  -h|--help) sed -n '2,5p' "$0" | cut -c3-; echo "Stop it with ops/slurm/stop.sh."; exit 0 ;;
  "") ;;
  *) die "unknown argument '$1' (see --help)" ;;
esac
[[ $(id -u) == 0 ]] || die "run as root (the daemons and apt-get need it)"

install_packages() {
  local missing=() cmd
  for cmd in slurmctld slurmd sbatch munged slurmdbd mariadbd; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
  done
  ((${#missing[@]})) || return 0
  log "installing SLURM, munge and MariaDB (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
}

render() {  # render TEMPLATE DEST: fill in the state dir, cluster and host names
  sed -e "s|@STATE@|$STATE|g" -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$(hostname)|g" "$1" >"$2"
}

write_configs() {
  mkdir -p "$STATE"/{etc,ctld,run,log,owned} "${NODES[@]/#/$STATE/spool/}"
  render "$here/slurm.conf.in" "$STATE/etc/slurm.conf"
  # slurmdbd reads slurmdbd.conf beside slurm.conf and refuses one others can read.
  render "$here/slurmdbd.conf.in" "$STATE/etc/slurmdbd.conf"
  chmod 600 "$STATE/etc/slurmdbd.conf"
  # Let plain `sinfo`/`sbatch` find this cluster, unless a real config is installed there.
  if [[ ! -e $SYSTEM_CONF || $(readlink "$SYSTEM_CONF") == "$SLURM_CONF" ]]; then
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -sfn "$SLURM_CONF" "$SYSTEM_CONF"
  fi
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: retry COMMAND until it succeeds
  local seconds=$1 what=$2 i
  shift 2
  for ((i = 0; i < seconds * 4; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  die "$what did not come up within ${seconds}s (logs: $STATE/log, $MYSQL_RUN)"
}

start_munge() {
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  log "starting munged"
  [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- munged
  wait_for 10 munged bash -c 'munge -n </dev/null | unmunge'
  cp "$MUNGE_PIDFILE" "$OWNED/munged.pid"
}

mysql_answers() { mariadb --socket="$MYSQL_SOCKET" -uroot -e 'SELECT 1' >/dev/null 2>&1; }

start_mariadb() {
  # A MariaDB already answering on the standard socket (ours or the system's) is used as it is.
  if mysql_answers; then return 0; fi
  local datadir=$STATE/mysql
  if [[ ! -d $datadir/mysql ]]; then
    log "initialising MariaDB in $datadir"
    install -d -o mysql -g mysql "$datadir"
    mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db \
      --auth-root-authentication-method=socket >"$STATE/log/mariadb-install.log" 2>&1
  fi
  log "starting MariaDB (socket $MYSQL_SOCKET)"
  install -d -o mysql -g mysql "$MYSQL_RUN"
  setsid mariadbd --no-defaults --user=mysql --datadir="$datadir" --skip-networking \
    --socket="$MYSQL_SOCKET" --pid-file="$MYSQL_PIDFILE" \
    --log-error="$MYSQL_RUN/dina-slurm.err" </dev/null >/dev/null 2>&1 &
  wait_for 60 MariaDB mysql_answers
  cp "$MYSQL_PIDFILE" "$OWNED/mariadbd.pid"
}

start_daemon() {  # start_daemon NAME PIDFILE COMMAND...: start a self-daemonising SLURM daemon
  local name=$1 pidfile=$2
  shift 2
  if live_pid "$pidfile" >/dev/null; then return 0; fi
  log "starting $name"
  "$@"
  wait_for 30 "$name" live_pid "$pidfile"
}

register_cluster() {
  wait_for 60 "slurmdbd" sacctmgr -n list cluster
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
}

nodes_idle() {
  local states
  states=$(sinfo -h -N -o '%N %T' | sort -u)
  [[ $(grep -c -E ' (idle|mixed|allocated)$' <<<"$states") == "${#NODES[@]}" ]]
}

wait_nodes_idle() {
  local i
  for ((i = 0; i < 240; i++)); do
    nodes_idle && return 0
    # Drain/down states are saved across restarts and outlive their cause: clear them.
    if sinfo -h -N -o '%T' | grep -q -E 'drain|down|inval|fail'; then
      scontrol update nodename="$(IFS=,; echo "${NODES[*]}")" state=resume 2>/dev/null || true
    fi
    sleep 0.25
  done
  sinfo -N >&2 || true
  die "nodes are not idle after 60s (logs: $STATE/log)"
}

install_packages
write_configs
start_munge
start_mariadb
start_daemon slurmdbd "$STATE/run/slurmdbd.pid" slurmdbd
register_cluster
start_daemon slurmctld "$STATE/run/slurmctld.pid" slurmctld -f "$SLURM_CONF"
for node in "${NODES[@]}"; do
  start_daemon "slurmd $node" "$STATE/run/slurmd-$node.pid" slurmd -f "$SLURM_CONF" -N "$node"
done
wait_nodes_idle

log "cluster '$CLUSTER' is up: $(sinfo -h -N -o '%N=%T' | sort -u | tr '\n' ' ')"
if [[ $(readlink "$SYSTEM_CONF") == "$SLURM_CONF" ]]; then
  echo "Ready: sinfo, sbatch, srun, sacct and submitit use it directly."
else
  echo "Ready. $SYSTEM_CONF belongs to another cluster; point the clients at this one with:"
  echo "  export SLURM_CONF=$SLURM_CONF"
fi
echo "Stop it with: ops/slurm/stop.sh (logs in $STATE/log)"
