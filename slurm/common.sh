# Sourced in the batch shell (by slurm/stage.sh and slurm/eval.sbatch) after DINA_SBATCH_SCRIPT is set.
# `dina_run_per_node SCRIPT ARGS...` starts slurm/node.sh once per node with srun (one
# `accelerate launch` per node) and turns a trainer stop for preemption into a requeue:
#   - `#SBATCH --signal=B:USR1@120` gives this shell SIGUSR1 120 s before the time limit (as does
#     `scancel --signal=USR1 --batch JOBID` for a manual preemption); it is forwarded to the
#     job's steps, where every trainer finishes its step, checkpoints and exits with
#     exit_codes.REQUEUE;
#   - then `scontrol requeue` puts the job back in the queue, and the next start resumes from the
#     latest checkpoint (the stage scripts always pass train.resume=latest).
# SIGTERM (scancel, preemption by SLURM, the time limit itself) reaches the trainers directly;
# this shell only waits for them to checkpoint and exit, and requeues nothing itself.

set -euo pipefail

# The spooled copy of the script runs elsewhere: the original's path locates the repo.
DINA_REPO=$(cd "$(dirname "$DINA_SBATCH_SCRIPT")/.." && pwd)
cd "$DINA_REPO"
if [[ -x .venv/bin/accelerate ]]; then export PATH="$DINA_REPO/.venv/bin:$PATH"; fi

# Exit codes and the requeue rule are pipeline/exit_codes.py's, shared with pipeline/launch.py.
REQUEUE_EXIT_CODE=$(python -c 'from pipeline.exit_codes import REQUEUE; print(REQUEUE)')
stopped_for_requeue() {  # STATUS STOP_REQUESTED(0/1)
  python -c 'import sys; from pipeline.exit_codes import stopped_for_requeue as rule
sys.exit(0 if rule(int(sys.argv[1]), sys.argv[2] == "1") else 1)' "$1" "$2"
}

dina_log() { echo "[dina-slurm $(date +%T)] $*"; }

stop_requested=0
forward_stop() {
  stop_requested=1
  dina_log "SIGUSR1: asking the trainers to checkpoint and stop"
  scancel --signal=USR1 "$SLURM_JOB_ID"  # the job's steps, not this shell
}

dina_run_per_node() {
  dina_log "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST"
  trap forward_stop USR1
  trap 'dina_log "SIGTERM: waiting for the trainers to checkpoint"' TERM
  srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=0 --wait=60 \
    bash slurm/node.sh "$@" &
  local step=$! status
  # A trapped signal interrupts `wait`; keep waiting until the step itself has ended.
  while true; do
    status=0
    wait "$step" || status=$?
    kill -0 "$step" 2>/dev/null || break
  done
  trap - USR1 TERM

  if stopped_for_requeue "$status" "$stop_requested"; then
    dina_log "trainers stopped for a requeue (status $status): scontrol requeue $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit "$REQUEUE_EXIT_CODE"
  fi
  dina_log "step finished with status $status"
  exit "$status"
}
