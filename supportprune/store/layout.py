"""The files of a run directory, named in one place."""

from __future__ import annotations

from pathlib import Path


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
