"""An evaluation's files: every pair with its scores, the per-bucket summary, the paper-layout
table and the timing, side by side in one output folder."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.evaluation.tables import bucket_table

RESULT_FILES = ("table.md", "metrics.json", "pairs.json", "timing.json")


def write_results(out: Path, label: str, summary: dict, per_image: list, timing: dict) -> str:
    """Write pairs.json, metrics.json, table.md and timing.json; returns the table."""
    table = bucket_table({label: summary})
    (out / "pairs.json").write_text(json.dumps(per_image, indent=1))
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(table)
    (out / "timing.json").write_text(json.dumps(timing, indent=1))
    return table
