"""`supportprune train` (none / instance / batch on one loop), the Sparse-step baselines inside compress,
and `supportprune experiment` end to end in a reduced configuration."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from supportprune.store.checkpoint import read_checkpoint
from supportprune.cli import app
from tests.cli_helpers import one_line_error, write_recipe
from supportprune.method.criteria import prunable_weights
from supportprune.inputs.models import ModelSpec, build_model
from supportprune.method.pruning import apply_keep_masks, count_macs_params, prune_to_keep_masks
from supportprune.method.convert import convert_relus

runner = CliRunner()

TRAIN_RECIPE = {
    "version": 1,
    "description": "test: tiny train",
    "seed": 5,
    "checkpoint_every_steps": 1,
    "data": {"source": "embedded", "input_size": 12, "batch_size": 32},
    "dense": {"epochs": 1, "lr": 0.05},
    "sparse": {"epochs": 2, "lr": 0.01, "relative_threshold": 0.3, "prune_at": [1], "target_macs": 0.6, "round_to": 1},
    "redense": {"epochs": 1, "lr": 0.005},
    "train": {"epochs": 3, "lr": 0.05, "warmup_epochs": 1, "gap_epochs": 2, "relative_threshold": 0.2},
}


def _recipe(tmp_path, **changes):
    return write_recipe(tmp_path / "train.yaml", TRAIN_RECIPE, **changes)


def _train(tmp_path, out, alternation, *extra, recipe=None):
    recipe = recipe or _recipe(tmp_path)
    return runner.invoke(app, ["train", "tiny_models:tiny_resnet", "--alternation", alternation, "--recipe", str(recipe),
                               "--out", str(out), "--max-steps", "4", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("train")
    runs = {}
    for alternation in ("none", "instance", "batch"):
        out = tmp_path / alternation
        result = _train(tmp_path, out, alternation)
        assert result.exit_code == 0, result.output
        runs[alternation] = out
    return tmp_path, runs


def test_three_alternations_share_loop_seed_and_data(trained):
    _, runs = trained
    results = {a: json.loads((out / "result.json").read_text()) for a, out in runs.items()}
    for alternation, result in results.items():
        assert result["alternation"] == alternation
        assert len(result["metrics"]) == 3
        # The closing evaluation (η* on each example) tests the weights the last epoch ended with, on the
        # same validation set that epoch's evaluation used: the same error.
        assert result["val_error"] == pytest.approx(100.0 - result["metrics"][-1]["val_top1"], abs=1e-9)
        assert result["curve"] and all(point[0] == "train" for point in result["curve"])
        assert (runs[alternation] / "report.md").exists() and (runs[alternation] / "models" / "trained.pt").exists()
    # The warm-up epoch is plain SGD in all three: identical, bit for bit.
    first = {a: r["metrics"][0]["train_loss"] for a, r in results.items()}
    assert first["none"] == first["instance"] == first["batch"]
    # After it, the supports differ, and so does training.
    assert results["instance"]["metrics"][1]["train_loss"] != results["none"]["metrics"][1]["train_loss"]
    assert results["batch"]["metrics"][1]["train_loss"] != results["none"]["metrics"][1]["train_loss"]
    # Only I-alternation stores supports: once, at epoch 2 (the gap is 2 epochs), bit-packed.
    assert (runs["instance"] / "masks" / "instance-supports.npy").exists()
    assert not (runs["batch"] / "masks").exists() and not (runs["none"] / "masks").exists()
    assert "supports_kept" in results["instance"]["metrics"][1]


def test_disk_backed_supports_train_exactly_like_supports_in_memory(trained, tmp_path):
    _, runs = trained
    out = tmp_path / "disk"
    result = _train(tmp_path, out, "instance", "--mask-storage", "disk")
    assert result.exit_code == 0, result.output
    assert "(disk)" in result.output
    disk = json.loads((out / "result.json").read_text())
    memory = json.loads((runs["instance"] / "result.json").read_text())
    assert [m["train_loss"] for m in disk["metrics"]] == [m["train_loss"] for m in memory["metrics"]]
    assert disk["val_error"] == memory["val_error"]


def test_supports_beyond_the_memory_budget_are_refused_with_a_clear_error(tmp_path):
    # tiny_resnet at 12×12: 5 sites × 8 × 144 units = 720 bytes per example, 3.4 MiB for 5,000 examples.
    result = _train(tmp_path, tmp_path / "out", "instance", "--mask-storage", "memory", "--mask-memory-mb", "1")
    one_line_error(result, "instance supports need 3.4 MiB", "train.mask_storage: disk")


def test_bad_alternation_is_aone_line_error(tmp_path):
    result = _train(tmp_path, tmp_path / "out", "sometimes")
    one_line_error(result, "train.alternation", "none, instance, batch")


def test_sigkill_during_i_alternation_then_resume_reuses_the_stored_supports(trained, tmp_path):
    """Killed after the supports were estimated: the resumed run trains with the stored supports and
    ends exactly where the uninterrupted run ends."""
    _, runs = trained
    out = tmp_path / "killed"
    recipe = _recipe(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "supportprune", "train", "tiny_models:tiny_resnet", "--alternation", "instance",
               "--recipe", str(recipe), "--out", str(out), "--max-steps", "4"]
    process = subprocess.Popen(command, cwd=Path(__file__).parent, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, "no checkpoint inside the alternating epochs appeared"
        assert process.poll() is None, "the run finished before it could be interrupted:\n" + process.stdout.read()
        try:
            state = read_checkpoint(out / "checkpoints" / "last.pt")["run"]
            if state["mask_round"] is not None and state["step"] > 0:
                break
        except Exception:  # not written yet
            pass
        time.sleep(0.01)
    process.kill()
    process.wait()
    resumed = _train(tmp_path, out, "instance", recipe=recipe)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "estimated" not in resumed.output.split("resuming")[1].split("train 2/3")[0]
    reference = json.loads((runs["instance"] / "result.json").read_text())
    got = json.loads((out / "result.json").read_text())
    assert [m["train_loss"] for m in got["metrics"]] == [m["train_loss"] for m in reference["metrics"]]
    assert got["val_error"] == reference["val_error"] and got["maskt_val_error"] == reference["maskt_val_error"]


def _compress(tmp_path, out, *extra):
    return runner.invoke(app, ["compress", "tiny_models:tiny_resnet", "--recipe", str(_recipe(tmp_path)), "--out", str(out),
                               "--max-steps", "3", *extra])


@pytest.mark.parametrize("criterion", ["l1", "l2", "random"])
def test_channel_baselines_prune_to_the_macs_target(tmp_path, criterion):
    out = tmp_path / criterion
    result = _compress(tmp_path, out, "--criterion", criterion)
    assert result.exit_code == 0, result.output
    exported = {m["kind"]: m for m in json.loads((out / "export.json").read_text())["models"]}
    target = int(0.6 * exported["baseline"]["macs"])
    assert exported["sparse"]["macs"] <= target
    # Pruned to the target, not past it: the search took the smallest threshold that meets it, so giving back
    # the last channel (group) it cut leaves more MACs than the target. Some pruned channel is that one.
    spec = ModelSpec(**json.loads((out / "run.json").read_text())["spec"])
    keep = {k[:-len(".keep")]: v for k, v in read_checkpoint(out / "models" / "sparse.pt")["model"].items()
            if k.endswith(".keep")}
    # The search counts MACs as the run does (torch-pruning, on the converted model); export.json counts them from
    # the ONNX graph, as the benchmark does, so the target for this check is the run's own count.
    example = spec.example_input()
    run_target = int(0.6 * count_macs_params(convert_relus(build_model(spec, None), example), example)[0])
    assert _macs_with_keep(spec, keep) <= run_target
    pruned = [(name, channel) for name, mask in keep.items() for channel in (mask == 0).nonzero().flatten().tolist()]
    assert pruned
    assert any(_macs_with_keep(spec, _restored(keep, name, channel)) > run_target for name, channel in pruned)


def _restored(keep, name, channel):
    restored = {n: mask.clone() for n, mask in keep.items()}
    restored[name][channel] = 1.0
    return restored


def _macs_with_keep(spec, keep):
    """MACs of the model pruned to these keep masks (a channel lives while any site of its group keeps it)."""
    example = spec.example_input()
    model = convert_relus(build_model(spec, None), example)
    apply_keep_masks(model, keep)
    return count_macs_params(prune_to_keep_masks(model, example), example)[0]


def test_magnitude_baseline_keeps_pruned_weights_at_zero_until_redense(tmp_path):
    out = tmp_path / "magnitude"
    result = _compress(tmp_path, out, "--criterion", "magnitude")
    assert result.exit_code == 0, result.output
    assert "magnitude pruning after sparse epoch 1" in result.output
    spec = ModelSpec(**json.loads((out / "run.json").read_text())["spec"])
    model = convert_relus(build_model(spec, None), spec.example_input())
    model.load_state_dict(read_checkpoint(out / "models" / "sparse.pt")["model"])
    for name, weight in prunable_weights(model).items():
        # 30% of every layer zeroed at the point, and still zero after the last Sparse epoch's training.
        assert int((weight == 0).sum()) >= int(0.3 * weight.numel()), name
    model.load_state_dict(read_checkpoint(out / "models" / "dense.pt")["model"])
    stem = prunable_weights(model)["stem.weight"]
    assert int((stem == 0).sum()) < int(0.3 * stem.numel())  # re-dense trained them again


def test_baseline_without_a_macs_target_is_aone_line_error(tmp_path):
    recipe = _recipe(tmp_path, **{"sparse.target_macs": None})
    result = runner.invoke(app, ["compress", "tiny_models:tiny_resnet", "--recipe", str(recipe), "--out",
                                 str(tmp_path / "o"), "--criterion", "l1"])
    one_line_error(result, "sparse.target_macs", "criterion l1")


def test_experiment_end_to_end_reduced(tmp_path):
    recipe = _recipe(tmp_path, **{"train.epochs": 2, "train.gap_epochs": 1, "sparse.epochs": 1, "redense.epochs": 1})
    out = tmp_path / "experiment"
    args = ["experiment", "tiny_models:tiny_resnet", "--recipe", str(recipe), "--seeds", "0,1", "--targets", "0.5",
            "--out", str(out), "--runs-dir", str(tmp_path / "runs"), "--max-steps", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "experiment: train-none-seed0" in result.output  # it trained
    report = (out / "report.md").read_text()
    for heading in ("Figure 3", "Table 7", "Table 8", "Accuracy against MACs", "What held at this scale"):
        assert heading in report
    assert (out / "plots" / "figure3.png").stat().st_size > 0 and (out / "plots" / "accuracy_vs_macs.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["train"]) == {f"{a}/{s}" for a in ("none", "instance", "batch") for s in (0, 1)}
    for seed in ("0", "1"):
        dsd = results["dsd"][seed]
        # Every DSD row starts from the same Dense model: the plain-SGD run of that seed.
        baseline = {dsd[k]["baseline_top1"] for k in ("support-batch", "support-instance", "magnitude")}
        assert len(baseline) == 1
        assert baseline.pop() == pytest.approx(100 - results["train"][f"none/{seed}"]["val_error"])
        entry = results["macs"][f"0.5/{seed}"]
        support_macs = entry["support"]["alternations"][-1]["macs"]
        for criterion in ("l1", "l2", "random"):
            # matched on MACs: pruned to what the support kept, never more MACs
            assert entry[criterion]["alternations"][-1]["macs"] <= support_macs
    # Run again: every run is finished, so nothing trains.
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "experiment: train-none-seed0" not in again.output
