"""Opening a run: its directory (new, resumed or moved aside by --restart), then its data and model, the same
on every rank."""

from __future__ import annotations

import json
from dataclasses import asdict

import torch

from supportprune.errors import SupportpruneError
from supportprune.inputs.data import load_data, make_loaders
from supportprune.inputs.models import ModelSpec, build_model, check_forward
from supportprune.inputs.recipe import Recipe
from supportprune.method.pruning import count_macs_params
from supportprune.method.support import convert_relus, kept_channel_counts, set_site_mode
from supportprune.run.atomic import atomic_write_text
from supportprune.run.context import RunContext
from supportprune.run.distributed import cluster_device
from supportprune.run.layout import RunLayout, prepare_run_dir, run_info
from supportprune.run.reporter import Reporter
from supportprune.run.run_aside import move_run_aside
from supportprune.run.run_state import RunState
from supportprune.run.signals import stage
from supportprune.run.sync_batch_norm import use_global_batch_statistics
from supportprune.run.training_loop import choose_device, seed_everything


def open_run_dir(layout: RunLayout, recipe: Recipe, model_name: str, cluster, reporter: Reporter, restart: bool,
                 command: str = "compress", phases: tuple[str, ...] = ()) -> bool:
    """Rank 0 checks the directory; every rank learns the outcome (or the same error). True when resuming."""
    outcome = None
    if cluster.is_main:
        try:
            # --restart: the earlier run is renamed whole, so nothing of it (checkpoints, latency table,
            # models) can be resumed or reused, and nothing is lost.
            moved = move_run_aside(layout.root) if restart else None
            if moved is not None:
                reporter.message(f"--restart: the earlier run in {layout.root} moved to {moved}")
            resuming, notes = prepare_run_dir(layout, recipe, model_name, command, phases)
            for note in notes:
                reporter.message(note)
            atomic_write_text(layout.recipe, recipe.to_yaml())
            atomic_write_text(layout.run_info, json.dumps(run_info(model_name, command), indent=2))
            outcome = ("ok", resuming)
        except SupportpruneError as error:
            outcome = ("error", str(error))
    outcome = cluster.broadcast_object(outcome)
    if outcome[0] == "error":
        raise SupportpruneError(outcome[1])
    return outcome[1]


def build_context(model_name: str, recipe: Recipe, layout: RunLayout, cluster, reporter: Reporter,
                  requested_device: str, max_steps: int | None, started: float) -> RunContext:
    """Data, loaders and the model with its ReLUs as support sites (thresholding: η*, Eq. 9)."""
    seed_everything(recipe.seed)
    device = choose_device(cluster_device(cluster, requested_device))
    with stage("loading the data"):
        data = load_data(
            recipe.data.source, input_size=recipe.data.input_size, mean=recipe.data.mean, std=recipe.data.std,
            augment=recipe.data.augment, channels=recipe.data.channels, resize_to=recipe.data.resize_to,
        )
    processes = f", {cluster.world_size} processes" if cluster.distributed else ""
    reporter.message(f"data: {data.description}; device: {device}{processes}")
    train_loader, val_loader = make_loaders(
        data, batch_size=recipe.data.batch_size, workers=recipe.data.workers, seed=recipe.seed,
        rank=cluster.rank, world_size=cluster.world_size, with_indices=True,
    )
    spec = ModelSpec(model_name, data.num_classes, data.channels, recipe.data.input_size, dict(recipe.model_args))
    if cluster.is_main:  # what `supportprune export` needs to rebuild the models
        info = {**json.loads(layout.run_info.read_text()), "spec": asdict(spec)}
        atomic_write_text(layout.run_info, json.dumps(info, indent=2))
    with stage("building the model"):
        plain_model = build_model(spec, recipe.weights)
        check_forward(plain_model, spec)
        model = convert_relus(plain_model, spec.example_input()).to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if recipe.sync_batch_norm and cluster.distributed:
        use_global_batch_statistics(model)
    set_site_mode(model, "threshold", global_supports=cluster.distributed)
    example = spec.example_input().to(device)
    baseline_macs, baseline_params = count_macs_params(model, example)
    state = RunState(channels_total={n: total for n, (_, total) in kept_channel_counts(model).items()})
    return RunContext(model_name, recipe, layout, cluster, reporter, device, data, train_loader, val_loader, spec,
                      model, example, baseline_macs, baseline_params, state, max_steps, started)


