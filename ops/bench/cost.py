"""What a full training schedule costs, in GPU-hours, from a measured step benchmark.

    python ops/bench/step.py --preset paper --device cuda --precision bf16  # runs/bench/step.json
    python ops/bench/cost.py [--step-json runs/bench/step.json] [--batch 4] [--gpus 8]
                             [--iterations edge=350000 --iterations edge-texture=350000 ...]

Each stage's images (iterations x batch) divided by the step benchmark's img/s for that stage
(its fastest DiNA variant, the paper's model, unless --variant names another): edge-texture trains G2 as texture
does, with a frozen G1 forward on top, so it is priced as texture; joint as edge plus texture
when the benchmark measured no joint row. Wall-clock hours on --gpus assume DDP scales linearly,
which no real cluster quite does: read them as a floor. Writes the estimate as JSON beside the
printout.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.exit_codes import refuse

REPO = Path(__file__).resolve().parents[2]
# EdgeConnect-style reproductions: each stage on its own, then the two end to end
SCHEDULE = {"edge": 350_000, "edge-texture": 350_000, "joint": 150_000}
PRICED_AS = {"edge": ("edge",), "texture": ("texture",), "edge-texture": ("texture",),
             "joint": ("edge", "texture")}


def measured_speed(results: list[dict], stage: str, variant: str | None) -> float:
    """img/s of a stage: its own row, or (joint) the edge and texture rows back to back."""
    def rows(name: str) -> list[dict]:
        return [r for r in results if r["stage"] == name
                and (r["variant"] == variant or variant is None and r["variant"].startswith("dina"))]

    if rows(stage):
        return max(r["img_per_s"] for r in rows(stage))
    parts = PRICED_AS[stage]
    missing = [p for p in parts if not rows(p)]
    if missing:
        refuse(f"cost.py: error: the step benchmark has no {missing[0]} row"
                         f"{f' for variant {variant}' if variant else ''}; run ops/bench/step.py "
                         f"with --stages {','.join(parts)}")
    return 1 / sum(1 / max(r["img_per_s"] for r in rows(p)) for p in parts)


def estimate(report: dict, schedule: dict[str, int], batch: int, gpus: int,
             variant: str | None) -> dict:
    stages = {}
    for stage, iterations in schedule.items():
        speed = measured_speed(report["results"], stage, variant)
        gpu_hours = iterations * batch / speed / 3600
        stages[stage] = {"iterations": iterations, "images": iterations * batch,
                         "img_per_s": speed, "gpu_hours": gpu_hours,
                         "wall_hours": gpu_hours / gpus}
    total = sum(s["gpu_hours"] for s in stages.values())
    return {"device": report.get("device"), "preset": report.get("preset"), "batch": batch,
            "gpus": gpus, "variant": variant, "stages": stages, "gpu_hours": total,
            "wall_hours": total / gpus}


def schedule_of(specs: list[str]) -> dict[str, int]:
    if not specs:
        return dict(SCHEDULE)
    schedule = {}
    for spec in specs:
        stage, _, count = spec.partition("=")
        if stage not in PRICED_AS or not count.isdigit() or int(count) < 1:
            refuse(f"cost.py: error: --iterations {spec}: expected STAGE=N with STAGE "
                             f"one of {', '.join(PRICED_AS)} and N a positive count")
        schedule[stage] = int(count)
    return schedule


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--step-json", type=Path, default=REPO / "runs/bench/step.json")
    p.add_argument("--iterations", action="append", default=[], metavar="STAGE=N",
                   help="iterations of a stage (repeatable; default "
                        + ", ".join(f"{k}={v}" for k, v in SCHEDULE.items()) + ")")
    p.add_argument("--batch", type=int, default=4, help="images per iteration (the paper's 4)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs training together (DDP)")
    p.add_argument("--variant", help="a step-benchmark variant (default: the fastest DiNA one)")
    p.add_argument("--json", type=Path, default=REPO / "runs/bench/cost.json")
    args = p.parse_args()
    if not args.step_json.is_file():
        refuse(f"cost.py: error: {args.step_json} not found; run ops/bench/step.py "
                         f"first (on the GPU you will train on)")
    if args.batch < 1 or args.gpus < 1:
        refuse("cost.py: error: --batch and --gpus must be >= 1")
    result = estimate(json.loads(args.step_json.read_text()), schedule_of(args.iterations),
                      args.batch, args.gpus, args.variant)
    print(f"measured on {result['device']} (step benchmark preset {result['preset']}), "
          f"batch {args.batch}, {args.gpus} GPU(s)")
    for stage, s in result["stages"].items():
        print(f"  {stage:13s} {s['iterations']:>9,d} it  {s['img_per_s']:8.1f} img/s  "
              f"{s['gpu_hours']:8.1f} GPU-h  {s['wall_hours']:7.1f} h")
    print(f"  {'total':13s} {'':>12s} {'':>14s} {result['gpu_hours']:8.1f} GPU-h  "
          f"{result['wall_hours']:7.1f} h (linear scaling: a floor)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
