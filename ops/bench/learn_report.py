"""The learning benchmark's report (ops/bench/learn.py): what each trained stage adds over its
start, the targets it meets, and the files that show it: table.md, photos.md, learn.json,
curve.png (held-out PSNR per bucket against step), gain.png (each trained row minus its start,
per bucket) and grid.png (ground truth, input, each method)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.eval_pairs import eval_pairs
from pipeline.data.masks import BUCKETS, bucket_name
from pipeline.evaluation.metrics import OVERALL
from pipeline.evaluation.scoring import image_filename
from pipeline.evaluation.tables import bucket_table

COLUMNS = (*(bucket_name(i) for i in range(len(BUCKETS))), OVERALL)
GRID_PER_BUCKET = 2
PSNR_CAP = 60.0  # dB; a pair filled exactly (a flat hole) would put +inf in a photo's mean
REPORT_FILES = ("learn.json", "table.md", "photos.md", "curve.png", "gain.png", "grid.png")
# the decomposition: row -> (method suffix, minus method suffix), PSNR per bucket
GAIN_ROWS = {"true_edges-start": ("-true", "-start"), "no_edges-start": ("-none", "-start"),
             "whole_model-start": ("", "-start"), "texture_whole-start": ("-texture", "-start"),
             "true_edges-no_edges": ("-true", "-none"),
             "ema-raw": ("", "-raw"), "edge_texture-texture": ("", "-texture")}
NO_DINA = "-no-dina"  # a recipe named <r>-no-dina is <r> without attention
GAIN_LABELS = {"true_edges-start": "G2 on true edges - untrained G2",
               "no_edges-start": "G2 on no edges - untrained G2",
               "whole_model-start": "whole model (G1's edges) - untrained G2",
               "texture_whole-start": "whole model before edge-texture - untrained G2",
               "true_edges-no_edges": "G2 on true edges - G2 on no edges",
               "ema-raw": "EMA - raw weights",
               "edge_texture-texture": "whole model: after edge-texture - after texture",
               "dina-no_dina": "DiNA - no attention (whole model)",
               "dina-no_dina_true_edges": "DiNA - no attention (G2 on true edges)"}
PLOTTED_GAINS = ("true_edges-start", "no_edges-start", "texture_whole-start",
                 "whole_model-start")


def difference(results: dict, a: str, b: str) -> dict[str, float]:
    return {c: results[a][c]["psnr"] - results[b][c]["psnr"] for c in COLUMNS}


def gains(results: dict, recipes: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """recipe -> row -> column -> PSNR difference in dB (GAIN_ROWS), and the DiNA share (the
    whole model minus its twin without attention) where the twin was trained."""
    table = {}
    for recipe in recipes:
        table[recipe] = {row: difference(results, recipe + a, recipe + b)
                         for row, (a, b) in GAIN_ROWS.items()}
        if recipe + NO_DINA in recipes:
            table[recipe]["dina-no_dina"] = difference(results, recipe, recipe + NO_DINA)
            table[recipe]["dina-no_dina_true_edges"] = difference(
                results, recipe + "-true", recipe + NO_DINA + "-true")
    return table


def targets(report: dict) -> dict[str, dict]:
    """Per recipe, each target of the learning benchmark with its measured value and verdict."""
    results, verdicts = report["results"], {}
    buckets = COLUMNS[:-1]
    for recipe in report["recipes"]:
        gain, stage = report["gains"][recipe], report["stages"][recipe]
        true_start, whole_start = gain["true_edges-start"], gain["whole_model-start"]
        d1 = (stage["d1_real_acc"] + stage["d1_fake_acc"]) / 2
        d2 = (stage["d2_real_acc"] + stage["d2_fake_acc"]) / 2
        f1, f1_base = stage["edge_f1"], stage["pull_push_canny/edge_f1"]
        verdicts[recipe] = {
            "G2 true edges >= start + 1.0 dB overall": (true_start[OVERALL],
                                                        true_start[OVERALL] >= 1.0),
            "G2 true edges >= start + 0.5 dB, every bucket from 10 %": (
                min(true_start[b] for b in buckets[1:]),
                all(true_start[b] >= 0.5 for b in buckets[1:])),
            "true edges >= no edges + 0.5 dB overall": (
                gain["true_edges-no_edges"][OVERALL],
                gain["true_edges-no_edges"][OVERALL] >= 0.5),
            "G1 hole-edge F1 >= 0.2 and >= 2x no-learning": (
                f1, f1 >= 0.2 and f1 >= 2 * f1_base),
            "whole model >= start + 0.3 dB overall": (whole_start[OVERALL],
                                                      whole_start[OVERALL] >= 0.3),
            "whole model above start, every bucket": (min(whole_start[b] for b in buckets),
                                                      all(whole_start[b] > 0 for b in buckets)),
            "whole model beats Telea, every bucket": (
                min(results[recipe][b]["psnr"] - results["telea"][b]["psnr"] for b in buckets),
                all(results[recipe][b]["psnr"] > results["telea"][b]["psnr"] for b in buckets)),
            "whole model beats mean fill, every bucket": (
                min(results[recipe][b]["psnr"] - results["mean"][b]["psnr"] for b in buckets),
                all(results[recipe][b]["psnr"] > results["mean"][b]["psnr"] for b in buckets)),
            "D1 accuracy >= 60 % at the end": (d1, d1 >= 0.6),
            "D2 accuracy >= 60 % at the end": (d2, d2 >= 0.6),
            "EMA at least raw (overall PSNR)": (gain["ema-raw"][OVERALL],
                                                gain["ema-raw"][OVERALL] >= 0)}
    return verdicts


def gain_table(report: dict) -> str:
    header = ["recipe", "PSNR gain (dB)", *(c if c == OVERALL else f"{c} %" for c in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for recipe, rows in report["gains"].items():
        lines += [f"| {recipe} | {GAIN_LABELS[row]} | "
                  + " | ".join(f"{v:+.2f}" for v in values.values()) + " |"
                  for row, values in rows.items()]
    return "\n".join(lines) + "\n"


def stage_table(report: dict) -> str:
    """G1's edges in the held-out holes beside the no-learning edges, and the discriminators'
    accuracy at the end of their stages."""
    keys = ("edge_precision", "edge_recall", "edge_f1")
    header = ["recipe", "G1 P / R / F1", "no-learning P / R / F1", "D1 real / fake acc",
              "D2 real / fake acc"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for recipe, s in report["stages"].items():
        lines.append(
            f"| {recipe} | " + " / ".join(f"{s[k]:.3f}" for k in keys) + " | "
            + " / ".join(f"{s['pull_push_canny/' + k]:.3f}" for k in keys)
            + f" | {s['d1_real_acc']:.2f} / {s['d1_fake_acc']:.2f}"
            + f" | {s['d2_real_acc']:.2f} / {s['d2_fake_acc']:.2f} |")
    return "\n".join(lines) + "\n"


def target_lines(report: dict) -> str:
    return "\n".join(f"{recipe}: {name}: {value:+.3f} -> {'met' if met else 'MISSED'}"
                     for recipe, verdicts in report["targets"].items()
                     for name, (value, met) in verdicts.items()) + "\n"


def write_report(report: dict, out: Path, methods: list[str]) -> str:
    """Writes every report file but the grid; returns table.md's text."""
    text = "\n".join([
        "## Held-out scores per hole bucket\n",
        bucket_table({m: report["results"][m] for m in methods}),
        "## What each stage adds over its start (each trained row minus the same G2 untrained)\n",
        gain_table(report), "## G1's edges and the discriminators\n", stage_table(report),
        "## Targets\n", target_lines(report)])
    (out / "table.md").write_text(text)
    (out / "photos.md").write_text(photo_table(report["photos"], methods, report["recipes"]))
    (out / "learn.json").write_text(json.dumps(report, indent=1))
    plot_curves(report["curves"], report["results"], out / "curve.png")
    plot_gains(report["gains"], out / "gain.png")
    return text


