"""ops/bench/cost.py: GPU-hours of a schedule from a step benchmark's img/s."""
from __future__ import annotations

import json

import pytest

from tests.helpers import REPO, run_cli

COST = REPO / "ops" / "bench" / "cost.py"


@pytest.fixture
def step_json(tmp_path):
    rows = [{"stage": "edge", "variant": "dina-flex", "img_per_s": 40.0},
            {"stage": "edge", "variant": "no-attention", "img_per_s": 400.0},  # not the paper's
            {"stage": "texture", "variant": "dina-flex", "img_per_s": 10.0},
            {"stage": "texture", "variant": "dina-natten", "img_per_s": 20.0}]
    path = tmp_path / "step.json"
    path.write_text(json.dumps({"device": "H200", "preset": "paper", "results": rows}))
    return path


def test_each_stage_is_priced_by_its_fastest_dina_variant(step_json, tmp_path):
    out = tmp_path / "cost.json"
    run_cli(COST, "--step-json", step_json, "--json", out, "--gpus", 2, "--iterations",
            "edge=3600", "--iterations", "edge-texture=7200", "--iterations", "joint=720",
            check=True)
    cost = json.loads(out.read_text())["stages"]
    assert cost["edge"]["gpu_hours"] == pytest.approx(3600 * 4 / 40 / 3600)  # 0.1
    assert cost["edge-texture"]["gpu_hours"] == pytest.approx(7200 * 4 / 20 / 3600)  # natten's
    # no joint row: an edge step and a texture step back to back, 1 / (1/40 + 1/20) img/s
    assert cost["joint"]["img_per_s"] == pytest.approx(40 / 3)
    assert cost["joint"]["wall_hours"] == pytest.approx(cost["joint"]["gpu_hours"] / 2)


@pytest.mark.parametrize("args, needle", [
    (["--iterations", "paint=5"], "--iterations paint=5"),
    (["--variant", "dina-nope"], "no edge row for variant dina-nope"),
])
def test_bad_input_is_one_line(step_json, args, needle):
    out = run_cli(COST, "--step-json", step_json, "--json", step_json.parent / "c.json", *args)
    assert out.returncode == 2 and needle in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
