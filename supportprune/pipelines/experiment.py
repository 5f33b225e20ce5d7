"""`supportprune experiment`: the paper's claims measured on one dataset, several seeds, one command.

Per seed, every run starts from the same place so that runs differ in one thing only:

1. ``train`` with alternation none, instance and batch (same loop, seed and data order): Figure 3
   (training loss and error against iterations), Table 7 (validation error), and Table 2's MaskT ablation.
2. The plain-SGD model of step 1 is the Dense model of DSD. From it, the Sparse and re-Dense steps run
   with each pruning criterion: the support found by B-alternation, by I-alternation, and DSD's weight
   magnitude matched on parameters (Table 8).
3. From the same Dense model, the Sparse step alone at several MACs targets: support (B-alternation)
   against channel L1, L2 and random pruning at the MACs the support kept (accuracy against MACs).

Every run is an ordinary run directory under ``OUT/runs`` (resumable: the command picks up where it
stopped; a finished run is read, not repeated, when its model, recipe, step cap and starting weights are
this plan's; a run made with other ones is moved aside and made again). The report is written from those directories.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from supportprune.store.atomic import atomic_write_bytes, atomic_write_text
from supportprune.errors import SupportpruneError
from supportprune.reports.plotting import figure_png, plots_unavailable, pyplot, skipped_plots_note
from supportprune.inputs.recipe import Recipe, with_overrides
from supportprune.method.alternation import ALTERNATIONS
from supportprune.pipelines.results import CompressMetrics, read_compress_metrics, read_result

TABLE8_RUNS = (("magnitude", "DSD (magnitude)"), ("support-instance", "DSD (I-alternation)"), ("support-batch", "DSD (B-alternation)"))
CHANNEL_BASELINES = ("l1", "l2", "random")
RUN_KEY_FILE = "experiment-key.json"  # in each run directory: what the run was made with (see ``run_key``)


@dataclass
class ExperimentPlan:
    model: str
    recipe: Recipe
    out_dir: Path
    seeds: tuple[int, ...] = (0, 1, 2)
    targets: tuple[float, ...] = (0.7, 0.5, 0.3)
    device: str = "auto"
    max_steps: Optional[int] = None  # smoke tests: cap steps per epoch
    runs_dir: Optional[Path] = None  # the runs' directories (checkpoints: large); default OUT/runs
    command: str = ""
    run_seconds: dict[str, float] = field(default_factory=dict)


def run_experiment(plan: ExperimentPlan, message: Callable[[str], None] = print, reporter=None) -> Path:
    """Run (or resume) every run of the plan and write ``report.md``, ``results.json`` and plots."""
    if not plan.seeds:
        raise SupportpruneError("--seeds: give at least one seed")
    if not plan.targets or any(not 0 < t <= 1 for t in plan.targets):
        raise SupportpruneError(f"--targets {list(plan.targets)}: MACs fractions in (0, 1] are needed")
    started = time.perf_counter()
    results: dict[str, Any] = {"train": {}, "dsd": {}, "macs": {}}
    for seed in plan.seeds:
        for alternation in ALTERNATIONS:
            results["train"][f"{alternation}/{seed}"] = _train_run(plan, plan.recipe, alternation, seed, message, reporter)
        # Every DSD run starts from the plain-SGD model, its Dense step done.
        dense_weights = _run_dir(plan, f"train-none-seed{seed}") / "models" / "trained.pt"
        derived = {"seed": seed, "weights": str(dense_weights), "dense.epochs": 0}
        # Table 8: the full DSD, support first (its parameter count sets the magnitude baseline's sparsity).
        table8_target = _table8_target(plan)
        by_support = {**derived, "sparse.criterion": "support", "sparse.target_macs": table8_target}
        support_batch = _compress_run(plan, plan.recipe, f"dsd-support-batch-seed{seed}", message, reporter,
                                      {**by_support, "sparse.alternation": "batch"})
        support_instance = _compress_run(plan, plan.recipe, f"dsd-support-instance-seed{seed}", message, reporter,
                                         {**by_support, "sparse.alternation": "instance"})
        sparsity = _matching_sparsity(plan, support_batch)
        magnitude = _compress_run(plan, plan.recipe, f"dsd-magnitude-seed{seed}", message, reporter,
                                  {**derived, "sparse.criterion": "magnitude", "sparse.magnitude_sparsity": sparsity})
        results["dsd"][str(seed)] = {"support-batch": support_batch, "support-instance": support_instance,
                                     "magnitude": magnitude, "magnitude_sparsity": sparsity}
        # Accuracy against MACs: the Sparse step alone, support then the channel baselines at its MACs.
        sparse_only = {**derived, "redense.epochs": 0}
        for target in plan.targets:
            if target == table8_target:  # its Sparse step is this one: read, not repeated
                support = support_batch
            else:
                support = _compress_run(plan, plan.recipe, f"macs{target:g}-support-seed{seed}", message, reporter,
                                        {**sparse_only, "sparse.target_macs": target})
            kept = support.kept_macs
            entry = {"support": support}
            for criterion in CHANNEL_BASELINES:
                entry[criterion] = _compress_run(
                    plan, plan.recipe, f"macs{target:g}-{criterion}-seed{seed}", message, reporter,
                    {**sparse_only, "sparse.criterion": criterion, "sparse.target_macs": kept},
                )
            results["macs"][f"{target:g}/{seed}"] = entry
    seconds = time.perf_counter() - started
    return write_experiment_report(plan, results, seconds)


def _table8_target(plan: ExperimentPlan) -> float:
    """The MACs target of the Table 8 runs: 0.5 when swept, else the first target."""
    return 0.5 if 0.5 in plan.targets else plan.targets[0]


def _run_dir(plan: ExperimentPlan, name: str) -> Path:
    return (plan.runs_dir or plan.out_dir / "runs") / name


def _train_run(plan, recipe, alternation, seed, message, reporter) -> dict[str, Any]:
    from supportprune.pipelines.train import train
    from supportprune.store.layout import RunLayout

    name = f"train-{alternation}-seed{seed}"
    layout = RunLayout(_run_dir(plan, name))
    resolved = with_overrides(recipe, {"seed": seed, "train.alternation": alternation}, f"experiment run {name}")
    if not reuse_or_set_aside(layout.root, run_key(plan.model, resolved, plan.max_steps), message):
        message(f"experiment: {name}")
        train(plan.model, resolved, layout.root, device=plan.device, reporter=reporter, max_steps_per_epoch=plan.max_steps)
    result = read_result(layout)
    plan.run_seconds[name] = result.get("seconds", 0.0)
    return result


def _compress_run(plan, recipe, name, message, reporter, overrides) -> CompressMetrics:
    from supportprune.pipelines.compress import compress
    from supportprune.store.layout import RunLayout

    layout = RunLayout(_run_dir(plan, name))
    resolved = with_overrides(recipe, overrides, f"experiment run {name}")  # the run's recipe, validated once
    if reuse_or_set_aside(layout.root, run_key(plan.model, resolved, plan.max_steps), message):
        metrics = read_compress_metrics(layout)
    else:
        message(f"experiment: {name}")
        metrics = compress(plan.model, resolved, layout.root, device=plan.device, reporter=reporter,
                           max_steps_per_epoch=plan.max_steps, deliver=False).metrics
    plan.run_seconds[name] = metrics.seconds
    return replace(metrics, criterion=resolved.sparse.criterion)  # runs made before result.json recorded it


def run_key(model: str, recipe: Recipe, max_steps: Optional[int]) -> dict[str, Any]:
    """Everything that changes a run's result: the model, the resolved recipe (data source, weights, seed and
    every phase's settings), the step cap, and the content of a weights file (the DSD runs start from the
    plain-SGD run's trained.pt, which changes when that run is made again)."""
    key: dict[str, Any] = {"model": model, "max_steps_per_epoch": max_steps, "recipe": recipe.to_dict()}
    if recipe.weights is not None and Path(recipe.weights).expanduser().is_file():
        key["weights_sha256"] = hashlib.sha256(Path(recipe.weights).expanduser().read_bytes()).hexdigest()
    return json.loads(json.dumps(key))  # as it reads back from the file (tuples become lists)


