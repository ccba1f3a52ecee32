#!/usr/bin/env bash
# One task per node (started by `srun` in slurm/common.sh, or by pipeline/launch.py under
# submitit): `accelerate launch` this node's share of the processes.
# Usage, from the repo root inside a SLURM step: node.sh SCRIPT ARGS...
# NCCL where GPUs are visible, gloo (Accelerate's MULTI_CPU) where none are.
set -euo pipefail

gpus_on_node() {
  if [[ -n ${SLURM_GPUS_ON_NODE:-} ]]; then echo "$SLURM_GPUS_ON_NODE"
  elif [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .
  elif command -v nvidia-smi >/dev/null; then nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else echo 0
  fi
}

# Node names need not resolve (emulated nodes, some clusters); the first node's address does.
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
main_ip=$(sinfo -h -N -n "$first" -o %o | head -n1)
# Derived from the job id: the same on every node, stable across requeues, distinct for jobs
# sharing a node.
main_port=${DINA_MAIN_PROCESS_PORT:-$((20000 + SLURM_JOB_ID % 20000))}

gpus=$(gpus_on_node)
if ((gpus > 0)); then
  per_node=$gpus
else
  per_node=1
  export ACCELERATE_USE_CPU=1
fi
echo "[dina-slurm] node $SLURMD_NODENAME (node id $SLURM_NODEID of $SLURM_NNODES):" \
  "$per_node process(es), ${gpus} GPU(s), main process $first = $main_ip:$main_port"

# Every process of the step gets SLURM's signals directly (proctrack signals the whole tree), so
# the launcher ignores USR1/TERM instead of forwarding a second copy to the trainers; the
# trainers install their own handlers (ignored signals stay ignored only until they do).
trap '' USR1 TERM
export PET_SIGNALS_TO_HANDLE=SIGINT,SIGHUP,SIGQUIT  # torchrun's --signals-to-handle
total=$((per_node * SLURM_NNODES))
if ((total > 1)); then
  topology=(--multi_gpu --num_machines "$SLURM_NNODES" --machine_rank "$SLURM_NODEID"
            --main_process_ip "$main_ip" --main_process_port "$main_port")
elif ((gpus == 0)); then
  topology=(--cpu)  # Accelerate refuses --multi_gpu for a single process
else
  topology=()
fi
exec accelerate launch "${topology[@]}" --num_processes "$total" \
  --mixed_precision "${DINA_MIXED_PRECISION:-no}" --dynamo_backend no "$@"
