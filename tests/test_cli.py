"""The CLI end to end on a tiny model and the embedded data, and every bad input as a one-line error."""

import json
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from typer.testing import CliRunner

from supportprune.store.checkpoint import read_checkpoint
from supportprune.cli import app
from tests.cli_helpers import one_line_error, write_recipe
from supportprune.inputs.shipped import shipped_recipes
from supportprune.inputs.recipe import load_recipe

runner = CliRunner()

TINY_RECIPE = {
    "version": 1,
    "description": "test: tiny",
    "seed": 3,
    "checkpoint_every_steps": 1,
    "data": {"source": "embedded", "input_size": 12, "batch_size": 32},
    "dense": {"epochs": 1, "lr": 0.05},
    # A MACs target makes the first alternation point remove channels, so resuming crosses a real pruning.
    "sparse": {"epochs": 2, "lr": 0.01, "relative_threshold": 0.3, "prune_at": [1, 2], "target_macs": 0.5},
    "redense": {"epochs": 1, "lr": 0.005},
    "export": {"check_batch": 8, "fp16": True, "int8": True, "calibration_images": 64},
    "bench": {"batch_sizes": [1, 4], "runs": 2, "warmup": 1},
}

EXPECTED_FILES = {
    "recipe.yaml", "run.json", "metrics.jsonl", "report.md", "export.json", "benchmark.json", "benchmark.md",
    "baseline.onnx", "sparse.onnx", "dense.onnx", "baseline.fp16.onnx", "sparse.fp16.onnx", "dense.fp16.onnx",
    "baseline.int8.onnx", "sparse.int8.onnx", "dense.int8.onnx",
    "checkpoints/last.pt", "checkpoints/last.pt.previous",
    "models/baseline.pt", "models/sparse.pt", "models/dense.pt",
    "plots/training.png", "plots/channels.png",
}


def _recipe_file(tmp_path, **changes):
    return write_recipe(tmp_path / "tiny.yaml", TINY_RECIPE, **changes)


def _compress(tmp_path, out, *extra, model="tiny_models:tiny_resnet", recipe=None):
    recipe = recipe or _recipe_file(tmp_path)
    return runner.invoke(app, ["compress", model, "--recipe", str(recipe), "--out", str(out), "--max-steps", "4", *extra])


def _files(root):
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("run")
    out = tmp_path / "out"
    result = _compress(tmp_path, out)
    assert result.exit_code == 0, result.output
    return tmp_path, out, result


def test_compress_end_to_end_writes_exactly_the_run_files(finished_run):
    _, out, result = finished_run
    assert _files(out) == EXPECTED_FILES
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(m["phase"], m["epoch"]) for m in metrics] == [("dense", 1), ("sparse", 1), ("sparse", 2), ("redense", 1)]
    assert all({"train_loss", "train_top1", "val_top1", "lr", "channels_kept", "seconds"} <= set(m) for m in metrics)
    assert set(metrics[1]["supports_kept"]) == set(metrics[1]["channels_kept"])
    assert "ONNX Runtime provider: CPUExecutionProvider" in result.output


def test_compress_outputs_are_consistent(finished_run):
    _, out, _ = finished_run
    exported = json.loads((out / "export.json").read_text())
    models = {m["kind"]: m for m in exported["models"]}
    assert models["baseline"]["macs"] == models["dense"]["macs"] and models["sparse"]["macs"] < 0.7 * models["baseline"]["macs"]
    for kind in ("baseline", "sparse", "dense"):
        onnx.checker.check_model(onnx.load(str(out / f"{kind}.onnx")))
        assert exported["exports"][kind]["max_abs_diff"] <= 1e-3
    # Channels were pruned, and the sparse ONNX model is physically smaller for it.
    sparse_state = read_checkpoint(out / "models" / "sparse.pt")["model"]
    pruned = sum(int((v == 0).sum()) for k, v in sparse_state.items() if k.endswith(".keep"))
    assert pruned > 0 and models["sparse"]["params"] < models["baseline"]["params"]
    bench = json.loads((out / "benchmark.json").read_text())
    assert {(r["model"], r["precision"], r["batch_size"]) for r in bench["results"]} == {
        (k, p, b) for k in ("baseline", "sparse", "dense") for p in ("fp32", "fp16", "int8") for b in (1, 4)
    }
    # One MAC count: the run's log and report (export.json) give the benchmark table's (from the ONNX graph).
    assert {(r["model"], r["macs"]) for r in bench["results"] if r["precision"] == "fp32"} == {
        (kind, models[kind]["macs"]) for kind in ("baseline", "sparse", "dense")}
    sparse_rows = [r for r in bench["realised"] if r["model"] == "sparse"]
    assert len(sparse_rows) == 6  # the MACs reduction is the baseline's MACs over the sparse model's, in every precision
    assert all(r["macs_reduction"] == pytest.approx(models["baseline"]["macs"] / models["sparse"]["macs"]) for r in sparse_rows)
    # fp16 exports pick the fp32 model's class on at least 99% of the embedded validation images.
    for kind in ("baseline", "sparse", "dense"):
        assert exported["exports"][f"{kind}.fp16"]["top1_agreement_with_fp32"] >= 0.99
        # int8: agreement recorded on the validation images, and a warning exactly when it is below 99%.
        int8 = exported["exports"][f"{kind}.int8"]
        assert int8["calibration_images"] == 64 and (int8["warning"] is None) == (int8["top1_agreement_with_fp32"] >= 0.99)
    report = (out / "report.md").read_text()
    assert "| sparse | CPU | int8 |" in report and "Sparse int8 over baseline fp32, throughput at batch 4" in report
    assert "| model | parameters | MACs" in report and "| sparse |" in report and "plots/training.png" in report
    assert load_recipe(out / "recipe.yaml").sparse.prune_at == (1, 2)


