"""Per-bucket results as MLflow metrics and as the paper's table layout (rows metric x run,
columns hole-ratio buckets), shared by evaluate.py, compare.py and training validation.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional

from pipeline.evaluation.metrics import METRICS, OVERALL, bucket_columns


def flat_metrics(summary: Mapping[str, Mapping[str, float]], prefix: str = "") -> dict[str, float]:
    """Summary -> {"psnr/0-10": ..., "ssim/overall": ...} for MLflow (names allow '/' and '-')."""
    return {f"{prefix}{metric}/{column}": float(values[metric])
            for column, values in summary.items() for metric in METRICS}


def summary_from_flat(metrics: Mapping[str, float], prefix: str = ""
                      ) -> dict[str, dict[str, float]]:
    """Inverse of `flat_metrics` (without "n"): MLflow metrics -> summary."""
    out: dict[str, dict[str, float]] = {}
    for column in bucket_columns():
        values = {m: metrics[f"{prefix}{m}/{column}"] for m in METRICS
                  if f"{prefix}{m}/{column}" in metrics}
        if values:
            out[column] = values
    return out


def table_rows(runs: Mapping[str, Mapping[str, Mapping[str, float]]]
               ) -> list[tuple[str, str, list[Optional[float]]]]:
    """(metric, run, [value per column or None]) for each metric, then each run, in order."""
    columns = bucket_columns()
    return [(metric, run, [summary.get(c, {}).get(metric) for c in columns])
            for metric in METRICS for run, summary in runs.items()]


def best_per_column(rows: Iterable[tuple[str, str, list[Optional[float]]]]
                    ) -> dict[tuple[str, int], float]:
    """(metric, column index) -> best value (both metrics: higher is better)."""
    best: dict[tuple[str, int], float] = {}
    for metric, _, values in rows:
        for j, v in enumerate(values):
            if v is not None and not math.isnan(v) and v > best.get((metric, j), -math.inf):
                best[(metric, j)] = v
    return best


def _fmt(metric: str, value: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if metric == "psnr" else f"{value:.4f}"


def bucket_table(runs: Mapping[str, Mapping[str, Mapping[str, float]]],
                 mark_best: bool = False) -> str:
    """Markdown table in the paper's layout: rows metric × run, columns hole-ratio buckets.

    `runs` maps a row label to a summary (`BucketMeter.summary()` shape). With `mark_best`,
    the best value of each metric in each column is bold (compared at the printed precision).
    """
    rows = table_rows(runs)
    best = best_per_column(rows) if mark_best else {}
    header = ["Metric", "Run"] + [c if c == OVERALL else f"{c} %" for c in bucket_columns()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric, run, values in rows:
        cells = []
        for j, v in enumerate(values):
            text = _fmt(metric, v)
            if (metric, j) in best and text == _fmt(metric, best[(metric, j)]):
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join([metric.upper(), run.replace("|", "/")] + cells) + " |")
    return "\n".join(lines) + "\n"
