"""Validation during training: the same fixed pairs and scoring as evaluate.py, on one batch, for
the weights inference uses (the EMA where train.ema is on) and, with the EMA, the raw weights."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from accelerate import Accelerator
from omegaconf import DictConfig

from pipeline.data.decode import uint8_images
from pipeline.data.eval_pairs import eval_loader, eval_pairs
from pipeline.evaluation.inference import known_region_edges
from pipeline.evaluation.metrics import edge_accuracy
from pipeline.evaluation.scoring import evaluate
from pipeline.evaluation.tables import flat_metrics
from pipeline.models.coarse_fill import pull_push_fill
from pipeline.models.contract import complete_edges, composite, inpaint


def validation_batch(data_cfg: DictConfig, device: torch.device) -> Optional[dict]:
    """data.val's first data.val_per_bucket images in every bucket, as one batch on `device`."""
    d = data_cfg
    if not d.val:
        return None
    pairs = eval_pairs(d.val, d.val_masks or d.masks, d.image_size, per_bucket=d.val_per_bucket)
    batch = next(iter(eval_loader(pairs, d.image_size, batch_size=len(pairs))))
    # scored as evaluate.py scores: edges from Canny on the known region only; the whole
    # image's edges stay as what G1 should draw in the hole
    batch["edge_truth"] = batch["edge"]
    batch["edge"] = known_region_edges(batch)
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def no_learning_edges(batch: dict) -> torch.Tensor:
    """The edges a G1 that learned nothing could draw: Canny of the pull-push-filled image in the
    hole, the known region's edges outside it; G1's edge F1 is read beside theirs."""
    filled = composite(pull_push_fill(batch["image"], batch["mask"]), batch["image"],
                       batch["mask"])
    return known_region_edges({**batch, "image": filled, "mask": torch.zeros_like(batch["mask"])})


def image_grid(batch: dict, edges: torch.Tensor, output: torch.Tensor, rows: int = 4) -> np.ndarray:
    """Rows of [masked input | edges | output | ground truth], uint8 HWC."""
    image, mask = batch["image"][:rows], batch["mask"][:rows]
    masked = image * (1 - mask) + mask
    tiles = [masked, edges[:rows].expand(-1, 3, -1, -1), output[:rows], image]
    grid = torch.cat([torch.cat(list(t.float().cpu()), dim=1) for t in tiles], dim=2)
    return uint8_images(grid[None])[0]


class Validator:
    """Scores the stage's generators on the validation batch; the tracker given takes the
    metrics (`log_metrics`) and the sample grid (`log_image`)."""

    def __init__(self, cfg: DictConfig, accelerator: Accelerator, trained: tuple[str, ...]):
        self.accelerator, self.trained = accelerator, trained
        self.log_images = cfg.tracking.log_images
        self.batch = (validation_batch(cfg.data, accelerator.device)
                      if accelerator.is_main_process else None)
        self.edge_baseline = None  # the no-learning edges' scores, logged beside G1's
        if self.batch is not None and "g1" in trained:
            self.edge_baseline = edge_accuracy(no_learning_edges(self.batch),
                                               self.batch["edge_truth"], self.batch["mask"])

    @torch.no_grad()
    def __call__(self, step: int, nets: dict[str, torch.nn.Module],
                 ema_models: Optional[dict[str, torch.nn.Module]], tracker) -> None:
        """val/* of the weights inference uses (as the sample grid), and with an EMA also
        val_raw/* of the raw weights; main process only."""
        if self.batch is None:
            return
        # the plain modules: a compiled one would recompile for the validation batch's shape
        raw = {n: self.accelerator.unwrap_model(net, keep_torch_compile=False)
               for n, net in nets.items() if n in ("g1", "g2")}
        for net in raw.values():
            net.eval()
        variants = {"val/": raw}
        if ema_models is not None:
            variants = {"val/": {**raw, **ema_models}, "val_raw/": raw}
        for prefix, generators in variants.items():
            self._score(step, prefix, generators.get("g1"), generators.get("g2"), tracker)
        for name in self.trained:
            nets[name].train()

    def _score(self, step: int, prefix: str, g1: Optional[torch.nn.Module],
               g2: Optional[torch.nn.Module], tracker) -> None:
        batch = self.batch
        if g2 is None:  # edge stage: no image output to score
            edges = complete_edges(g1, batch)
            output = batch["image"] * (1 - batch["mask"])
        else:
            output, edges = inpaint(g1, g2, batch)
            # scored by the core evaluate.py uses; the output is the fill of the one batch
            summary, _ = evaluate([batch], lambda _: output, self.accelerator.device,
                                  progress=False)
            tracker.log_metrics(flat_metrics(summary, prefix), step)
        if "g1" in self.trained:  # G1's edges in the hole against the image's own Canny edges
            accuracy = edge_accuracy(edges, batch["edge_truth"], batch["mask"])
            if prefix == "val/":
                accuracy.update({f"pull_push_canny/{k}": v
                                 for k, v in self.edge_baseline.items()})
            tracker.log_metrics({prefix + k: v for k, v in accuracy.items()}, step)
        if prefix == "val/" and self.log_images:
            tracker.log_image(image_grid(batch, edges, output), f"samples-{step:08d}.png",
                                   "samples")
