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
finished run is read, not repeated, under the same settings (``experiment.reuse_or_set_aside``).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from supportprune.errors import SupportpruneError
from supportprune.pipelines.experiment import _png, _versions, mean_std, reuse_or_set_aside, run_key
from supportprune.inputs.recipe import Recipe, with_overrides
from supportprune.method.criteria import CHANNEL_CRITERIA
from supportprune.pipelines.results import CompressMetrics, read_compress_metrics
from supportprune.reports.plotting import plots_unavailable, pyplot, skipped_plots_note
from supportprune.store.atomic import atomic_write_bytes, atomic_write_text

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
    return write_comparison_report(plan, runs, time.perf_counter() - started)


def run_name(allocation: str, target: float, method: str, seed: int) -> str:
    return f"{allocation}-macs{target:g}-{method.replace('[', '-').replace(']', '')}-seed{seed}"


def _method_overrides(plan: ComparisonPlan, method: str, target: float, allocation: str) -> dict[str, Any]:
    overrides: dict[str, Any] = {"sparse.target_macs": target, "sparse.allocation": allocation}
    variant = next((v for v in plan.variants if v.method == method), None)
    if variant is not None:
        return {**overrides, "sparse.criterion": "support", **variant.overrides}
    return {**overrides, "sparse.criterion": method}


def _compress_and_time(plan: ComparisonPlan, recipe: Recipe, name: str, message, reporter) -> dict[str, Any]:
    from supportprune.pipelines.compress import compress
    from supportprune.store.layout import RunLayout

    layout = RunLayout((plan.runs_dir or plan.out_dir / "runs") / name)
    if reuse_or_set_aside(layout.root, run_key(plan.model, recipe, plan.max_steps), message):
        result = read_compress_metrics(layout)
    else:
        message(f"experiment: {name}")
        result = compress(plan.model, recipe, layout.root, device=plan.device, reporter=reporter,
                          max_steps_per_epoch=plan.max_steps, deliver=False).metrics
    plan.run_seconds[name] = result.seconds
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


def _pm(values: Sequence[float], digits: int = 2, signed: bool = False) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "–"
    return f"{mean:+.{digits}f} ± {std:.{digits}f}" if signed else f"{mean:.{digits}f} ± {std:.{digits}f}"


def verdicts(table: dict[str, Any], method: str = "support") -> list[str]:
    """The goal checks for ``method``: within one std of the best baseline, and re-Dense ≥ its start."""
    rows, best = table["rows"], table["best_baseline"]
    if method not in rows:
        return []
    row = rows[method]
    lines = []
    if best is not None:
        mean, _ = mean_std(row["sparse"])
        best_mean, best_std = mean_std(rows[best]["sparse"])
        holds = mean >= best_mean - best_std
        lines.append(f"{method} sparse top-1 {mean:.2f}% against the best baseline ({best}) {best_mean:.2f} ± {best_std:.2f}%: "
                     f"{'holds' if holds else 'does not hold'} (goal: at least the best mean less one std)")
    if row["redense"]:
        start = row["baseline_top1"]
        mean, _ = mean_std(row["redense"])
        lines.append(f"{method} re-Dense top-1 {mean:.2f}% against the starting model's {start:.2f}%: "
                     f"{'holds' if mean >= start else 'does not hold'} (DSD: re-Dense at least as accurate as the start)")
    return lines


