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
    except (OSError, UnicodeDecodeError) as err:  # a directory, unreadable, not text
        raise CompareError(f"reference file {path} cannot be read: "
                           f"{getattr(err, 'strerror', None) or err}") from None
    except yaml.YAMLError as err:
        # one line: where and what (PyYAML's own message spans several, with a source excerpt)
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise CompareError(f"reference file {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise CompareError(f"reference file {path}: expected a mapping with a 'rows' list")
    columns, out = set(bucket_columns()), {}
    for i, row in enumerate(doc["rows"]):
        if not isinstance(row, dict) or not row.get("name"):
            raise CompareError(f"reference file {path}: rows[{i}] needs a 'name'")
        summary: dict[str, dict[str, float]] = {}
        for metric in METRICS:
            cells = row.get(metric) or {}
            if not isinstance(cells, dict):
                raise CompareError(f"reference file {path}: rows[{i}].{metric} must map buckets "
                                   f"to numbers, got {type(cells).__name__} {cells!r}")
            for column, value in cells.items():
                if str(column) not in columns:
                    raise CompareError(f"reference file {path}: rows[{i}].{metric} has unknown "
                                       f"bucket '{column}' (use {', '.join(bucket_columns())})")
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)) \
                        or value != value:  # NaN
                    raise CompareError(f"reference file {path}: rows[{i}].{metric}.{column} "
                                       f"must be a number, got {value!r}")
                summary.setdefault(str(column), {})[metric] = float(value)
        if summary:
            out[str(row["name"])] = summary
        else:
            print(f"compare.py: warning: reference row '{row['name']}' in {path} has no values "
                  f"(fill it from the paper); skipped", file=sys.stderr)
    return out
