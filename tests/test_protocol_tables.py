"""The comparison table with every metric: each row names its protocol, papers' rows say "as
published", lower-is-better metrics mark their least value, FID cells carry their image count,
and MLflow's flat names round-trip."""
from __future__ import annotations

from pipeline.evaluation.tables import PUBLISHED, bucket_table, flat_metrics, summary_from_flat

RUNS = {
    "model": {"0-10": {"psnr": 30.0, "ssim": 0.95, "l1": 0.010, "ec_psnr": 33.0, "ec_ssim": 0.97,
                       "ec_mae": 0.012, "lpips": 0.05, "fid": 12.5, "fid_n": 100, "n": 100},
              "overall": {"psnr": 30.0, "ssim": 0.95, "l1": 0.010, "ec_psnr": 33.0,
                          "ec_ssim": 0.97, "ec_mae": 0.012, "lpips": 0.05, "fid": 10.0,
                          "fid_n": 600, "n": 600}},
    "telea": {"0-10": {"psnr": 29.0, "ssim": 0.96, "l1": 0.020, "ec_psnr": 32.0, "ec_ssim": 0.96,
                       "ec_mae": 0.010, "lpips": 0.04, "fid": 20.0, "fid_n": 100, "n": 100}},
    "EC (paper)": {"0-10": {"psnr": 35.8, "ssim": 0.973}},
}


def rows_of(table: str) -> dict[tuple[str, str], list[str]]:
    return {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in
                                                            line.split("|")[3:-1]]
            for line in table.splitlines()[2:]}


def test_every_row_names_its_protocol_and_best_follows_direction():
    rows = rows_of(bucket_table(RUNS, mark_best=True, published={"EC (paper)"}))
    # a run's row only for the metrics it has: the paper's only PSNR and SSIM
    assert [k for k in rows if k[1] == "EC (paper)"] == [("PSNR", "EC (paper)"),
                                                         ("SSIM", "EC (paper)")]
    assert len(rows) == 2 * 8 + 2
    assert rows[("PSNR", "model")][-1] == "ours: RGB, Gaussian 11"
    assert rows[("EC SSIM", "model")][-1] == "EdgeConnect: gray, uniform 51"
    assert rows[("PSNR", "EC (paper)")][-1] == PUBLISHED
    assert rows[("LPIPS", "telea")][0] == "**0.0400**"  # lower is better
    assert rows[("EC MAE", "telea")][0] == "**0.0100**"
    assert rows[("PSNR", "EC (paper)")][0] == "**35.80**"  # higher is better
    assert rows[("FID", "model")][0] == "**12.50** (n=100)"
    assert rows[("FID", "model")][6] == "**10.00** (n=600)"  # the only overall FID
    assert rows[("FID", "telea")][6] == "–"


def test_flat_names_round_trip_without_the_image_count():
    flat = flat_metrics(RUNS["model"])
    assert flat["fid/0-10"] == 12.5 and flat["fid_n/overall"] == 600
    assert flat["ec_ssim/overall"] == 0.97 and "n/0-10" not in flat
    back = summary_from_flat(flat)
    assert back["0-10"] == {k: v for k, v in RUNS["model"]["0-10"].items() if k != "n"}
