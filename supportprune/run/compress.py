"""`supportprune compress` and `supportprune train`: runs end to end, from a model name to benchmarked ONNX
models (compress: the DSD run) or to a network trained by alternation (train).

This layer owns the run directory (resolved recipe, metrics, checkpoints, models, stored supports, report)
and calls the algorithm (``dsd``, ``alternation``), the loop (``train``), export and benchmarking. Runs
resume where they stopped: the same command on the same directory continues.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import platform
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from supportprune import __version__

from supportprune.method import dsd
from supportprune.method.alternation import (
    estimate_instance_supports,
    majority_supports,
    recalibrate_batch_norm,
    support_dims,
)
from supportprune.run.atomic import atomic_write_text
from supportprune.run.checkpoint import load_latest, save_checkpoint
from supportprune.method.criteria import Criterion, apply_weight_masks, make_criterion, prunable_weights
from supportprune.inputs.data import load_data, make_loaders, reseed_epoch
from supportprune.method.distill import DistillationLoss
from supportprune.errors import SupportpruneError
from supportprune.run.stored_supports import InstanceMaskStore, choose_storage
from supportprune.inputs.models import ModelSpec, build_model, check_forward
from supportprune.method.pruning import count_macs_params
from supportprune.deploy.quantize import onnx_top1_agreement as top1_agreement
from supportprune.inputs.recipe import PhaseConfig, Recipe, same_recipe, with_resolved_preprocessing
from supportprune.run.run_aside import move_aside
from supportprune.run.distributed import cluster_device, init_cluster, shutdown_cluster
from supportprune.run.sync_batch_norm import use_global_batch_statistics
from supportprune.method.support import (
    convert_relus,
    export_ready,
    fix_supports,
    release_supports,
    kept_channel_counts,
    kept_unit_fractions,
    reset_support_stats,
    set_site_mode,
    support_sites,
)
from supportprune.run.training_loop import (
    DivergedError,
    EpochProgress,
    choose_device,
    evaluate,
    make_optimizer,
    make_scheduler,
    cross_entropy_loss,
    seed_everything,
    train_epoch,
)

PHASES = ("dense", "sparse", "redense")
TRAIN_PHASES = ("train",)  # `supportprune train`: one phase, trained by alternation (recipe section train)
MODEL_KINDS = ("baseline", "sparse", "dense")
CURVE_POINTS_PER_EPOCH = 20  # training loss and error are logged this often per epoch (Figure 3's curves)
BATCH_NORM_RECALIBRATION_BATCHES = 100  # after an I-alternation epoch: batches that re-estimate batch-norm statistics


class Reporter(Protocol):
    """What the run tells its user; the CLI shows it with rich, tests stay silent."""

    def message(self, text: str) -> None: ...
    def start(self, description: str, total: int) -> None: ...
    def advance(self, completed: int, **fields: float) -> None: ...
    def stop(self) -> None: ...


class SilentReporter:
    def message(self, text: str) -> None:
        pass

    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, completed: int, **fields: float) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclass
class RunState:
    """Where a run stands; saved in every checkpoint."""

    phase_index: int = 0
    epoch: int = 0  # epochs finished in the current phase
    step: int = 0  # steps finished in the current epoch (checkpoints inside an epoch)
    partial: dict[str, Any] = field(default_factory=dict)  # running sums of the current epoch
    metrics: list[dict[str, Any]] = field(default_factory=list)
    alternations: list[dict[str, Any]] = field(default_factory=list)
    baseline_top1: Optional[float] = None
    revived_channels: Optional[int] = None
    channels_total: dict[str, int] = field(default_factory=dict)
    # [phase, step within the phase, mean training loss, training error (%)] over the last window of steps
    curve: list[list[Any]] = field(default_factory=list)
    curve_mark: list[float] = field(default_factory=lambda: [-1, 0.0, 0, 0])  # epoch number, loss_sum, correct, seen at the last point
    mask_round: Optional[list[Any]] = None  # [phase, epoch] whose estimation the stored instance supports are


@dataclass(frozen=True)
class ModelSummary:
    kind: str
    params: int
    macs: int
    top1: float
    onnx: str
    max_abs_diff: float


@dataclass(frozen=True)
class CompressResult:
    out_dir: Path
    models: tuple[ModelSummary, ...]
    bench: tuple[Any, ...]
    seconds: float


class RunLayout:
    """The files of a run directory, in one place."""

    def __init__(self, out_dir: Path) -> None:
        self.root = Path(out_dir)
        self.recipe = self.root / "recipe.yaml"
        self.run_info = self.root / "run.json"
        self.metrics = self.root / "metrics.jsonl"
        self.checkpoint = self.root / "checkpoints" / "last.pt"
        self.report = self.root / "report.md"
        self.bench_json = self.root / "benchmark.json"
        self.bench_md = self.root / "benchmark.md"
        self.export_json = self.root / "export.json"
        self.plots = self.root / "plots"
        self.instance_supports = self.root / "masks" / "instance-supports.npy"
        self.result = self.root / "result.json"  # a train run's (or an undelivered compress run's) final numbers
        self.latency_table = self.root / "latency-table.json"  # sparse.allocation latency: measured once, reused

    def model_state(self, kind: str) -> Path:
        return self.root / "models" / f"{kind}.pt"

    def onnx(self, kind: str, fp16: bool = False, int8: bool = False) -> Path:
        return self.root / (f"{kind}.fp16.onnx" if fp16 else f"{kind}.int8.onnx" if int8 else f"{kind}.onnx")


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


class RunInterrupted(SupportpruneError):
    """SIGINT/SIGTERM: the current step finished, a checkpoint was written, the run can resume."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _StopRequests:
    """SIGINT and SIGTERM ask the run to stop after the current step instead of killing it mid-write."""

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequests":
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._request)
        return self

    def _request(self, number, frame) -> None:
        self.signal_name = signal.Signals(number).name

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


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
    """Run Dense → Sparse (B-alternation, support pruning) → re-Dense, export and benchmark the three models.

    Under torchrun, every process trains its share of each global batch (DistributedDataParallel);
    rank 0 decides the pruning, writes every file, exports and benchmarks. ``deliver=False`` stops
    after training (no export, benchmark or report: ``experiment`` reads the metrics itself).
    """
    return _execute(model_name, recipe, out_dir, PHASES, device, restart, reporter, max_steps_per_epoch, deliver).result


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
    return _execute(model_name, recipe, out_dir, TRAIN_PHASES, device, restart, reporter, max_steps_per_epoch, False).final_result


