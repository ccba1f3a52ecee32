"""Compare evaluation runs from MLflow in the paper's Table 1 layout, plus a plot.

    python pipeline/compare.py RUN_ID [RUN_ID ...] --out OUT_DIR
    python pipeline/compare.py --experiment dina-inpaint [--filter "params.method = 'model'"] \
        [--reference configs/reference/paper_paris.yaml] --out OUT_DIR [--log-run]

Reads the per-bucket metrics that pipeline/evaluate.py logs (psnr/<bucket>, ssim/<bucket>, l1,
EdgeConnect's ec_psnr / ec_ssim / ec_mae, lpips, fid with fid_n); every row names its protocol,
and rows from --reference files say "as published".
Without run ids it takes every FINISHED run tagged dina.kind=evaluation in the experiment(s),
narrowed by --filter (MLflow search syntax). Writes OUT_DIR/table.md and table.csv (rows:
metric x run, columns: buckets, best per column marked) and plot.png (PSNR and SSIM against the
hole ratio, one line per run; reference rows dashed). --log-run stores the three files as the
artifacts of a new comparison run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import exit_codes
from pipeline.evaluation.output_folder import OutputFolderError, check_out
from pipeline.evaluation.plots import write_csv, write_plot
from pipeline.evaluation.reference import CompareError, load_reference
from pipeline.evaluation.tables import bucket_table
from pipeline.tracking.comparison import find_runs, log_comparison, run_summaries
from pipeline.tracking.runs import DEFAULT_EXPERIMENT, default_uri
from pipeline.tracking.server import ServerUnreachable, wait_for_server
from pipeline.training.output_lock import OutputDirBusy, OutputLock


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


def main(argv=None) -> None:
    args = parse_args(argv)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = args.tracking_uri or default_uri()
    client = MlflowClient(uri)
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
    except (CompareError, OutputFolderError, OutputDirBusy, ServerUnreachable) as err:
        exit_codes.refuse(f"compare.py: error: {err}")
    except MlflowException as err:
        sys.exit(f"compare.py: error: cannot read runs from MLflow at {uri}: {err.message}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = bucket_table(rows, mark_best=True, published=references)
    (out / "table.md").write_text(table)
    write_csv(rows, out / "table.csv", published=references)
    write_plot(rows, set(references), out / "plot.png")
    print(table)
    print(f"{len(runs)} runs compared; table.md, table.csv, plot.png in {out}")
    if args.log_run:
        run_id = log_comparison(client, args.experiment[0], out, runs)
        print(f"MLflow comparison run {run_id}")


if __name__ == "__main__":
    exit_codes.run_interruptible(main, "compare.py", "--out may hold part of the new table")
