"""`supportprune compress`: a pretrained model through Dense → Sparse → re-Dense, then delivered (its three
models exported, checked, benchmarked and reported). The same command on the same directory resumes.

Under torchrun, every process trains its share of each global batch (DistributedDataParallel); rank 0 decides
the pruning, writes every file, exports and benchmarks.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from supportprune.inputs.recipe import Recipe, with_resolved_preprocessing
from supportprune.pipelines.deliver import ModelSummary, deliver_run
from supportprune.run.context import RunContext
from supportprune.run.phases import DensePhase, RedensePhase
from supportprune.run.setup import opened_run
from supportprune.run.sparse_phase import SparsePhase
from supportprune.store.reporter import Reporter


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
) -> CompressResult:
    """Run Dense → Sparse (B-alternation, support pruning) → re-Dense, then export and benchmark the three
    models. ``deliver=False`` stops after training (no export, benchmark or report: ``experiment`` reads the
    metrics itself)."""
    recipe = with_resolved_preprocessing(recipe)  # recipe.yaml and the report say exactly how images were prepared
    with opened_run(model_name, recipe, out_dir, device=device, restart=restart, reporter=reporter,
                    max_steps=max_steps_per_epoch) as run:
        context = run.context
        sparse = SparsePhase(context)  # re-Dense revives what Sparse pruned (redense.revive: restore)
        run.run_phases([DensePhase(context), sparse, RedensePhase(context, sparse)])
        if not deliver:
            return _undelivered(context)
        summaries, bench = deliver_run(context) if context.cluster.is_main else ([], [])
        return CompressResult(context.layout.root, tuple(summaries), tuple(bench), time.perf_counter() - context.started)


def _undelivered(context: RunContext) -> CompressResult:
    """Training only (``experiment``): the numbers it reads go to result.json."""
    state = context.state
    if context.cluster.is_main:
        context.write_result({"baseline_top1": state.baseline_top1, "alternations": state.alternations,
                              "baseline_macs": context.baseline_macs, "baseline_params": context.baseline_params,
                              "spec": asdict(context.spec), "metrics": state.metrics,
                              "seconds": time.perf_counter() - context.started})
    return CompressResult(context.layout.root, (), (), time.perf_counter() - context.started)
