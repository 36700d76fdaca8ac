"""Every shipped recipe, in recipes/ and its subfolders, is one the C++ recipe reader accepts (the
top-level ones are also run end to end by test_quantize_pipeline), named as its file is, and with
the layer preset of the model family its folder is for."""
import pathlib

import pytest

loraq = pytest.importorskip("loraq", reason="the loraq Python package is not installed (scripts/test.sh installs it)")
ROOT = pathlib.Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
# The folder a recipe lives in says which models it is for.
PRESET = {"recipes": "pixart-sigma", "fashion-dit": "pixart-sigma", "flux": "flux", "sana": "sana"}


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT / "recipes")) for p in RECIPES])
def test_recipe_loads(path):
    recipe = loraq.load_recipe(path)
    folder = path.parent.name
    assert recipe["layers"]["preset"] == PRESET[folder]
    assert recipe["name"] == (f"{path.stem}-{folder}" if folder in ("flux", "sana") else path.stem)
