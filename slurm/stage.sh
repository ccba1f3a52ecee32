# The body shared by the stage scripts slurm/<stage>.sbatch (sourced after they set
# DINA_SBATCH_SCRIPT): trains the stage the script is named after, configs/stage/<stage>.yaml
# first, on every node of the job, requeued on preemption and resumed from the latest checkpoint
# (slurm/common.sh). Which stage needs which checkpoint: pipeline/training/stage_table.py.
source "$(dirname "$DINA_SBATCH_SCRIPT")/common.sh"
dina_stage=$(basename "$DINA_SBATCH_SCRIPT" .sbatch)
dina_run_per_node pipeline/train.py "configs/stage/$dina_stage.yaml" "$@" train.resume=latest
