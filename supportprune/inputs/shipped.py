"""The shipped recipes (``recipes/*.yaml``) and which one a command uses when none is named."""

from __future__ import annotations

from pathlib import Path

from supportprune.inputs.recipe import load_recipe
from supportprune.inputs.typed_yaml import RecipeError


def recipes_dir() -> Path:
    """Shipped recipes: ``supportprune/recipes`` in an installed wheel, ``recipes/`` in a source checkout."""
    package = Path(__file__).resolve().parent.parent  # supportprune/, this module being in supportprune/inputs/
    packaged = package / "recipes"
    return packaged if packaged.is_dir() else package.parent / "recipes"


def shipped_recipes() -> dict[str, Path]:
    directory = recipes_dir()
    return {path.stem: path for path in sorted(directory.glob("*.yaml"))} if directory.is_dir() else {}


def _scheme(source: str) -> str:
    return source.split(":", 1)[0]


def resolve_recipe(recipe: str | None, model: str, data_source: str | None, trained: bool = False) -> Path:
    """The recipe file to use: an explicit path or shipped name; otherwise the model's own recipe
    (``recipes/<model>.yaml``) for data of its kind (``imagenet:``), else ``pretrained`` when the model starts
    trained (``trained``: weights were given) and ``embedded`` when it trains from scratch on the embedded data."""
    shipped = shipped_recipes()
    if recipe is not None:
        if recipe in shipped:
            return shipped[recipe]
        return Path(recipe)
    embedded_data = data_source in (None, "embedded")
    if not embedded_data and model in shipped and _scheme(load_recipe(shipped[model]).data.source) == _scheme(data_source):
        return shipped[model]
    if trained:
        return shipped["pretrained"]
    if embedded_data:
        return shipped["embedded"]
    raise RecipeError(
        f"no shipped recipe for {model!r} on {data_source}; pass --weights FILE for a trained model (recipe "
        f"'pretrained'), --recipe pretrained if the factory loads its own weights, or --recipe FILE "
        f"(start from `supportprune recipes show pretrained`)"
    )
