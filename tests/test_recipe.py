"""Recipes: every shipped one validates; bad ones are named by file and key."""

import pytest
import yaml

from supportprune.inputs.shipped import (
    resolve_recipe,
    shipped_recipes,
)
from supportprune.inputs.typed_yaml import RecipeError
from supportprune.inputs.recipe import (
    Recipe,
    load_recipe,
    recipe_from_dict,
    with_overrides,
)


def test_shipped_recipes_are_the_expected_ones():
    assert set(shipped_recipes()) == {"embedded", "pretrained", "resnet18", "vgg16", "googlenet", "starting-points"}


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_each_shipped_recipe_validates_and_round_trips(name):
    recipe = load_recipe(shipped_recipes()[name])
    assert isinstance(recipe, Recipe) and recipe.description
    assert recipe_from_dict(recipe.to_dict()) == recipe


def test_imagenet_recipes_start_from_pretrained_weights():
    for name in ("resnet18", "vgg16", "googlenet"):
        recipe = load_recipe(shipped_recipes()[name])
        assert recipe.weights == "IMAGENET1K_V1" and recipe.dense.epochs == 0
        assert recipe.data.input_size == 224 and len(recipe.data.mean) == 3
        assert recipe.redense.lr < recipe.sparse.lr


def _write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = _write(tmp_path, "version: 1\nsparse:\n  epochs: 2\n  learning_rate: 0.1\n")
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert str(path) in str(error.value) and "sparse.learning_rate: unknown key" in str(error.value)


def test_wrong_type_names_the_key(tmp_path):
    path = _write(tmp_path, "version: 1\ndense:\n  lr: fast\n")
    with pytest.raises(RecipeError, match=r"bad.yaml: dense.lr: expected a number, got 'fast'"):
        load_recipe(path)
    path = _write(tmp_path, "version: 1\ndata:\n  batch_size: 12.5\n")
    with pytest.raises(RecipeError, match=r"data.batch_size: expected an integer"):
        load_recipe(path)


def test_cross_field_checks(tmp_path):
    path = _write(tmp_path, "version: 1\nsparse:\n  epochs: 2\n  prune_at: [3]\n")
    with pytest.raises(RecipeError, match=r"sparse.prune_at: epochs must lie in 1..2"):
        load_recipe(path)
    path = _write(tmp_path, "version: 1\nsparse:\n  target_macs: 1.5\n")
    with pytest.raises(RecipeError, match=r"sparse.target_macs"):
        load_recipe(path)
    path = _write(tmp_path, "version: 1\ndata:\n  mean: [0.1, 0.2]\n  std: [0.3]\n")
    with pytest.raises(RecipeError, match=r"data: mean and std: need the same length"):
        load_recipe(path)
    path = _write(tmp_path, "version: 2\n")
    with pytest.raises(RecipeError, match=r"version"):
        load_recipe(path)


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match=r"not valid YAML \(line"):
        load_recipe(_write(tmp_path, "version: 1\ndata: [unclosed\n"))
    with pytest.raises(RecipeError, match=r"top level: expected a mapping"):
        load_recipe(_write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "absent.yaml")


def test_overrides_are_validated_again():
    recipe = load_recipe(shipped_recipes()["embedded"])
    changed = with_overrides(recipe, {"sparse.target_macs": 0.5, "data.batch_size": 64, "seed": None})
    assert changed.sparse.target_macs == 0.5 and changed.data.batch_size == 64 and changed.seed == recipe.seed
    with pytest.raises(RecipeError, match=r"command line: sparse.granularity"):
        with_overrides(recipe, {"sparse.granularity": "pixel"})


def test_alternation_epochs_default_to_the_last():
    assert recipe_from_dict({"sparse": {"epochs": 4}}).sparse.alternation_epochs == (4,)
    assert recipe_from_dict({"sparse": {"epochs": 4, "prune_at": [3, 1, 3]}}).sparse.alternation_epochs == (1, 3)


def test_resolve_recipe():
    assert resolve_recipe(None, "resnet18", None).name == "embedded.yaml"
    assert resolve_recipe(None, "vgg16", "imagenet:/data").name == "vgg16.yaml"
    assert resolve_recipe("googlenet", "resnet18", None).name == "googlenet.yaml"
    with pytest.raises(RecipeError, match="no shipped recipe for 'alexnet'.*--recipe pretrained"):
        resolve_recipe(None, "alexnet", "cifar10:/data")
    # A trained model (--weights) is fine-tuned, not trained again: no Dense step, on any data.
    assert resolve_recipe(None, "resnet18", None, trained=True).name == "pretrained.yaml"
    assert resolve_recipe(None, "my.pkg:factory", "folder:/data", trained=True).name == "pretrained.yaml"
    assert resolve_recipe(None, "vgg16", "imagenet:/data", trained=True).name == "vgg16.yaml"
    # The ImageNet recipes are for ImageNet: a trained resnet18 on other data gets the generic one.
    assert resolve_recipe(None, "resnet18", "fashion-mnist:/data", trained=True).name == "pretrained.yaml"
    with pytest.raises(RecipeError, match="no shipped recipe for 'resnet18' on cifar10"):
        resolve_recipe(None, "resnet18", "cifar10:/data")
    assert load_recipe(resolve_recipe(None, "resnet18", None, trained=True)).dense.epochs == 0


def test_a_run_saved_before_an_option_existed_still_matches(tmp_path):
    from supportprune.inputs.recipe import same_recipe

    recipe = load_recipe(shipped_recipes()["embedded"])
    saved = recipe.to_dict()
    for key in ("allocation", "target_latency", "latency_batch_size", "latency_precision", "latency_table"):
        del saved["sparse"][key]  # as a recipe.yaml written by an older version
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(saved, sort_keys=False))
    assert same_recipe(path, recipe)
    saved["sparse"]["round_to"] = 2 * recipe.sparse.round_to  # any other value
    path.write_text(yaml.safe_dump(saved, sort_keys=False))
    assert not same_recipe(path, recipe)
    path.write_text("sparse: [not, a, mapping]\n")
    assert not same_recipe(path, recipe)
    assert not same_recipe(tmp_path / "missing.yaml", recipe)
