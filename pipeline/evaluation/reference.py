"""Published results to compare against (the paper's tables), from a YAML file of rows.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from pipeline.evaluation.metrics import bucket_columns
from pipeline.evaluation.tables import METRICS


class CompareError(RuntimeError):
    """A bad input to the comparison; the message names it."""


def load_reference(path: str) -> dict[str, dict]:
    """Reference YAML (configs/reference/*.yaml) -> {row label: summary}; null cells dropped."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise CompareError(f"reference file not found: {path}") from None
    except yaml.YAMLError as err:
        raise CompareError(f"reference file {path} is not valid YAML: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise CompareError(f"reference file {path}: expected a mapping with a 'rows' list")
    columns, out = set(bucket_columns()), {}
    for i, row in enumerate(doc["rows"]):
        if not isinstance(row, dict) or not row.get("name"):
            raise CompareError(f"reference file {path}: rows[{i}] needs a 'name'")
        summary: dict[str, dict[str, float]] = {}
        for metric in METRICS:
            for column, value in (row.get(metric) or {}).items():
                if str(column) not in columns:
                    raise CompareError(f"reference file {path}: rows[{i}].{metric} has unknown "
                                       f"bucket '{column}' (use {', '.join(bucket_columns())})")
                if value is not None:
                    summary.setdefault(str(column), {})[metric] = float(value)
        if summary:
            out[str(row["name"])] = summary
        else:
            print(f"compare.py: warning: reference row '{row['name']}' in {path} has no values "
                  f"(fill it from the paper); skipped", file=sys.stderr)
    return out
