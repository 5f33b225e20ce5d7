"""`supportprune export`: a finished compress run's baseline, sparse and dense models exported to ONNX again
(checked against PyTorch on the run's validation images; int8 calibrated on its training images)."""

from __future__ import annotations

from pathlib import Path

import yaml

from supportprune.inputs.data import recipe_loaders
from supportprune.inputs.recipe import recipe_from_dict
from supportprune.pipelines.deliver import ModelSummary, export_models, load_run_models
from supportprune.run.signals import StopRequests, stage
from supportprune.run.training_loop import choose_device
from supportprune.store.layout import RunLayout
from supportprune.store.reporter import Reporter


def export_run(run_dir: Path, *, device: str, reporter: Reporter) -> list[ModelSummary]:
    with StopRequests(), stage(f"the export of {run_dir}"):
        return _export(RunLayout(run_dir), device, reporter)


def _export(layout: RunLayout, device: str, reporter: Reporter) -> list[ModelSummary]:
    torch_device = choose_device(device)
    spec, models = load_run_models(layout, torch_device)
    recipe = recipe_from_dict(yaml.safe_load(layout.recipe.read_text()), str(layout.recipe))
    # int8 calibration reads training images as evaluation prepares them (no augmentation)
    _, train_loader, val_loader = recipe_loaders(recipe.data, recipe.seed, augment=False)
    return export_models(spec, models, recipe, layout, val_loader, torch_device, reporter, calibration_loader=train_loader)
