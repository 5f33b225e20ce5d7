"""`supportprune compress`: a pretrained model through Dense → Sparse → re-Dense, then delivered (its three
models exported, checked, benchmarked and reported). The same command on the same directory resumes.

Under torchrun, every process trains its share of each global batch (DistributedDataParallel); rank 0 decides
the pruning, writes every file, exports and benchmarks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supportprune.inputs.recipe import Recipe, preprocessing_notes, with_resolved_preprocessing
from supportprune.pipelines.deliver import ModelSummary, deliver_run
from supportprune.pipelines.results import CompressMetrics, write_result
from supportprune.run.phases import DensePhase, HeadPhase, RedensePhase
from supportprune.run.setup import opened_run
from supportprune.run.sparse_phase import SparsePhase
from supportprune.store.reporter import Reporter


@dataclass(frozen=True)
class CompressResult:
    out_dir: Path
    metrics: CompressMetrics  # what the training measured (experiment and the criteria comparison use it)
    models: tuple[ModelSummary, ...]  # delivered: the exported models (rank 0), else empty
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
    """Run Dense → Sparse (B-alternation, support pruning) → re-Dense, then export and benchmark the three
    models. ``deliver=False`` stops after training (no export, benchmark or report: ``experiment`` takes the
    metrics, also written to result.json for its reuse). ``criterion_given``: the command line chose
    ``sparse.criterion`` (then a model without ReLU is refused the support, not given
    ``sparse.criterion_without_relu``)."""
    given, recipe = recipe, with_resolved_preprocessing(recipe)  # recipe.yaml and the report say how images were prepared
    phases = (HeadPhase.name, DensePhase.name, SparsePhase.name, RedensePhase.name)  # the recipe sections it trains
    with opened_run(model_name, recipe, out_dir, command="compress", phases=phases, device=device, restart=restart,
                    reporter=reporter, max_steps=max_steps_per_epoch, criterion_given=criterion_given,
                    notes=preprocessing_notes(given, recipe)) as run:
        context = run.context
        sparse = SparsePhase(context)  # re-Dense revives what Sparse pruned (redense.revive: restore)
        # the head warm-up trains only a head (or first convolution) replaced to fit the data, before any cut
        run.run_phases([HeadPhase(context), DensePhase(context), sparse, RedensePhase(context, sparse)])
        metrics = CompressMetrics.of(context)
        if not deliver:
            if context.cluster.is_main:
                write_result(context.layout, metrics)
            return CompressResult(context.layout.root, metrics, (), (), metrics.seconds)
        summaries, bench = deliver_run(context) if context.cluster.is_main else ([], [])
        return CompressResult(context.layout.root, metrics, tuple(summaries), tuple(bench),
                              time.perf_counter() - context.started)