def same_key(stored: Any, key: Any) -> bool:
    """``stored == key``, except that a setting ``key`` has as None (unset) and ``stored`` lacks is no
    difference: a recipe key added later that is off unless set (``sparse.concat_round_to``) leaves the runs
    made before it valid."""
    if isinstance(stored, dict) and isinstance(key, dict):
        names = set(stored) | set(key)
        return all(name in stored and name in key and same_key(stored[name], key[name])
                   or name not in stored and key.get(name) is None for name in names)
    return stored == key


def reuse_or_set_aside(root: Path, key: dict[str, Any], message: Callable[[str], None]) -> bool:
    """True when the run in ``root`` finished under exactly ``key``: its result is read, not repeated.

    Otherwise the run is to be made (or resumed, when ``root`` holds an unfinished run under the same key). A
    run made under another key (another model, recipe, step cap or starting model) is moved aside whole, to
    ``root.1`` (``root.2``, ...), and the key is written down before the run starts, so an interrupted run
    resumes only into the same settings."""
    from supportprune.store.layout import RunLayout
    from supportprune.store.run_aside import move_aside

    layout = RunLayout(root)
    key_path = root / RUN_KEY_FILE
    stored = json.loads(key_path.read_text()) if key_path.is_file() else None
    if stored is not None and same_key(stored, key):
        return layout.result.exists()
    moved = move_aside(root)
    if moved is not None:
        message(f"experiment: {root} was made with other settings (model, recipe, --max-steps or starting weights); "
                f"moved to {moved}")
    atomic_write_text(key_path, json.dumps(key, indent=1))
    return False


