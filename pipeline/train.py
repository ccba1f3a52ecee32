"""Train one stage of the DiNA inpainting GAN.

    accelerate launch pipeline/train.py CONFIG.yaml [MORE.yaml ...] [key=value ...]
    python pipeline/train.py configs/experiment/demo.yaml train.stage=edge

YAML files merge in order, then key=value overrides (see pipeline/config.py for every key).
Exit status: 0 finished; 2 bad config, set-up or data (one line naming the key, file or shards),
or no space left for a checkpoint (the earlier ones are kept); 3 stopped after too many
non-finite steps; 124 stopped by SIGTERM/SIGUSR1 or Ctrl-C (the SLURM scripts requeue on it):
after a checkpoint at the next step boundary, or, when no training data comes within 20 s of the
signal (a stuck stream), at once, keeping the last checkpoint. The codes are defined in
pipeline/exit_codes.py.

One run per train.output_dir: a second one is refused (exit 2, naming the owner's host and PID);
the lock of a run that is gone (same host, PID ended) or of the same SLURM job (requeued) is
taken over with a message.
"""
from __future__ import annotations

import sys
from typing import Optional

from pipeline import exit_codes
from pipeline.config import ConfigError, split_args
from pipeline.data.shards import DataError
from pipeline.training import checkpoint
from pipeline.training.assemble import SetupError
from pipeline.training.trainer import configure_logging, run


def main(argv: Optional[list[str]] = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if args else exit_codes.SETUP)
    configure_logging()
    files, overrides = split_args(args)
    try:
        result = run(files, overrides)
    except (ConfigError, SetupError, DataError, checkpoint.CheckpointError) as err:
        exit_codes.refuse(f"error: {err}")
    sys.exit(result["exit_code"])


if __name__ == "__main__":
    # Ctrl-C before the trainer's own handler is in place (it then stops like SIGTERM)
    exit_codes.run_interruptible(main, "train.py", "set-up stopped, no step was trained")
