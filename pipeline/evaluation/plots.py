"""Comparison outputs beside the Markdown table: a CSV of every row and a plot of PSNR/SSIM against
hole ratio.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

from pipeline.data.masks import BUCKETS
from pipeline.evaluation.metrics import METRICS, OVERALL, bucket_columns
from pipeline.evaluation.tables import best_per_column, protocol, table_rows


def write_csv(runs: dict[str, dict], path: Path, published: Iterable[str] = ()) -> None:
    rows = table_rows(runs)
    best = best_per_column(rows)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        columns = bucket_columns()
        writer.writerow(["metric", "run", *columns, "best_in", "protocol"])
        for metric, run, values in rows:
            best_in = [columns[j] for j, v in enumerate(values) if v is not None
                       and best.get((metric, j)) == v]
            writer.writerow([metric, run, *["" if v is None else repr(v) for v in values],
                             " ".join(best_in), protocol(metric, run, published)])


def write_plot(runs: dict[str, dict], references: set[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = [c for c in bucket_columns() if c != OVERALL]
    centres = [100 * (lo + hi) / 2 for lo, hi in BUCKETS]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, METRICS):
        for label, summary in runs.items():
            points = [(x, summary[b][metric]) for x, b in zip(centres, buckets)
                      if metric in summary.get(b, {})]
            if points:
                ax.plot(*zip(*points), marker="o", label=label,
                        linestyle="--" if label in references else "-")
        ax.set_xlabel("hole ratio (mask bucket)")
        ax.set_ylabel("PSNR (dB)" if metric == "psnr" else "SSIM")
        ax.set_xticks(centres, [f"{b} %" for b in buckets])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
