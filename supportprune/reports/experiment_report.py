"""The report of ``supportprune experiment``: report.md (Figure 3, Tables 7, 2 and 8, accuracy against MACs, the
claims that held), results.json and the plots, written from the runs' results. ``plan`` is the experiment's
``pipelines.experiment.ExperimentPlan``; the runs' results are train results (dicts) and ``CompressMetrics``."""

from __future__ import annotations

import json
import math
import platform
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

from supportprune.method.alternation import ALTERNATIONS
from supportprune.reports.plotting import figure_png, plots_unavailable, pyplot, skipped_plots_note
from supportprune.store.atomic import atomic_write_bytes, atomic_write_text

TABLE8_RUNS = (("magnitude", "DSD (magnitude)"), ("support-instance", "DSD (I-alternation)"), ("support-batch", "DSD (B-alternation)"))
CHANNEL_BASELINES = ("l1", "l2", "random")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values: Sequence[float], digits: int = 2, seeds: Sequence[int] | None = None) -> str:
    """Mean ± std over the seeds that gave a number; seeds whose value is NaN (the run diverged) are named,
    not silently dropped. ``seeds`` labels ``values`` (default: their positions)."""
    mean, std = mean_std(values)
    text = "–" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"
    labels = list(seeds) if seeds is not None else list(range(len(values)))
    diverged = [label for label, v in zip(labels, values) if v is not None and math.isnan(v)]
    if diverged:
        named = ("seed " if len(diverged) == 1 else "seeds ") + ", ".join(str(label) for label in diverged)
        text += f" ({len(values) - len(diverged)} of {len(values)} seeds; {named} diverged (NaN))"
    return text


def _fmt_count(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:,.0f} ± {std:,.0f}"