def _matching_sparsity(plan: ExperimentPlan, support: CompressMetrics) -> float:
    """The per-layer magnitude sparsity that removes as many weights as the support's channel pruning
    removed parameters (the comparison at equal parameters; the MACs of an unstructured model do not drop)."""
    from supportprune.method.criteria import sparsity_matching_parameters
    from supportprune.inputs.models import ModelSpec, build_model

    spec = ModelSpec(**support.spec)
    removed = support.baseline_params - support.alternations[-1]["params"]
    model = build_model(spec, None)
    return round(sparsity_matching_parameters(model, removed), 4)


# ---------------------------------------------------------------------------------------------------
# Summaries


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


def write_experiment_report(plan: ExperimentPlan, results: dict[str, Any], seconds: float) -> Path:
    out = plan.out_dir
    plots_dir = out / "plots"
    seeds = plan.seeds
    train_runs = results["train"]
    conv = convergence(train_runs, seeds)
    steps_per_epoch = train_runs[f"none/{seeds[0]}"]["steps_per_epoch"]

    # Table 7 (and Table 2's MaskT)
    table7 = ["| | plain SGD (baseline) | I-alternation | B-alternation |", "|---|---:|---:|---:|"]
    table7.append("| validation error (%), η* on each example | " + " | ".join(
        _fmt([train_runs[f"{a}/{s}"]["val_error"] for s in seeds], seeds=seeds) for a in ALTERNATIONS) + " |")
    table7.append("| validation error (%), MaskT | " + " | ".join(
        _fmt([train_runs[f"{a}/{s}"]["maskt_val_error"] for s in seeds], seeds=seeds) for a in ALTERNATIONS) + " |")
    table7.append("| final training loss | " + " | ".join(
        _fmt([train_runs[f"{a}/{s}"]["metrics"][-1]["train_loss"] for s in seeds], 4, seeds) for a in ALTERNATIONS) + " |")

    def _iters(a: str) -> str:
        values = conv[a]["iterations"]
        reached = [v for v in values if v is not None]
        text = _fmt(reached, 0) if reached else "not reached"
        return text + (f" ({len(reached)}/{len(values)} seeds)" if len(reached) != len(values) else "")

    def _ratio(a: str) -> str:
        values = [v for v in conv[a]["ratio"] if v is not None]
        return _fmt(values, 2) if values else "–"

    def _val_epochs(a: str) -> str:
        values = conv[a]["val_epochs"]
        reached = [v for v in values if v is not None]
        return (_fmt(reached, 1) if reached else "not reached") + (f" ({len(reached)}/{len(values)} seeds)" if len(reached) != len(values) else "")

    figure3 = ["| | plain SGD | I-alternation | B-alternation |", "|---|---:|---:|---:|",
               "| iterations to SGD's final training error | " + " | ".join(_iters(a) for a in ALTERNATIONS) + " |",
               "| … as a fraction of SGD's | " + " | ".join(_ratio(a) for a in ALTERNATIONS) + " |",
               "| epochs to SGD's final validation error | " + " | ".join(_val_epochs(a) for a in ALTERNATIONS) + " |"]

    # Table 8
    dsd = results["dsd"]
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
    sparsities = [dsd[str(s)]["magnitude_sparsity"] for s in seeds]

    # Accuracy against MACs
    macs_rows = ["| MACs target | criterion | MACs kept (× dense) | sparse top-1 error (%) |", "|---:|---|---:|---:|"]
    macs_points: dict[str, list[tuple[float, float, float]]] = {}
    for target in plan.targets:
        for criterion in ("support",) + CHANNEL_BASELINES:
            runs = [results["macs"][f"{target:g}/{s}"][criterion] for s in seeds]
            kept = [r.kept_macs for r in runs]
            errors = [100 - r.last_record("sparse")["val_top1"] for r in runs]
            macs_rows.append(f"| {target:g} | {criterion} | {_fmt(kept, 3, seeds)} | {_fmt(errors, seeds=seeds)} |")
            macs_points.setdefault(criterion, []).append((mean_std(kept)[0], *mean_std(errors)))

    plots = {}
    no_plots = plots_unavailable()
    if no_plots is None:
        plots["figure3.png"] = _figure3(train_runs, seeds)
        plots["accuracy_vs_macs.png"] = _macs_plot(macs_points)
    for name, data in plots.items():
        atomic_write_bytes(plots_dir / name, data)
    figure3_image = "![Figure 3](plots/figure3.png)" if no_plots is None else skipped_plots_note(no_plots)
    macs_image = "![Accuracy against MACs](plots/accuracy_vs_macs.png)" if no_plots is None else "(plot skipped: see above)"

    claims = _claims(train_runs, conv, dsd, results["macs"], plan)
    run_rows = "\n".join(f"| {name} | {secs:.0f} |" for name, secs in sorted(plan.run_seconds.items()))
    recipe = plan.recipe
    text = f"""# supportprune experiment: the paper's claims on {plan.model}

Produced by `{plan.command}`: the runs took {sum(plan.run_seconds.values()) / 60:.1f} min of wall time in all (per run below;
this call took {seconds / 60:.1f} min, finished runs being read rather than repeated).
Seeds {', '.join(map(str, seeds))}; every number is mean ± standard deviation over them. Data: `{recipe.data.source}`;
base recipe in `recipe.yaml`; every run's directory (recipe, metrics, checkpoints) is under `{_run_dir(plan, "")}`; all numbers in `results.json`.
Versions: {_versions()}.

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
{_table8_target(plan):g} of the MACs (granularity `{recipe.sparse.granularity}`). DSD (magnitude)
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


def _claims(train_runs, conv, dsd, macs, plan: ExperimentPlan) -> str:
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
        "dsd": {seed: {k: (v.to_dict() if isinstance(v, CompressMetrics) else v) for k, v in runs.items()}
                for seed, runs in results["dsd"].items()},
        "macs": {k: {c: r.to_dict() for c, r in entry.items()} for k, entry in results["macs"].items()},
        "convergence": conv,
    }


def _versions() -> str:
    import torch
    import torch_pruning
    import torchvision

    from supportprune import __version__

    return (f"supportprune {__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"torch-pruning {torch_pruning.__version__}, Python {platform.python_version()}, {platform.platform()}")


def _png(figure) -> bytes:
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
    return _png(figure)


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
    return _png(figure)


def command_line() -> str:
    return "supportprune " + " ".join(shlex.quote(a) for a in sys.argv[1:])
