"""The run's readable report: a table of the three models and two plots."""

from __future__ import annotations

from typing import Any, Sequence

from supportprune.store.atomic import atomic_write_bytes, atomic_write_text
from supportprune.reports.plotting import figure_png, plots_unavailable, pyplot, skipped_plots_note


def _fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def summary_table(summaries: Sequence[Any], bench: Sequence[Any]) -> str:
    """Markdown: parameters, MACs, top-1, ORT latency at the smallest batch and throughput at the largest."""
    by_model: dict[str, list[Any]] = {}
    for result in bench:
        if result.precision == "fp32":
            by_model.setdefault(result.model, []).append(result)
    small = min((r.batch_size for r in bench), default=1)
    large = max((r.batch_size for r in bench), default=1)
    base = next((s for s in summaries if s.kind == "baseline"), summaries[0])
    lines = [
        f"| model | parameters | MACs | MACs vs baseline | top-1 (%) | latency, batch {small} (ms, median / p90) | throughput, batch {large} (images/s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for summary in summaries:
        results = by_model.get(summary.kind, [])
        latency = next((r for r in results if r.batch_size == small), None)
        throughput = next((r for r in results if r.batch_size == large), None)
        lines.append(
            f"| {summary.kind} | {_fmt_int(summary.params)} | {summary.macs / 1e6:,.1f} M | {summary.macs / base.macs:.3f} | "
            f"{summary.top1:.2f} | "
            + (f"{latency.median_ms:.3f} / {latency.p90_ms:.3f}" if latency else "–")
            + " | "
            + (_fmt_int(throughput.throughput) if throughput else "–")
            + " |"
        )
    return "\n".join(lines)


def _notes_text(notes) -> str:
    """What the run changed in the user's model or data, or noticed about them (also in the log)."""
    return "".join(f"\n- {note}" for note in notes) + ("\n" if notes else "")


def _start_text(state) -> str:
    """The starting model's top-1 on the user's data, before anything was cut."""
    if state.baseline_top1 is None:
        return ""
    head = (f" (with the replaced head untrained: {state.untrained_head_top1:.2f}%; then the head warm-up, "
            "`head.epochs`)" if state.untrained_head_top1 is not None else "")
    return f"\nStarting model on this data, before any cut: top-1 {state.baseline_top1:.2f}%{head}.\n"


def write_report(layout, model_name, recipe, data_description, summaries, bench, state, seconds, notes=()) -> None:
    plots = []
    no_plots = plots_unavailable()
    if no_plots is None:
        plots.append(("Training curves", _training_plot(layout, state)))
        plots.append(("Channels kept per support site", _channels_plot(layout, state)))
    from supportprune.deploy.benchmark import realised_markdown, realised_speedups, results_markdown, slower_warning

    provider = bench[0].provider if bench else "none"
    realised_table = realised_markdown(realised_speedups(bench, "baseline"), "baseline") if bench else "(no benchmark)\n"
    slower = slower_warning(realised_speedups(bench, "baseline")) if bench else None
    if slower:
        realised_table = f"**Warning:** {slower}.\n\n" + realised_table
    reduced = sorted({r.precision for r in bench} - {"fp32"})
    precision_note = (f"; {' and '.join(reduced)} rows compare with the baseline of the same precision, and all results "
                 "are in the table below" if reduced else "")
    if reduced:
        realised_table += "\n" + results_markdown(bench) + _int8_text(layout, bench)
    if recipe.export.int8 and bench and not any(r.precision == "int8" for r in bench):
        from supportprune.deploy.gpu_providers import NOT_ACCELERATED

        realised_table += (f"\nint8 models: {NOT_ACCELERATED}. ONNX Runtime's CUDA provider runs QDQ models with float "
                           "kernels, so they were not timed here; time them on the CPU provider or with TensorRT.\n")
    revived = state.revived_channels if state.revived_channels is not None else 0
    latency = recipe.sparse.allocation in ("latency", "measured")
    speedup_key = "measured_speedup" if recipe.sparse.allocation == "measured" else "predicted_speedup"
    speedup_header = "measured speed-up" if recipe.sparse.allocation == "measured" else "predicted speed-up"
    alternations = "\n".join(
        f"| {a['epoch']} | {a['relative_threshold']:.4g} | {a['channels_kept']} / {a['channels_total']} | {a['macs'] / 1e6:,.1f} M | {a['observed_batches']} |"
        + (f" {a[speedup_key]:.2f}× |" if latency and a.get(speedup_key) else " |" if latency else "")
        for a in state.alternations
    )
    allocation_text = _allocation_text(recipe.sparse)
    text = f"""# supportprune report: {model_name}

Dense–Sparse–Dense with {_criterion_text(recipe.sparse)}, on {data_description}.
Wall time {seconds:.0f} s. Recipe: `recipe.yaml`; per-epoch metrics: `metrics.jsonl`; benchmark: `benchmark.json`.
{_notes_text(notes)}{_start_text(state)}
{summary_table(summaries, bench)}

ONNX Runtime provider: {provider}. MACs are counted for one image from the exported ONNX graph, as the benchmark counts them. Top-1 is on the validation split. "sparse" is the physically pruned
model (torch-pruning); "dense" is the final DSD model, with the original shape. The largest difference
between each ONNX model and PyTorch on real inputs is in `export.json`
({', '.join(f"{s.kind} {s.max_abs_diff:.1e}" for s in summaries)}).

## Speed against MACs

How much of the MACs saving became throughput (speed-up ÷ MACs reduction, MACs counted from the ONNX
graphs; 1.0 means all of it){precision_note}:

{realised_table}
## Alternation points (Sparse phase)

Channels whose batch support (Eq. 41, granularity `{recipe.sparse.granularity}`) stayed zero over the
batches observed since the previous point are pruned; a channel of a residual stream or concatenation only when
every site it passes through lost it. With a MACs target the pruning threshold is searched (the training masks
keep the recipe's `relative_threshold`, {recipe.sparse.relative_threshold:g}).{allocation_text}

| after sparse epoch | pruning threshold (× mean unit energy) | site channels kept | MACs | batches observed |{f" {speedup_header} |" if latency else ""}
|---:|---:|---:|---:|---:|{"---:|" if latency else ""}
{alternations}

Re-dense brought {revived} pruned channels back with their weights at zero. Whole channels that return at
zero receive no gradient (their producing and consuming weights are both zero, a saddle), so the dense
model's extra capacity is only in the connections that were never pruned; compare its top-1 with the
sparse model's to see what re-dense training itself gave.

"""
    for title, name in plots:
        text += f"## {title}\n\n![{title}](plots/{name})\n\n"
    if no_plots is not None:
        text += skipped_plots_note(no_plots) + "\n"
    atomic_write_text(layout.report, text)



def _allocation_text(sparse) -> str:
    """What the latency and measured allocations did (nothing for the global one, which has no time target)."""
    if sparse.allocation == "latency":
        return (f"\n\nAllocation `latency`: channels were cut until the layer latencies timed with ONNX Runtime on this "
                f"machine (`latency-table.json`) predicted {sparse.latency_target:g} of the dense time, always where "
                "the least support was lost per second saved; the weakest channels of a group go first, and the threshold "
                "shown is the highest score pruned. The predicted speed-up covers the convolution and linear layers only.")
    if sparse.allocation == "measured":
        return (f"\n\nAllocation `measured`: whole pruned models were exported and timed with ONNX Runtime on this "
                f"machine ({sparse.latency_precision}), and channels were cut until the measured time was "
                f"{sparse.latency_target:g} of the dense model's, always where the least support was lost per second "
                "saved (NetAdapt-style); the weakest channels of a group go first, and the threshold shown is the highest "
                "score pruned. The measured speed-up is the whole model's, dense ÷ pruned, as timed during the search.")
    return ""

def _int8_text(layout, bench: Sequence[Any]) -> str:
    """The int8 models' top-1 agreement with fp32 (from export.json), any warning, and the headline ratio:
    sparse int8 over baseline fp32 throughput at the largest batch."""
    import json

    if not any(r.precision == "int8" for r in bench) or not layout.export_json.exists():
        return ""
    exports = json.loads(layout.export_json.read_text()).get("exports", {})
    int8 = {stem: record for stem, record in exports.items() if stem.endswith(".int8")}
    lines = ["", "INT8 (static QDQ, per-channel weights, calibrated on "
             f"{next(iter(int8.values()), {}).get('calibration_images', '?')} training images): top-1 agrees with fp32 on "
             + ", ".join(f"{stem.removesuffix('.int8')} {100 * r['top1_agreement_with_fp32']:.2f}%" for stem, r in int8.items())
             + " of the validation images."]
    lines += [f"\n**Warning**: {r['warning']}" for r in int8.values() if r.get("warning")]
    large = max(r.batch_size for r in bench)
    by_key = {(r.model, r.precision, r.batch_size): r for r in bench}
    sparse, baseline = by_key.get(("sparse", "int8", large)), by_key.get(("baseline", "fp32", large))
    if sparse and baseline:
        lines.append(f"\nSparse int8 over baseline fp32, throughput at batch {large}: "
                     f"{sparse.throughput / baseline.throughput:.2f}×.")
    return "\n".join(lines) + "\n"


def _criterion_text(sparse) -> str:
    if sparse.criterion == "support":
        variant = "B-alternation (Eq. 41)" if sparse.alternation == "batch" else "I-alternation (Eq. 38)"
        return f"{variant} supports deciding the pruning (Huang, Kong, Lucey 2017, section 4.2)"
    if sparse.criterion == "magnitude":
        return (f"DSD's own weight-magnitude pruning ({sparse.magnitude_sparsity:.0%} of every layer, unstructured): "
                "the baseline criterion, not the paper's support")
    return (f"channel {sparse.criterion} pruning to the MACs target: a baseline criterion, not the paper's support "
            "(compare at equal MACs with a support run)")


def _save_figure(figure, path) -> None:
    """Write the figure as PNG to ``path``; the figure is closed."""
    atomic_write_bytes(path, figure_png(figure))


def _training_plot(layout, state) -> str:
    plt = pyplot()

    metrics = state.metrics
    x = list(range(1, len(metrics) + 1))
    figure, (loss_axis, top1_axis) = plt.subplots(1, 2, figsize=(11, 4))
    loss_axis.plot(x, [m["train_loss"] for m in metrics], marker="o", label="train loss")
    loss_axis.plot(x, [m["val_loss"] for m in metrics], marker="o", label="val loss")
    top1_axis.plot(x, [m["train_top1"] for m in metrics], marker="o", label="train top-1")
    top1_axis.plot(x, [m["val_top1"] for m in metrics], marker="o", label="val top-1")
    for axis, ylabel in ((loss_axis, "cross-entropy"), (top1_axis, "top-1 (%)")):
        previous = None
        for index, record in enumerate(metrics, start=1):
            if previous is not None and record["phase"] != previous:
                axis.axvline(index - 0.5, color="grey", linestyle="--")
            previous = record["phase"]
        for index, record in enumerate(metrics, start=1):
            if record["phase"] == "sparse" and any(a["epoch"] == record["epoch"] for a in state.alternations):
                axis.axvline(index, color="tab:red", alpha=0.3)
        axis.set_xlabel("epoch (dense | sparse | re-dense; red: alternation points)")
        axis.set_ylabel(ylabel)
        axis.legend()
    figure.tight_layout()
    _save_figure(figure, layout.plots / "training.png")
    return "training.png"


def _channels_plot(layout, state) -> str:
    plt = pyplot()

    sparse_records = [m for m in state.metrics if m["phase"] == "sparse"]
    first = state.channels_total
    last = sparse_records[-1]["channels_kept"] if sparse_records else first
    names = list(last)
    figure, axis = plt.subplots(figsize=(max(6, 0.28 * len(names)), 4))
    positions = range(len(names))
    axis.bar(positions, [first.get(n, 0) for n in names], color="lightgrey", label="before Sparse")
    axis.bar(positions, [last[n] for n in names], color="tab:blue", label="kept after Sparse")
    axis.set_xticks(list(positions))
    axis.set_xticklabels(names, rotation=90, fontsize=7)
    axis.set_ylabel("channels")
    axis.legend()
    figure.tight_layout()
    _save_figure(figure, layout.plots / "channels.png")
    return "channels.png"


def write_train_report(layout, model_name, recipe, data_description, state, result) -> None:
    """`supportprune train`'s report: per-epoch table, the closing evaluation and the training curve."""
    train = recipe.train
    rows = "\n".join(
        f"| {m['epoch']} | {m['train_loss']:.4f} | {100 - m['train_top1']:.2f} | {m['val_loss']:.4f} | {100 - m['val_top1']:.2f} | {m['seconds']:.1f} |"
        for m in state.metrics
    )
    what = {
        "none": "plain SGD with ReLU",
        "instance": f"I-alternation (Eq. 36–38): supports of every training example estimated after {train.warmup_epochs} "
        f"warm-up epoch(s) and again every {train.gap_epochs} epoch(s), weights trained with them fixed",
        "batch": f"B-alternation (Eq. 39–41): one support per mini-batch, computed on the fly, after {train.warmup_epochs} "
        "warm-up epoch(s)",
    }[train.alternation]
    plots = []
    no_plots = plots_unavailable()
    if no_plots is None:
        plots.append(("Training curve", _curve_plot(layout, state)))
    text = f"""# supportprune train: {model_name}, alternation `{train.alternation}`

{what}; granularity `{train.granularity}`, relative threshold {train.relative_threshold:g}; on {data_description}.
Seed {recipe.seed}; wall time {result['seconds']:.0f} s. Recipe: `recipe.yaml`; numbers: `result.json`.

| | validation error (%) | validation loss |
|---|---:|---:|
| usual test (η* on each example) | {result['val_error']:.2f} | {result['val_loss']:.4f} |
| MaskT (training majority support, no thresholding) | {result['maskt_val_error']:.2f} | {result['maskt_val_loss']:.4f} |

| epoch | train loss | train error (%) | val loss | val error (%) | seconds |
|---:|---:|---:|---:|---:|---:|
{rows}

"""
    for title, name in plots:
        text += f"## {title}\n\n![{title}](plots/{name})\n\n"
    if no_plots is not None:
        text += skipped_plots_note(no_plots) + "\n"
    atomic_write_text(layout.report, text)


def _curve_plot(layout, state) -> str:
    plt = pyplot()

    steps = [point[1] for point in state.curve]
    figure, (loss_axis, error_axis) = plt.subplots(1, 2, figsize=(11, 4))
    loss_axis.plot(steps, [point[2] for point in state.curve])
    error_axis.plot(steps, [point[3] for point in state.curve])
    for axis, label in ((loss_axis, "training loss"), (error_axis, "training error (%)")):
        axis.set_xlabel("iteration")
        axis.set_ylabel(label)
    figure.tight_layout()
    _save_figure(figure, layout.plots / "curve.png")
    return "curve.png"
