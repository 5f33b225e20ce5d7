"""Opening a run: its directory (new, resumed or moved aside by --restart), then its data and model, the same
on every rank."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict

import torch

from supportprune.errors import SupportpruneError
from supportprune.inputs.data import load_data, make_loaders
from supportprune.inputs.models import ModelSpec, build_model, check_forward, downsampling_note
from supportprune.inputs.recipe import Recipe
from supportprune.method.pruning import count_macs_params
from supportprune.method.convert import activation_census
from supportprune.method.support import convert_relus, kept_channel_counts, set_site_mode, support_sites
from supportprune.run.atomic import atomic_write_text
from supportprune.run.context import RunContext
from supportprune.run.distributed import cluster_device
from supportprune.run.layout import RunLayout, prepare_run_dir, run_info
from supportprune.run.reporter import Reporter
from supportprune.run.run_aside import move_aside
from supportprune.run.run_state import RunState
from supportprune.run.sync_batch_norm import use_global_batch_statistics
from supportprune.run.training_loop import choose_device, seed_everything


def open_run_dir(layout: RunLayout, recipe: Recipe, model_name: str, cluster, reporter: Reporter, restart: bool) -> bool:
    """Rank 0 checks the directory; every rank learns the outcome (or the same error). True when resuming."""
    outcome = None
    if cluster.is_main:
        try:
            # --restart: the earlier run is renamed whole, so nothing of it (checkpoints, latency table,
            # models) can be resumed or reused, and nothing is lost.
            moved = move_aside(layout.root) if restart else None
            if moved is not None:
                reporter.message(f"--restart: the earlier run in {layout.root} moved to {moved}")
            resuming = prepare_run_dir(layout, recipe, model_name)
            atomic_write_text(layout.recipe, recipe.to_yaml())
            atomic_write_text(layout.run_info, json.dumps(run_info(model_name), indent=2))
            outcome = ("ok", resuming)
        except SupportpruneError as error:
            outcome = ("error", str(error))
    outcome = cluster.broadcast_object(outcome)
    if outcome[0] == "error":
        raise SupportpruneError(outcome[1])
    return outcome[1]


def build_context(model_name: str, recipe: Recipe, layout: RunLayout, cluster, reporter: Reporter,
                  requested_device: str, max_steps: int | None, started: float,
                  criterion_given: bool | None = None, notes: list[str] | None = None) -> RunContext:
    """Data, loaders and the model with its ReLUs as support sites (thresholding: η*, Eq. 9). ``criterion_given``
    (compress; None for train): whether the command line chose ``sparse.criterion``; the criterion is then fitted
    to the model's activations (``choose_criterion``). ``notes``: what was decided about the run already, for the
    log and the report."""
    seed_everything(recipe.seed)
    device = choose_device(cluster_device(cluster, requested_device))
    data = load_data(
        recipe.data.source, input_size=recipe.data.input_size, mean=recipe.data.mean, std=recipe.data.std,
        augment=recipe.data.augment, channels=recipe.data.channels, resize_to=recipe.data.resize_to,
    )
    processes = f", {cluster.world_size} processes" if cluster.distributed else ""
    reporter.message(f"data: {data.description}; device: {device}{processes}")
    notes = list(notes or [])
    train_loader, val_loader = make_loaders(
        data, batch_size=recipe.data.batch_size, workers=recipe.data.workers, seed=recipe.seed,
        rank=cluster.rank, world_size=cluster.world_size, with_indices=True,
    )
    spec = ModelSpec(model_name, data.num_classes, data.channels, recipe.data.input_size, dict(recipe.model_args))
    changes: list[tuple[str, str]] = []
    plain_model = build_model(spec, recipe.weights, changes)
    notes.extend(sentence for _, sentence in changes)
    check_forward(plain_model, spec)
    small = downsampling_note(plain_model, spec)
    if small:
        notes.append(small)
    gates, census = False, None
    if criterion_given is not None:
        census = activation_census(plain_model, spec.example_input())
        recipe, gates = choose_criterion(census, spec, recipe, criterion_given, notes)
        spec = dataclasses.replace(spec, gate_activations=gates)
    if cluster.is_main:  # what `supportprune export` needs to rebuild the models
        info = {**json.loads(layout.run_info.read_text()), "spec": asdict(spec)}
        atomic_write_text(layout.run_info, json.dumps(info, indent=2))
    model = convert_relus(plain_model, spec.example_input(), gate_activations=gates).to(device)
    if census is not None and recipe.sparse.criterion == "support":
        note = support_site_note(model, spec, census[1])
        if note:
            notes.append(note)
    for note in notes:
        reporter.message(note)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if recipe.sync_batch_norm and cluster.distributed:
        use_global_batch_statistics(model)
    set_site_mode(model, "threshold", global_supports=cluster.distributed)
    example = spec.example_input().to(device)
    baseline_macs, baseline_params = count_macs_params(model, example)
    state = RunState(channels_total={n: total for n, (_, total) in kept_channel_counts(model).items()})
    return RunContext(model_name, recipe, layout, cluster, reporter, device, data, train_loader, val_loader, spec,
                      model, example, baseline_macs, baseline_params, state, max_steps, started, notes,
                      [path for path, _ in changes])


def choose_criterion(census: tuple[int, list[str]], spec: ModelSpec, recipe: Recipe, criterion_given: bool,
                     notes: list[str]) -> tuple[Recipe, bool]:
    """The Sparse step's criterion for this model, and whether its other activations become channel gates (every
    weight criterion: they prune at any activation). The support needs ReLU or ReLU6 call sites: a model with none
    is pruned by ``sparse.criterion_without_relu`` (said in ``notes``), or refused when the command line asked for
    the support. ``census``: ``activation_census`` of the model."""
    sparse = recipe.sparse
    if sparse.criterion != "support":
        return recipe, True
    relus, others = census
    if relus:
        return recipe, False
    found = ", ".join(others) if others else "no activation"
    if criterion_given:
        raise SupportpruneError(
            f"--criterion support needs ReLU or ReLU6 call sites and {spec.name} has none (found {found}); "
            f"prune it by a weight criterion, e.g. --criterion {sparse.criterion_without_relu}")
    try:
        recipe = dataclasses.replace(recipe, sparse=dataclasses.replace(sparse, criterion=sparse.criterion_without_relu))
    except ValueError as error:
        raise SupportpruneError(f"{spec.name} has no ReLU call site (found {found}) and criterion "
                                f"{sparse.criterion_without_relu} cannot run with this recipe: {error}") from None
    notes.append(f"{spec.name} has no ReLU or ReLU6 call site (found {found}), so no support to learn: pruned by "
                 f"{sparse.criterion_without_relu} (sparse.criterion_without_relu) instead of the support")
    return recipe, True


def support_site_note(model, spec: ModelSpec, others: list[str]) -> str | None:
    """For a model that mixes ReLU with ``others`` (activations), under the support criterion: which layers have
    support sites (channels that reach only the others are not pruned)."""
    if not others:
        return None
    names = [name for name, _ in support_sites(model)]
    shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
    return (f"{spec.name} mixes ReLU with {', '.join(others)}: support sites at its ReLU/ReLU6 calls only ({shown}); "
            f"channels that reach only {', '.join(others)} layers are not pruned (a weight criterion, e.g. "
            "--criterion l1, prunes at every activation)")
