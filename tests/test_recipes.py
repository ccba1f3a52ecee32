"""The two named recipes: the paper's is exactly the schema's defaults, and the project's differs
from it in a listed set of keys, so no key slips into either unnoticed."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import flatten, load_config
from tests.helpers import REPO

RECIPES = REPO / "configs" / "recipe"
# every key where the project's recipe departs from the paper's; a change here is a decision
PROJECT_CHANGES = {"model.hole_mask_channel", "model.coarse_fill", "model.edge_fill",
                   "loss.edge_bce", "optim.g_lr", "train.ema"}


def differing(a: dict, b: dict) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_the_paper_recipe_is_the_schema_defaults():
    assert differing(flatten(load_config()), flatten(load_config([str(RECIPES / "paper.yaml")]))
                     ) == set()


def test_the_project_recipe_differs_from_the_papers_in_the_listed_keys_only():
    paper = flatten(load_config([str(RECIPES / "paper.yaml")]))
    project = flatten(load_config([str(RECIPES / "project.yaml")]))
    assert differing(paper, project) == PROJECT_CHANGES


def test_the_texture_layer_changes_the_listed_keys_only():
    """A key added to the layer, or a default that moves under it, shows up here."""
    project = flatten(load_config([str(RECIPES / "project.yaml")]))
    layered = flatten(load_config([str(RECIPES / "project.yaml"),
                                   str(RECIPES / "project-texture.yaml")]))
    assert differing(project, layered) == {"loss.l1_known_pixels", "loss.perceptual",
                                           "loss.style", "loss.adv_texture"}


def keys_set_by(path: Path) -> set[str]:
    """Dotted keys the file sets (values unresolved: an interpolation may point elsewhere)."""
    import yaml

    def walk(node: dict, prefix: str = "") -> set[str]:
        return {k for key, value in node.items() for k in (
            walk(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key})}

    return walk(yaml.safe_load(path.read_text()))


def test_a_recipe_holds_method_keys_only_so_presets_combine_in_either_order():
    presets = [*(REPO / "configs" / "data").glob("*.yaml"),
               *(REPO / "configs" / "experiment" / n for n in ("demo.yaml", "learn.yaml"))]
    for recipe in RECIPES.glob("*.yaml"):
        for preset in presets:
            assert not keys_set_by(recipe) & keys_set_by(preset), (recipe.name, preset.name)
