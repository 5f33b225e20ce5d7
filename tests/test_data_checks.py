"""Nothing silent about the data: a mean/std of the wrong length and a folder of one class are one-line errors; a
one-value mean/std broadcast over the channels and an input size too small for the model's downsampling are notes in
the log and the report; the resolved normalisation is in recipe.yaml and the report."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from supportprune.cli import app
from supportprune.errors import SupportpruneError
from supportprune.inputs.data import load_data
from supportprune.inputs.models import ModelSpec, build_model, downsampling_note
from supportprune.inputs.typed_yaml import RecipeError
from supportprune.inputs.recipe import Recipe, load_recipe, recipe_from_dict, with_resolved_preprocessing
from tests.cli_helpers import one_line_error, write_recipe

runner = CliRunner()

RECIPE = {
    "version": 1, "description": "test: data checks", "seed": 0,
    "data": {"source": "embedded", "input_size": 8, "batch_size": 4},
    "dense": {"epochs": 1, "lr": 0.01},
    "sparse": {"epochs": 1, "lr": 0.01, "prune_at": [1], "target_macs": 0.5, "round_to": 8, "criterion": "l1"},
    "redense": {"epochs": 1, "lr": 0.001},
    "export": {"check_batch": 2, "int8": False},
    "bench": {"batch_sizes": [1], "runs": 1, "warmup": 1},
}


def _rgb_folder(root, classes=("a", "b"), size=8, per_class=3):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in classes:
            (root / split / label).mkdir(parents=True)
            for k in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB").save(
                    root / split / label / f"{k}.png")
    return root


def test_folder_of_one_class_is_one_line(tmp_path):
    root = _rgb_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(SupportpruneError, match=r"holds 1 class \(only\); a classifier needs at least two") as info:
        load_data(f"folder:{root}", input_size=8, mean=[0.5], std=[0.25])
    assert "\n" not in str(info.value)
    result = runner.invoke(app, ["compress", "resnet18", "--recipe", str(write_recipe(tmp_path / "r.yaml", RECIPE)),
                                 "--data", f"folder:{root}", "--out", str(tmp_path / "out")])
    one_line_error(result, "at least two")


def test_mean_of_the_wrong_length_is_one_line_naming_the_key(tmp_path):
    root = _rgb_folder(tmp_path / "rgb")
    recipe = recipe_from_dict({**RECIPE, "data": {**RECIPE["data"], "source": f"folder:{root}", "mean": [0.5, 0.5],
                                                  "std": [0.2, 0.2]}})
    with pytest.raises(RecipeError, match=r"data\.mean has 2 values .* 3 channel"):
        with_resolved_preprocessing(recipe)
    result = runner.invoke(app, ["compress", "resnet18", "--recipe", str(write_recipe(tmp_path / "r.yaml", RECIPE)),
                                 "--data", f"folder:{root}", "--mean", "0.5,0.5", "--std", "0.2,0.2",
                                 "--out", str(tmp_path / "out")])
    one_line_error(result, "data.mean has 2 values", "3 channel")


def test_resolution_makes_channels_and_one_value_per_channel_explicit(tmp_path):
    root = _rgb_folder(tmp_path / "rgb")
    resolved = with_resolved_preprocessing(recipe_from_dict(
        {**RECIPE, "data": {**RECIPE["data"], "source": f"folder:{root}", "mean": [0.5], "std": [0.25]}}))
    assert (resolved.data.channels, resolved.data.mean, resolved.data.std) == (3, (0.5,) * 3, (0.25,) * 3)
    embedded = with_resolved_preprocessing(Recipe())
    assert (embedded.data.channels, embedded.data.mean) == (1, (0.2860,))


def test_input_size_too_small_for_the_downsampling_is_said():
    for size, starved in ((3, "layer2.0.conv1"), (16, "layer4.0.conv1")):
        spec = ModelSpec("resnet18", 10, 1, size)
        note = downsampling_note(build_model(spec), spec)
        assert note is not None and f"--input-size {size} is too small" in note and starved in note
    assert "32×32 or more" in note  # at 16, the last stage is the one left without anything to reduce
    spec = ModelSpec("resnet18", 10, 1, 32)
    assert downsampling_note(build_model(spec), spec) is None


def test_broadcast_normalisation_and_small_input_are_notes_in_the_log_and_report(tmp_path):
    root = _rgb_folder(tmp_path / "rgb")
    out = tmp_path / "out"
    result = runner.invoke(app, ["compress", "resnet18", "--recipe", str(write_recipe(tmp_path / "r.yaml", RECIPE)),
                                 "--data", f"folder:{root}", "--mean", "0.5", "--std", "0.25", "--out", str(out),
                                 "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    broadcast = "one value used for all 3 channels"
    small = "--input-size 8 is too small for resnet18's downsampling"
    for text in (broadcast, small):
        assert text in result.output and text in report
    assert "normalised with mean 0.5, 0.5, 0.5 and std 0.25, 0.25, 0.25" in report
    saved = load_recipe(out / "recipe.yaml")
    assert (saved.data.channels, saved.data.mean, saved.data.std) == (3, (0.5,) * 3, (0.25,) * 3)
    again = runner.invoke(app, ["compress", "resnet18", "--recipe", str(tmp_path / "r.yaml"), "--data", f"folder:{root}",
                                "--mean", "0.5", "--std", "0.25", "--out", str(out), "--max-steps", "1"])
    assert again.exit_code == 0, again.output  # the same command resumes the finished run: the resolved recipe matches
