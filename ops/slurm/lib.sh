# Shared by start.sh and stop.sh: where the local cluster keeps its state, and pid-file helpers.
# Everything the cluster writes lives under $DINA_SLURM_STATE (default /tmp/dina-slurm), except
# what MariaDB and munged insist on keeping under /run.

STATE=${DINA_SLURM_STATE:-/tmp/dina-slurm}
CLUSTER=dina
NODES=(n1 n2)
export SLURM_CONF=$STATE/etc/slurm.conf
# The system-wide path the SLURM clients read when SLURM_CONF is unset.
SYSTEM_CONF=/etc/slurm/slurm.conf
MYSQL_RUN=/run/mysqld
MYSQL_SOCKET=$MYSQL_RUN/mysqld.sock
MYSQL_PIDFILE=$MYSQL_RUN/dina-slurm.pid
MUNGE_PIDFILE=/run/munge/munged.pid
# Copies of the pid files of the daemons this cluster started itself (and so may stop).
OWNED=$STATE/owned

# Print the pid in FILE if it names a live process. A daemon that was stopped can linger as a
# zombie that `kill -0` still accepts, so the state letter in /proc/PID/stat is checked too.
live_pid() {
  local file=$1 pid state
  [[ -s $file ]] || return 1
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/stat ]] || return 1
  state=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)   # comm may hold spaces: cut after ')'
  [[ $state != Z && $state != X ]] || return 1
  echo "$pid"
}

log() { echo "[dina-slurm] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