def test_rerun_resumes_and_a_changed_recipe_is_refused(finished_run):
    tmp_path, out, _ = finished_run
    before = (out / "metrics.jsonl").read_text()
    again = _compress(tmp_path, out)
    assert again.exit_code == 0, again.output
    assert "resuming" in again.output and "export (training finished)" in again.output
    assert (out / "metrics.jsonl").read_text() == before
    other = _recipe_file(tmp_path, **{"sparse.lr": 0.02})  # the Sparse step has finished: its settings are fixed
    one_line_error(_compress(tmp_path, out, recipe=other), "sparse.lr: 0.01, not 0.02", "the sparse phase has finished",
                   "--restart")


def _metrics_without_time(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _kept_channels(run_dir, kind):
    """Per site, the channels the model ``kind`` keeps (its ``.keep`` buffers), and the site's width."""
    state = read_checkpoint(run_dir / "models" / f"{kind}.pt")["model"]
    return {k: (int(v.sum()), v.numel()) for k, v in state.items() if k.endswith(".keep")}


def _assert_same_run(run_dir, reference):
    assert _metrics_without_time(run_dir) == _metrics_without_time(reference)  # same losses, supports, channels
    kept = _kept_channels(run_dir, "sparse")
    assert kept == _kept_channels(reference, "sparse")  # the same pruned architecture
    assert sum(k for k, _ in kept.values()) < sum(n for _, n in kept.values())
    for kind in ("baseline", "sparse", "dense"):
        resumed = read_checkpoint(run_dir / "models" / f"{kind}.pt")["model"]
        uninterrupted = read_checkpoint(reference / "models" / f"{kind}.pt")["model"]
        assert resumed.keys() == uninterrupted.keys()
        assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted), kind  # bit-exact on the CPU


