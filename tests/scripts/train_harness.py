"""Run the real trainer with test-only faults and write each rank's weight digest.

    train_harness.py [--poison-steps 3,4] [--poison-rank R] [--digest-dir DIR] -- CONFIG... key=value...

--poison-steps fills the image batch of those optimizer steps (1-based) with NaN on --poison-rank
(every rank when omitted). With --digest-dir each rank writes rank<N>.json: sha256 of every trained
network's weights, so a test can check that DDP ranks ended identical.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

from pipeline.config import load_config, split_args
from pipeline.training.trainer import Trainer, configure_logging


class PoisonedBatches:
    """Wraps the trainer's DataLoader; NaN images at the chosen optimizer steps."""

    def __init__(self, loader, steps: set[int], first_step: int, grad_accum: int):
        self.loader, self.steps = loader, steps
        self.skips = loader.skips  # the trainer reports the stream's bad-sample count
        self.batch_index = first_step * grad_accum
        self.grad_accum = grad_accum

    def __iter__(self):
        for batch in self.loader:
            self.batch_index += 1
            if (self.batch_index - 1) // self.grad_accum + 1 in self.steps:
                batch = {**batch, "image": torch.full_like(batch["image"], float("nan"))}
            yield batch


def digest(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--poison-steps", default="")
    parser.add_argument("--poison-rank", type=int, default=None)
    parser.add_argument("--digest-dir", type=Path)
    args, rest = parser.parse_known_args()
    configure_logging()
    files, overrides = split_args([a for a in rest if a != "--"])
    trainer = Trainer(load_config(files, overrides))
    rank = trainer.accelerator.process_index
    steps = {int(s) for s in args.poison_steps.split(",") if s}
    if steps and args.poison_rank in (None, rank):
        trainer.loader = PoisonedBatches(trainer.loader, steps, trainer.step,
                                         trainer.cfg.train.grad_accum)
    result = trainer.train()
    if args.digest_dir:
        args.digest_dir.mkdir(parents=True, exist_ok=True)
        digests = {name: digest(trainer.accelerator.unwrap_model(trainer.ctx.nets[name]))
                   for name in trainer.trained}
        (args.digest_dir / f"rank{rank}.json").write_text(json.dumps(digests))
        ema = trainer.ema.models if trainer.ema is not None else {}
        (args.digest_dir / f"rank{rank}-ema.json").write_text(
            json.dumps({name: digest(net) for name, net in ema.items()}))
    sys.exit(result["exit_code"])


if __name__ == "__main__":
    main()