def smoothed(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def iterations_to_reach(curve: Sequence[Sequence[Any]], target_error: float, window: int) -> Optional[int]:
    """The first iteration at which the smoothed training error is at or below ``target_error``."""
    errors = smoothed([point[3] for point in curve], window)
    for point, error in zip(curve, errors):
        if error <= target_error:
            return int(point[1])
    return None


def convergence(train_runs: dict[str, dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """Per method and seed, the iterations its smoothed training error needs to reach plain SGD's final
    training error (the last epoch's), and the epochs its validation error needs to reach SGD's final one."""
    out: dict[str, Any] = {a: {"iterations": [], "ratio": [], "val_epochs": []} for a in ALTERNATIONS}
    for seed in seeds:
        sgd = train_runs[f"none/{seed}"]
        window = max(1, min(len(sgd["curve"]) // max(sgd["epochs"], 1), len(sgd["curve"])))
        target = 100.0 - sgd["metrics"][-1]["train_top1"]
        val_target = sgd["val_error"]
        sgd_iterations = iterations_to_reach(sgd["curve"], target, window)
        for alternation in ALTERNATIONS:
            run = train_runs[f"{alternation}/{seed}"]
            iterations = iterations_to_reach(run["curve"], target, window)
            out[alternation]["iterations"].append(iterations)
            out[alternation]["ratio"].append(iterations / sgd_iterations if iterations and sgd_iterations else None)
            val_epoch = next((m["epoch"] for m in run["metrics"] if 100.0 - m["val_top1"] <= val_target), None)
            out[alternation]["val_epochs"].append(val_epoch)
    return out


def _table7(train_runs: dict[str, Any], seeds: Sequence[int]) -> list[str]:
    """Table 7 (and Table 2's MaskT): validation error and final training loss of the three variants."""
    def row(label: str, value, digits: int = 2) -> str:
        return f"| {label} | " + " | ".join(
            _fmt([value(train_runs[f"{a}/{s}"]) for s in seeds], digits, seeds) for a in ALTERNATIONS) + " |"

    return ["| | plain SGD (baseline) | I-alternation | B-alternation |", "|---|---:|---:|---:|",
            row("validation error (%), η* on each example", lambda run: run["val_error"]),
            row("validation error (%), MaskT", lambda run: run["maskt_val_error"]),
            row("final training loss", lambda run: run["metrics"][-1]["train_loss"], 4)]


def _reached(values: Sequence[Optional[float]], digits: int) -> str:
    """Mean ± std of the seeds that reached the target, and how many did when not all."""
    reached = [v for v in values if v is not None]
    text = _fmt(reached, digits) if reached else "not reached"
    return text + (f" ({len(reached)}/{len(values)} seeds)" if len(reached) != len(values) else "")


def _figure3_table(conv: dict[str, Any]) -> list[str]:
    """Figure 3 in numbers: iterations and epochs each variant needed to reach plain SGD's final errors."""
    def ratio(a: str) -> str:
        values = [v for v in conv[a]["ratio"] if v is not None]
        return _fmt(values, 2) if values else "–"

    return ["| | plain SGD | I-alternation | B-alternation |", "|---|---:|---:|---:|",
            "| iterations to SGD's final training error | " + " | ".join(_reached(conv[a]["iterations"], 0) for a in ALTERNATIONS) + " |",
            "| … as a fraction of SGD's | " + " | ".join(ratio(a) for a in ALTERNATIONS) + " |",
            "| epochs to SGD's final validation error | " + " | ".join(_reached(conv[a]["val_epochs"], 1) for a in ALTERNATIONS) + " |"]


def _table8(dsd: dict[str, Any], seeds: Sequence[int]) -> tuple[list[str], list[float]]:
    """Table 8: DSD with each Sparse-step criterion; also the magnitude runs' sparsities."""
    first = dsd[str(seeds[0])]["support-batch"]
    table8 = ["| | top-1 error (%) | sparse model top-1 error (%) | sparse MACs (× dense) | sparse parameters |", "|---|---:|---:|---:|---:|"]
    table8.append(f"| baseline (plain SGD, the Dense step) | {_fmt([100 - dsd[str(s)]['support-batch'].baseline_top1 for s in seeds], seeds=seeds)} | | 1.000 | {first.baseline_params:,} |")
    for key, label in TABLE8_RUNS:
        runs = [dsd[str(s)][key] for s in seeds]
        table8.append(
            f"| {label} | {_fmt([100 - r.metrics[-1]['val_top1'] for r in runs], seeds=seeds)} | "
            f"{_fmt([100 - r.last_record('sparse')['val_top1'] for r in runs], seeds=seeds)} | "
            f"{_fmt([r.kept_macs for r in runs], 3, seeds)} | {_fmt_count([r.alternations[-1]['params'] for r in runs])} |"
        )
    return table8, [dsd[str(s)]["magnitude_sparsity"] for s in seeds]


def _macs_table(macs: dict[str, Any], targets: Sequence[float], seeds: Sequence[int]):
    """Accuracy against MACs: the rows, and the plot's points (MACs kept, mean and std of the error) by criterion."""
    rows = ["| MACs target | criterion | MACs kept (× dense) | sparse top-1 error (%) |", "|---:|---|---:|---:|"]
    points: dict[str, list[tuple[float, float, float]]] = {}
    for target in targets:
        for criterion in ("support",) + CHANNEL_BASELINES:
            runs = [macs[f"{target:g}/{s}"][criterion] for s in seeds]
            kept = [r.kept_macs for r in runs]
            errors = [100 - r.last_record("sparse")["val_top1"] for r in runs]
            rows.append(f"| {target:g} | {criterion} | {_fmt(kept, 3, seeds)} | {_fmt(errors, seeds=seeds)} |")
            points.setdefault(criterion, []).append((mean_std(kept)[0], *mean_std(errors)))
    return rows, points


def _write_plots(plots_dir: Path, train_runs, seeds, macs_points) -> tuple[str, str]:
    """Draw Figure 3 and accuracy against MACs; the report's lines for them (or why they were skipped)."""
    no_plots = plots_unavailable()
    if no_plots is not None:
        return skipped_plots_note(no_plots), "(plot skipped: see above)"
    atomic_write_bytes(plots_dir / "figure3.png", _figure3(train_runs, seeds))
    atomic_write_bytes(plots_dir / "accuracy_vs_macs.png", _macs_plot(macs_points))
    return "![Figure 3](plots/figure3.png)", "![Accuracy against MACs](plots/accuracy_vs_macs.png)"


def write_experiment_report(plan: Any, results: dict[str, Any], seconds: float) -> Path:
    """report.md, results.json, recipe.yaml and the plots, from every run's results."""
    out = plan.out_dir
    seeds = plan.seeds
    train_runs, dsd = results["train"], results["dsd"]
    conv = convergence(train_runs, seeds)
    steps_per_epoch = train_runs[f"none/{seeds[0]}"]["steps_per_epoch"]
    table7 = _table7(train_runs, seeds)
    figure3 = _figure3_table(conv)
    table8, sparsities = _table8(dsd, seeds)
    macs_rows, macs_points = _macs_table(results["macs"], plan.targets, seeds)
    figure3_image, macs_image = _write_plots(out / "plots", train_runs, seeds, macs_points)
    claims = _claims(train_runs, conv, dsd, results["macs"], plan)
    run_rows = "\n".join(f"| {name} | {secs:.0f} |" for name, secs in sorted(plan.run_seconds.items()))
    recipe = plan.recipe
    text = f"""# supportprune experiment: the paper's claims on {plan.model}

Produced by `{plan.command}`: the runs took {sum(plan.run_seconds.values()) / 60:.1f} min of wall time in all (per run below;
this call took {seconds / 60:.1f} min, finished runs being read rather than repeated).
Seeds {', '.join(map(str, seeds))}; every number is mean ± standard deviation over them. Data: `{recipe.data.source}`;
base recipe in `recipe.yaml`; every run's directory (recipe, metrics, checkpoints) is under `{plan.run_dir("")}`; all numbers in `results.json`.
Versions: {versions()}.

## What held at this scale

{claims}

## Figure 3: training loss and error against iterations

Training runs: {recipe.train.epochs} epochs of {steps_per_epoch} iterations (batch {recipe.data.batch_size}), lr {recipe.train.lr:g}
{recipe.train.schedule}; alternation after {recipe.train.warmup_epochs} warm-up epoch(s) of plain SGD; I-alternation re-estimates
the supports every {recipe.train.gap_epochs} epoch(s); granularity `{recipe.train.granularity}`, relative threshold
{recipe.train.relative_threshold:g}. The curves are training loss and error over windows of 1/20 epoch as trained (I-alternation:
with the stored supports fixed), averaged over seeds. "Iterations to SGD's final training error" uses the curves smoothed over one
epoch; the target is SGD's mean training error in its last epoch.

{figure3_image}

{chr(10).join(figure3)}

## Table 7: validation error of the three variants (and Table 2's MaskT)

MaskT tests with supports only: every site outputs m ⊙ q with m the training set's majority support under the final
weights (Eq. 38; ReLU's support for plain SGD), the same for every test example, so the network is linear at test time.

{chr(10).join(table7)}

## Table 8: DSD with each Sparse-step criterion

The Dense step is the plain-SGD model above. From it, each row runs the same Sparse ({recipe.sparse.epochs} epochs, pruning after
epoch(s) {', '.join(map(str, recipe.sparse.alternation_epochs))}) and re-Dense ({recipe.redense.epochs} epochs) steps, differing only in
what prunes. Support rows prune whole channels whose support stayed zero, the threshold searched to keep
{plan.table8_target:g} of the MACs (granularity `{recipe.sparse.granularity}`). DSD (magnitude)
zeroes the smallest weights of every layer, unstructured, at the sparsity ({_fmt(sparsities, 3)}) that removes as many parameters
as the B-alternation support removed: **matched on parameters**, since unstructured zeros save no MACs on dense hardware.
Top-1 error is of the final (re-Dense) model; the sparse model's error is after the Sparse step.

{chr(10).join(table8)}

## Accuracy against MACs kept: support against channel L1, L2 and random pruning

The Sparse step alone (no re-Dense) at each target. The support threshold is searched to meet the target; each baseline is then
pruned, by the same search over its own scores, to the MACs the support actually kept: **matched on MACs**
(up to one channel). L1/L2 are torch-pruning's group magnitude importances (normalised per group); random is seeded.

{macs_image}

{chr(10).join(macs_rows)}

## Runs and wall times

| run | seconds |
|---|---:|
{run_rows}
"""
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "results.json", json.dumps(_compact(results, conv), indent=1))
    atomic_write_text(out / "recipe.yaml", recipe.to_yaml())
    return out / "report.md"


def _claims(train_runs, conv, dsd, macs, plan: Any) -> str:
    """Plain sentences, computed: which of the paper's claims held here."""
    seeds = plan.seeds
    lines = []
    for alternation, label in (("instance", "I-alternation"), ("batch", "B-alternation")):
        ratios = [r for r in conv[alternation]["ratio"] if r is not None]
        reached = len(ratios)
        if reached:
            mean, _ = mean_std(ratios)
            verdict = "held" if mean <= 0.7 else ("partly held" if mean < 1.0 else "did not hold")
            lines.append(
                f"- Faster convergence (Fig. 3: 30–40% fewer iterations than SGD): **{verdict}** for {label}: it reached "
                f"SGD's final training error in {mean:.2f}× SGD's iterations (seeds reaching it: {reached}/{len(seeds)})."
            )
        else:
            lines.append(f"- Faster convergence (Fig. 3: 30–40% fewer iterations than SGD): **did not hold** for {label}: "
                         "it never reached SGD's final training error.")
    base = mean_std([train_runs[f"none/{s}"]["val_error"] for s in seeds])
    for alternation, label in (("instance", "I-alternation"), ("batch", "B-alternation")):
        err = mean_std([train_runs[f"{alternation}/{s}"]["val_error"] for s in seeds])
        tolerance = max(base[1], err[1], 0.1)
        verdict = "held" if err[0] <= base[0] + tolerance else "did not hold"
        lines.append(f"- Table 7 (no accuracy loss against the baseline): **{verdict}** for {label}: "
                     f"{err[0]:.2f}% against {base[0]:.2f}% validation error.")
    maskt = mean_std([train_runs[f"instance/{s}"]["maskt_val_error"] for s in seeds])
    inst = mean_std([train_runs[f"instance/{s}"]["val_error"] for s in seeds])
    lines.append(f"- Table 2 (MaskT is worse than the usual test, 'but not unacceptable'): MaskT gave {maskt[0]:.2f}% against "
                 f"{inst[0]:.2f}% for I-alternation.")
    final = {key: mean_std([100 - dsd[str(s)][key].metrics[-1]["val_top1"] for s in seeds]) for key, _ in TABLE8_RUNS}
    baseline = mean_std([100 - dsd[str(s)]["support-batch"].baseline_top1 for s in seeds])
    best = min(final, key=lambda k: final[k][0])
    order = " < ".join(f"{dict(TABLE8_RUNS)[k]} {final[k][0]:.2f}%" for k in sorted(final, key=lambda k: final[k][0]))
    lines.append(
        f"- Table 8 (DSD (B-alternation) best, every DSD better than the baseline): the ranking was {order}; baseline "
        f"{baseline[0]:.2f}%. B-alternation best: **{'held' if best == 'support-batch' else 'did not hold'}**"
        f" (differences within one standard deviation are not evidence either way)."
    )
    lower = equal = higher = 0
    for target in plan.targets:
        support = mean_std([100 - macs[f"{target:g}/{s}"]["support"].last_record("sparse")["val_top1"] for s in seeds])[0]
        for criterion in CHANNEL_BASELINES:
            other = mean_std([100 - macs[f"{target:g}/{s}"][criterion].last_record("sparse")["val_top1"] for s in seeds])[0]
            # Means of top-1 over 1,000 validation images: compare at their resolution, not in float noise.
            support, other = round(support, 6), round(other, 6)
            lower += support < other
            equal += support == other
            higher += support > other
    lines.append(f"- Support as a pruning criterion (\"better guidance than DSD on reducing the weights redundancy\"): at equal MACs "
                 f"the support's sparse model had lower mean error than the channel baseline in {lower} of "
                 f"{lower + equal + higher} comparisons (equal in {equal}, higher in {higher}); see the table for the spread.")
    return "\n".join(lines)


def _compact(results: dict[str, Any], conv: dict[str, Any]) -> dict[str, Any]:
    """results.json: the numbers of every run without their per-iteration curves."""
    def strip(run: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in run.items() if k not in ("curve",)}

    return {
        "train": {k: strip(v) for k, v in results["train"].items()},
        "dsd": {seed: {k: (v if isinstance(v, float) else v.to_dict()) for k, v in runs.items()}
                for seed, runs in results["dsd"].items()},
        "macs": {k: {c: r.to_dict() for c, r in entry.items()} for k, entry in results["macs"].items()},
        "convergence": conv,
    }


def versions() -> str:
    import torch
    import torch_pruning
    import torchvision

    from supportprune import __version__

    return (f"supportprune {__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"torch-pruning {torch_pruning.__version__}, Python {platform.python_version()}, {platform.platform()}")


def tight_png(figure) -> bytes:
    """The figure, laid out, as PNG bytes; the figure is closed."""
    figure.tight_layout()
    return figure_png(figure)


def _figure3(train_runs, seeds) -> bytes:
    plt = pyplot()
    figure, (loss_axis, error_axis) = plt.subplots(1, 2, figsize=(11, 4))
    labels = {"none": "SGD", "instance": "I-alternation", "batch": "B-alternation"}
    for alternation in ALTERNATIONS:
        curves = [train_runs[f"{alternation}/{s}"]["curve"] for s in seeds]
        length = min(len(c) for c in curves)
        steps = [p[1] for p in curves[0][:length]]
        for axis, column in ((loss_axis, 2), (error_axis, 3)):
            columns = [[c[i][column] for c in curves] for i in range(length)]
            mean = [statistics.fmean(v) for v in columns]
            std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in columns]
            line, = axis.plot(steps, mean, label=labels[alternation])
            axis.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                              color=line.get_color(), alpha=0.2)
    loss_axis.set_ylabel("training loss")
    error_axis.set_ylabel("training error (%)")
    for axis in (loss_axis, error_axis):
        axis.set_xlabel("iteration")
        axis.legend()
    return tight_png(figure)


def _macs_plot(points: dict[str, list[tuple[float, float, float]]]) -> bytes:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for criterion, values in points.items():
        values = sorted(values)
        axis.errorbar([v[0] for v in values], [v[1] for v in values], yerr=[v[2] for v in values], marker="o",
                      capsize=3, label=criterion)
    axis.set_xlabel("MACs kept (× dense)")
    axis.set_ylabel("sparse model top-1 error (%)")
    axis.legend()
    return tight_png(figure)
