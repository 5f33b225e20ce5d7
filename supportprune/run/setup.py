"""Opening a run: the processes joined and signals caught, its directory (new, resumed or moved aside by
--restart), then its data and model, the same on every rank; ``opened_run`` does all of it for a command."""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from supportprune.errors import SupportpruneError
from supportprune.inputs.data import recipe_loaders
from supportprune.inputs.models import ModelSpec, build_model, check_forward, downsampling_note
from supportprune import __version__
from supportprune.inputs.recipe import Recipe, recipe_differences
from supportprune.method.pruning import count_macs_params
from supportprune.method.convert import activation_census, convert_relus
from supportprune.method.support import kept_channel_counts, set_site_mode, support_sites
from supportprune.store.atomic import atomic_write_text
from supportprune.run.context import RunContext
from supportprune.run.distributed import cluster_device, init_cluster, shutdown_cluster
from supportprune.run.engine import Engine
from supportprune.run.phases import Phase
from supportprune.store.checkpoint import CheckpointError, load_latest
from supportprune.store.layout import RunLayout
from supportprune.store.reporter import Reporter, SilentReporter
from supportprune.store.run_aside import move_run_aside
from supportprune.run.run_state import RunState
from supportprune.run.signals import StopRequests, stage
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
def opened_run(model_name: str, recipe: Recipe, out_dir: Path, *, command: str, phases: Sequence[str],
               device: str, restart: bool, reporter: Reporter | None, max_steps: int | None,
               criterion_given: bool | None = None, notes: Sequence[str] = ()) -> Iterator[OpenedRun]:
    """Join the processes (torchrun), catch SIGINT/SIGTERM, open the run directory and build the data and model;
    the processes are left again on the way out. Only rank 0 reports. ``command`` and ``phases`` (the recipe
    sections of the phases it runs, in order) decide which earlier run the directory may resume; ``criterion_given``
    and ``notes``: see ``build_context``."""
    started = time.perf_counter()
    cluster = init_cluster(device)
    try:
        with StopRequests() as stop_requests:
            reporter = reporter if (reporter is not None and cluster.is_main) else SilentReporter()
            layout = RunLayout(out_dir)
            with stage("opening the run directory"):
                resuming = open_run_dir(layout, recipe, model_name, cluster, reporter, restart, command,
                                        tuple(phases))
            context = build_context(model_name, recipe, layout, cluster, reporter, device, max_steps, started,
                                    criterion_given, list(notes))
            yield OpenedRun(context, resuming, stop_requests)
    finally:
        shutdown_cluster(cluster)


def open_run_dir(layout: RunLayout, recipe: Recipe, model_name: str, cluster, reporter: Reporter, restart: bool,
                 command: str, phases: tuple[str, ...]) -> bool:
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
                  requested_device: str, max_steps: int | None, started: float,
                  criterion_given: bool | None = None, notes: list[str] | None = None) -> RunContext:
    """Data, loaders and the model with its ReLUs as support sites (thresholding: η*, Eq. 9). ``criterion_given``
    (compress; None for train): whether the command line chose ``sparse.criterion``; the criterion is then fitted
    to the model's activations (``choose_criterion``). ``notes``: what was decided about the run already, for the
    log and the report."""
    seed_everything(recipe.seed)
    device = choose_device(cluster_device(cluster, requested_device))
    with stage("loading the data"):
        data, train_loader, val_loader = recipe_loaders(recipe.data, recipe.seed, rank=cluster.rank,
                                                        world_size=cluster.world_size, with_indices=True)
    processes = f", {cluster.world_size} processes" if cluster.distributed else ""
    reporter.message(f"data: {data.description}; device: {device}{processes}")
    notes = list(notes or [])
    spec = ModelSpec(model_name, data.num_classes, data.channels, recipe.data.input_size, dict(recipe.model_args))
    changes: list[tuple[str, str]] = []
    with stage("building the model"):
        plain_model = build_model(spec, recipe.weights, changes)
        check_forward(plain_model, spec)
    notes.extend(sentence for _, sentence in changes)
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
    with stage("converting the model"):
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


