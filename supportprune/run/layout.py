"""The files of a run directory, and opening one: a new run, or the same command, model and recipe resumed."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

from supportprune import __version__
from supportprune.errors import SupportpruneError
from supportprune.inputs.recipe import Recipe, recipe_differences
from supportprune.run.checkpoint import CheckpointError, load_latest


class RunLayout:
    """The files of a run directory, in one place."""

    def __init__(self, out_dir: Path) -> None:
        self.root = Path(out_dir)
        self.recipe = self.root / "recipe.yaml"
        self.run_info = self.root / "run.json"
        self.metrics = self.root / "metrics.jsonl"
        self.checkpoint = self.root / "checkpoints" / "last.pt"
        self.report = self.root / "report.md"
        self.bench_json = self.root / "benchmark.json"
        self.bench_md = self.root / "benchmark.md"
        self.export_json = self.root / "export.json"
        self.plots = self.root / "plots"
        self.instance_supports = self.root / "masks" / "instance-supports.npy"
        self.result = self.root / "result.json"  # a train run's (or an undelivered compress run's) final numbers
        self.latency_table = self.root / "latency-table.json"  # sparse.allocation latency: measured once, reused

    def model_state(self, kind: str) -> Path:
        return self.root / "models" / f"{kind}.pt"

    def onnx(self, kind: str, fp16: bool = False, int8: bool = False) -> Path:
        return self.root / (f"{kind}.fp16.onnx" if fp16 else f"{kind}.int8.onnx" if int8 else f"{kind}.onnx")


# Settings that never force retraining: they act after training (export, bench) or not on what is computed.
_FREE_SECTIONS = ("export", "bench")
_FREE_KEYS = ("description", "checkpoint_every_steps", "data.workers")


def prepare_run_dir(layout: RunLayout, recipe: Recipe, model_name: str, command: str = "compress",
                    phases: Sequence[str] = ()) -> tuple[bool, list[str]]:
    """Create or reopen the run directory: (True when an earlier run is resumed, lines to tell the user).

    A directory that holds a run (its run.json) is reopened only by the same command for the same model, and a
    recipe that differs only where it may: export and bench settings, and the sections of ``phases`` (the
    command's phases, in order) that have not finished. Anything else is refused, naming what differs."""
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
        probe = layout.root / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise SupportpruneError(f"cannot write to output directory {layout.root}: {error.strerror}; choose another --out") from None
    has_checkpoint = layout.checkpoint.exists() or layout.checkpoint.with_suffix(".pt.previous").exists()
    if not layout.run_info.exists():
        if has_checkpoint:
            raise SupportpruneError(f"{layout.root} holds checkpoints but no run.json, so what made them is unknown; "
                                    "use another --out, or --restart to move that directory aside")
        return False, []
    advice = "use another --out, or --restart to move that run aside and start over"
    try:
        previous = json.loads(layout.run_info.read_text())
    except (OSError, ValueError) as error:
        raise SupportpruneError(f"{layout.run_info} cannot be read ({error}); {advice}") from None
    made_by = previous.get("command")  # runs made before run.json recorded it: any command
    if made_by is not None and made_by != command:
        raise SupportpruneError(f"{layout.root} holds a `supportprune {made_by}` run, not a `supportprune {command}` "
                                f"one; {advice}")
    if previous.get("model") != model_name:
        raise SupportpruneError(f"{layout.root} holds a run of model {previous.get('model')!r}, not {model_name!r}; {advice}")
    finished = _finished_phases(layout, len(phases))
    notes = []
    for key, old, new in recipe_differences(layout.recipe, recipe):
        section = key.split(".")[0]
        if section in _FREE_SECTIONS or key in _FREE_KEYS:
            notes.append(f"{key} changed from {old!r} to {new!r}: it applies from now on (no retraining)")
        elif section in phases and phases.index(section) >= finished:
            notes.append(f"{key} changed from {old!r} to {new!r}: the {section} phase had not finished, it continues "
                         "with the new value")
        elif key == "recipe.yaml":
            raise SupportpruneError(f"{layout.recipe}: {old}; {advice}")
        else:
            why = f"the {section} phase has finished" if section in phases else "training depends on it"
            raise SupportpruneError(f"{layout.root} holds a run made with {key}: {old!r}, not {new!r} ({why}); {advice}")
    return has_checkpoint, notes


def _finished_phases(layout: RunLayout, phases: int) -> int:
    """How many of the run's phases have finished, from its checkpoint. Without one: none, unless models of a
    finished run are there (their checkpoints deleted to free space); a damaged one: all, so that nothing
    finished can be overwritten by other settings."""
    try:
        loaded = load_latest(layout.checkpoint)
    except CheckpointError:
        return phases
    if loaded is None:
        return phases if any(layout.root.glob("models/*.pt")) else 0
    return min(phases, int(loaded[0]["run"].get("phase_index", 0)))


def run_info(model_name: str, command: str = "compress") -> dict[str, Any]:
    """run.json: the command and model that made the run, the command line, and the versions it ran with. Its
    presence marks a directory as a supportprune run (``--restart`` moves only such a directory)."""
    import torch
    import torchvision

    return {
        "command": command,
        "model": model_name,
        "command_line": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "supportprune": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
