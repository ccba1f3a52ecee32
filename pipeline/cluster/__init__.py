"""Running training on a cluster: stages as submitit jobs (one stage, a chain, a sweep), on SLURM
or as local processes. launch.py is its command line."""
import os

# submitit reads its preemption signal at import: make it the one the trainer handles
os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", "USR1")
