"""`supportprune experiment MODEL --weights FILE`: pruning criteria compared from one pretrained model.

Every run starts from the same weights and runs the recipe's Sparse and re-Dense steps with the same
budget (epochs, steps, learning rates); runs differ only in what decides the pruning:

- the support (the recipe's support options), and each ``--variant`` of it (an ablation: the support
  with some recipe keys changed, e.g. a gradual schedule or distillation);
- every torch-pruning importance in ``CHANNEL_CRITERIA`` (group L1/L2, random, Taylor, FPGM, LAMP,
  Hessian, BN scale).

All prune to the same target: a fraction of the MACs (``allocation: global``), or of the time that a
per-layer latency table predicts (``allocation: latency``). Each run's sparse model is exported to ONNX
and timed side by side with the starting model (ONNX Runtime, the benchmark device), so the report gives
accuracy against MACs and against measured latency. Runs are ordinary run directories, resumable, and a
finished run is read, not repeated, under the same settings (``experiment.compressed_metrics``).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from supportprune.errors import SupportpruneError
from supportprune.pipelines.experiment import compressed_metrics
from supportprune.inputs.recipe import Recipe, with_overrides
from supportprune.method.criteria import CHANNEL_CRITERIA
from supportprune.pipelines.results import CompressMetrics
from supportprune.reports.criteria_report import write_comparison_report
from supportprune.reports.experiment_report import mean_std
from supportprune.store.atomic import atomic_write_text

DEFAULT_CRITERIA = ("support",) + CHANNEL_CRITERIA
DEFAULT_TARGETS = (0.5, 0.3)
LATENCY_FILE = "latency.json"  # in each run directory: its sparse model timed against the starting model


@dataclass(frozen=True)
class Variant:
    """A criterion with some recipe keys changed (``NAME: key=value key=value``): the support, or the baseline that
    ``sparse.criterion`` names (a baseline given the support's distillation and revival, for a like-for-like pipeline)."""

    name: str
    overrides: dict[str, Any]

    @property
    def criterion(self) -> str:
        return str(self.overrides.get("sparse.criterion", "support"))

    @property
    def method(self) -> str:
        return f"{self.criterion}[{self.name}]"


@dataclass
class ComparisonPlan:
    model: str
    recipe: Recipe  # weights set: the starting model
    out_dir: Path
    criteria: tuple[str, ...] = DEFAULT_CRITERIA
    variants: tuple[Variant, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    targets: tuple[float, ...] = DEFAULT_TARGETS
    allocations: tuple[str, ...] = ("global",)
    bench_batch_sizes: tuple[int, ...] = (1, 64)
    bench_runs: int = 30
    device: str = "auto"
    max_steps: Optional[int] = None
    runs_dir: Optional[Path] = None
    command: str = ""
    run_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def methods(self) -> tuple[str, ...]:
        return self.criteria + tuple(v.method for v in self.variants)

    @property
    def baselines(self) -> tuple[str, ...]:
        """The methods that are not the support: torch-pruning criteria, plain or as variants."""
        return (tuple(c for c in self.criteria if c != "support")
                + tuple(v.method for v in self.variants if v.criterion != "support"))


def parse_variant(text: str) -> Variant:
    """``NAME: key=value key=value`` (values are YAML: ``sparse.prune_at=[1,2]``) into a Variant."""
    import yaml

    name, sep, rest = text.partition(":")
    name = name.strip()
    if not sep or not name or not rest.strip():
        raise SupportpruneError(f"--variant {text!r}: expected NAME: key=value [key=value ...], "
                                "e.g. 'gradual: sparse.prune_at=[1,2] sparse.target_schedule=cubic'")
    overrides = {}
    for item in rest.split():
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SupportpruneError(f"--variant {name}: {item!r} is not key=value")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise SupportpruneError(f"--variant {name}: the value of {key} is not YAML: {value!r}") from None
    return Variant(name, overrides)


def _check_plan(plan: ComparisonPlan) -> None:
    if plan.recipe.weights is None:
        raise SupportpruneError("experiment --weights: the criteria comparison starts from a trained model; pass --weights FILE")
    if not plan.seeds:
        raise SupportpruneError("--seeds: give at least one seed")
    if not plan.targets or any(not 0 < t < 1 for t in plan.targets):
        raise SupportpruneError(f"--targets {list(plan.targets)}: MACs fractions in (0, 1) are needed")
    unknown = [c for c in plan.criteria if c not in DEFAULT_CRITERIA]
    if unknown:
        raise SupportpruneError(f"--criteria: unknown {', '.join(unknown)}; choose from {', '.join(DEFAULT_CRITERIA)}")
    names = [v.name for v in plan.variants]
    if len(set(names)) != len(names):
        raise SupportpruneError(f"--variant: names must differ, got {names}")
    for allocation in plan.allocations:
        if allocation not in ("global", "latency"):
            raise SupportpruneError(f"--allocations: global or latency, got {allocation!r}")


def run_recipes(plan: ComparisonPlan) -> dict[str, Recipe]:
    """Every run's recipe by run name, each validated once and all before the first run starts: a bad key in a
    ``--variant`` fails now, not hours into the comparison."""
    recipes = {}
    for allocation in plan.allocations:
        for target in plan.targets:
            for seed in plan.seeds:
                for method in plan.methods:
                    name = run_name(allocation, target, method, seed)
                    variant = next((v for v in plan.variants if v.method == method), None)
                    origin = f"--variant {variant.name} (run {name})" if variant else f"experiment run {name}"
                    overrides = {"dense.epochs": 0, "seed": seed, **_method_overrides(plan, method, target, allocation)}
                    recipes[name] = with_overrides(plan.recipe, overrides, origin)
    return recipes


def run_comparison(plan: ComparisonPlan, message: Callable[[str], None] = print, reporter=None) -> Path:
    """Run (or resume) every run of the plan, time the sparse models, write report.md and results.json."""
    _check_plan(plan)
    started = time.perf_counter()
    runs = {name: _compress_and_time(plan, recipe, name, message, reporter)
            for name, recipe in run_recipes(plan).items()}
    tables = {(allocation, target): comparison_table(plan, runs, allocation, target)
              for allocation in plan.allocations for target in plan.targets}
    return write_comparison_report(plan, runs, tables, time.perf_counter() - started)


def run_name(allocation: str, target: float, method: str, seed: int) -> str:
    return f"{allocation}-macs{target:g}-{method.replace('[', '-').replace(']', '')}-seed{seed}"


def _method_overrides(plan: ComparisonPlan, method: str, target: float, allocation: str) -> dict[str, Any]:
    overrides: dict[str, Any] = {"sparse.target_macs": target, "sparse.allocation": allocation}
    variant = next((v for v in plan.variants if v.method == method), None)
    if variant is not None:
        return {**overrides, "sparse.criterion": "support", **variant.overrides}
    return {**overrides, "sparse.criterion": method}


def _compress_and_time(plan: ComparisonPlan, recipe: Recipe, name: str, message, reporter) -> dict[str, Any]:
    from supportprune.store.layout import RunLayout

    layout = RunLayout((plan.runs_dir or plan.out_dir / "runs") / name)
    result = compressed_metrics(plan, recipe, name, layout.root, message, reporter)
    latency_path = layout.root / LATENCY_FILE
    if not latency_path.exists():
        atomic_write_text(latency_path, json.dumps(time_sparse_model(layout, plan), indent=1))
    return summarise_run(result, json.loads(latency_path.read_text()))


def time_sparse_model(layout, plan: ComparisonPlan) -> dict[str, Any]:
    """The run's sparse model and its starting model, exported to ONNX and timed side by side."""
    import tempfile

    import torch

    from supportprune.deploy.benchmark import benchmark_side_by_side
    from supportprune.pipelines.deliver import load_run_models
    from supportprune.deploy.export import export_onnx

    spec, models = load_run_models(layout, "cpu")
    example = spec.example_input()
    check = torch.randn(4, *example.shape[1:], generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for kind in ("baseline", "sparse"):
            path = Path(tmp) / f"{kind}.onnx"
            export_onnx(models[kind], path, example_input=example, check_input=check,
                        opset=plan.recipe.export.opset, tolerance=plan.recipe.export.tolerance)
            paths.append((kind, path))
        results = benchmark_side_by_side(paths, batch_sizes=plan.bench_batch_sizes, runs=plan.bench_runs,
                                         warmup=max(2, plan.bench_runs // 5), device="cpu")
    times = {(r.model, r.batch_size): r.median_ms for r in results}
    return {"provider": results[0].provider, "batch_sizes": list(plan.bench_batch_sizes),
            "baseline_ms": {str(b): times[("baseline", b)] for b in plan.bench_batch_sizes},
            "sparse_ms": {str(b): times[("sparse", b)] for b in plan.bench_batch_sizes}}


def summarise_run(result: CompressMetrics, latency: dict[str, Any]) -> dict[str, Any]:
    """What the report needs from one run: top-1 after Sparse and after re-Dense, MACs and time kept."""
    def last_top1(phase: str) -> Optional[float]:
        record = result.last_record(phase)
        return record["val_top1"] if record is not None else None

    point = result.alternations[-1]
    return {
        "baseline_top1": result.baseline_top1,
        "sparse_top1": last_top1("sparse"),
        "redense_top1": last_top1("redense"),
        "macs_kept": result.kept_macs,
        "params_kept": point["params"] / result.baseline_params,
        "predicted_speedup": point.get("predicted_speedup"),
        "speedup": {b: latency["baseline_ms"][b] / latency["sparse_ms"][b] for b in latency["baseline_ms"]},
        "latency": latency,
        "seconds": result.seconds,
    }


# ---------------------------------------------------------------------------------------------------
# The report


def comparison_table(plan: ComparisonPlan, runs: dict[str, dict[str, Any]], allocation: str, target: float) -> dict[str, Any]:
    """Per method: its runs over the seeds, means, and the paired differences against the best baseline
    (the non-support criterion with the best mean sparse top-1)."""
    rows = {}
    for method in plan.methods:
        seeded = [runs[run_name(allocation, target, method, s)] for s in plan.seeds]
        rows[method] = {
            "sparse": [r["sparse_top1"] for r in seeded],
            "redense": [r["redense_top1"] for r in seeded if r["redense_top1"] is not None],
            "macs_kept": statistics.fmean(r["macs_kept"] for r in seeded),
            "speedup": {b: statistics.fmean(r["speedup"][b] for r in seeded) for b in seeded[0]["speedup"]},
            "baseline_top1": seeded[0]["baseline_top1"],
        }
    baselines = plan.baselines
    best = max(baselines, key=lambda m: mean_std(rows[m]["sparse"])[0]) if baselines else None
    for method, row in rows.items():
        if best is not None and method != best:
            row["paired_vs_best"] = [a - b for a, b in zip(row["sparse"], rows[best]["sparse"])]
            if row["redense"] and rows[best]["redense"]:
                row["paired_redense_vs_best"] = [a - b for a, b in zip(row["redense"], rows[best]["redense"])]
    return {"rows": rows, "best_baseline": best}
