"""The layer latency table that ``sparse.allocation: latency`` allocates with: given in the recipe, kept in the
run directory from an earlier attempt, or timed now."""

from __future__ import annotations

from pathlib import Path

from supportprune.deploy.latency_table import LatencyTable, measure_latency_table
from supportprune.errors import SupportpruneError
from supportprune.method.allocation import layer_shapes
from supportprune.run.context import RunContext
from supportprune.run.signals import stage


def latency_table_for_run(context: RunContext) -> LatencyTable:
    """Read back from the run directory when it was measured for these layers and settings on the same kind of
    provider, else measured now (rank 0)."""
    from supportprune.deploy.benchmark import gpu_available, select_providers

    sparse, bench, reporter = context.recipe.sparse, context.recipe.bench, context.reporter
    batch_size = sparse.latency_batch_size or max(bench.gpu_batch_sizes if gpu_available() else bench.batch_sizes)
    shapes = layer_shapes(context.model, context.example)
    provider = select_providers("auto")[0]
    path = context.layout.latency_table
    if sparse.latency_table is not None:  # timed elsewhere (the deployment machine) or earlier: used as is
        source = Path(sparse.latency_table).expanduser()
        if not source.is_file():
            raise SupportpruneError(f"sparse.latency_table: {source} does not exist; give the latency-table.json of "
                                    "an earlier run, or leave the key out to time the layers here")
        table = LatencyTable.load(source)
        if not table.covers(shapes):
            raise SupportpruneError(f"sparse.latency_table: {source} was timed for another model or input size; "
                                    "time this one (leave the key out)")
        reporter.message(f"latency table {source}: timed on {table.provider} at batch {table.batch_size} "
                         f"({table.precision})")
        if source.resolve() != path.resolve():
            table.save(path)  # the run keeps the table it was pruned with
        return table
    if path.exists():
        table = LatencyTable.load(path)
        if table.provider == provider and table.matches(shapes, batch_size, sparse.latency_precision, sparse.round_to):
            return table
    reporter.message(f"timing {len(shapes)} layers at batch {batch_size} ({sparse.latency_precision}) on "
                     f"{provider} for the latency-aware allocation")

    def progress(done: int, total: int) -> None:
        if done == 1:  # the total is known once timing starts
            reporter.start("timing layers", total)
        reporter.advance(done)

    try:
        with stage("timing the layers for the latency table"):
            table = measure_latency_table(shapes, batch_size=batch_size, round_to=sparse.round_to,
                                          precision=sparse.latency_precision, runs=bench.runs, warmup=bench.warmup,
                                          progress=progress)
    finally:
        reporter.stop()
    table.save(path)
    return table


def model_timer_for_run(context: RunContext):
    """``sparse.allocation: measured``: times whole pruned models on this machine's provider (rank 0), at the
    largest benchmark batch (or ``sparse.latency_batch_size``) and ``sparse.latency_precision``."""
    from supportprune.deploy.benchmark import gpu_available, select_providers
    from supportprune.deploy.measured_timing import WholeModelTimer

    sparse, bench, reporter = context.recipe.sparse, context.recipe.bench, context.reporter
    batch_size = sparse.latency_batch_size or max(bench.gpu_batch_sizes if gpu_available() else bench.batch_sizes)
    reporter.message(f"measured allocation: timing whole pruned models at batch {batch_size} "
                     f"({sparse.latency_precision}) on {select_providers('auto')[0]}")
    # A fifth of the benchmark's runs per timing: the search alternates each candidate with the current model three
    # times (medians of both), and times dozens of candidates.
    return WholeModelTimer(context.model, context.example, batch_size=batch_size, precision=sparse.latency_precision,
                           runs=max(5, bench.runs // 5), warmup=bench.warmup)
