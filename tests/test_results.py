"""A compress run's metrics as a value: result.json is written from it and read back, for reuse, into the same value;
and the command line's option-to-recipe-key map names keys the recipe has."""

import dataclasses
import inspect
import json

import pytest

from supportprune import cli
from supportprune.errors import SupportpruneError
from supportprune.inputs.recipe import Recipe
from supportprune.pipelines.results import CompressMetrics, read_compress_metrics, write_result
from supportprune.store.layout import RunLayout


def _metrics() -> CompressMetrics:
    return CompressMetrics(
        baseline_top1=80.0, alternations=[{"epoch": 1, "macs": 30, "params": 7}, {"epoch": 2, "macs": 25, "params": 6}],
        baseline_macs=100, baseline_params=10, spec={"name": "m", "num_classes": 10},
        metrics=[{"phase": "dense", "val_top1": 80.0}, {"phase": "sparse", "val_top1": 70.0},
                 {"phase": "sparse", "val_top1": 72.0}, {"phase": "redense", "val_top1": 81.0}],
        seconds=3.5, criterion="support")


def test_result_json_reads_back_into_the_metrics_it_was_written_from(tmp_path):
    layout = RunLayout(tmp_path)
    write_result(layout, _metrics())
    assert read_compress_metrics(layout) == _metrics()


def test_the_metrics_answer_from_their_last_point_and_records():
    metrics = _metrics()
    assert metrics.kept_macs == 0.25  # the last alternation point's 25 of 100 MACs
    assert metrics.last_record("sparse")["val_top1"] == 72.0 and metrics.last_record("train") is None


def test_a_result_written_before_the_criterion_was_recorded_still_reads(tmp_path):
    layout = RunLayout(tmp_path)
    older = {k: v for k, v in dataclasses.asdict(_metrics()).items() if k != "criterion"}
    layout.result.write_text(json.dumps(older))
    assert read_compress_metrics(layout) == dataclasses.replace(_metrics(), criterion=None)


def test_a_result_that_is_not_a_compress_runs_is_refused_naming_the_file(tmp_path):
    layout = RunLayout(tmp_path)
    layout.result.write_text(json.dumps({"model": "m", "seconds": 0.0}))  # a train run's shape
    with pytest.raises(SupportpruneError, match="result.json lacks baseline_top1"):
        read_compress_metrics(layout)


def _has_key(dotted: str) -> bool:
    cls = Recipe
    for name in dotted.split("."):
        known = {f.name: f for f in dataclasses.fields(cls)}
        if name not in known:
            return False
        cls = known[name].default_factory if known[name].default_factory is not dataclasses.MISSING else type(known[name].default)
    return True


@pytest.mark.parametrize("command, phase", [(cli.compress, "sparse"), (cli.train_command, "train"), (cli.experiment, "train")])
def test_every_option_a_command_maps_names_a_recipe_key(command, phase):
    options = {name: 1 for name in inspect.signature(command).parameters}
    keys = cli._recipe_overrides(options, phase)
    assert keys and all(_has_key(key) for key in keys), keys


def test_every_entry_of_the_option_map_is_an_option_of_some_command():
    parameters = set()
    for command in (cli.compress, cli.train_command, cli.experiment):
        parameters |= set(inspect.signature(command).parameters)
    assert set(cli.OPTION_KEYS) <= parameters


def test_compress_and_train_set_the_keys_they_always_set():
    """The keys of the maps cli.py wrote out per command before they became one (issue #23)."""
    compress = {"data.source", "weights", "seed", "data.input_size", "data.channels", "data.mean", "data.std",
                "data.batch_size", "sparse.granularity", "sparse.relative_threshold", "sparse.target_macs",
                "sparse.round_to", "sparse.concat_round_to", "sparse.criterion", "sparse.alternation",
                "sparse.allocation", "sparse.target_latency", "sparse.latency_table", "export.int8"}
    inputs = {"data.input_size", "data.channels", "data.mean", "data.std"}  # train and experiment since issue #21
    train = inputs | {"data.source", "weights", "seed", "data.batch_size", "train.alternation", "train.epochs",
             "train.warmup_epochs", "train.gap_epochs", "train.granularity", "train.relative_threshold",
             "train.mask_storage", "train.mask_memory_mb"}
    for command, phase, expected in ((cli.compress, "sparse", compress), (cli.train_command, "train", train),
                                     (cli.experiment, "train", inputs | {"data.source", "train.epochs", "weights"})):
        options = {name: 1 for name in inspect.signature(command).parameters}
        assert set(cli._recipe_overrides(options, phase)) == expected, command.__name__
