"""The command line's options: the same input options on every command that builds a model from data (one map to
recipe keys), --debug anywhere, flags shown as flags, and bench's --baseline checked before anything is timed."""

import pytest
from typer.testing import CliRunner

from supportprune.cli import app
from tests.cli_helpers import one_line_error

runner = CliRunner()
INPUT_OPTIONS = ["--input-size", "16", "--channels", "3", "--mean", "0.4,0.5,0.6", "--std", "0.2,0.3,0.4"]


def _given_recipe(recipe):
    data = recipe.data
    return data.input_size, data.channels, tuple(data.mean), tuple(data.std)


class _Captured(BaseException):
    """Ends the command once it has its recipe: what it would run with is all that is checked."""


@pytest.mark.parametrize("command, module, name, recipe_of", [
    ("compress", "supportprune.pipelines.compress", "compress", lambda args: args[1]),
    ("train", "supportprune.pipelines.train", "train", lambda args: args[1]),
    ("experiment", "supportprune.pipelines.experiment", "run_experiment", lambda args: args[0].recipe),
])
def test_input_options_set_the_same_recipe_keys_on_every_command(monkeypatch, tmp_path, command, module, name, recipe_of):
    import importlib

    seen = []

    def capture(*args, **kwargs):
        seen.append(recipe_of(args))
        raise _Captured()

    monkeypatch.setattr(importlib.import_module(module), name, capture)
    with pytest.raises(_Captured):
        runner.invoke(app, [command, "tiny_models:tiny_resnet", *INPUT_OPTIONS, "--out", str(tmp_path / "o")])
    assert _given_recipe(seen[0]) == (16, 3, (0.4, 0.5, 0.6), (0.2, 0.3, 0.4))


@pytest.mark.parametrize("command", ["compress", "train", "experiment"])
def test_every_training_command_shows_the_same_options(command):
    help_text = runner.invoke(app, [command, "--help"], terminal_width=200).output
    for option in ("--max-steps", "--input-size", "--channels", "--mean", "--std"):
        assert option in help_text, option


@pytest.mark.parametrize("command", [[], ["compress"], ["train"], ["bench"], ["theory"]])
def test_flags_are_not_shown_with_a_value_type(command):
    help_text = runner.invoke(app, [*command, "--help"], terminal_width=200).output
    assert "<bool>" not in help_text and "--help" in help_text


def test_debug_after_the_subcommand_prints_the_traceback():
    result = runner.invoke(app, ["compress", "resnet1000", "--debug"])
    assert result.exit_code == 1 and "Traceback" in result.output
    assert "error: unknown model 'resnet1000'" in result.output


def test_bench_checks_its_baseline_before_timing(tmp_path, monkeypatch):
    import supportprune.deploy.benchmark

    def timed(*args, **kwargs):
        raise AssertionError("timed before --baseline was checked")

    monkeypatch.setattr(supportprune.deploy.benchmark, "benchmark_side_by_side", timed)
    model = tmp_path / "sparse.onnx"
    model.write_bytes(b"")
    one_line_error(runner.invoke(app, ["bench", str(model), "--baseline", "dense"]), "--baseline 'dense'", "sparse")