def photo_of(image_key: str) -> str:
    """The source photo of a held-out crop: crops are written <photo>_<NNNN>.png, and the
    shard key turns the dot into an underscore."""
    return image_key.rsplit("_", 2)[0]


def per_photo(out: Path, methods: list[str]) -> dict[str, dict[str, float]]:
    """photo -> method -> mean PSNR over the photo's held-out pairs (every crop, every bucket),
    from each evaluation's per-pair scores."""
    scores: dict[str, dict[str, list[float]]] = {}
    for method in methods:
        for pair in json.loads((out / "eval" / method / "pairs.json").read_text()):
            scores.setdefault(photo_of(pair["image_key"]), {}).setdefault(
                method, []).append(min(pair["psnr"], PSNR_CAP))
    return {photo: {m: float(np.mean(v)) for m, v in by_method.items()}
            for photo, by_method in sorted(scores.items())}


def photo_table(photos: dict[str, dict[str, float]], methods: list[str],
                recipes: list[str]) -> str:
    """Markdown: one row per held-out photo; then per recipe, the photos where it beats its
    start and where it beats mean fill."""
    lines = ["| photo | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    lines += [f"| {photo} | " + " | ".join(f"{row[m]:.2f}" for m in methods) + " |"
              for photo, row in photos.items()]
    lines.append("")
    for recipe in recipes:
        for other, what in ((recipe + "-start", "its start"), ("mean", "mean fill")):
            wins = sum(row[recipe] > row[other] for row in photos.values())
            lines.append(f"{recipe} beats {what} on {wins} of {len(photos)} held-out photos "
                         f"(mean PSNR over each photo's pairs)")
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(curves: dict, results: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(BUCKETS)))
    styles = ["-", "--", "-.", ":"]
    for r, (recipe, buckets) in enumerate(curves.items()):
        for colour, (bucket, points) in zip(colours, buckets.items()):
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, styles[r % len(styles)], color=colour,
                        label=f"{recipe} {bucket} %")
    for colour, bucket in zip(colours, curves[next(iter(curves))]):
        ax.axhline(results["telea"][bucket]["psnr"], color=colour, lw=0.6, alpha=0.5)
    ax.set_xlabel("texture step")
    ax.set_ylabel("held-out PSNR (dB)")
    ax.set_title("training validation per hole bucket (thin lines: Telea)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gains(table: dict, path: Path) -> None:
    """One panel per recipe: bars per bucket for G2 on true edges, on none, and the whole model
    before and after the edge-texture stage, each minus the same G2 untrained; above zero is what
    training added."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(table), figsize=(5 * len(table), 4), squeeze=False,
                             sharey=True)
    x, width = np.arange(len(COLUMNS)), 0.8 / len(PLOTTED_GAINS)
    offsets = (np.arange(len(PLOTTED_GAINS)) - (len(PLOTTED_GAINS) - 1) / 2) * width
    for ax, (recipe, rows) in zip(axes[0], table.items()):
        for offset, row in zip(offsets, PLOTTED_GAINS):
            ax.bar(x + offset, list(rows[row].values()), width,
                   label=GAIN_LABELS[row])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, [c if c == OVERALL else f"{c} %" for c in COLUMNS], fontsize=7)
        ax.set_title(recipe)
    axes[0][0].set_ylabel("held-out PSNR minus untrained G2 (dB)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sample_grid(out: Path, size: int, methods: list[str], path: Path) -> None:
    """Rows: held-out crops, GRID_PER_BUCKET per bucket; columns: truth, input, each method."""
    pairs = eval_pairs(str(out / "shards" / "test"), str(out / "shards" / "test_masks"),
                       size, per_bucket=GRID_PER_BUCKET)
    rows = []
    for pair in pairs:
        rgb, _ = pair["load_image"](size)
        hole = pair["load_mask"](size)[..., None] > 0.5
        name = image_filename(pair["image_key"], pair["bucket"])
        outputs = [np.asarray(Image.open(out / "eval" / m / "images" / name).convert("RGB"))
                   for m in methods]
        rows.append(np.concatenate([rgb, np.where(hole, 255, rgb).astype(np.uint8), *outputs],
                                   axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).resize(
        (rows[0].shape[1] * 2, len(rows) * size * 2), Image.NEAREST).save(path)
