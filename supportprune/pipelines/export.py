"""`supportprune export`: a finished compress run's baseline, sparse and dense models exported to ONNX again
(checked against PyTorch on the run's validation images; int8 calibrated on its training images)."""

from __future__ import annotations

from pathlib import Path

import yaml

from supportprune.inputs.data import load_data, make_loaders
from supportprune.inputs.recipe import recipe_from_dict
from supportprune.pipelines.deliver import ModelSummary, export_models, load_run_models
from supportprune.run.training_loop import choose_device
from supportprune.store.layout import RunLayout
from supportprune.store.reporter import Reporter


def export_run(run_dir: Path, *, device: str, reporter: Reporter) -> list[ModelSummary]:
    layout = RunLayout(run_dir)
    torch_device = choose_device(device)
    spec, models = load_run_models(layout, torch_device)
    recipe = recipe_from_dict(yaml.safe_load(layout.recipe.read_text()), str(layout.recipe))
    data = load_data(recipe.data.source, input_size=recipe.data.input_size, mean=recipe.data.mean,
                     std=recipe.data.std, channels=recipe.data.channels, resize_to=recipe.data.resize_to)
    train_loader, val_loader = make_loaders(data, batch_size=recipe.data.batch_size, workers=recipe.data.workers, seed=recipe.seed)
    return export_models(spec, models, recipe, layout, val_loader, torch_device, reporter, calibration_loader=train_loader)
