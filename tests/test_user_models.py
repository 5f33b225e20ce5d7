"""A user's own model through the CLI: factory arguments, failures in the user's code as one line with the
traceback in the run's log, and explicit preprocessing."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from supportprune.cli import _model_args, app
from supportprune.inputs.data import load_data, resolve_resize
from supportprune.errors import SupportpruneError
from supportprune.inputs.models import ModelSpec, build_model
from supportprune.inputs.recipe import load_recipe
from tests.cli_helpers import one_line_error, write_recipe

runner = CliRunner()

RECIPE = {
    "version": 1, "description": "test: user model", "seed": 0,
    "data": {"source": "embedded", "input_size": 12, "batch_size": 32},
    "dense": {"epochs": 1, "lr": 0.05},
    "sparse": {"epochs": 2, "lr": 0.01, "relative_threshold": 0.3, "prune_at": [1], "target_macs": 0.5, "round_to": 1},
    "redense": {"epochs": 1, "lr": 0.005},
    "export": {"check_batch": 8},
    "bench": {"batch_sizes": [1], "runs": 2, "warmup": 1},
}


def _compress(tmp_path, *args, **changes):
    recipe = write_recipe(tmp_path / "user.yaml", RECIPE, **changes)
    return runner.invoke(app, ["compress", "digit_classifier:DigitNet", "--recipe", str(recipe),
                               "--out", str(tmp_path / "out"), "--max-steps", "2", *args])


def test_model_args_parse_yaml_scalars():
    assert _model_args(["input_size=28", "scale=0.5", "pretrained=true", "name=small", "extra=null"]) == {
        "input_size": 28, "scale": 0.5, "pretrained": True, "name": "small", "extra": None}
    with pytest.raises(SupportpruneError, match="NAME=VALUE"):
        _model_args(["input_size"])


def test_factory_without_its_argument_is_one_line_naming_model_arg(tmp_path):
    result = _compress(tmp_path)
    one_line_error(result, "DigitNet", "--model-arg")
    assert result.exit_code == 1


def test_bug_in_user_factory_is_one_line_with_traceback_in_the_run_log(tmp_path):
    recipe = write_recipe(tmp_path / "user.yaml", RECIPE)
    out = tmp_path / "out"
    result = runner.invoke(app, ["compress", "digit_classifier:broken_factory", "--model-arg", "input_size=12",
                                 "--recipe", str(recipe), "--out", str(out)])
    one_line_error(result, "KeyError", "broken_factory")
    log = (out / "supportprune.log").read_text()
    assert "Traceback" in log and "digit_classifier.py" in log and "widths[\"large\"]" in log
    shown = runner.invoke(app, ["--debug", "compress", "digit_classifier:broken_factory", "--model-arg", "input_size=12",
                                "--recipe", str(recipe), "--out", str(out)])
    assert shown.exit_code == 1 and "Traceback" in shown.output and "widths[\"large\"]" in shown.output


def test_forward_rejecting_the_input_size_names_the_shape_and_the_option(tmp_path):
    result = _compress(tmp_path, "--model-arg", "input_size=28")  # the recipe feeds 12×12 images
    one_line_error(result, "(2, 1, 12, 12)", "--input-size", "DigitNet expects 28x28")


def test_unexpected_error_is_one_line_and_logged(tmp_path, monkeypatch):
    import functools

    import supportprune.run.setup as setup_module

    # A failure inside supportprune's own call chain (a builtin called wrongly: no frame of the user's code).
    monkeypatch.setattr(setup_module, "count_macs_params", functools.partial(divmod, 1))
    result = _compress(tmp_path, "--model-arg", "input_size=12")
    one_line_error(result, "unexpected TypeError", "divmod", "bug in supportprune", "supportprune.log")
    log = (tmp_path / "out" / "supportprune.log").read_text()
    assert "Traceback" in log and "count_macs_params" in log


def test_user_forward_failing_during_training_is_attributed_to_the_user(tmp_path, monkeypatch):
    import digit_classifier

    original = digit_classifier.DigitNet.forward

    def forward_failing_later(self, x):  # fine for the checks and conversion passes (no gradient), fails in training
        if torch.is_grad_enabled() and self.training:
            raise FloatingPointError("user model blew up")
        return original(self, x)

    monkeypatch.setattr(digit_classifier.DigitNet, "forward", forward_failing_later)
    result = _compress(tmp_path, "--model-arg", "input_size=12")
    one_line_error(result, "your code raised FloatingPointError: user model blew up", "test_user_models.py")


def test_model_args_saved_with_the_run_rebuild_the_model_for_export(tmp_path):
    result = _compress(tmp_path, "--model-arg", "input_size=12", "--model-arg", "width=8")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    spec = json.loads((out / "run.json").read_text())["spec"]
    assert spec["model_args"] == {"input_size": 12, "width": 8}
    assert load_recipe(out / "recipe.yaml").model_args == {"input_size": 12, "width": 8}
    exported = json.loads((out / "export.json").read_text())["models"]
    macs = {m["kind"]: m["macs"] for m in exported}
    assert macs["sparse"] < 0.7 * macs["baseline"]
    again = runner.invoke(app, ["export", str(out)])
    assert again.exit_code == 0, again.output


def test_torchvision_builder_takes_model_args():
    narrow = build_model(ModelSpec("mobilenet_v2", 10, 1, 32, {"width_mult": 0.5}))
    full = build_model(ModelSpec("mobilenet_v2", 10, 1, 32))
    assert sum(p.numel() for p in narrow.parameters()) < 0.5 * sum(p.numel() for p in full.parameters())
    with pytest.raises(SupportpruneError, match="model_args"):
        build_model(ModelSpec("resnet18", 10, 1, 32, {"no_such_argument": 1}))


# --- preprocessing -----------------------------------------------------------------------------------


def _digit_folder(root, size=12, per_class=3):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(root / split / label / f"{k}.png")
    return root


def test_folder_images_of_the_input_size_are_not_cropped(tmp_path):
    root = _digit_folder(tmp_path / "digits")
    data = load_data(f"folder:{root}", input_size=12, mean=[0.0], std=[1.0])
    assert data.channels == 1  # grayscale images: the model reads one channel
    image, label = data.val[0]
    raw = np.asarray(Image.open(sorted((root / "val" / "a").glob("*.png"))[0]), dtype=np.float32) / 255
    assert image.shape == (1, 12, 12)
    assert torch.allclose(image[0], torch.from_numpy(raw), atol=1e-6)
    assert "no crop" in data.description


def test_crop_fraction_defaults_by_source_and_can_be_set():
    assert resolve_resize("imagenet:/x", 224, None, None) == 256  # the usual 0.875 evaluation crop
    assert resolve_resize("folder:/x", 28, None, None) == 28
    assert resolve_resize("embedded", 32, None, None) == 32
    assert resolve_resize("folder:/x", 28, None, 0.875) == 32
    assert resolve_resize("folder:/x", 28, 40, None) == 40
    with pytest.raises(SupportpruneError, match="disagree"):
        resolve_resize("folder:/x", 28, 40, 0.875)


def test_in_memory_crop_takes_the_centre():
    whole = load_data("embedded", input_size=28, mean=[0.0], std=[1.0])
    cropped = load_data("embedded", input_size=20, resize_to=28, mean=[0.0], std=[1.0])
    assert torch.equal(cropped.val[0][0], whole.val[0][0][:, 4:24, 4:24])
    assert "centre-cropped to 20×20" in cropped.description


def test_run_records_resolved_preprocessing(tmp_path):
    root = _digit_folder(tmp_path / "digits")
    result = _compress(tmp_path, "--model-arg", "input_size=12", "--data", f"folder:{root}",
                       **{"data.mean": [0.5], "data.std": [0.25]})
    assert result.exit_code == 0, result.output
    saved = load_recipe(tmp_path / "out" / "recipe.yaml")
    assert (saved.data.resize_to, saved.data.crop_fraction) == (12, 1.0)
    assert "no crop" in (tmp_path / "out" / "report.md").read_text()
