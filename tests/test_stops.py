"""Ctrl-C and SIGTERM are obeyed in every stage of a run, not only inside training steps: the run stops at once,
exits non-zero (130 for SIGINT, 143 for SIGTERM) with one line saying where it stopped and that the same command
continues, and what had finished (exported models) stays. Each stop is sent by the stage itself, so the tests do
not depend on timing."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from supportprune.cli import app
from tests.cli_helpers import one_line_error, write_recipe
from tests.test_cli import TINY_RECIPE

runner = CliRunner()
RECIPE = {**TINY_RECIPE, "checkpoint_every_steps": 0, "sparse": {**TINY_RECIPE["sparse"], "epochs": 1, "prune_at": [1]},
          "export": {**TINY_RECIPE["export"], "fp16": False, "int8": False}}


def _compress(tmp_path, out):
    recipe = write_recipe(tmp_path / "tiny.yaml", RECIPE)
    return runner.invoke(app, ["compress", "tiny_models:tiny_resnet", "--recipe", str(recipe), "--out", str(out),
                               "--max-steps", "2"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run: re-running its command resumes at export, through every stage after training."""
    tmp_path = tmp_path_factory.mktemp("stops")
    result = _compress(tmp_path, tmp_path / "run")
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


def _signal_in(monkeypatch, module, name, signal_number, after=None):
    """Make ``module.name`` send ``signal_number`` to this process: before it runs, or after it returned for the
    call whose first argument's name is ``after`` (its output then exists)."""
    import importlib

    target = importlib.import_module(module)
    real = getattr(target, name)

    def signalling(*args, **kwargs):
        if after is None:
            os.kill(os.getpid(), signal_number)
        result = real(*args, **kwargs)
        if after is not None and Path(str(args[1])).name == after:
            os.kill(os.getpid(), signal_number)
        return result

    monkeypatch.setattr(target, name, signalling)


def _stub(monkeypatch, module, name, value):
    import importlib

    monkeypatch.setattr(importlib.import_module(module), name, lambda *args, **kwargs: value)


@pytest.mark.parametrize("module, name, signal_number, stage, skipped", [
    ("supportprune.run.setup", "build_model", signal.SIGTERM, "building the model", ()),
    ("supportprune.run.setup", "recipe_loaders", signal.SIGINT, "loading the data", ()),
    ("supportprune.deploy.benchmark", "benchmark_side_by_side", signal.SIGTERM, "benchmarking", ("export_models",)),
    ("supportprune.pipelines.deliver", "write_report", signal.SIGINT, "writing the report",
     ("export_models", "benchmark_models")),
])
def test_a_stop_outside_training_stops_at_once_and_says_where(tmp_path, trained, monkeypatch, module, name,
                                                               signal_number, stage, skipped):
    out = shutil.copytree(trained, tmp_path / "run")
    for earlier in skipped:  # the stages before the one under test, stubbed to keep the test fast
        _stub(monkeypatch, "supportprune.pipelines.deliver", earlier, [])
    _signal_in(monkeypatch, module, name, signal_number)
    result = _compress(tmp_path, out)
    one_line_error(result, f"stopped by {signal.Signals(signal_number).name} during {stage}", "run the same command again")
    assert result.exit_code == (143 if signal_number == signal.SIGTERM else 130)


def test_a_stop_during_int8_calibration_of_the_export_command(tmp_path, trained, monkeypatch):
    import yaml

    out = shutil.copytree(trained, tmp_path / "run")
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    recipe["export"]["int8"] = True
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    # ORT's quantizer catches every Exception: a stop must not be taken for a failed quantization.
    _signal_in(monkeypatch, "onnxruntime.quantization", "quantize_static", signal.SIGINT)
    result = runner.invoke(app, ["export", str(out)])
    one_line_error(result, "stopped by SIGINT during int8 calibration of baseline.onnx", "run the same command again")
    assert result.exit_code == 130 and not (out / "baseline.int8.onnx").exists()


def test_a_stop_during_export_keeps_the_exported_models_and_the_run_continues(tmp_path, trained, monkeypatch):
    out = shutil.copytree(trained, tmp_path / "run")
    for kind in ("baseline", "sparse", "dense"):
        (out / f"{kind}.onnx").unlink()
    _signal_in(monkeypatch, "supportprune.deploy.export", "export_onnx", signal.SIGINT, after="sparse.onnx")
    result = _compress(tmp_path, out)
    one_line_error(result, "stopped by SIGINT during export of sparse.onnx", "run the same command again to continue")
    assert result.exit_code == 130
    assert (out / "baseline.onnx").is_file() and (out / "sparse.onnx").is_file() and not (out / "dense.onnx").exists()
    assert not list(out.glob(".*.tmp"))  # no half-written file left behind
    monkeypatch.undo()
    again = _compress(tmp_path, out)
    assert again.exit_code == 0, again.output
    assert "export (training finished)" in again.output and (out / "dense.onnx").is_file()


def test_sigterm_from_outside_during_export(tmp_path, trained):
    """A separate process, told to stop by another: export is paused (by a stand-in that sleeps) until the
    signal comes."""
    out = shutil.copytree(trained, tmp_path / "run")
    recipe = write_recipe(tmp_path / "tiny.yaml", RECIPE)
    script = (
        "import sys, time, supportprune.deploy.export as e\n"
        "def slow(*a, **k):\n"
        "    print('exporting', flush=True)\n"
        "    time.sleep(600)\n"
        "e.export_onnx = slow\n"
        "from supportprune.cli import app\n"
        "sys.argv = ['supportprune'] + sys.argv[1:]\n"
        "app()\n"
    )
    command = [sys.executable, "-c", script, "compress", "tiny_models:tiny_resnet", "--recipe", str(recipe),
               "--out", str(out), "--max-steps", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parent.parent)])}
    process = subprocess.Popen(command, cwd=Path(__file__).parent, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("exporting"):
            process.send_signal(signal.SIGTERM)
            break
    output = "".join(lines) + process.communicate(timeout=120)[0]
    assert process.returncode == 143, output
    assert "Traceback" not in output
    assert "error: stopped by SIGTERM during export of baseline.onnx" in output
