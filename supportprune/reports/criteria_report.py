"""The report of ``supportprune experiment --weights``: report.md (per target, every criterion against the best
baseline, paired by seed), results.json and the accuracy-against-cost plot. ``plan`` is the comparison's
``pipelines.criteria.ComparisonPlan``."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Sequence

from supportprune.reports.experiment_report import mean_std, tight_png, versions
from supportprune.reports.plotting import plots_unavailable, pyplot, skipped_plots_note
from supportprune.store.atomic import atomic_write_bytes, atomic_write_text


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


def write_comparison_report(plan: Any, runs: dict[str, dict[str, Any]], tables: dict[tuple[str, float], dict[str, Any]],
                            seconds: float) -> Path:
    """report.md, results.json and the plot, from every run's summary and the tables of ``comparison_table`` by
    (allocation, target)."""
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
            table = tables[(allocation, target)]
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
              f"Versions: {versions()}", ""]
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
    return tight_png(figure)
