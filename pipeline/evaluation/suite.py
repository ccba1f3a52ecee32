"""The metrics evaluate.py reports, chosen with --metrics, scored per image and averaged per
hole-area bucket:

- psnr, ssim, l1: PSNR, SSIM (Gaussian window), mean absolute error; ours: RGB at [0, 255]
  (l1 on [0, 1]).
- ec_psnr, ec_ssim, ec_mae: PSNR, SSIM (51-pixel uniform window), relative MAE; EdgeConnect's
  protocol: grayscale at [0, 1] (pipeline.evaluation.edgeconnect).
- lpips: LPIPS v0.1 (AlexNet or VGG16 backbone), RGB at [0, 1].
- fid, with fid_n (the generated images behind it): FID on pt_inception-2015-12-05's pool
  features, RGB at [0, 1] resized to 299 px; per bucket against every test image.

`--metrics` names groups: psnr, ssim, mae (each in both protocols), lpips, fid; "auto" is
psnr,ssim,mae plus lpips and fid where their weights are found.
"""
from __future__ import annotations

from typing import Optional

import torch

from pipeline.data.decode import to_uint8
from pipeline.data.masks import BUCKETS, bucket_name
from pipeline.evaluation.edgeconnect import score_edgeconnect
from pipeline.evaluation.metrics import OVERALL, bucket_columns, psnr, ssim
from pipeline.evaluation.perceptual import LPIPS, BucketFid, WeightsError, fid_network

GROUPS = ("psnr", "ssim", "mae", "lpips", "fid")
AUTO = "auto"
# the per-image metrics of each group, ours first
PER_IMAGE = {"psnr": ("psnr", "ec_psnr"), "ssim": ("ssim", "ec_ssim"), "mae": ("l1", "ec_mae"),
             "lpips": ("lpips",), "fid": ()}


def parse_metrics(text: str) -> tuple[list[str], bool]:
    """--metrics -> (groups, auto); ValueError names an unknown one."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names == [AUTO]:
        return list(GROUPS), True
    unknown = [n for n in names if n not in GROUPS]
    if unknown or not names:
        raise ValueError(f"--metrics {text}: unknown {', '.join(unknown) or 'empty list'}; "
                         f"use a comma list of {', '.join(GROUPS)}, or {AUTO}")
    return names, False


class MetricSuite:
    """Scores composited outputs with the chosen metrics; `summary()` per bucket and overall."""

    def __init__(self, groups: list[str], lpips: Optional[LPIPS] = None,
                 fid: Optional[BucketFid] = None):
        self.groups, self.lpips, self.fid = groups, lpips, fid
        self._sums: dict[str, dict[str, float]] = {}
        self._counts: dict[str, int] = {}

    def score(self, output: torch.Tensor, target: torch.Tensor, buckets: torch.Tensor,
              keys: list[str]) -> dict[str, torch.Tensor]:
        """Per-image scores {name: [B]} of outputs and targets in [0, 1] [B,3,H,W], both first
        quantised to uint8 (the scores of the saved PNGs)."""
        out8, tgt8 = to_uint8(output), to_uint8(target)
        scores = {"psnr": psnr(out8, tgt8), "ssim": ssim(out8, tgt8),
                  "l1": (out8.double() - tgt8.double()).abs().flatten(1).mean(1) / 255.0,
                  **score_edgeconnect(out8, tgt8)}
        out_q, tgt_q = out8.float() / 255.0, tgt8.float() / 255.0
        if self.lpips is not None:
            scores["lpips"] = self.lpips(out_q, tgt_q)
        wanted = {m for g in self.groups for m in PER_IMAGE[g]}
        scores = {k: v.detach().double().cpu() for k, v in scores.items() if k in wanted}
        columns = [bucket_name(int(b)) for b in buckets]
        if self.fid is not None:
            self.fid.add(out_q, tgt_q, columns, list(keys), OVERALL)
        self._add(scores, columns)
        return scores

    def _add(self, scores: dict[str, torch.Tensor], columns: list[str]) -> None:
        for i, column in enumerate(columns):
            for col in (column, OVERALL):
                sums = self._sums.setdefault(col, {})
                for name, values in scores.items():
                    sums[name] = sums.get(name, 0.0) + float(values[i])
                self._counts[col] = self._counts.get(col, 0) + 1

    def summary(self) -> dict[str, dict[str, float]]:
        """{"0-10": {metric: mean, ..., "n": images, "fid", "fid_n"}, ..., "overall": {...}}."""
        fid = self.fid.summary() if self.fid is not None else {}
        out = {}
        for column in bucket_columns():
            if column in self._counts:
                n = self._counts[column]
                out[column] = {k: v / n for k, v in self._sums[column].items()}
                out[column].update(fid.get(column, {}), n=n)
        return out


def build_suite(text: str, device: str, lpips_net: str = "alex",
                lpips_weights: Optional[str] = None, fid_weights: Optional[str] = None
                ) -> tuple[MetricSuite, list[str]]:
    """(suite, notes) for --metrics; WeightsError when an asked-for network has no weights.
    With "auto", a missing network is left out and a note says which file would add it."""
    groups, auto = parse_metrics(text)
    notes, lpips, fid = [], None, None
    if "lpips" in groups:
        try:
            lpips = LPIPS(lpips_net, lpips_weights).to(device)
        except WeightsError as err:
            if not auto:
                raise
            groups.remove("lpips")
            notes.append(f"LPIPS skipped: {err}")
    if "fid" in groups:
        try:
            columns = [bucket_name(i) for i in range(len(BUCKETS))] + [OVERALL]
            fid = BucketFid(fid_network(fid_weights).to(device), columns)
        except WeightsError as err:
            if not auto:
                raise
            groups.remove("fid")
            notes.append(f"FID skipped: {err}")
    return MetricSuite(groups, lpips, fid), notes
