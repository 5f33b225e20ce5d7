"""`--restart` sets the earlier run aside (OUT.1, OUT.2, ...) and starts in an empty directory: a restarted run
that dies before its first checkpoint is never resumed from the discarded run."""

import hashlib
import json

import pytest
from typer.testing import CliRunner

import supportprune.run.setup
from supportprune.cli import app
from supportprune.store.run_aside import move_aside
from tests.cli_helpers import write_recipe

runner = CliRunner()

RECIPE = {
    "version": 1,
    "seed": 3,
    "data": {"source": "embedded", "input_size": 12, "batch_size": 32},
    "dense": {"epochs": 1, "lr": 0.05},
    "sparse": {"epochs": 1, "lr": 0.01, "prune_at": [1], "target_macs": 0.6},
    "redense": {"epochs": 1, "lr": 0.005},
    "train": {"epochs": 1, "lr": 0.05},
    "export": {"check_batch": 8},
    "bench": {"batch_sizes": [1], "runs": 1, "warmup": 1},
}


def _train(out, recipe, *extra):
    return runner.invoke(app, ["train", "tiny_models:tiny_plain", "--alternation", "none", "--recipe", str(recipe),
                               "--out", str(out), "--max-steps", "2", "--device", "cpu", *extra])


def _digests(root):
    """Every file under ``root`` by relative path, with its SHA-256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


class _Killed(BaseException):
    """Stands for SIGKILL: nothing in the run catches it, nothing is written after it."""


def _die_after_preparing(monkeypatch):
    def killed(*args, **kwargs):
        raise _Killed()

    monkeypatch.setattr(supportprune.run.setup, "recipe_loaders", killed)  # the first step after the directory is prepared


def test_restart_killed_before_its_first_checkpoint_is_not_resumed_from_the_discarded_run(tmp_path, monkeypatch):
    old_recipe = write_recipe(tmp_path / "old.yaml", RECIPE)
    new_recipe = write_recipe(tmp_path / "new.yaml", RECIPE, **{"train.lr": 0.01})
    out = tmp_path / "x"
    assert _train(out, old_recipe).exit_code == 0
    old_files = _digests(out)
    assert "checkpoints/last.pt" in old_files and "models/trained.pt" in old_files

    with monkeypatch.context() as patch, pytest.raises(_Killed):
        _die_after_preparing(patch)
        _train(out, new_recipe, "--restart")
    assert _digests(tmp_path / "x.1") == old_files  # the earlier run, intact
    assert not (out / "checkpoints").exists() and not (out / "models").exists()

    again = _train(out, new_recipe)  # the plain command after the crash
    assert again.exit_code == 0, again.output
    assert "resuming" not in again.output
    # It trained from scratch under the new recipe: the same numbers as a fresh run in an unused directory.
    fresh = tmp_path / "fresh"
    assert _train(fresh, new_recipe).exit_code == 0
    result, expected = (json.loads((d / "result.json").read_text()) for d in (out, fresh))
    assert result["metrics"][0]["train_loss"] == expected["metrics"][0]["train_loss"]
    assert result["val_error"] == expected["val_error"]
    old_loss = json.loads((tmp_path / "x.1" / "result.json").read_text())["metrics"][0]["train_loss"]
    assert result["metrics"][0]["train_loss"] != old_loss
    assert _digests(tmp_path / "x.1") == old_files


def test_a_second_restart_takes_the_next_free_name(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    out = tmp_path / "x"
    assert _train(out, recipe).exit_code == 0
    first = _digests(out)
    restarted = _train(out, recipe, "--restart")
    assert restarted.exit_code == 0, restarted.output
    assert f"moved to {tmp_path / 'x.1'}" in restarted.output
    second = _digests(out)
    (tmp_path / "x.2").write_text("not a run")  # a name in use is skipped, never overwritten
    again = _train(out, recipe, "--restart")
    assert again.exit_code == 0, again.output
    assert f"moved to {tmp_path / 'x.3'}" in again.output
    assert _digests(tmp_path / "x.1") == first
    assert _digests(tmp_path / "x.3") == second
    assert (tmp_path / "x.2").read_text() == "not a run"


def test_compress_restart_leaves_no_latency_table_checkpoint_or_model_behind(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    out = tmp_path / "x"
    for name in ("run.json", "checkpoints/last.pt", "checkpoints/last.pt.previous", "latency-table.json", "models/sparse.pt"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(f"earlier run: {name}")
    earlier = _digests(out)
    _die_after_preparing(monkeypatch)
    with pytest.raises(_Killed):
        runner.invoke(app, ["compress", "tiny_models:tiny_plain", "--recipe", str(recipe), "--out", str(out),
                            "--device", "cpu", "--restart"])
    assert _digests(tmp_path / "x.1") == earlier
    assert sorted(p.name for p in out.iterdir()) == ["recipe.yaml", "run.json"]


def test_move_aside_leaves_a_missing_or_empty_directory_alone(tmp_path):
    assert move_aside(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert move_aside(tmp_path / "empty") is None
    assert (tmp_path / "empty").is_dir() and not (tmp_path / "empty.1").exists()