# Settings that never force retraining: they act after training (export, bench) or not on what is computed.
_FREE_SECTIONS = ("export", "bench")
_FREE_KEYS = ("description", "checkpoint_every_steps", "data.workers")


def prepare_run_dir(layout: RunLayout, recipe: Recipe, model_name: str, command: str = "compress",
                    phases: Sequence[str] = ()) -> tuple[bool, list[str]]:
    """Create or reopen the run directory: (True when an earlier run is resumed, lines to tell the user).

    A directory that holds a run (its run.json) is reopened only by the same command for the same model, and a
    recipe that differs only where it may: export and bench settings, and the sections of ``phases`` (the
    command's phases, in order) that have not finished. Anything else is refused, naming what differs."""
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
        probe = layout.root / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise SupportpruneError(f"cannot write to output directory {layout.root}: {error.strerror}; choose another --out") from None
    has_checkpoint = layout.checkpoint.exists() or layout.checkpoint.with_suffix(".pt.previous").exists()
    if not layout.run_info.exists():
        if has_checkpoint:
            raise SupportpruneError(f"{layout.root} holds checkpoints but no run.json, so what made them is unknown; "
                                    "use another --out, or --restart to move that directory aside")
        return False, []
    advice = "use another --out, or --restart to move that run aside and start over"
    try:
        previous = json.loads(layout.run_info.read_text())
    except (OSError, ValueError) as error:
        raise SupportpruneError(f"{layout.run_info} cannot be read ({error}); {advice}") from None
    made_by = previous.get("command")  # runs made before run.json recorded it: any command
    if made_by is not None and made_by != command:
        raise SupportpruneError(f"{layout.root} holds a `supportprune {made_by}` run, not a `supportprune {command}` "
                                f"one; {advice}")
    if previous.get("model") != model_name:
        raise SupportpruneError(f"{layout.root} holds a run of model {previous.get('model')!r}, not {model_name!r}; {advice}")
    finished = _finished_phases(layout, len(phases))
    notes = []
    for key, old, new in recipe_differences(layout.recipe, recipe):
        section = key.split(".")[0]
        if section in _FREE_SECTIONS or key in _FREE_KEYS:
            notes.append(f"{key} changed from {old!r} to {new!r}: it applies from now on (no retraining)")
        elif section in phases and phases.index(section) >= finished:
            notes.append(f"{key} changed from {old!r} to {new!r}: the {section} phase had not finished, it continues "
                         "with the new value")
        elif key == "recipe.yaml":
            raise SupportpruneError(f"{layout.recipe}: {old}; {advice}")
        else:
            why = f"the {section} phase has finished" if section in phases else "training depends on it"
            raise SupportpruneError(f"{layout.root} holds a run made with {key}: {old!r}, not {new!r} ({why}); {advice}")
    return has_checkpoint, notes


def _finished_phases(layout: RunLayout, phases: int) -> int:
    """How many of the run's phases have finished, from its checkpoint. Without one: none, unless models of a
    finished run are there (their checkpoints deleted to free space); a damaged one: all, so that nothing
    finished can be overwritten by other settings."""
    try:
        loaded = load_latest(layout.checkpoint)
    except CheckpointError:
        return phases
    if loaded is None:
        return phases if any(layout.root.glob("models/*.pt")) else 0
    return min(phases, int(loaded[0]["run"].get("phase_index", 0)))


def run_info(model_name: str, command: str = "compress") -> dict[str, Any]:
    """run.json: the command and model that made the run, the command line, and the versions it ran with. Its
    presence marks a directory as a supportprune run (``--restart`` moves only such a directory)."""
    import torch
    import torchvision

    return {
        "command": command,
        "model": model_name,
        "command_line": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "supportprune": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


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
