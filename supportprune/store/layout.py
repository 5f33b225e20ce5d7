"""The files of a run directory, and opening one: a new run, or the same recipe and model resumed."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from supportprune import __version__
from supportprune.errors import SupportpruneError
from supportprune.inputs.recipe import Recipe, same_recipe


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


def prepare_run_dir(layout: RunLayout, recipe: Recipe, model_name: str) -> bool:
    """Create or reopen the run directory; True when an earlier run of the same recipe is resumed."""
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
        probe = layout.root / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise SupportpruneError(f"cannot write to output directory {layout.root}: {error.strerror}; choose another --out") from None
    if layout.checkpoint.exists() or layout.checkpoint.with_suffix(".pt.previous").exists():
        previous_info = json.loads(layout.run_info.read_text()) if layout.run_info.exists() else {}
        if not same_recipe(layout.recipe, recipe) or previous_info.get("model") != model_name:
            raise SupportpruneError(
                f"{layout.root} holds a run with another model or recipe; use another --out, or --restart to start over there"
            )
        return True
    return False


def run_info(model_name: str) -> dict[str, Any]:
    """run.json: the model and the versions it ran with."""
    import torch
    import torchvision

    return {
        "model": model_name,
        "supportprune": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