def _start_in_subprocess(tmp_path, out):
    """The same command as _compress, as a separate process that can be killed."""
    import os
    import subprocess
    import sys

    recipe = _recipe_file(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "supportprune", "compress", "tiny_models:tiny_resnet", "--recipe", str(recipe),
               "--out", str(out), "--max-steps", "4"]
    return subprocess.Popen(command, cwd=Path(__file__).parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait_for_checkpoint_after_pruning(process, out, timeout=120.0):
    """Wait until a checkpoint inside an epoch after the first alternation point exists (checkpoint_every_steps
    is 1): the run has removed channels and is training the pruned model. Checkpoints are written atomically,
    so any that exists is whole."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("the run finished before it could be interrupted:\n" + process.stdout.read())
        try:
            run = read_checkpoint(out / "checkpoints" / "last.pt")["run"]
            if run["phase_index"] >= 1 and run["alternations"] and run["step"] > 0:
                return run
        except Exception:  # not written yet
            pass
        time.sleep(0.01)
    raise AssertionError("no checkpoint after the first alternation point appeared")


@pytest.fixture(scope="module")
def killed_after_pruning(tmp_path_factory):
    """A run killed (SIGKILL) inside an epoch after its first alternation point removed channels; tests copy it."""
    tmp_path = tmp_path_factory.mktemp("killed")
    out = tmp_path / "killed"
    process = _start_in_subprocess(tmp_path, out)
    run = _wait_for_checkpoint_after_pruning(process, out)
    process.kill()
    process.wait()
    point = run["alternations"][0]
    assert point["channels_kept"] < point["channels_total"]  # the alternation point removed channels
    return out


def _copy_run(source, destination):
    import shutil

    shutil.copytree(source, destination)
    return destination


def test_sigkill_after_pruning_then_resume_equals_the_uninterrupted_run(tmp_path, finished_run, killed_after_pruning):
    _, reference, _ = finished_run
    out = _copy_run(killed_after_pruning, tmp_path / "killed")
    # A kill inside atomic_write leaves its temporary file beside the intact last.pt: resume ignores it.
    stray = out / "checkpoints" / ".last.pt.k1ll3d.tmp"
    stray.write_bytes((out / "checkpoints" / "last.pt").read_bytes()[:200])
    resumed = _compress(tmp_path, out)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and ", step " in resumed.output
    # No warning about the checkpoints (an int8 model agreeing with fp32 on under 99% of images is warned about too).
    # (Nor the speed warning, which depends on how fast this machine ran the tiny models.)
    assert not [line for line in resumed.output.splitlines()
                if "warning" in line and "int8 top-1 agrees" not in line and "ran slower than the baseline" not in line]
    _assert_same_run(out, reference)


def test_a_checkpoint_cut_short_falls_back_to_the_previous_one(tmp_path, finished_run, killed_after_pruning):
    # What a crash while writing last.pt would leave without atomic writes: the file cut off mid-way.
    _, reference, _ = finished_run
    out = _copy_run(killed_after_pruning, tmp_path / "cut")
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: len(last.read_bytes()) // 2])
    result = _compress(tmp_path, out)
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.output.splitlines() if line.startswith("warning: "))
    assert str(last) in warning and "checksum mismatch" in warning and "resuming from last.pt.previous" in warning
    _assert_same_run(out, reference)  # the checkpoint one step earlier leads to the same run


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_says_how_to_resume(tmp_path, finished_run):
    import signal

    _, reference, _ = finished_run
    out = tmp_path / "terminated"
    process = _start_in_subprocess(tmp_path, out)
    _wait_for_checkpoint_after_pruning(process, out)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    assert "Traceback" not in output
    assert "error: stopped by SIGTERM at " in output and "run the same command again to resume" in output
    resumed = _compress(tmp_path, out)
    assert resumed.exit_code == 0, resumed.output
    _assert_same_run(out, reference)


def test_a_flipped_byte_in_every_checkpoint_is_named(tmp_path, finished_run):
    _, reference, _ = finished_run
    out = _copy_run(reference, tmp_path / "flipped")
    last = out / "checkpoints" / "last.pt"
    for path in (last, last.with_name("last.pt.previous")):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
    one_line_error(_compress(tmp_path, out), str(last), "checksum mismatch", "to start over")


def test_an_unreadable_checkpoint_is_an_error_not_a_silent_fallback(tmp_path, finished_run, monkeypatch):
    import errno
    import os

    _, reference, _ = finished_run
    out = _copy_run(reference, tmp_path / "unreadable")
    last = out / "checkpoints" / "last.pt"
    read_bytes = Path.read_bytes

    def refuse_last(self):  # as a permission or disk error would (tests run as root, so chmod 000 reads fine)
        if self == last:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuse_last)
    result = _compress(tmp_path, out)
    one_line_error(result, str(last), "Permission denied")
    assert "resuming" not in result.output


def test_help_of_every_command():
    for command in ([], ["compress"], ["train"], ["experiment"], ["theory"], ["recipes"], ["recipes", "show"], ["export"], ["bench"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_recipes_list_and_show():
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0 and all(name in result.output for name in shipped_recipes())
    shown = runner.invoke(app, ["recipes", "show", "resnet18"])
    assert shown.exit_code == 0 and yaml.safe_load(shown.output)["weights"] == "IMAGENET1K_V1"


def test_export_and_bench_commands_on_a_finished_run(finished_run, tmp_path):
    _, out, _ = finished_run
    result = runner.invoke(app, ["export", str(out)])
    assert result.exit_code == 0, result.output
    bench = runner.invoke(app, ["bench", str(out / "sparse.onnx"), "--batch-sizes", "1,2", "--runs", "2",
                                "--warmup", "1", "--out", str(tmp_path)])
    assert bench.exit_code == 0, bench.output
    assert "CPUExecutionProvider" in bench.output and (tmp_path / "benchmark.json").exists()
    same_stem = tmp_path / "copy" / "sparse.onnx"
    same_stem.parent.mkdir()
    same_stem.write_bytes((out / "sparse.onnx").read_bytes())
    one_line_error(runner.invoke(app, ["bench", str(out / "sparse.onnx"), str(same_stem)]), "share a file name")


def test_compress_with_latency_allocation_times_the_layers_once(tmp_path):
    out = tmp_path / "out"
    result = _compress(tmp_path, out, "--target-macs", "0.6", "--allocation", "latency", "--round-to", "2")
    assert result.exit_code == 0, result.output
    table = json.loads((out / "latency-table.json").read_text())
    assert table["provider"] == "CPUExecutionProvider" and table["batch_size"] == 4  # the largest bench batch
    assert {"stem", "block1.conv1", "fc"} <= set(table["layers"])
    stamp = (out / "latency-table.json").stat().st_mtime_ns  # both alternation points use the one table
    points = read_checkpoint(out / "checkpoints" / "last.pt")["run"]["alternations"]
    assert len(points) == 2 and all(p["allocation"] == "latency" and p["predicted_speedup"] > 0 for p in points)
    assert "Allocation `latency`" in (out / "report.md").read_text()
    assert "predicted speed-up" in result.output
    assert (out / "latency-table.json").stat().st_mtime_ns == stamp
    # How much the measured table cuts depends on this machine's timings (on a quiet machine, tiny layers
    # may take no less time at any width, and nothing is cut). A table handed to another run is used as
    # is, not timed again: one where time grows with width must lead to a cut.
    measured = json.loads((out / "latency-table.json").read_text())
    for grid in measured["layers"].values():
        grid["seconds"] = [[1e-6 * (1 + i) * (1 + o) for o in grid["out_widths"]] for i in grid["in_widths"]]
    scaling = tmp_path / "scaling-table.json"
    scaling.write_text(json.dumps(measured))
    again = _compress(tmp_path, tmp_path / "again", "--target-macs", "0.6", "--allocation", "latency", "--round-to", "2",
                      "--latency-table", str(scaling))
    assert again.exit_code == 0, again.output
    assert "timing" not in again.output and "latency table" in again.output
    assert json.loads((tmp_path / "again" / "latency-table.json").read_text()) == measured
    again_models = {m["kind"]: m for m in json.loads((tmp_path / "again" / "export.json").read_text())["models"]}
    assert again_models["sparse"]["macs"] < again_models["baseline"]["macs"]
    one_line_error(_compress(tmp_path, tmp_path / "o", "--target-macs", "0.6", "--allocation", "latency",
                             "--latency-table", str(tmp_path / "nowhere.json")), "sparse.latency_table", "nowhere.json")


# ------------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, no traceback, nothing lost.


def test_unknown_model(tmp_path):
    one_line_error(_compress(tmp_path, tmp_path / "o", model="resnet1000"), "unknown model 'resnet1000'")


def test_malformed_recipe(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nsparse:\n  granularity: pixel\n")
    one_line_error(_compress(tmp_path, tmp_path / "o", recipe=bad), "bad.yaml", "sparse.granularity")


def test_missing_data(tmp_path):
    one_line_error(_compress(tmp_path, tmp_path / "o", "--data", f"cifar10:{tmp_path / 'nowhere'}"), "nowhere")


def test_corrupt_weights(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"not a checkpoint")
    one_line_error(_compress(tmp_path, tmp_path / "o", "--weights", str(weights)), "cannot read weights file", "w.pt")


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(_compress(tmp_path, blocker / "out"), "cannot write to output directory")


def test_bad_option_values(tmp_path):
    one_line_error(_compress(tmp_path, tmp_path / "o", "--mean", "a,b"), "--mean")
    one_line_error(_compress(tmp_path, tmp_path / "o", "--target-macs", "2"), "sparse.target_macs")


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    recipe = _recipe_file(tmp_path, **{"sparse.lr": 1e12})
    out = tmp_path / "diverge"
    result = _compress(tmp_path, out, recipe=recipe)
    one_line_error(result, "sparse epoch 1", "became n", "last good checkpoint kept", "sparse.lr 1e+12", "lower sparse.lr")
    checkpoint = read_checkpoint(out / "checkpoints" / "last.pt")
    assert checkpoint["run"]["phase_index"] == 2 and checkpoint["run"]["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