def write_comparison_report(plan: ComparisonPlan, runs: dict[str, dict[str, Any]], seconds: float) -> Path:
    out = plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    weights = Path(plan.recipe.weights).expanduser()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.is_file() else "?"
    first = next(iter(runs.values()))
    batch_sizes = list(first["speedup"])
    lines = [
        f"# Pruning criteria from a trained {plan.model}",
        "",
        f"Command: `{plan.command}`",
        "",
        f"Starting model: `{plan.recipe.weights}` (SHA-256 {digest}…), top-1 {first['baseline_top1']:.2f}% on "
        f"`{plan.recipe.data.source}`'s validation images. Seeds {', '.join(map(str, plan.seeds))}; "
        f"every run: Sparse {plan.recipe.sparse.epochs} epochs (pruning after epoch(s) "
        f"{', '.join(map(str, plan.recipe.sparse.alternation_epochs))}), re-Dense {plan.recipe.redense.epochs}"
        + (f", at most {plan.max_steps} steps an epoch" if plan.max_steps else "") + ".",
        "",
        "Top-1 in %, mean ± std over the seeds. *Δ best* is the paired difference (same seed) from the best "
        "baseline criterion (the best mean sparse top-1 among the torch-pruning criteria). Speed-up: the starting "
        f"model's ONNX Runtime latency over the sparse model's ({first['latency']['provider']}, timed side by side, "
        "mean over seeds).",
        "",
    ]
    for variant in plan.variants:
        lines.append(f"- `{variant.method}`: {variant.criterion} with "
                     + ", ".join(f"`{k}: {json.dumps(v)}`" for k, v in variant.overrides.items()))
    if plan.variants:
        lines.append("")
    summary: dict[str, Any] = {}
    points: dict[str, list[tuple[float, float, float, float]]] = {}
    for allocation in plan.allocations:
        for target in plan.targets:
            table = comparison_table(plan, runs, allocation, target)
            summary[f"{allocation}/{target:g}"] = table
            matched = "MACs" if allocation == "global" else "predicted time (latency table)"
            lines += [f"## Target {target:g} of the {matched} (allocation `{allocation}`)", "",
                      "| criterion | MACs kept | " + " | ".join(f"speed-up b{b}" for b in batch_sizes)
                      + " | sparse top-1 | Δ best | re-Dense top-1 | Δ best |",
                      "|---|---|" + "---|" * len(batch_sizes) + "---|---|---|---|"]
            ranked = sorted(table["rows"].items(), key=lambda item: -mean_std(item[1]["sparse"])[0])
            for method, row in ranked:
                label = f"**{method}**" if method == table["best_baseline"] else method
                lines.append(
                    f"| {label} | {row['macs_kept']:.3f} | "
                    + " | ".join(f"{row['speedup'][b]:.2f}×" for b in batch_sizes)
                    + f" | {_pm(row['sparse'])} | {_pm(row.get('paired_vs_best', []), signed=True)} | "
                    f"{_pm(row['redense'])} | {_pm(row.get('paired_redense_vs_best', []), signed=True)} |")
                points.setdefault(method, []).append(
                    (row["macs_kept"], 1 / row["speedup"][batch_sizes[-1]], *mean_std(row["sparse"])))
            lines.append("")
            for method in [m for m in plan.methods if m not in plan.baselines]:
                lines += [f"- {v}" for v in verdicts(table, method)]
            lines.append("")
    reason = plots_unavailable()
    if reason is None and points:
        atomic_write_bytes(out / "accuracy-vs-cost.png", _cost_plot(points, batch_sizes[-1]))
        lines += ["![top-1 against MACs and measured latency](accuracy-vs-cost.png)", ""]
    elif reason is not None:
        lines += [skipped_plots_note(reason), ""]
    run_minutes = sum(r.get("seconds") or 0.0 for r in runs.values()) / 60
    lines += [f"Run time: {run_minutes:.0f} min over {len(runs)} runs (each run's own training time, however many "
              f"invocations made them); this invocation: {seconds / 60:.1f} min.", "",
              f"Versions: {_versions()}", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    atomic_write_text(out / "results.json", json.dumps({"command": plan.command, "runs": runs, "tables": summary}, indent=1))
    return out / "report.md"


def _cost_plot(points: dict[str, list[tuple[float, float, float, float]]], batch: int) -> bytes:
    plt = pyplot()
    figure, (macs_axis, time_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for method, values in points.items():
        values = sorted(values)
        style = {"marker": "o", "capsize": 3, "label": method, "linewidth": 2.5 if method.startswith("support") else 1}
        macs_axis.errorbar([v[0] for v in values], [v[2] for v in values], yerr=[v[3] for v in values], **style)
        time_axis.errorbar([v[1] for v in values], [v[2] for v in values], yerr=[v[3] for v in values], **style)
    macs_axis.set_xlabel("MACs kept (× starting model)")
    time_axis.set_xlabel(f"measured latency at batch {batch} (× starting model)")
    for axis in (macs_axis, time_axis):
        axis.set_ylabel("sparse top-1 (%)")
    time_axis.legend(fontsize=7)
    return _png(figure)
