"""`supportprune compress` and `supportprune train`: runs end to end, from a model name to benchmarked ONNX
models (compress: the DSD run) or to a network trained by alternation (train).

Each opens its run directory, builds the run's data and model, and lets the engine run its phases (compress:
Dense, Sparse, re-Dense; train: one train phase); compress then delivers the three models (export, benchmark,
report). Runs resume where they stopped: the same command on the same directory continues.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from supportprune.deploy.deliver import ModelSummary, benchmark_models, export_models, load_run_models
from supportprune.inputs.data import make_loaders
from supportprune.inputs.recipe import Recipe, preprocessing_notes, with_resolved_preprocessing
from supportprune.run.context import RunContext
from supportprune.run.distributed import init_cluster, shutdown_cluster
from supportprune.run.engine import Engine
from supportprune.run.layout import RunLayout
from supportprune.run.phases import DensePhase, HeadPhase, RedensePhase
from supportprune.run.reporter import Reporter, SilentReporter
from supportprune.run.setup import build_context, open_run_dir
from supportprune.run.signals import StopRequests
from supportprune.run.sparse_phase import SparsePhase
from supportprune.run.train_phase import TrainPhase


def compress_phases(context: RunContext) -> list:
    """(Head warm-up →) Dense → Sparse → re-Dense; re-Dense revives from what Sparse pruned (``redense.revive: restore``)."""
    sparse = SparsePhase(context)
    return [HeadPhase(context), DensePhase(context), sparse, RedensePhase(context, sparse)]


@dataclass(frozen=True)
class CompressResult:
    out_dir: Path
    models: tuple[ModelSummary, ...]
    bench: tuple[Any, ...]
    seconds: float


def compress(
    model_name: str,
    recipe: Recipe,
    out_dir: Path,
    *,
    device: str = "auto",
    restart: bool = False,
    reporter: Reporter | None = None,
    max_steps_per_epoch: int | None = None,
    deliver: bool = True,
    criterion_given: bool = False,
) -> CompressResult:
    """Run Dense → Sparse (B-alternation, support pruning) → re-Dense, export and benchmark the three models.

    Under torchrun, every process trains its share of each global batch (DistributedDataParallel);
    rank 0 decides the pruning, writes every file, exports and benchmarks. ``deliver=False`` stops
    after training (no export, benchmark or report: ``experiment`` reads the metrics itself). ``criterion_given``:
    the command line chose ``sparse.criterion`` (then a model without ReLU is refused the support, not given
    ``sparse.criterion_without_relu``).
    """
    def finish(context: RunContext, phases) -> CompressResult:
        return _deliver(context) if deliver else _undelivered(context)

    return _execute(model_name, recipe, out_dir, compress_phases, finish, device, restart, reporter, max_steps_per_epoch,
                    criterion_given)


def train(
    model_name: str,
    recipe: Recipe,
    out_dir: Path,
    *,
    device: str = "auto",
    restart: bool = False,
    reporter: Reporter | None = None,
    max_steps_per_epoch: int | None = None,
) -> dict[str, Any]:
    """Train ``model_name`` for ``recipe.train.epochs`` with the support chosen by ``recipe.train.alternation``:
    none (ReLU, plain SGD), instance (I-alternation, Eq. 36–38) or batch (B-alternation, Eq. 39–41).
    The same loop, data order and seed serve all three, so they differ only in the support. Returns
    the closing evaluation (validation error with η* on each example, and with MaskT), also in result.json."""
    def finish(context: RunContext, phases) -> dict[str, Any]:
        (train_phase,) = phases
        train_phase.closing_evaluation()
        return train_phase.final_result

    return _execute(model_name, recipe, out_dir, lambda context: [TrainPhase(context)], finish, device, restart,
                    reporter, max_steps_per_epoch)


def _execute(model_name, recipe, out_dir, make_phases, finish, device, restart, reporter, max_steps, criterion_given=None):
    given, recipe = recipe, with_resolved_preprocessing(recipe)  # recipe.yaml and the report say exactly how images were prepared
    notes = preprocessing_notes(given, recipe)
    started = time.perf_counter()
    cluster = init_cluster(device)
    try:
        with StopRequests() as stop_requests:
            reporter = reporter if (reporter is not None and cluster.is_main) else SilentReporter()
            layout = RunLayout(out_dir)
            resuming = open_run_dir(layout, recipe, model_name, cluster, reporter, restart)
            context = build_context(model_name, recipe, layout, cluster, reporter, device, max_steps, started,
                                    criterion_given, notes)
            engine = Engine(context, make_phases, stop_requests, resuming)
            engine.run()
            return finish(context, engine.phases)
    finally:
        shutdown_cluster(cluster)


def _undelivered(context: RunContext) -> CompressResult:
    """Training only (``experiment``): the numbers it reads go to result.json."""
    state = context.state
    if context.cluster.is_main:
        context.write_result({"baseline_top1": state.baseline_top1, "alternations": state.alternations,
                              "baseline_macs": context.baseline_macs, "baseline_params": context.baseline_params,
                              "spec": asdict(context.spec), "metrics": state.metrics,
                              "seconds": time.perf_counter() - context.started})
    return CompressResult(context.layout.root, (), (), time.perf_counter() - context.started)


def _deliver(context: RunContext) -> CompressResult:
    """Rank 0 exports, checks and benchmarks the three models and writes the report."""
    if not context.cluster.is_main:
        return CompressResult(context.layout.root, (), (), time.perf_counter() - context.started)
    recipe, layout, reporter = context.recipe, context.layout, context.reporter
    # Each rank validated on its shard; the exported models are checked on the whole validation set.
    full_val = context.val_loader if not context.cluster.distributed else make_loaders(
        context.data, batch_size=recipe.data.batch_size, workers=recipe.data.workers, seed=recipe.seed)[1]
    spec, models = load_run_models(layout, context.device)
    summaries = export_models(spec, models, recipe, layout, full_val, context.device, reporter, context.train_loader)
    bench = benchmark_models(recipe, layout, reporter)
    seconds = time.perf_counter() - context.started
    from supportprune.reports.run_report import write_report

    write_report(layout, context.model_name, recipe, context.data.description, summaries, bench, context.state, seconds,
                 context.notes)
    reporter.message(f"report: {layout.report}")
    return CompressResult(layout.root, tuple(summaries), tuple(bench), seconds)
