"""Compare evaluation runs from MLflow in the paper's Table 1 layout, plus a plot.

    python pipeline/compare.py RUN_ID [RUN_ID ...] --out OUT_DIR
    python pipeline/compare.py --experiment dina-inpaint [--filter "params.method = 'model'"] \
        [--reference configs/reference/paper_paris.yaml] --out OUT_DIR [--log-run]

Reads the per-bucket metrics psnr/<bucket> and ssim/<bucket> that pipeline/evaluate.py logs.
Without run ids it takes every FINISHED run tagged dina.kind=evaluation in the experiment(s),
narrowed by --filter (MLflow search syntax). Writes OUT_DIR/table.md and table.csv (rows:
metric x run, columns: buckets, best per column marked) and plot.png (PSNR and SSIM against the
hole ratio, one line per run; reference rows dashed). --log-run stores the three files as the
artifacts of a new comparison run.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path
from typing import Optional

import yaml

from pipeline import exit_codes
from pipeline.masks import BUCKETS
from pipeline.tracking import DEFAULT_EXPERIMENT, default_uri, experiment_id
from pipeline.metrics import (METRICS, OVERALL, best_per_column, bucket_columns, bucket_table,
                              summary_from_flat, table_rows)

EVALUATION_FILTER = "tags.`dina.kind` = 'evaluation' and attributes.status = 'FINISHED'"


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


def find_runs(client, run_ids: list[str], experiments: list[str], filter_string: Optional[str]):
    """The runs to compare: the given ids, else finished evaluation runs of the experiments."""
    from mlflow.exceptions import MlflowException

    if run_ids:
        runs = []
        for run_id in run_ids:
            try:
                runs.append(client.get_run(run_id))
            except MlflowException as err:
                raise CompareError(f"run '{run_id}' not found: {err.message}") from None
        return runs
    ids = []
    for name in experiments:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise CompareError(f"experiment '{name}' not found")
        ids.append(found.experiment_id)
    query = EVALUATION_FILTER + (f" and {filter_string}" if filter_string else "")
    try:
        runs = client.search_runs(ids, filter_string=query, order_by=["attributes.start_time ASC"])
    except MlflowException as err:
        raise CompareError(f"bad --filter '{filter_string}': {err.message}") from None
    if not runs:
        raise CompareError(f"no finished evaluation runs in experiment(s) "
                           f"{', '.join(experiments)} match: {query}")
    return runs


def run_summaries(runs) -> tuple[dict[str, dict], list]:
    """({row label: summary}, the runs in it); the label is the run name, with a short id where
    names repeat. A run without per-bucket metrics (a crashed or unrelated run) is skipped with
    a warning; none with metrics at all is an error."""
    names = [r.info.run_name or r.info.run_id for r in runs]
    out, used = {}, []
    for run, name in zip(runs, names):
        summary = summary_from_flat(run.data.metrics)
        if not any(c != OVERALL for c in summary):
            print(f"compare.py: warning: run {run.info.run_id} ('{name}') has no psnr/<bucket> "
                  f"or ssim/<bucket> metrics; left out of the table", file=sys.stderr)
            continue
        label = f"{name} ({run.info.run_id[:8]})" if names.count(name) > 1 else name
        out[label] = summary
        used.append(run)
    if not out:
        raise CompareError(f"none of the {len(runs)} run(s) has psnr/<bucket> or ssim/<bucket> "
                           f"metrics: is it an evaluation run?")
    return out, used


def write_csv(runs: dict[str, dict], path: Path) -> None:
    rows = table_rows(runs)
    best = best_per_column(rows)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        columns = bucket_columns()
        writer.writerow(["metric", "run", *columns, "best_in"])
        for metric, run, values in rows:
            best_in = [columns[j] for j, v in enumerate(values) if v is not None
                       and best.get((metric, j)) == v]
            writer.writerow([metric, run, *["" if v is None else repr(v) for v in values],
                             " ".join(best_in)])


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


def log_comparison(client, experiment: str, out: Path, runs) -> str:
    run = client.create_run(experiment_id(client, experiment), run_name="comparison", tags={
        "dina.kind": "comparison", "dina.compared_runs": " ".join(r.info.run_id for r in runs)})
    for name in ("table.md", "table.csv", "plot.png"):
        client.log_artifact(run.info.run_id, str(out / name))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Compare evaluation runs from MLflow: the paper's PSNR/SSIM per hole-ratio "
                    "table (Markdown + CSV, best per column marked) and a plot.")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="runs to compare (default: all "
                   "finished evaluation runs of --experiment)")
    p.add_argument("--experiment", action="append", help="MLflow experiment name (repeatable; "
                   "default dina-inpaint)")
    p.add_argument("--filter", help="extra MLflow search filter, e.g. \"params.method = 'model'\"")
    p.add_argument("--reference", action="append", default=[],
                   help="YAML of published numbers added as rows (configs/reference/*.yaml)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tracking-uri",
                   help="MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    p.add_argument("--log-run", action="store_true",
                   help="log the table and plot as artifacts of a new comparison run")
    args = p.parse_args(argv)
    if args.run_ids and (args.experiment or args.filter):
        p.error("give run ids or --experiment/--filter, not both")
    args.experiment = args.experiment or [DEFAULT_EXPERIMENT]
    return args


def check_out(out: Path) -> None:
    """--out must be, or become, a writable directory: checked before the runs are read."""
    folder = out
    while not (folder.exists() or folder.is_symlink()):
        folder = folder.parent
    if not folder.is_dir():
        what = "is a file" if folder == out else f"is below the file {folder}"
        raise CompareError(f"--out {out} {what}; give a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass  # a real probe: permission bits say nothing for root or read-only mounts
    except OSError as err:
        raise CompareError(f"--out {out}: cannot write there: {err.strerror or err}") from None


def main(argv=None) -> None:
    args = parse_args(argv)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import ServerUnreachable, wait_for_server

    uri = args.tracking_uri or default_uri()
    client = MlflowClient(uri)
    from pipeline.output_lock import OutputDirBusy, OutputLock

    try:
        check_out(Path(args.out))
        # one comparison per --out: two would interleave their table.md, table.csv and plot
        OutputLock(Path(args.out), what="--out").acquire()
        wait_for_server(uri, "compare.py")
        references = {}
        for path in args.reference:
            references.update(load_reference(path))
        summaries, runs = run_summaries(find_runs(client, args.run_ids, args.experiment,
                                                  args.filter))
        rows = {**summaries, **references}
    except (CompareError, ServerUnreachable, OutputDirBusy) as err:
        exit_codes.refuse(f"compare.py: error: {err}")
    except MlflowException as err:
        sys.exit(f"compare.py: error: cannot read runs from MLflow at {uri}: {err.message}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = bucket_table(rows, mark_best=True)
    (out / "table.md").write_text(table)
    write_csv(rows, out / "table.csv")
    write_plot(rows, set(references), out / "plot.png")
    print(table)
    print(f"{len(runs)} runs compared; table.md, table.csv, plot.png in {out}")
    if args.log_run:
        run_id = log_comparison(client, args.experiment[0], out, runs)
        print(f"MLflow comparison run {run_id}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        print("compare.py: interrupted (Ctrl-C); "
              "--out may hold part of the new table", file=sys.stderr)
        sys.exit(130)
