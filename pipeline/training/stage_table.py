"""What each training stage is: the one table that config validation, network building, the step
loop, the submitit launcher and the sbatch scripts read.

Stages (paper / EdgeConnect):
- edge:         G1/D1 learn to complete Canny edge maps.
- texture:      G2/D2 learn to fill holes from ground-truth edges.
- edge-texture: G2/D2 learn from the edges a frozen, trained G1 predicts.
- joint:        G1, D1, G2, D2 fine-tuned end to end (G2's losses reach G1 through its edges).

Kept free of torch so that config checks and job submission stay quick to import.
"""
from __future__ import annotations

from dataclasses import dataclass

# the config key that names the checkpoint a pretrained generator is loaded from
CHECKPOINT_KEY = {"g1": "train.edge_checkpoint", "g2": "train.texture_checkpoint"}
GENERATOR_NAMES = {"g1": "edge generator G1", "g2": "texture generator G2"}


@dataclass(frozen=True)
class Stage:
    name: str
    trains: tuple[str, ...]  # networks it optimises
    frozen: tuple[str, ...]  # trained earlier, used here without gradients
    step: str  # kind of step in pipeline.training.steps: edge | texture | joint
    needs: tuple[str, ...]  # generators it must load from earlier stages' checkpoints
    # generators it loads when their checkpoint is given, only to carry them into its own
    # checkpoints (a texture checkpoint with G1 inpaints on its own)
    carries: tuple[str, ...] = ()

    @property
    def hands_on(self) -> tuple[str, ...]:
        """Generators it trains, which later stages of a chain take from its checkpoints."""
        return tuple(n for n in self.trains if n in CHECKPOINT_KEY)

    def networks(self, given: set[str]) -> tuple[str, ...]:
        """Networks a run builds, `given` being the generators whose checkpoint key is set."""
        loaded = [g for g in (*self.needs, *self.carries) if g in given]
        return tuple(dict.fromkeys((*self.trains, *self.frozen, *loaded)))


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("edge", trains=("g1", "d1"), frozen=(), step="edge", needs=()),
    Stage("texture", trains=("g2", "d2"), frozen=(), step="texture", needs=(), carries=("g1",)),
    Stage("edge-texture", trains=("g2", "d2"), frozen=("g1",), step="texture", needs=("g1",)),
    Stage("joint", trains=("g1", "d1", "g2", "d2"), frozen=(), step="joint", needs=("g1", "g2")),
)}
