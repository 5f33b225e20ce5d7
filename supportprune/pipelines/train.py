"""`supportprune train`: a network trained by alternation, in one train phase, then its closing evaluation
(validation error with η* on each example, and with MaskT) and report. The same command on the same directory
resumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from supportprune.inputs.recipe import Recipe, with_resolved_preprocessing
from supportprune.pipelines.results import write_result
from supportprune.reports.run_report import write_train_report
from supportprune.run.setup import opened_run
from supportprune.run.signals import stage
from supportprune.run.train_phase import TrainPhase
from supportprune.store.reporter import Reporter


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
    recipe = with_resolved_preprocessing(recipe)  # recipe.yaml and the report say exactly how images were prepared
    with opened_run(model_name, recipe, out_dir, command="train", phases=(TrainPhase.name,), device=device,
                    restart=restart, reporter=reporter, max_steps=max_steps_per_epoch) as run:
        context = run.context
        phase = TrainPhase(context)
        run.run_phases([phase])
        with stage("the closing evaluation"):
            result = phase.closing_evaluation()  # also when a finished run is run again
        if context.cluster.is_main:
            write_result(context.layout, result)
            write_train_report(context.layout, context.model_name, context.recipe, context.data.description,
                               context.state, result)
            context.reporter.message(
                f"validation error {result['val_error']:.2f}% (η* on each example), {result['maskt_val_error']:.2f}% "
                f"with MaskT; report: {context.layout.report}"
            )
        return {k: v for k, v in result.items() if k not in ("metrics", "curve")}
