"""A run directory is reopened only by what made it: the same command, model and recipe, except settings that may
change (export and bench at any time, a phase's own settings while it has not finished: the divergence advice).
Everything else is refused on one line naming what differs; --restart moves aside only a run directory."""

import json
import math
import shutil

import pytest
import torch
from typer.testing import CliRunner

from supportprune.cli import app
from supportprune.inputs.recipe import PhaseConfig
from supportprune.run.training_loop import make_optimizer, make_scheduler
from tests.cli_helpers import one_line_error, write_recipe
from tests.test_stops import RECIPE, trained  # noqa: F401 - the finished run fixture

runner = CliRunner()
MODEL = "tiny_models:tiny_resnet"


def _run(tmp_path, out, command="compress", model=MODEL, extra=(), **changes):
    recipe = write_recipe(tmp_path / "recipe.yaml", RECIPE, **changes)
    return runner.invoke(app, [command, model, "--recipe", str(recipe), "--out", str(out), "--max-steps", "2", *extra])


def _phases(out):
    return [(m["phase"], m["epoch"]) for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def test_divergence_names_the_phase_and_its_lr_and_lowering_it_resumes(tmp_path):
    out = tmp_path / "run"
    diverged = _run(tmp_path, out, **{"sparse.lr": 1e12})
    one_line_error(diverged, "sparse epoch 1", "at learning rate", "sparse.lr 1e+12 in the recipe", "lower sparse.lr")
    resumed = _run(tmp_path, out, **{"sparse.lr": 0.01})  # the advice, followed
    assert resumed.exit_code == 0, resumed.output
    assert "sparse.lr changed from 1000000000000.0 to 0.01" in resumed.output and "resuming" in resumed.output
    assert _phases(out) == [("dense", 1), ("sparse", 1), ("redense", 1)]  # Dense was not trained again
    sparse = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if m["phase"] == "sparse"]
    assert sparse[0]["lr"] == pytest.approx(0.01)


def test_a_resumed_phase_continues_with_its_changed_settings():
    from supportprune.run.engine import _continue_with

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    old, new = PhaseConfig(epochs=2, lr=0.1, momentum=0.9), PhaseConfig(epochs=2, lr=0.02, momentum=0.5)
    optimizer = make_optimizer(model, old)
    scheduler = make_scheduler(optimizer, old, steps_per_epoch=5)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    resumed = make_optimizer(model, new)
    resumed_scheduler = make_scheduler(resumed, new, steps_per_epoch=5)
    resumed.load_state_dict(optimizer.state_dict())
    resumed_scheduler.load_state_dict(scheduler.state_dict())
    _continue_with(resumed, resumed_scheduler, new)
    expected = 0.02 * 0.5 * (1 + math.cos(math.pi * 3 / 10))  # cosine over 10 steps, 3 taken
    assert [g["lr"] for g in resumed.param_groups] == pytest.approx([expected, expected])
    assert [g["momentum"] for g in resumed.param_groups] == [0.5, 0.5]
    resumed.step()
    resumed_scheduler.step()
    assert resumed.param_groups[0]["lr"] == pytest.approx(0.02 * 0.5 * (1 + math.cos(math.pi * 4 / 10)))


def test_export_and_bench_settings_never_force_retraining(tmp_path, trained):
    out = shutil.copytree(trained, tmp_path / "run")
    before = (out / "metrics.jsonl").read_text()
    result = _run(tmp_path, out, **{"bench.runs": 3, "export.check_batch": 4})
    assert result.exit_code == 0, result.output
    assert "export (training finished)" in result.output and "bench.runs changed from 2 to 3" in result.output
    assert (out / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("keep_checkpoints", [True, False])
def test_a_finished_phase_setting_is_refused_naming_the_key(tmp_path, trained, keep_checkpoints):
    out = shutil.copytree(trained, tmp_path / "run")
    if not keep_checkpoints:  # deleted to free disk: the finished run must not be overwritten either
        shutil.rmtree(out / "checkpoints")
    report = (out / "report.md").read_text()
    one_line_error(_run(tmp_path, out, **{"dense.lr": 0.5}), "dense.lr: 0.05, not 0.5", "the dense phase has finished",
                   "--restart")
    one_line_error(_run(tmp_path, out, **{"data.input_size": 16}), "data.input_size: 12, not 16", "--restart")
    assert (out / "report.md").read_text() == report


def test_another_model_or_command_is_refused_even_without_checkpoints(tmp_path, trained):
    out = shutil.copytree(trained, tmp_path / "run")
    shutil.rmtree(out / "checkpoints")
    report = (out / "report.md").read_text()
    one_line_error(_run(tmp_path, out, model="tiny_models:tiny_plain"), "'tiny_models:tiny_resnet'",
                   "not 'tiny_models:tiny_plain'", "--restart")
    one_line_error(_run(tmp_path, trained, command="train", extra=["--alternation", "none"]),
                   "holds a `supportprune compress` run, not a `supportprune train` one", "--restart")
    assert (out / "report.md").read_text() == report
    assert json.loads((trained / "run.json").read_text())["command"] == "compress"


def test_restart_never_moves_the_working_directory_or_other_files(tmp_path, monkeypatch, trained):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    one_line_error(_run(tmp_path, ".", extra=["--restart"]), "the directory you are working in")
    one_line_error(_run(tmp_path, work, extra=["--restart"]), "the directory you are working in")
    monkeypatch.chdir(tmp_path)
    one_line_error(_run(tmp_path, work, extra=["--restart"]), "no supportprune run", "left as it is")
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"] and not (tmp_path / "work.1").exists()
    run = shutil.copytree(trained, tmp_path / "run")  # a run directory is moved aside, whole
    shutil.rmtree(run / "checkpoints")
    with monkeypatch.context() as patch, pytest.raises(_Stop):  # stop right after the move: only it is under test
        import supportprune.run.setup

        patch.setattr(supportprune.run.setup, "prepare_run_dir", _stop)
        _run(tmp_path, run, extra=["--restart"])
    assert (tmp_path / "run.1" / "report.md").is_file()


class _Stop(BaseException):
    """Stands for a kill: nothing catches it."""


def _stop(*args, **kwargs):
    raise _Stop()


def test_a_full_disk_says_so_and_the_same_command_then_resumes(tmp_path, monkeypatch):
    import errno
    import os

    import supportprune.store.checkpoint as checkpoint

    real, writes = checkpoint.atomic_write_bytes, []

    def full_at_the_second_write(path, data):
        writes.append(path)
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "atomic_write_bytes", full_at_the_second_write)
        failed = _run(tmp_path, out)
    one_line_error(failed, "out of disk space writing", "run the same command again")
    assert "bug in supportprune" not in failed.output
    resumed = _run(tmp_path, out)  # space freed: the same command
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and _phases(out) == [("dense", 1), ("sparse", 1), ("redense", 1)]
