"""`experiment` reads a finished run only when it was made with the same model, recipe, step cap and starting
weights; anything else is made again, the other run moved aside whole."""

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import supportprune.pipelines.compress
import supportprune.pipelines.train
import supportprune.store.layout
from supportprune.pipelines import experiment
from supportprune.cli import app
from supportprune.inputs.recipe import recipe_from_dict
from supportprune.pipelines.results import CompressMetrics
from tests.cli_helpers import write_recipe

runner = CliRunner()

RECIPE = {
    "version": 1,
    "seed": 5,
    "data": {"source": "embedded", "input_size": 12, "batch_size": 32},
    "dense": {"epochs": 1, "lr": 0.05},
    "sparse": {"epochs": 1, "lr": 0.01, "relative_threshold": 0.3, "prune_at": [1], "target_macs": 0.6, "round_to": 1},
    "redense": {"epochs": 1, "lr": 0.005},
    "train": {"epochs": 2, "lr": 0.05, "warmup_epochs": 1, "gap_epochs": 1, "relative_threshold": 0.2},
}


def _digests(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow  # two runs under torchrun or two reduced experiments: minutes on 2 cores
def test_experiment_with_another_model_runs_again_and_keeps_the_other_models_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    common = ["--recipe", str(recipe), "--seeds", "0", "--targets", "0.5", "--max-steps", "1", "--device", "cpu"]
    first = runner.invoke(app, ["experiment", "tiny_models:tiny_plain", *common])
    assert first.exit_code == 0, first.output
    out = Path("results/experiment-tiny_models_tiny_plain-embedded")  # the default names the model
    runs = Path("runs") / out.name
    plain = json.loads((out / "results.json").read_text())
    assert plain["train"]["none/0"]["model"] == "tiny_models:tiny_plain"
    plain_run = _digests(runs / "train-none-seed0")

    # Another model into the same directories: nothing of the first model's runs is reported as its own.
    second = runner.invoke(app, ["experiment", "tiny_models:tiny_concat", *common, "--out", str(out),
                                 "--runs-dir", str(runs)])
    assert second.exit_code == 0, second.output
    assert "experiment: train-none-seed0" in second.output
    concat = json.loads((out / "results.json").read_text())
    for name, run in concat["train"].items():
        assert run["model"] == "tiny_models:tiny_concat", name
    for seed_runs in concat["dsd"].values():  # the DSD runs start from the new model's plain-SGD run
        for key in ("support-batch", "support-instance", "magnitude"):
            assert seed_runs[key]["spec"]["name"] == "tiny_models:tiny_concat"
    assert _digests(runs / "train-none-seed0.1") == plain_run  # the first model's run, intact


def _fake_run(calls):
    """Stands in for train/compress: records the call and writes a result, as the real ones do at the end."""

    def run(model, recipe, out_dir, **options):
        calls.append((model, options.get("max_steps_per_epoch"), recipe.weights))
        metrics = CompressMetrics(None, [], 1, 1, {"name": model}, [], 0.0)  # compress returns its metrics
        result = {"model": model, **metrics.to_dict()}
        supportprune.store.layout.RunLayout(out_dir).result.write_text(json.dumps(result))
        return SimpleNamespace(metrics=metrics)

    return run


def test_a_changed_step_cap_or_model_runs_again_and_an_equal_one_is_read(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(supportprune.pipelines.train, "train", _fake_run(calls))
    recipe = recipe_from_dict(RECIPE)

    def train_run(model, max_steps):
        plan = experiment.ExperimentPlan(model, recipe, tmp_path / "out", max_steps=max_steps, runs_dir=tmp_path / "runs")
        return experiment._train_run(plan, recipe, "none", 0, lambda text: None, None)

    assert train_run("a", 2)["model"] == "a"
    assert train_run("a", 2)["model"] == "a"  # the same settings: read
    assert len(calls) == 1
    train_run("a", None)  # the full run after a smoke run
    train_run("b", None)
    train_run("b", None)
    assert calls == [("a", 2, None), ("a", None, None), ("b", None, None)]
    moved = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert moved == ["train-none-seed0", "train-none-seed0.1", "train-none-seed0.2"]
    assert json.loads((tmp_path / "runs" / "train-none-seed0.1" / "result.json").read_text())["model"] == "a"


def test_a_dsd_run_is_made_again_when_its_starting_model_changes(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(supportprune.pipelines.compress, "compress", _fake_run(calls))
    weights = tmp_path / "trained.pt"
    recipe = recipe_from_dict({**RECIPE, "weights": str(weights)})
    plan = experiment.ExperimentPlan("a", recipe, tmp_path / "out", runs_dir=tmp_path / "runs")

    def dsd_run():
        return experiment._compress_run(plan, recipe, "dsd", lambda text: None, None, {"sparse.criterion": "l1"})

    weights.write_bytes(b"the plain-SGD model of a smoke run")
    dsd_run()
    dsd_run()
    weights.write_bytes(b"the plain-SGD model of the full run")  # same path, another model
    dsd_run()
    assert len(calls) == 2


def test_run_key_holds_everything_that_changes_the_result(tmp_path):
    recipe = recipe_from_dict(RECIPE)
    key = experiment.run_key("m", recipe, 3)
    assert key == json.loads(json.dumps(key))  # compares equal to what is read back
    assert key["recipe"]["seed"] == 5 and key["recipe"]["data"]["source"] == "embedded"
    assert experiment.run_key("m", recipe_from_dict({**RECIPE, "seed": 6}), 3) != key
    assert experiment.run_key("m", recipe, None) != key
    assert experiment.run_key("n", recipe, 3) != key


def test_a_key_added_later_that_is_unset_keeps_older_runs_and_any_set_value_does_not():
    key = experiment.run_key("m", recipe_from_dict(RECIPE), 3)
    older = json.loads(json.dumps(key))
    del older["recipe"]["sparse"]["concat_round_to"]  # a run made before the key existed
    assert key["recipe"]["sparse"]["concat_round_to"] is None
    assert experiment.same_key(older, key)
    with_value = recipe_from_dict({**RECIPE, "sparse": {**RECIPE["sparse"], "concat_round_to": 16}})
    assert not experiment.same_key(older, experiment.run_key("m", with_value, 3))
    changed = json.loads(json.dumps(older))
    changed["recipe"]["sparse"]["round_to"] = 8
    assert not experiment.same_key(changed, key)
    assert not experiment.same_key(key, older)  # the stored run knows a setting the current one lacks
