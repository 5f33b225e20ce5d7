"""No file a user hands in is unpickled: a pickle that would run code is refused with one line, and the
code never runs; everything supportprune itself stores still loads as plain data."""

import hashlib
import io
import os
import pickle
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from supportprune.store.checkpoint import _MAGIC, read_checkpoint
from supportprune.cli import app
from supportprune.store.layout import RunLayout
from supportprune.run.run_state import RunState, rng_state, save_run
from supportprune.errors import SupportpruneError
from supportprune.deploy.latency_table import LatencyTable
from supportprune.run.stored_supports import InstanceMaskStore
from supportprune.inputs.recipe import PhaseConfig
from supportprune.run.training_loop import make_optimizer, make_scheduler
from tests.cli_helpers import one_line_error, write_recipe
from tests.test_cli import TINY_RECIPE
from tests.tiny_models import TinyResNet

runner = CliRunner()
MODEL = "tiny_models:tiny_resnet"


class _CreatesMarker:
    """Unpickling this calls os.system, which creates the file ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _with_checkpoint_header(payload: bytes) -> bytes:
    """``payload`` framed as ``save_checkpoint`` frames it: the magic, its correct SHA-256, the bytes."""
    return _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def _crafted_checkpoint(path: Path, marker: Path) -> Path:
    # Protocol 2 is what torch's own legacy format uses; a plain unpickler runs the payload at once.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_with_checkpoint_header(pickle.dumps(_CreatesMarker(marker), protocol=2)))
    return path


def _compress(tmp_path: Path, out: Path, *extra: str):
    recipe = write_recipe(tmp_path / "tiny.yaml", TINY_RECIPE)
    return runner.invoke(app, ["compress", MODEL, "--recipe", str(recipe), "--out", str(out), "--max-steps", "1", *extra])


def _refused(result, marker: Path, *fragments: str) -> None:
    assert not marker.exists(), "the pickle's code ran"
    one_line_error(result, *fragments)
    assert result.exit_code == 1


def test_the_crafted_payload_would_run_under_a_plain_unpickler(tmp_path):
    # The payload is real: what the tests below refuse creates the marker when unpickled the old way.
    marker = tmp_path / "ran"
    data = _crafted_checkpoint(tmp_path / "evil.pt", marker).read_bytes()
    pickle.loads(data[len(_MAGIC) + 65:])
    assert marker.exists()


def test_weights_with_checkpoint_header_and_pickled_code_are_refused(tmp_path):
    marker = tmp_path / "ran"
    weights = _crafted_checkpoint(tmp_path / "crafted.pt", marker)
    result = _compress(tmp_path, tmp_path / "out", "--weights", str(weights))
    _refused(result, marker, "cannot read weights file", "crafted.pt", "refused to unpickle", "posix.system", "torch.save(model.state_dict()")


def test_plain_torch_save_file_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    weights = tmp_path / "plain.pt"
    torch.save({"fc.weight": torch.zeros(10, 8), "trap": _CreatesMarker(marker)}, weights)
    result = _compress(tmp_path, tmp_path / "out", "--weights", str(weights))
    _refused(result, marker, "cannot read weights file", "plain.pt", "refused to unpickle", "torch.save(model.state_dict()")


def test_resume_from_a_crafted_last_checkpoint_is_refused(tmp_path):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "tiny.yaml", TINY_RECIPE)
    # A run directory as a run of this recipe and model leaves it, with the crafted file as its last checkpoint.
    out.mkdir()
    (out / "recipe.yaml").write_text(recipe.read_text())
    (out / "run.json").write_text(f'{{"model": "{MODEL}"}}')
    marker = tmp_path / "ran"
    _crafted_checkpoint(RunLayout(out).checkpoint, marker)
    result = _compress(tmp_path, out)
    _refused(result, marker, "last.pt", "refused to unpickle", "no intact earlier checkpoint")


def test_a_real_mid_phase_checkpoint_loads_as_plain_data(tmp_path):
    # Everything save_run stores (model, SGD momentum, LambdaLR, run state, RNG state) loads with weights_only=True.
    model = TinyResNet()
    config = PhaseConfig(epochs=2, lr=0.1, momentum=0.9)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=3)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = RunState(phase_index=1, epoch=1, step=2, partial={"step": 2, "loss_sum": 1.5, "lr": 0.1},
                     metrics=[{"phase": "dense", "epoch": 1, "channels_kept": {"stem": 8}}],
                     alternations=[{"epoch": 1, "channels_kept": {"stem": 4}, "threshold": 0.25}],
                     baseline_top1=10.0, channels_total={"stem": 8}, curve=[["dense", 1, 2.3, 90.0]], mask_round=["sparse", 1])
    layout = RunLayout(tmp_path)
    save_run(layout, model, optimizer, scheduler, state, [rng_state()])
    loaded = read_checkpoint(layout.checkpoint)
    assert all(torch.equal(loaded["model"][k], v) for k, v in model.state_dict().items())
    assert loaded["run"] == asdict(state)
    assert torch.equal(loaded["rng"]["torch"], torch.get_rng_state())
    restored = make_optimizer(TinyResNet(), config)
    restored.load_state_dict(loaded["optimizer"])
    momentum = [restored.state[p]["momentum_buffer"] for p in restored.param_groups[0]["params"]]
    expected = [optimizer.state[p]["momentum_buffer"] for p in optimizer.param_groups[0]["params"]]
    assert all(torch.equal(a, b) for a, b in zip(momentum, expected))
    rescheduled = make_scheduler(restored, config, steps_per_epoch=3)
    rescheduled.load_state_dict(loaded["scheduler"])
    assert rescheduled.last_epoch == scheduler.last_epoch == 1 and rescheduled.get_last_lr() == scheduler.get_last_lr()


def test_stored_supports_with_pickled_objects_are_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "instance-supports.npy"
    np.save(path, np.array([_CreatesMarker(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(SupportpruneError, match="cannot read stored supports .*instance-supports.npy"):
        InstanceMaskStore.open({"a": (8,)}, path, "memory")
    assert not marker.exists()
    np.savez(path.with_suffix(".npz"), rows=np.zeros((2, 1), np.uint8))
    with pytest.raises(SupportpruneError, match="not one .npy array"):
        InstanceMaskStore.open({"a": (8,)}, path.with_suffix(".npz"), "memory")


def test_a_latency_table_is_json_and_a_pickle_there_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "latency-table.json"
    path.write_bytes(pickle.dumps(_CreatesMarker(marker), protocol=2))
    with pytest.raises(SupportpruneError, match="latency-table.json"):
        LatencyTable.load(path)
    assert not marker.exists()


def test_every_load_in_the_package_is_restricted():
    # A guard for new code: torch.load only with weights_only=True, np.load only with allow_pickle=False,
    # and no unpickling outside the CIFAR reader (whose unpickler rebuilds numpy arrays only).
    root = Path(__file__).parent.parent
    sources = [*sorted((root / "supportprune").rglob("*.py")), *sorted((root / "tools").rglob("*.py"))]
    for source in sources:
        for number, line in enumerate(source.read_text().splitlines(), 1):
            where = f"{source.relative_to(root)}:{number}"
            if "torch.load(" in line:
                assert "weights_only=True" in line, where
            if "np.load(" in line and "npz" not in line:
                assert "allow_pickle=False" in line, where
            if "pickle.load" in line or "Unpickler" in line:
                assert source.name == "in_memory.py", where  # the CIFAR reader lives with the in-memory sources
