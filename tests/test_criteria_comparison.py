"""`experiment --weights`: pruning criteria compared from one trained model, with the same budget."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from supportprune.cli import app
from supportprune.reports.criteria_report import verdicts
from supportprune.pipelines.criteria import (
    ComparisonPlan,
    Variant,
    comparison_table,
    parse_variant,
    run_name,
)
from supportprune.errors import SupportpruneError
from supportprune.inputs.models import ModelSpec, build_model
from supportprune.inputs.recipe import recipe_from_dict, with_overrides
from tests.cli_helpers import one_line_error, write_recipe

runner = CliRunner()

RECIPE = {
    "version": 1,
    "seed": 0,
    "data": {"source": "embedded", "input_size": 12, "batch_size": 32},
    "dense": {"epochs": 0},
    "sparse": {"epochs": 1, "lr": 0.01, "relative_threshold": 0.2, "prune_at": [1], "target_macs": 0.5, "round_to": 1,
               "distill": None},
    "redense": {"epochs": 1, "lr": 0.005, "distill": None},
    "export": {"int8": False},
    "bench": {"batch_sizes": [1, 4], "runs": 3, "warmup": 1},
}


def test_a_variant_parses_yaml_values_and_bad_ones_are_named():
    variant = parse_variant("gradual: sparse.prune_at=[1,2] sparse.target_schedule=cubic")
    assert variant == Variant("gradual", {"sparse.prune_at": [1, 2], "sparse.target_schedule": "cubic"})
    with pytest.raises(SupportpruneError, match="NAME: key=value"):
        parse_variant("no colon here")
    with pytest.raises(SupportpruneError, match="'sparse.lr' is not key=value"):
        parse_variant("x: sparse.lr")


def test_an_override_inside_an_optional_section_gets_the_sections_defaults():
    recipe = recipe_from_dict(RECIPE, "test")
    assert recipe.sparse.distill is None
    changed = with_overrides(recipe, {"sparse.distill.alpha": 0.7}, "test")
    assert changed.sparse.distill.alpha == 0.7 and changed.sparse.distill.temperature == 4.0


def _summary(sparse, redense, macs=0.5, speedup=2.0, start=90.0):
    return {"sparse_top1": sparse, "redense_top1": redense, "macs_kept": macs, "speedup": {"64": speedup},
            "baseline_top1": start}


def test_the_table_pairs_each_method_with_the_best_baseline_by_seed():
    plan = ComparisonPlan("m", recipe_from_dict(RECIPE, "test"), Path("."), criteria=("support", "l1", "taylor"),
                          seeds=(0, 1), targets=(0.5,))
    sparse = {"support": (88.0, 86.0), "l1": (87.0, 87.0), "taylor": (89.0, 88.0)}
    redense = {"support": (91.0, 90.0), "l1": (89.0, 89.0), "taylor": (90.0, 89.5)}
    runs = {run_name("global", 0.5, m, s): _summary(sparse[m][i], redense[m][i]) for m in sparse for i, s in enumerate((0, 1))}
    table = comparison_table(plan, runs, "global", 0.5)
    assert table["best_baseline"] == "taylor"  # mean 88.5 against l1's 87.0
    assert table["rows"]["support"]["paired_vs_best"] == [-1.0, -2.0]
    assert table["rows"]["support"]["paired_redense_vs_best"] == [1.0, 0.5]
    assert "paired_vs_best" not in table["rows"]["taylor"]
    lines = verdicts(table)
    # support 87.0 against taylor 88.5 ± 0.707: below the mean less one std (87.79)
    assert "does not hold" in lines[0] and "taylor" in lines[0]
    # re-dense 90.5 against the starting model's 90.0
    assert lines[1].startswith("support re-Dense top-1 90.50%") and "holds" in lines[1] and "not" not in lines[1]


def test_a_variant_naming_a_baseline_criterion_is_a_baseline():
    kd = parse_variant("kd: sparse.criterion=l1 sparse.distill.alpha=0.7")
    plan = ComparisonPlan("m", recipe_from_dict(RECIPE, "test"), Path("."), criteria=("support", "l1"),
                          variants=(kd, parse_variant("x: sparse.beta=estimated")), seeds=(0,), targets=(0.5,))
    assert plan.methods == ("support", "l1", "l1[kd]", "support[x]")
    assert plan.baselines == ("l1", "l1[kd]")
    sparse = {"support": 88.0, "l1": 87.0, "l1[kd]": 89.0, "support[x]": 88.5}
    runs = {run_name("global", 0.5, m, 0): _summary(v, None) for m, v in sparse.items()}
    table = comparison_table(plan, runs, "global", 0.5)
    assert table["best_baseline"] == "l1[kd]"  # the distilled baseline beat the plain one
    assert table["rows"]["support[x]"]["paired_vs_best"] == [-0.5]


def test_experiment_with_weights_compares_criteria_at_the_same_macs_and_reuses_finished_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    weights = tmp_path / "start.pt"
    torch.manual_seed(0)
    torch.save(build_model(ModelSpec("tiny_models:tiny_resnet", 10, 1, 12), None).state_dict(), weights)
    command = ["experiment", "tiny_models:tiny_resnet", "--recipe", str(recipe), "--weights", str(weights),
               "--seeds", "0", "--targets", "0.5", "--criteria", "support,l1,taylor", "--max-steps", "2",
               "--variant", "consumer: sparse.support_statistic=energy_x_consumer", "--out", "out", "--runs-dir", "runs"]
    first = runner.invoke(app, command)
    assert first.exit_code == 0, first.output
    results = json.loads(Path("out/results.json").read_text())
    row = results["tables"]["global/0.5"]["rows"]
    assert set(row) == {"support", "l1", "taylor", "support[consumer]"}
    for method, values in row.items():
        assert 0.3 < values["macs_kept"] <= 0.55, method  # every criterion pruned to the same target
        latency = results["runs"][run_name("global", 0.5, method, 0)]["latency"]  # its one seed's timings
        assert values["speedup"]["4"] == pytest.approx(latency["baseline_ms"]["4"] / latency["sparse_ms"]["4"])
        assert len(values["sparse"]) == 1
    run = results["runs"][run_name("global", 0.5, "support[consumer]", 0)]
    saved = (Path("runs") / "global-macs0.5-support-consumer-seed0" / "recipe.yaml").read_text()
    assert "support_statistic: energy_x_consumer" in saved and run["latency"]["provider"] == "CPUExecutionProvider"
    report = Path("out/report.md").read_text()
    assert "| support[consumer] |" in report and "Δ best" in report and "support[consumer]`: support with" in report
    again = runner.invoke(app, command)
    assert again.exit_code == 0, again.output
    assert "experiment: " not in again.output  # every run read, none made again


def test_comparison_options_without_weights_and_bad_criteria_are_one_line_errors(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    one_line_error(runner.invoke(app, ["experiment", "tiny_models:tiny_resnet", "--recipe", str(recipe),
                                       "--criteria", "l1"]), "--weights")
    weights = tmp_path / "w.pt"
    torch.save(build_model(ModelSpec("tiny_models:tiny_resnet", 10, 1, 12), None).state_dict(), weights)
    one_line_error(runner.invoke(app, ["experiment", "tiny_models:tiny_resnet", "--recipe", str(recipe), "--weights",
                                       str(weights), "--criteria", "l1,entropy", "--out", str(tmp_path / "o")]),
                   "unknown entropy")
    one_line_error(runner.invoke(app, ["experiment", "tiny_models:tiny_resnet", "--recipe", str(recipe), "--weights",
                                       str(weights), "--variant", "bad: sparse.nokey=1", "--out", str(tmp_path / "o")]),
                   "sparse.nokey")
