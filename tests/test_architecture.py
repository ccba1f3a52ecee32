"""The package's shape holds: the import rule between its folders, thin entry points, short
functions; and what users saved before the package moved into folders still loads."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, TINY, run_cli
from tests.helpers.training import tiny_overrides

PIPELINE = REPO / "pipeline"
ENTRY_POINTS = ("train.py", "shard.py", "evaluate.py", "inpaint.py", "compare.py",
                "log_model.py", "launch.py")
OLD = REPO / "tests" / "data"


def pipeline_imports(path: Path) -> set[str]:
    """Every pipeline.* module the file imports (at any depth: lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pipeline import x`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pipeline"))
    return found


def folder(module: str) -> str:
    """pipeline.data.stream -> data; a top-level module names itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def modules(where: Path) -> list[Path]:
    return sorted(where.rglob("*.py"))


@pytest.mark.parametrize("package, forbidden", [
    ("data", {"models", "training", "evaluation", "tracking", "cluster"}),
    ("models", {"data", "training", "evaluation", "tracking", "cluster", "config"}),
])
def test_lower_folders_import_nothing_above_them(package, forbidden):
    offenders = {f"{p.relative_to(REPO)} imports {m}" for p in modules(PIPELINE / package)
                 for m in pipeline_imports(p) if folder(m) in forbidden}
    assert not offenders, sorted(offenders)


def test_only_the_trainer_and_the_entry_points_import_tracking():
    allowed = {PIPELINE / "training" / "trainer.py", PIPELINE / "logged_model.py",
               *(PIPELINE / e for e in ENTRY_POINTS)}
    offenders = [str(p.relative_to(REPO)) for p in modules(PIPELINE)
                 if "tracking" not in p.relative_to(PIPELINE).parts and p not in allowed
                 and any(folder(m) == "tracking" for m in pipeline_imports(p))]
    assert not offenders


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_an_entry_point_is_its_command_line_and_nothing_else(name):
    """argparse and main: no classes, no public functions other code could import."""
    tree = ast.parse((PIPELINE / name).read_text())
    defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert "main" in defined
    assert not any(isinstance(n, ast.ClassDef) for n in tree.body)
    public = {d for d in defined if not d.startswith("_")}
    assert public <= {"main", "parse_args", "build_parser"}, defined


def test_no_library_module_imports_an_entry_point():
    entry = {f"pipeline.{Path(e).stem}" for e in ENTRY_POINTS}
    offenders = [f"{p.relative_to(REPO)} imports {m}"
                 for where in (PIPELINE, REPO / "ops", REPO / "tests") for p in modules(where)
                 for m in pipeline_imports(p) & entry]
    assert not offenders


def test_no_function_is_longer_than_sixty_lines():
    long = [f"{p.relative_to(REPO)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in modules(PIPELINE) for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 60]
    assert not long


def test_a_model_logged_before_the_move_loads_and_inpaints_as_the_library_does():
    """MLflow unpickles a logged model's wrapper by its import path from back then."""
    import mlflow
    import torch

    from pipeline.data.decode import batch_from_arrays, uint8_images
    from pipeline.evaluation.inference import load_generators, model_fill

    model = mlflow.pyfunc.load_model(str(OLD / "old_logged_model"))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    hole = np.zeros((2, 32, 32), bool)
    hole[:, 8:20, 10:24] = True
    out = model.predict({"image": image, "mask": hole.astype(np.uint8)})
    _, g1, g2 = load_generators(OLD / "old_logged_model" / "artifacts" / "checkpoint")
    with torch.no_grad():
        expected = np.stack(uint8_images(model_fill(g1, g2)(batch_from_arrays(image, hole))))
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[~hole], image[~hole])  # known pixels kept


@pytest.mark.slow  # two training steps as a process
def test_a_checkpoint_saved_before_the_move_resumes(sample_shards, tmp_path):
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    shutil.copytree(OLD / "old_checkpoint" / "checkpoint-00000002", run / "checkpoint-00000002")
    saved = run / "checkpoint-00000002" / "config.yaml"  # its model, whatever today's defaults
    run_cli("train.py", TINY, saved, *tiny_overrides(sample_shards, tmp_path),
            "tracking.log_model=false", "train.resume=latest", "train.steps=4", check=True)
    assert (run / "checkpoint-00000004" / "meta.json").is_file()
