"""What evaluate.py can score: the model from a checkpoint (G1 -> G2, edges from the known
region as at test time) or a baseline, each as a fill of eval batches."""
from __future__ import annotations

from typing import Optional

from pipeline.evaluation.baselines import BASELINES
from pipeline.evaluation.inference import Fill, load_model, model_fill

METHODS = ("model", *BASELINES)


def load_fill(method: str, checkpoint: Optional[str], edge_checkpoint: Optional[str],
              device: str, raw_weights: bool = False, edges: str = "g1",
              untrained: bool = False) -> tuple[Fill, Optional[dict]]:
    """(fill, the checkpoint's info or None for a baseline); InferenceError says why not.
    `edges` and `untrained`: see pipeline.evaluation.inference (model_fill, load_model)."""
    if method != "model":
        return BASELINES[method], None
    g1, g2, info = load_model(checkpoint, edge_checkpoint, device, raw_weights, untrained)
    return model_fill(g1, g2, edges), {**info, "edges": edges}
