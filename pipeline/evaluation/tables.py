"""Per-bucket results as MLflow metrics and as the paper's table layout (rows metric x run,
columns hole-ratio buckets, then the protocol each row was measured with), shared by
evaluate.py, compare.py and training validation.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional

from pipeline.evaluation.metrics import OVERALL, bucket_columns

# every metric a table can hold, in row order (pipeline.evaluation.suite says what each is)
METRICS = ("psnr", "ssim", "l1", "ec_psnr", "ec_ssim", "ec_mae", "lpips", "fid")
LOGGED = (*METRICS, "fid_n")  # fid_n: the generated images behind each FID
LOWER_IS_BETTER = {"l1", "ec_mae", "lpips", "fid"}
LABELS = {"psnr": "PSNR", "ssim": "SSIM", "l1": "L1", "ec_psnr": "EC PSNR", "ec_ssim": "EC SSIM",
          "ec_mae": "EC MAE", "lpips": "LPIPS", "fid": "FID"}
OURS, EDGECONNECT = "ours: RGB, Gaussian 11", "EdgeConnect: gray, uniform 51"
PROTOCOLS = {"psnr": OURS, "ssim": OURS, "l1": OURS, "ec_psnr": EDGECONNECT,
             "ec_ssim": EDGECONNECT, "ec_mae": EDGECONNECT, "lpips": "LPIPS v0.1",
             "fid": "pt_inception-2015-12-05"}
PUBLISHED = "as published"
DECIMALS = {"psnr": 2, "ec_psnr": 2, "fid": 2}  # the rest: 4


def flat_metrics(summary: Mapping[str, Mapping[str, float]], prefix: str = "") -> dict[str, float]:
    """Summary -> {"psnr/0-10": ..., "ssim/overall": ...} for MLflow (names allow '/' and '-');
    every metric of LOGGED the summary holds."""
    return {f"{prefix}{metric}/{column}": float(values[metric])
            for column, values in summary.items() for metric in LOGGED if metric in values}


def summary_from_flat(metrics: Mapping[str, float], prefix: str = ""
                      ) -> dict[str, dict[str, float]]:
    """Inverse of `flat_metrics` (without "n"): MLflow metrics -> summary."""
    out: dict[str, dict[str, float]] = {}
    for column in bucket_columns():
        values = {m: metrics[f"{prefix}{m}/{column}"] for m in LOGGED
                  if f"{prefix}{m}/{column}" in metrics}
        if values:
            out[column] = values
    return out


def table_rows(runs: Mapping[str, Mapping[str, Mapping[str, float]]]
               ) -> list[tuple[str, str, list[Optional[float]]]]:
    """(metric, run, [value per column or None]) for each metric, then each run that has it."""
    columns = bucket_columns()
    return [(metric, run, [summary.get(c, {}).get(metric) for c in columns])
            for metric in METRICS for run, summary in runs.items()
            if any(metric in values for values in summary.values())]


def best_per_column(rows: Iterable[tuple[str, str, list[Optional[float]]]]
                    ) -> dict[tuple[str, int], float]:
    """(metric, column index) -> best value (LOWER_IS_BETTER: the least, else the greatest)."""
    best: dict[tuple[str, int], float] = {}
    for metric, _, values in rows:
        sign = -1 if metric in LOWER_IS_BETTER else 1
        for j, v in enumerate(values):
            if (v is not None and not math.isnan(v)
                    and sign * v > sign * best.get((metric, j), -sign * math.inf)):
                best[(metric, j)] = v
    return best


def _fmt(metric: str, value: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value:.{DECIMALS.get(metric, 4)}f}"


def protocol(metric: str, run: str, published: Iterable[str] = ()) -> str:
    """How a row was measured: PUBLISHED for a paper's row, else the metric's protocol."""
    return PUBLISHED if run in published else PROTOCOLS.get(metric, "")


def bucket_table(runs: Mapping[str, Mapping[str, Mapping[str, float]]],
                 mark_best: bool = False, published: Iterable[str] = ()) -> str:
    """Markdown table in the paper's layout: rows metric × run, columns hole-ratio buckets, then
    each row's protocol (`published`: the labels of rows copied from papers).

    `runs` maps a row label to a summary (`BucketMeter.summary()` shape). With `mark_best`,
    the best value of each metric in each column is bold (compared at the printed precision).
    A FID cell shows the number of generated images behind it (fid_n).
    """
    rows, published = table_rows(runs), set(published)
    best = best_per_column(rows) if mark_best else {}
    header = (["Metric", "Run"] + [c if c == OVERALL else f"{c} %" for c in bucket_columns()]
              + ["Protocol"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric, run, values in rows:
        cells = []
        for j, v in enumerate(values):
            text = _fmt(metric, v)
            if (metric, j) in best and text == _fmt(metric, best[(metric, j)]):
                text = f"**{text}**"
            count = runs[run].get(bucket_columns()[j], {}).get("fid_n")
            if metric == "fid" and v is not None and count is not None:
                text += f" (n={int(count)})"
            cells.append(text)
        lines.append("| " + " | ".join([LABELS[metric], run.replace("|", "/")] + cells
                                       + [protocol(metric, run, published)]) + " |")
    return "\n".join(lines) + "\n"
