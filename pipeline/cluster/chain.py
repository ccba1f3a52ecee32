"""A chain of stages as jobs: each stage's config loaded (so a bad one fails before anything is
submitted), one job per sweep point, and each stage handed the checkpoints of every generator it
needs from the latest earlier stage that trains it.
"""
from __future__ import annotations

import itertools
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.cluster.jobs import REPO, StageJob
from pipeline.config import ConfigError, load_config, merge_config
from pipeline.training.stage_table import CHECKPOINT_KEY, GENERATOR_NAMES, STAGES


def sweep_points(specs: list[str]) -> list[list[str]]:
    """['a=1,2', 'b=x'] -> [['a=1', 'b=x'], ['a=2', 'b=x']] (the product; [[]] for no sweep)."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--sweep '{spec}' is not key=v1,v2,...")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(point) for point in itertools.product(*axes)]


def stage_jobs(stage: str, files: list[str], overrides: list[str], points: list[list[str]],
               from_chain: dict[str, list[str]], processes: int) -> list[StageJob]:
    """One StageJob per sweep point; the config is loaded here so a bad one fails before sbatch.

    from_chain: generator -> the output dir (per sweep point) of the earlier stage training it."""
    sources = [str(REPO / "configs" / "stage" / f"{stage}.yaml"), *files]
    wanted = STAGES[stage]
    jobs = []
    for i, point in enumerate(points):
        extra = [f"{CHECKPOINT_KEY[g]}={from_chain[g][i]}"
                 for g in (*wanted.needs, *wanted.carries) if g in from_chain]
        given = merge_config(sources, [*overrides, *point])
        for g in wanted.needs:
            key = CHECKPOINT_KEY[g]
            if g not in from_chain and not OmegaConf.select(given, key):
                trainers = ", ".join(s.name for s in STAGES.values() if g in s.hands_on)
                raise ConfigError(f"stage {stage} needs {key} (a trained {GENERATOR_NAMES[g]}): "
                                  f"no earlier stage of the chain trains it; put one of "
                                  f"{trainers} before {stage} or set {key}=...")
        cfg = load_config(sources, [*overrides, *point, *extra])
        output_dir = Path(cfg.train.output_dir)
        if point:  # each sweep point writes its own run
            output_dir = output_dir / ("sweep-" + "-".join(p.replace("/", "_") for p in point))
        output_dir = output_dir.resolve()  # the job may start in another directory
        # a requeued job resumes from its own latest checkpoint (a fresh start when none yet)
        extra += [f"train.output_dir={output_dir}", "train.resume=latest"]
        jobs.append(StageJob(stage, sources, [*overrides, *point, *extra], str(output_dir),
                             processes))
    return jobs


def plan_chain(stages: list[str], files: list[str], overrides: list[str],
               points: list[list[str]], processes: int) -> list[tuple[str, list[StageJob]]]:
    """Every stage's jobs, each taking the generators it needs from earlier stages' outputs;
    ConfigError for anything that would fail later, before anything is submitted."""
    plan, from_chain = [], {}
    for stage in stages:
        jobs = stage_jobs(stage, files, overrides, points, from_chain, processes)
        if plan and {j.output_dir for j in plan[-1][1]} & {j.output_dir for j in jobs}:
            raise ConfigError(f"config key 'train.output_dir': stages {plan[-1][0]} and {stage} "
                              "would write to the same directory; keep ${train.stage} in it")
        plan.append((stage, jobs))
        for generator in STAGES[stage].hands_on:
            from_chain[generator] = [job.output_dir for job in jobs]
    return plan