def _execute(model_name, recipe, out_dir, phases, device, restart, reporter, max_steps, deliver) -> "_Run":
    recipe = with_resolved_preprocessing(recipe)  # recipe.yaml and the report say exactly how images were prepared
    cluster = init_cluster(device)
    try:
        with _StopRequests() as stop_requests:
            run = _Run(model_name, recipe, out_dir, device, restart, reporter, max_steps,
                       cluster, stop_requests, phases, deliver)
            run.result = run.execute()
            return run
    finally:
        shutdown_cluster(cluster)


class _Run:
    """One run (compress: dense, sparse, redense; train: one train phase): its directory, data, model and
    state, and the phases in order."""

    def __init__(self, model_name, recipe, out_dir, device, restart, reporter, max_steps, cluster, stop_requests,
                 phases=PHASES, deliver=True) -> None:
        self.model_name, self.recipe, self.cluster = model_name, recipe, cluster
        self.phases, self.deliver = phases, deliver
        self.weight_masks = None  # magnitude baseline: weights kept zero after each step of the Sparse phase
        self.criterion, self.criterion_state = None, {}  # the Sparse step's criterion and its saved observations
        self.mask_store = None  # I-alternation: the supports of every training example
        self.revive_store = None  # redense.revive restore: the weights of channels when they were pruned
        self.loss_fn = cross_entropy_loss  # the phase's loss (with distill: the Dense model as a teacher)
        self.final_result: dict[str, Any] = {}  # a train run's closing evaluation
        self.reporter = reporter if (reporter is not None and cluster.is_main) else SilentReporter()
        self.layout, self.restart, self.max_steps, self.stop_requests = RunLayout(out_dir), restart, max_steps, stop_requests
        self.requested_device = device
        self.started = time.perf_counter()

    # -- set-up ------------------------------------------------------------------------------------

    def execute(self) -> CompressResult:
        recipe, cluster = self.recipe, self.cluster
        # Rank 0 checks the directory; every rank learns the outcome (or the same error).
        outcome = None
        if cluster.is_main:
            try:
                # --restart: the earlier run is renamed whole, so nothing of it (checkpoints, latency table,
                # models) can be resumed or reused, and nothing is lost.
                moved = move_aside(self.layout.root) if self.restart else None
                if moved is not None:
                    self.reporter.message(f"--restart: the earlier run in {self.layout.root} moved to {moved}")
                resuming = prepare_run_dir(self.layout, recipe, self.model_name)
                atomic_write_text(self.layout.recipe, recipe.to_yaml())
                atomic_write_text(self.layout.run_info, json.dumps(_run_info(self.model_name), indent=2))
                outcome = ("ok", resuming)
            except SupportpruneError as error:
                outcome = ("error", str(error))
        outcome = cluster.broadcast_object(outcome)
        if outcome[0] == "error":
            raise SupportpruneError(outcome[1])
        resuming = outcome[1]

        seed_everything(recipe.seed)
        self.device = choose_device(cluster_device(cluster, self.requested_device))
        self.data = load_data(
            recipe.data.source, input_size=recipe.data.input_size, mean=recipe.data.mean, std=recipe.data.std,
            augment=recipe.data.augment, channels=recipe.data.channels, resize_to=recipe.data.resize_to,
        )
        processes = f", {cluster.world_size} processes" if cluster.distributed else ""
        self.reporter.message(f"data: {self.data.description}; device: {self.device}{processes}")
        self.train_loader, self.val_loader = make_loaders(
            self.data, batch_size=recipe.data.batch_size, workers=recipe.data.workers, seed=recipe.seed,
            rank=cluster.rank, world_size=cluster.world_size, with_indices=True,
        )
        self.spec = ModelSpec(self.model_name, self.data.num_classes, self.data.channels, recipe.data.input_size,
                              dict(recipe.model_args))
        if cluster.is_main:  # what `supportprune export` needs to rebuild the models
            info = {**json.loads(self.layout.run_info.read_text()), "spec": asdict(self.spec)}
            atomic_write_text(self.layout.run_info, json.dumps(info, indent=2))
        plain_model = build_model(self.spec, recipe.weights)
        check_forward(plain_model, self.spec)
        self.model = convert_relus(plain_model, self.spec.example_input()).to(self.device)
        if recipe.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if recipe.sync_batch_norm and cluster.distributed:
            use_global_batch_statistics(self.model)
        set_site_mode(self.model, "threshold", global_supports=cluster.distributed)
        self.example = self.spec.example_input().to(self.device)
        self.baseline_macs, self.baseline_params = count_macs_params(self.model, self.example)
        self.state = RunState(channels_total={n: total for n, (_, total) in kept_channel_counts(self.model).items()})
        saved = self._resume() if resuming else None

        for phase_index in range(self.state.phase_index, len(self.phases)):
            self._run_phase(phase_index, saved if phase_index == self.state.phase_index else None)
            saved = None
        if self.phases == TRAIN_PHASES:
            self._finish_training()
        if not cluster.is_main or not self.deliver:
            if cluster.is_main and self.phases == PHASES:
                self._write_result({"baseline_top1": self.state.baseline_top1, "alternations": self.state.alternations,
                                    "baseline_macs": self.baseline_macs, "baseline_params": self.baseline_params,
                                    "spec": asdict(self.spec), "metrics": self.state.metrics,
                                    "seconds": time.perf_counter() - self.started})
            return CompressResult(self.layout.root, (), (), time.perf_counter() - self.started)
        # Each rank validated on its shard; the exported models are checked on the whole validation set.
        full_val = self.val_loader if not cluster.distributed else make_loaders(
            self.data, batch_size=recipe.data.batch_size, workers=recipe.data.workers, seed=recipe.seed)[1]
        summaries = _finish(self.spec, recipe, self.layout, full_val, self.device, self.reporter, self.train_loader)
        bench = _benchmark(recipe, self.layout, self.reporter)
        seconds = time.perf_counter() - self.started
        from supportprune.reports.run_report import write_report

        write_report(self.layout, self.model_name, recipe, self.data.description, summaries, bench, self.state, seconds)
        self.reporter.message(f"report: {self.layout.report}")
        return CompressResult(self.layout.root, tuple(summaries), tuple(bench), seconds)

    def _resume(self) -> Optional[dict[str, Any]]:
        loaded = load_latest(self.layout.checkpoint)
        if loaded is None:
            return None
        saved, used, problems = loaded
        for problem in problems:
            self.reporter.message(f"warning: {problem}; resuming from {used.name}")
        self.model.load_state_dict(saved["model"])
        self.criterion_state = saved.get("criterion") or {}
        self.revive_store = saved.get("revive_store")
        self.state = RunState(**saved["run"])
        _restore_rng(saved["rng"], self.cluster, self.reporter)
        if self.state.phase_index < len(self.phases):
            where = f"{self.phases[self.state.phase_index]} epoch {self.state.epoch + 1}"
            if self.state.step:
                where += f", step {self.state.step + 1}"
        else:
            where = "export (training finished)"
        self.reporter.message(f"resuming {self.layout.root} at {where}")
        return saved

    # -- phases ------------------------------------------------------------------------------------

    def _run_phase(self, phase_index: int, saved: Optional[dict[str, Any]]) -> None:
        phase = self.phases[phase_index]
        config: PhaseConfig = getattr(self.recipe, phase)
        fresh = saved is None or saved["optimizer"] is None
        self.state.phase_index = phase_index
        if phase in ("sparse", "redense") and self.recipe.sparse.beta == "estimated":
            estimated, sites = dsd.estimate_beta(self.model)  # idempotent: a resumed run re-freezes the moved biases
            if phase == "sparse" and fresh:
                self.reporter.message(f"β estimated (the trained biases) at {estimated} of {sites} sites")
        if phase == "sparse":
            dsd.begin_sparse(self.model, self.recipe.sparse, reset=fresh)
        elif phase == "redense" and fresh:
            revive = self.recipe.redense.revive
            self.state.revived_channels = dsd.redense(self.model, self.example, revive, self.revive_store)
            how = {"zero": "initialised to zero", "restore": "with the weights they were pruned with",
                   "reinit": "producing weights re-initialised, consuming weights zero"}[revive]
            self.reporter.message(f"re-dense: {self.state.revived_channels} pruned channels back, {how}")
        distill = getattr(config, "distill", None)
        self.loss_fn = self._distillation_loss(distill) if distill is not None else cross_entropy_loss
        trained = DistributedDataParallel(self.model) if self.cluster.distributed else self.model
        if self.recipe.compile:
            # Measured on an H100 (benchmarks/results/2026-11-23-h100-gpu-speed.md): under torch.compile the plain
            # tensor-op site lets inductor fuse more than the fused path's custom autograd functions do.
            for _, site in support_sites(self.model):
                site.fused = False
            trained = torch.compile(trained)
        optimizer = make_optimizer(self.model, config)
        if phase == "sparse" and self.recipe.sparse.criterion == "magnitude":
            # DSD: pruned weights stay zero while the rest is retrained.
            if not fresh and any(a.get("criterion") == "magnitude" for a in self.state.alternations):
                self.weight_masks = {name: w != 0 for name, w in prunable_weights(self.model).items()}
            optimizer.register_step_post_hook(lambda *_: self.weight_masks and apply_weight_masks(self.model, self.weight_masks))
        steps = self._steps_per_epoch()
        scheduler = make_scheduler(optimizer, config, steps)
        if not fresh:
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        while self.state.epoch < config.epochs:
            self._run_epoch(phase, config, trained, optimizer, scheduler, steps)
        self._leave_phase(phase)
        self.state.phase_index, self.state.epoch = phase_index + 1, 0
        self._save(None, None)

    def _run_epoch(self, phase, config, trained, optimizer, scheduler, steps) -> None:
        state, recipe, reporter = self.state, self.recipe, self.reporter
        epoch = state.epoch + 1
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"] if not state.partial else state.partial["lr"]
        earlier_seconds = state.partial.get("seconds", 0.0)
        progress = EpochProgress(**{k: v for k, v in state.partial.items() if k not in ("lr", "seconds")})
        reseed_epoch(self.train_loader, recipe.seed, len(state.metrics), start_step=progress.step)
        before_batch = self._supports_for_epoch(phase, config, epoch)
        every = recipe.checkpoint_every_steps
        curve_every = max(1, steps // CURVE_POINTS_PER_EPOCH)
        stopped = False

        def stop_after(progress: EpochProgress) -> bool:
            nonlocal stopped
            if progress.step % curve_every == 0 or progress.step == steps:
                self._curve_point(phase, config, epoch, steps, progress)
            stopped = self.cluster.any(self.stop_requests.signal_name is not None)  # every rank stops together
            if stopped or (every and progress.step % every == 0 and progress.step < steps):
                self._check_finite()
                elapsed = earlier_seconds + time.perf_counter() - started
                state.step, state.partial = progress.step, {**asdict(progress), "lr": lr, "seconds": elapsed}
                self._save(optimizer, scheduler)
            return stopped

        reporter.start(f"{phase} {epoch}/{config.epochs}", steps)
        try:
            progress = train_epoch(
                trained, self.train_loader, optimizer, scheduler, self.device, progress=progress,
                max_steps=self.max_steps, stop_after=stop_after,
                bf16=recipe.precision == "bf16", channels_last=recipe.channels_last, before_batch=before_batch,
                loss_fn=self.loss_fn,
                on_step=lambda step, loss, top1: reporter.advance(step, loss=loss, top1=top1),
            )
            self._check_finite()
        except DivergedError as error:
            reporter.stop()
            kept = "checkpoints/last.pt" if self.layout.checkpoint.exists() else "no checkpoint yet"
            raise DivergedError(
                f"{phase} epoch {epoch}: {error}; stopped, last good checkpoint kept ({kept}); "
                f"lower {phase}.lr in the recipe and run again (it resumes)"
            ) from None
        reporter.stop()
        if before_batch is not None and not stopped:
            release_supports(self.model)  # evaluation and the next epoch threshold each example again
            self._recalibrate_batch_norm()
        if stopped:
            signal_name = self.stop_requests.signal_name or "a signal to another process"
            raise RunInterrupted(
                f"stopped by {signal_name} at {phase} epoch {epoch}, step {progress.step}: checkpoint written to "
                f"{self.layout.checkpoint}; run the same command again to resume",
                143 if signal_name == "SIGTERM" else 130,
            )
        total_loss, total_correct, total_seen = self.cluster.all_reduce_sum([progress.loss_sum, progress.correct, progress.seen])
        loss, top1 = total_loss / total_seen, 100.0 * total_correct / total_seen
        record: dict[str, Any] = {"phase": phase, "epoch": epoch, "train_loss": loss, "train_top1": top1, "lr": lr}
        if phase == "sparse":
            record["supports_kept"] = kept_unit_fractions(self.model)
            if epoch in recipe.sparse.alternation_epochs:
                self._alternation_point(epoch)
        if phase == "train" and recipe.train.alternation == "instance" and self.mask_store is not None:
            record["supports_kept"] = self._stored_support_fractions()
        record["val_loss"], record["val_top1"] = evaluate(self.model, self.val_loader, self.device,
                                                          reduce=self.cluster.all_reduce_sum)
        record["channels_kept"] = {name: kept for name, (kept, _) in kept_channel_counts(self.model).items()}
        record["seconds"] = time.perf_counter() - started + earlier_seconds
        state.metrics.append(record)
        state.epoch, state.step, state.partial = epoch, 0, {}
        reporter.message(
            f"{phase} {epoch}/{config.epochs}: loss {loss:.4f}, train top-1 {top1:.2f}%, "
            f"val top-1 {record['val_top1']:.2f}% ({record['seconds']:.1f}s)"
        )
        self._save(optimizer, scheduler)

    # -- supports of an epoch ----------------------------------------------------------------------

    def _supports_for_epoch(self, phase: str, config: PhaseConfig, epoch: int):
        """Put the sites in this epoch's mode. With I-alternation, returns the hook that fixes each batch's
        stored supports (the examples' indices come with the batch); otherwise None."""
        recipe = self.recipe
        if phase == "train":
            train = recipe.train
            if train.alternation == "none" or epoch <= train.warmup_epochs:
                set_site_mode(self.model, "threshold", record_stats=False)
                return None
            if train.alternation == "batch":
                set_site_mode(self.model, "batch", granularity=train.granularity,
                              relative_threshold=train.relative_threshold, record_stats=False)
                return None
            # I-alternation: supports estimated at the first epoch of every gap, trained with until the next.
            first = train.warmup_epochs + 1 + (epoch - train.warmup_epochs - 1) // train.gap_epochs * train.gap_epochs
            self._instance_supports(["train", first], train.relative_threshold, train.granularity, record_stats=False)
        elif phase == "sparse" and recipe.sparse.criterion == "support" and recipe.sparse.alternation == "instance":
            # DSD (I-alternation): fresh supports every Sparse epoch, estimated as in `train` (its granularity
            # and threshold: Eq. 38 per unit keeps m ⊆ ReLU's support, so m ⊙ q stays close to η*; whole-channel
            # supports would pass negative q). Their channel statistics, under the Sparse step's threshold,
            # decide the pruning.
            self._instance_supports(["sparse", epoch], recipe.train.relative_threshold, recipe.train.granularity,
                                    record_stats=True)
        else:
            return None
        store, device = self.mask_store, self.device

        def fix_batch_supports(indices: torch.Tensor) -> None:
            fix_supports(self.model, store.read(indices, device))

        return fix_batch_supports

    def _instance_supports(self, round_key: list[Any], relative_threshold: float, granularity: str, *, record_stats: bool) -> None:
        """Make ``self.mask_store`` hold every training example's supports of estimation ``round_key``:
        kept if already there, reopened from the run directory on resume, else estimated now (Eq. 38)."""
        if self.mask_store is not None and self.state.mask_round == round_key:
            return
        train = self.recipe.train
        path = self.layout.instance_supports
        shapes = support_dims(self.model, self.example, granularity)
        examples = len(self.data.train)
        storage = choose_storage(shapes, examples, train.mask_storage, train.mask_memory_mb * 2**20)
        if self.state.mask_round == round_key and path.exists():
            self.mask_store = InstanceMaskStore.open(shapes, path, storage)
            if self.mask_store.examples == examples:
                return
        self.mask_store = None
        if self.cluster.is_main:
            self._estimate_supports(shapes, examples, storage, relative_threshold, granularity, record_stats, round_key)
        self.cluster.barrier()
        if self.mask_store is None:  # the other ranks read what rank 0 estimated
            self.mask_store = InstanceMaskStore.open(shapes, path, storage)
        self.state.mask_round = round_key

    def _ordered_train_loader(self, with_indices: bool = False):
        """The training set in index order, unshuffled: the passes that estimate supports, count them, or
        recalibrate batch norm see the same examples in the same order on every rank."""
        from torch.utils.data import DataLoader

        from supportprune.inputs.data import ExampleIndices

        dataset = ExampleIndices(self.data.train) if with_indices else self.data.train
        return DataLoader(dataset, batch_size=self.recipe.data.batch_size, shuffle=False, num_workers=self.recipe.data.workers)

    def _estimate_supports(self, shapes, examples, storage, relative_threshold, granularity, record_stats, round_key) -> None:
        path = self.layout.instance_supports
        temporary = path.with_name(path.name + ".tmp.npy")
        store = InstanceMaskStore.empty(shapes, examples, temporary if storage == "disk" else None)
        loader = self._ordered_train_loader(with_indices=True)
        self.reporter.start(f"{round_key[0]} {round_key[1]}: estimating supports (Eq. 38)", len(loader))
        for step, (images, _, indices) in enumerate(loader):
            supports = estimate_instance_supports(self.model, images.to(self.device), relative_threshold, granularity,
                                                  record_stats=record_stats)
            store.write(indices, supports)
            self.reporter.advance(step + 1)
        self.reporter.stop()
        if storage == "disk":
            store.rows.flush()
            os.replace(temporary, path)
            store = InstanceMaskStore.open(shapes, path, "disk")
        else:
            store.save(path)  # a resumed run trains on these same supports
        self.reporter.message(
            f"{round_key[0]} epoch {round_key[1]}: supports of {examples:,} examples estimated, "
            f"{store.nbytes / 2**20:.1f} MiB bit-packed ({storage})"
        )
        self.mask_store = store

    def _recalibrate_batch_norm(self) -> None:
        """After an epoch with fixed supports: batch-norm statistics for the η* network (see
        ``alternation.recalibrate_batch_norm``), from the training set in index order, the same on every rank."""
        batches = itertools.islice(self._ordered_train_loader(), BATCH_NORM_RECALIBRATION_BATCHES)
        recalibrate_batch_norm(self.model, (images.to(self.device) for images, _ in batches))

    def _stored_support_fractions(self) -> dict[str, float]:
        """Per site, the share of units whose stored support is 1, over all examples."""
        counts = self.mask_store.support_counts()
        return {name: float(c.sum()) / (c.numel() * self.mask_store.examples) for name, c in counts.items()}

    def _curve_point(self, phase: str, config: PhaseConfig, epoch: int, steps: int, progress: EpochProgress) -> None:
        """Append the mean training loss and error of the steps since the last point (Figure 3's curves)."""
        epoch_number = len(self.state.metrics)
        mark = self.state.curve_mark if self.state.curve_mark[0] == epoch_number else [epoch_number, 0.0, 0, 0]
        seen = progress.seen - mark[3]
        if seen <= 0:
            return
        loss = (progress.loss_sum - mark[1]) / seen
        error = 100.0 * (1.0 - (progress.correct - mark[2]) / seen)
        self.state.curve.append([phase, (epoch - 1) * steps + progress.step, loss, error])
        self.state.curve_mark = [epoch_number, progress.loss_sum, progress.correct, progress.seen]

    def _finish_training(self) -> None:
        """A train run's closing evaluation: validation error with η* on each example (the usual test),
        and with MaskT (the training set's majority supports, no thresholding; the paper's Table 2)."""
        train = self.recipe.train
        reduce = self.cluster.all_reduce_sum
        release_supports(self.model)  # every site back to η* (B-alternation's batch mode included)
        val_loss, val_top1 = evaluate(self.model, self.val_loader, self.device, reduce=reduce)
        # MaskT uses the supports the network trained with: ReLU's for plain SGD, Eq. 38's otherwise.
        threshold = train.relative_threshold if train.alternation != "none" else 0.0
        counts, examples = self._support_counts(threshold, train.granularity)
        fix_supports(self.model, {name: mask.to(self.device) for name, mask in majority_supports(counts, examples).items()})
        maskt_loss, maskt_top1 = evaluate(self.model, self.val_loader, self.device, reduce=reduce)
        release_supports(self.model)
        result = {
            "model": self.model_name, "alternation": train.alternation, "seed": self.recipe.seed,
            "val_loss": val_loss, "val_error": 100.0 - val_top1, "maskt_val_loss": maskt_loss,
            "maskt_val_error": 100.0 - maskt_top1, "maskt_relative_threshold": threshold,
            "epochs": train.epochs, "steps_per_epoch": self._steps_per_epoch(),
            "metrics": self.state.metrics, "curve": self.state.curve,
            "seconds": time.perf_counter() - self.started,
        }
        self.final_result = {k: v for k, v in result.items() if k not in ("metrics", "curve")}
        if self.cluster.is_main:
            _save_model_state(self.layout.model_state("trained"), self.model)
            self._write_result(result)
            from supportprune.reports.run_report import write_train_report

            write_train_report(self.layout, self.model_name, self.recipe, self.data.description, self.state, result)
            self.reporter.message(
                f"validation error {result['val_error']:.2f}% (η* on each example), {result['maskt_val_error']:.2f}% "
                f"with MaskT; report: {self.layout.report}"
            )

    def _steps_per_epoch(self) -> int:
        steps = self.train_loader.batch_sampler.steps_per_epoch()
        return steps if self.max_steps is None else min(steps, self.max_steps)

    @torch.no_grad()
    def _support_counts(self, relative_threshold: float, granularity: str) -> tuple[dict[str, torch.Tensor], int]:
        """Per site and unit, how many training examples have support (Eq. 38) under the final weights."""
        loader = self._ordered_train_loader()
        counts: dict[str, torch.Tensor] = {}
        examples = 0
        for images, _ in loader:
            for name, mask in estimate_instance_supports(self.model, images.to(self.device), relative_threshold, granularity).items():
                counts[name] = counts.get(name, 0) + mask.sum(dim=0, dtype=torch.long)
            examples += len(images)
        return counts, examples

    def _write_result(self, result: dict[str, Any]) -> None:
        atomic_write_text(self.layout.result, json.dumps(result, indent=1))

    def _check_finite(self) -> None:
        """A step can leave non-finite weights (or batch-norm statistics) behind a finite loss: never
        checkpoint those."""
        state = self.model.state_dict()
        if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
            raise DivergedError("the weights became non-finite")

    def _alternation_point(self, epoch: int) -> None:
        """Rank 0 decides which channels die; every rank applies the same keep masks."""
        sites = [site for _, site in support_sites(self.model)]
        if self.recipe.sparse.criterion == "magnitude":  # every rank holds the same weights: no broadcast needed
            result, self.weight_masks = dsd.magnitude_point(self.model, self.example, self.recipe.sparse)
            self.state.alternations.append({"epoch": epoch, **asdict(result)})
            self.reporter.message(
                f"magnitude pruning after sparse epoch {epoch} (DSD): {self.recipe.sparse.magnitude_sparsity:.1%} of every "
                f"layer's weights zeroed, {result.params:,} nonzero parameters left"
            )
            return
        if self.recipe.redense.revive == "restore":  # every rank: each re-densifies its own copy
            self.revive_store = dsd.remember_pruned_weights(self.revive_store, self.model, self.example)
        if self.cluster.is_main:
            table = self._latency_table() if self.recipe.sparse.allocation == "latency" else None
            criterion = self._criterion()
            for images, labels in itertools.islice(self._ordered_train_loader(), criterion.observe_batches):
                criterion.observe(self.model, images.to(self.device), labels.to(self.device))
            result = dsd.alternation_point(self.model, self.example, dsd.scheduled_config(self.recipe.sparse, epoch),
                                           self.baseline_macs,
                                           seed=self.recipe.seed, layer_latency=table, criterion=criterion)
            self.state.alternations.append({"epoch": epoch, **asdict(result)})
            what = ("support" if self.recipe.sparse.criterion == "support" else f"{self.recipe.sparse.criterion} channel")
            self.reporter.message(
                f"alternation point after sparse epoch {epoch} ({what} criterion): kept {result.channels_kept}/"
                f"{result.channels_total} site channels, {100 * result.macs / self.baseline_macs:.1f}% of MACs "
                f"(pruning threshold {result.relative_threshold:.4g})"
                + (f"; predicted speed-up of the conv/linear layers {result.predicted_speedup:.2f}×"
                   if result.predicted_speedup else "")
            )
        else:
            reset_support_stats(self.model)
        self.cluster.broadcast_tensors([site.keep for site in sites])

    def _criterion(self) -> Criterion:
        """The Sparse step's criterion (``sparse.criterion``), with what it observed restored on resume."""
        if self.criterion is None:
            self.criterion = make_criterion(self.recipe.sparse, seed=self.recipe.seed)
            self.criterion.load_state_dict(self.criterion_state)
        return self.criterion

    def _distillation_loss(self, distill) -> DistillationLoss:
        """The teacher is the model at the end of the Dense step (models/baseline.pt), frozen, in eval mode."""
        from supportprune.run.checkpoint import read_checkpoint

        teacher = convert_relus(build_model(self.spec, None), self.spec.example_input())
        teacher.load_state_dict(read_checkpoint(self.layout.model_state("baseline"))["model"])
        return DistillationLoss(teacher.to(self.device), distill.alpha, distill.temperature)

    def _latency_table(self):
        """The layer latency table for ``allocation: latency``: read back from the run directory when it was
        measured for these layers and settings on the same kind of provider, else measured now (rank 0)."""
        from supportprune.method.allocation import layer_shapes
        from supportprune.deploy.benchmark import gpu_available, select_providers
        from supportprune.deploy.latency_table import LatencyTable, measure_latency_table

        sparse, bench = self.recipe.sparse, self.recipe.bench
        batch_size = sparse.latency_batch_size or max(bench.gpu_batch_sizes if gpu_available() else bench.batch_sizes)
        shapes = layer_shapes(self.model, self.example)
        provider = select_providers("auto")[0]
        path = self.layout.latency_table
        if sparse.latency_table is not None:  # timed elsewhere (the deployment machine) or earlier: used as is
            source = Path(sparse.latency_table).expanduser()
            if not source.is_file():
                raise SupportpruneError(f"sparse.latency_table: {source} does not exist; give the latency-table.json of "
                                        "an earlier run, or leave the key out to time the layers here")
            table = LatencyTable.load(source)
            if not table.covers(shapes):
                raise SupportpruneError(f"sparse.latency_table: {source} was timed for another model or input size; "
                                        "time this one (leave the key out)")
            self.reporter.message(f"latency table {source}: timed on {table.provider} at batch {table.batch_size} "
                                  f"({table.precision})")
            if source.resolve() != path.resolve():
                table.save(path)  # the run keeps the table it was pruned with
            return table
        if path.exists():
            table = LatencyTable.load(path)
            if table.provider == provider and table.matches(shapes, batch_size, sparse.latency_precision, sparse.round_to):
                return table
        self.reporter.message(f"timing {len(shapes)} layers at batch {batch_size} ({sparse.latency_precision}) on "
                              f"{provider} for the latency-aware allocation")
        def progress(done: int, total: int) -> None:
            if done == 1:  # the total is known once timing starts
                self.reporter.start("timing layers", total)
            self.reporter.advance(done)

        try:
            table = measure_latency_table(shapes, batch_size=batch_size, round_to=sparse.round_to,
                                          precision=sparse.latency_precision, runs=bench.runs, warmup=bench.warmup,
                                          progress=progress)
        finally:
            self.reporter.stop()
        table.save(path)
        return table

    def _leave_phase(self, phase: str) -> None:
        if phase == "dense":
            _, self.state.baseline_top1 = evaluate(self.model, self.val_loader, self.device,
                                                   reduce=self.cluster.all_reduce_sum)
        elif phase == "sparse":
            dsd.end_sparse(self.model)
            keep = torch.cat([site.keep.flatten().cpu() for _, site in support_sites(self.model)])
            if not self.cluster.same_everywhere(hashlib.sha256(keep.numpy().tobytes()).hexdigest()):
                raise SupportpruneError("the processes disagree on the pruned channels; this is a bug, please report it")
        if self.cluster.is_main and phase in PHASES:
            # Baseline and dense as trained; sparse as the masked full model, pruned physically on export.
            kind = {"dense": "baseline", "sparse": "sparse", "redense": "dense"}[phase]
            _save_model_state(self.layout.model_state(kind), self.model)

    def _save(self, optimizer, scheduler) -> None:
        rng_states = self.cluster.all_gather(_rng_state())  # every rank's: each resumes its own
        if self.cluster.is_main:
            _save(self.layout, self.model, optimizer, scheduler, self.state, rng_states,
                  self.criterion.state_dict() if self.criterion is not None else self.criterion_state,
                  self.revive_store)
        self.cluster.barrier()


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _restore_rng(rng: dict[str, Any], cluster, reporter: Reporter) -> None:
    """Each rank continues from its own random-number state. A checkpoint written by another number of
    processes (or before per-rank states were kept) cannot give every rank its own: then every rank takes
    rank 0's, and the run says so (its shards differ anyway, so it cannot continue as the interrupted run
    would have)."""
    ranks = rng.get("ranks") or [{"torch": rng["torch"], "cuda": rng.get("cuda")}]
    if len(ranks) == cluster.world_size:
        own = ranks[cluster.rank]
    else:
        own = ranks[0]
        reporter.message(f"warning: the checkpoint was written by {len(ranks)} process(es), this run has "
                         f"{cluster.world_size}: every process continues from rank 0's random-number state")
    torch.set_rng_state(own["torch"])
    if own.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(own["cuda"])


def _save(layout: RunLayout, model: nn.Module, optimizer, scheduler, state: RunState,
          rng_states: list[dict[str, Any]], criterion_state=None, revive_store=None) -> None:
    save_checkpoint(layout.checkpoint, {
        "model": model.state_dict(),
        "criterion": criterion_state or {},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "run": asdict(state),
        "revive_store": revive_store,
        "rng": {**rng_states[0], "ranks": rng_states},  # torch/cuda: rank 0's, as earlier checkpoints hold
    })
    lines = "".join(json.dumps(record) + "\n" for record in state.metrics)
    atomic_write_text(layout.metrics, lines)


def _save_model_state(path: Path, model: nn.Module) -> None:
    save_checkpoint(path, {"model": {k: v.cpu() for k, v in model.state_dict().items()}})


def _run_info(model_name: str) -> dict[str, Any]:
    import torchvision

    return {
        "model": model_name,
        "supportprune": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------------------------------------------
# The three models: rebuild, export, benchmark


def load_run_models(layout: RunLayout, device: torch.device | str = "cpu") -> tuple[ModelSpec, dict[str, nn.Module]]:
    """Rebuild the baseline, sparse (physically pruned) and dense models of a finished run."""
    from supportprune.run.checkpoint import read_checkpoint

    if not layout.run_info.exists() or not layout.recipe.exists():
        raise SupportpruneError(f"{layout.root} is not a supportprune run directory (no run.json / recipe.yaml)")
    info = json.loads(layout.run_info.read_text())
    if "spec" not in info:
        raise SupportpruneError(f"{layout.run_info} has no model spec: the run never got past loading; run compress again")
    spec = ModelSpec(**info["spec"])
    models = {}
    for kind in MODEL_KINDS:
        path = layout.model_state(kind)
        if not path.exists():
            raise SupportpruneError(f"{path} is missing: the run has not finished its {kind} phase; run compress again to resume")
        model = convert_relus(build_model(spec, None), spec.example_input())
        model.load_state_dict(read_checkpoint(path)["model"])
        if kind == "sparse":
            model = dsd.build_sparse_model(model, spec.example_input())
        models[kind] = model.to(device).eval()
    return spec, models


def _finish(spec, recipe, layout, val_loader, device, reporter, calibration_loader=None) -> list[ModelSummary]:
    _, models = load_run_models(layout, device)
    return export_models(spec, models, recipe, layout, val_loader, device, reporter, calibration_loader)


def export_models(spec, models, recipe, layout, val_loader, device, reporter, calibration_loader=None) -> list[ModelSummary]:
    """Export each model to ONNX (fp32; fp16 and int8 too when the recipe asks). Reduced-precision exports
    record how often their top-1 agrees with the fp32 model's; int8 is calibrated on ``calibration_loader``
    (training images; the validation images when None) and warns below ``quantize.MIN_AGREEMENT``."""
    from supportprune.deploy.export import export_onnx
    from supportprune.deploy.quantize import agreement_warning, calibration_batches, quantize_int8

    check_input = _check_batch(val_loader, recipe.export.check_batch)
    calibration = (calibration_batches(val_loader if calibration_loader is None else calibration_loader,
                                       recipe.export.calibration_images)
                   if recipe.export.int8 else None)
    summaries, export_record = [], {}
    for kind, model in models.items():
        macs, params = count_macs_params(model, spec.example_input().to(device))
        _, top1 = evaluate(model, val_loader, device)
        ready = export_ready(model).cpu()
        for fp16 in (False, True) if recipe.export.fp16 else (False,):
            path = layout.onnx(kind, fp16)
            check = export_onnx(ready, path, example_input=spec.example_input(), check_input=check_input,
                                tolerance=recipe.export.tolerance, opset=recipe.export.opset, fp16=fp16)
            record = {"path": path.name, "max_abs_diff": check.max_abs_diff, "tolerance": check.tolerance,
                      "check_inputs": check.batch_size}
            if fp16:
                record["top1_agreement_with_fp32"] = top1_agreement(ready, path, val_loader, recipe.export.agreement_images)
            export_record[path.stem] = record
            reporter.message(f"exported {path.name}: max |ONNX - PyTorch| {check.max_abs_diff:.2e}" + (
                f", fp16 top-1 agrees with fp32 on {100 * record['top1_agreement_with_fp32']:.2f}%" if fp16 else ""))
        if calibration is not None:
            path = quantize_int8(layout.onnx(kind), layout.onnx(kind, int8=True), calibration)
            agreement = top1_agreement(ready, path, val_loader, recipe.export.agreement_images)
            warning = agreement_warning(path.name, agreement)
            export_record[path.stem] = {"path": path.name, "calibration_images": sum(len(b) for b in calibration),
                                        "top1_agreement_with_fp32": agreement, "warning": warning}
            reporter.message(f"exported {path.name}: int8 top-1 agrees with fp32 on {100 * agreement:.2f}%")
            if warning:
                reporter.message(f"warning: {warning}")
        reporter.message(f"{kind}: {params:,} parameters, {macs / 1e6:.1f} MMACs, top-1 {top1:.2f}%")
        summaries.append(ModelSummary(kind, params, macs, top1, layout.onnx(kind).name, export_record[kind]["max_abs_diff"]))
    atomic_write_text(layout.export_json, json.dumps({"models": [asdict(s) for s in summaries], "exports": export_record}, indent=2))
    return summaries


def _check_batch(loader, size: int) -> torch.Tensor:
    images = []
    for batch, _ in loader:
        images.append(batch)
        if sum(len(b) for b in images) >= size:
            break
    return torch.cat(images)[:size].cpu()


def _benchmark(recipe: Recipe, layout: RunLayout, reporter: Reporter) -> list[Any]:
    from supportprune.deploy.benchmark import (
        benchmark_side_by_side,
        gpu_available,
        realised_markdown,
        realised_speedups,
        results_markdown,
        write_benchmark,
    )

    batch_sizes = recipe.bench.gpu_batch_sizes if gpu_available() else recipe.bench.batch_sizes
    models = [(kind, layout.onnx(kind, fp16)) for fp16 in ((False, True) if recipe.export.fp16 else (False,))
              for kind in MODEL_KINDS]
    if recipe.export.int8:  # same names as fp32; the results' precision (read from the graph) tells them apart
        models += [(kind, layout.onnx(kind, int8=True)) for kind in MODEL_KINDS]
    reporter.message(f"benchmarking {', '.join(path.name for _, path in models)} side by side at batch sizes "
                     f"{', '.join(map(str, batch_sizes))}")
    results = benchmark_side_by_side(models, batch_sizes=batch_sizes, runs=recipe.bench.runs, warmup=recipe.bench.warmup)
    if results:
        reporter.message(f"ONNX Runtime provider: {results[0].provider}")
    realised = realised_speedups(results, "baseline")
    write_benchmark(results, layout.bench_json, layout.bench_md, realised=realised)
    reporter.message(results_markdown(results))
    reporter.message(realised_markdown([r for r in realised if r["model"] == "sparse"], "baseline"))
    return results
