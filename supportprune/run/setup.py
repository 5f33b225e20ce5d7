"""Opening a run: the processes joined and signals caught, its directory (new, resumed or moved aside by
--restart), then its data and model, the same on every rank; ``opened_run`` does all of it for a command."""

from __future__ import annotations

import json
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from supportprune.errors import SupportpruneError
from supportprune.inputs.data import recipe_loaders
from supportprune.inputs.models import ModelSpec, build_model, check_forward
from supportprune import __version__
from supportprune.inputs.recipe import Recipe, same_recipe
from supportprune.method.pruning import count_macs_params
from supportprune.method.convert import convert_relus
from supportprune.method.support import kept_channel_counts, set_site_mode
from supportprune.store.atomic import atomic_write_text
from supportprune.run.context import RunContext
from supportprune.run.distributed import cluster_device, init_cluster, shutdown_cluster
from supportprune.run.engine import Engine
from supportprune.run.phases import Phase
from supportprune.store.layout import RunLayout
from supportprune.store.reporter import Reporter, SilentReporter
from supportprune.store.run_aside import move_aside
from supportprune.run.run_state import RunState
from supportprune.run.signals import StopRequests
from supportprune.run.sync_batch_norm import use_global_batch_statistics
from supportprune.run.training_loop import choose_device, seed_everything


@dataclass(frozen=True)
class OpenedRun:
    """A run ready to train: its context, whether it resumes, and the stop requests its engine watches."""

    context: RunContext
    resuming: bool
    stop_requests: StopRequests

    def run_phases(self, phases: Sequence[Phase]) -> None:
        """Run ``phases`` in order with the engine, from where the run directory says (all of them when new)."""
        Engine(self.context, phases, self.stop_requests, self.resuming).run()


@contextmanager
def opened_run(model_name: str, recipe: Recipe, out_dir: Path, *, device: str, restart: bool,
               reporter: Reporter | None, max_steps: int | None) -> Iterator[OpenedRun]:
    """Join the processes (torchrun), catch SIGINT/SIGTERM, open the run directory and build the data and model;
    the processes are left again on the way out. Only rank 0 reports."""
    started = time.perf_counter()
    cluster = init_cluster(device)
    try:
        with StopRequests() as stop_requests:
            reporter = reporter if (reporter is not None and cluster.is_main) else SilentReporter()
            layout = RunLayout(out_dir)
            resuming = open_run_dir(layout, recipe, model_name, cluster, reporter, restart)
            context = build_context(model_name, recipe, layout, cluster, reporter, device, max_steps, started)
            yield OpenedRun(context, resuming, stop_requests)
    finally:
        shutdown_cluster(cluster)


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
                  requested_device: str, max_steps: int | None, started: float) -> RunContext:
    """Data, loaders and the model with its ReLUs as support sites (thresholding: η*, Eq. 9)."""
    seed_everything(recipe.seed)
    device = choose_device(cluster_device(cluster, requested_device))
    data, train_loader, val_loader = recipe_loaders(recipe.data, recipe.seed, rank=cluster.rank,
                                                    world_size=cluster.world_size, with_indices=True)
    processes = f", {cluster.world_size} processes" if cluster.distributed else ""
    reporter.message(f"data: {data.description}; device: {device}{processes}")
    spec = ModelSpec(model_name, data.num_classes, data.channels, recipe.data.input_size, dict(recipe.model_args))
    if cluster.is_main:  # what `supportprune export` needs to rebuild the models
        info = {**json.loads(layout.run_info.read_text()), "spec": asdict(spec)}
        atomic_write_text(layout.run_info, json.dumps(info, indent=2))
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


def prepare_run_dir(layout: RunLayout, recipe: Recipe, model_name: str) -> bool:
    """Create or reopen the run directory; True when an earlier run of the same recipe is resumed."""
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
        probe = layout.root / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise SupportpruneError(f"cannot write to output directory {layout.root}: {error.strerror}; choose another --out") from None
    if layout.checkpoint.exists() or layout.checkpoint.with_suffix(".pt.previous").exists():
        previous_info = json.loads(layout.run_info.read_text()) if layout.run_info.exists() else {}
        if not same_recipe(layout.recipe, recipe) or previous_info.get("model") != model_name:
            raise SupportpruneError(
                f"{layout.root} holds a run with another model or recipe; use another --out, or --restart to start over there"
            )
        return True
    return False


def run_info(model_name: str) -> dict[str, Any]:
    """run.json: the model and the versions it ran with."""
    import torch
    import torchvision

    return {
        "model": model_name,
        "supportprune": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
