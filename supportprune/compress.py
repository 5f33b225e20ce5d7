"""`supportprune compress`: the DSD run end to end, from a model name to benchmarked ONNX models.

This layer owns the run directory (resolved recipe, metrics, checkpoints, models, report) and calls the
algorithm (``dsd``), the loop (``train``), export and benchmarking. Runs resume at epoch boundaries: the
same command on the same directory continues where it stopped.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import torch
from torch import nn

from supportprune import __version__, dsd
from supportprune.atomic import atomic_write_text
from supportprune.checkpoint import load_latest, save_checkpoint
from supportprune.data import DataSplits, load_data, make_loaders, reseed_epoch
from supportprune.errors import SupportpruneError
from supportprune.models import ModelSpec, build_model
from supportprune.pruning import count_macs_params
from supportprune.recipe import PhaseConfig, Recipe, recipe_from_dict
from supportprune.support import convert_relus, export_ready, kept_channel_counts, kept_unit_fractions
from supportprune.train import (
    DivergedError,
    choose_device,
    evaluate,
    make_optimizer,
    make_scheduler,
    seed_everything,
    train_epoch,
)

PHASES = ("dense", "sparse", "redense")
MODEL_KINDS = ("baseline", "sparse", "dense")


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
    metrics: list[dict[str, Any]] = field(default_factory=list)
    alternations: list[dict[str, Any]] = field(default_factory=list)
    baseline_top1: Optional[float] = None
    revived_channels: Optional[int] = None
    channels_total: dict[str, int] = field(default_factory=dict)


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

    def model_state(self, kind: str) -> Path:
        return self.root / "models" / f"{kind}.pt"

    def onnx(self, kind: str) -> Path:
        return self.root / f"{kind}.onnx"


def prepare_run_dir(layout: RunLayout, recipe: Recipe, model_name: str, restart: bool) -> bool:
    """Create or reopen the run directory; True when an earlier run of the same recipe is resumed."""
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
        probe = layout.root / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise SupportpruneError(f"cannot write to output directory {layout.root}: {error.strerror}; choose another --out") from None
    resolved = recipe.to_yaml()
    if layout.checkpoint.exists() or layout.checkpoint.with_suffix(".pt.previous").exists():
        if restart:
            return False
        previous = layout.recipe.read_text(encoding="utf-8") if layout.recipe.exists() else None
        previous_info = json.loads(layout.run_info.read_text()) if layout.run_info.exists() else {}
        if previous != resolved or previous_info.get("model") != model_name:
            raise SupportpruneError(
                f"{layout.root} holds a run with another model or recipe; use another --out, or --restart to start over there"
            )
        return True
    return False


def compress(
    model_name: str,
    recipe: Recipe,
    out_dir: Path,
    *,
    device: str = "auto",
    restart: bool = False,
    reporter: Reporter | None = None,
    max_steps_per_epoch: int | None = None,
) -> CompressResult:
    """Run Dense → Sparse (B-alternation, support pruning) → re-Dense, export and benchmark the three models."""
    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    layout = RunLayout(out_dir)
    resuming = prepare_run_dir(layout, recipe, model_name, restart)
    atomic_write_text(layout.recipe, recipe.to_yaml())
    atomic_write_text(layout.run_info, json.dumps(_run_info(model_name, recipe), indent=2))

    seed_everything(recipe.seed)
    torch_device = choose_device(device)
    data = load_data(
        recipe.data.source, input_size=recipe.data.input_size, mean=recipe.data.mean, std=recipe.data.std,
        augment=recipe.data.augment, channels=recipe.data.channels,
    )
    reporter.message(f"data: {data.description}; device: {torch_device}")
    train_loader, val_loader = make_loaders(data, batch_size=recipe.data.batch_size, workers=recipe.data.workers, seed=recipe.seed)
    spec = ModelSpec(model_name, data.num_classes, data.channels, recipe.data.input_size)
    model = convert_relus(build_model(spec, recipe.weights), spec.example_input()).to(torch_device)
    example = spec.example_input().to(torch_device)
    baseline_macs, _ = count_macs_params(model, example)

    state = RunState(channels_total={name: total for name, (_, total) in kept_channel_counts(model).items()})
    checkpoint = load_latest(layout.checkpoint) if resuming else None
    optimizer_state = scheduler_state = None
    if checkpoint is not None:
        saved, used, problems = checkpoint
        for problem in problems:
            reporter.message(f"warning: {problem}; resuming from {used.name}")
        model.load_state_dict(saved["model"])
        state = RunState(**saved["run"])
        optimizer_state, scheduler_state = saved["optimizer"], saved["scheduler"]
        torch.set_rng_state(saved["rng"]["torch"])
        where = (f"{PHASES[state.phase_index]} epoch {state.epoch + 1}" if state.phase_index < len(PHASES)
                 else "export (training finished)")
        reporter.message(f"resuming {layout.root} at {where}")

    for phase_index in range(state.phase_index, len(PHASES)):
        phase = PHASES[phase_index]
        config: PhaseConfig = getattr(recipe, phase)
        fresh = state.phase_index != phase_index or (state.epoch == 0 and optimizer_state is None)
        state.phase_index = phase_index
        _enter_phase(phase, model, recipe, example, state, fresh, reporter)
        optimizer = make_optimizer(model, config)
        steps = len(train_loader) if max_steps_per_epoch is None else min(len(train_loader), max_steps_per_epoch)
        scheduler = make_scheduler(optimizer, config, steps)
        if not fresh and optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
            scheduler.load_state_dict(scheduler_state)
        optimizer_state = scheduler_state = None
        while state.epoch < config.epochs:
            _run_epoch(phase, model, config, recipe, train_loader, val_loader, optimizer, scheduler, torch_device,
                       example, baseline_macs, state, steps, layout, reporter, max_steps_per_epoch)
        _leave_phase(phase, model, example, state, layout, val_loader, torch_device, reporter)
        state.phase_index, state.epoch = phase_index + 1, 0
        _save(layout, model, None, None, state)

    summaries = _finish(model_name, spec, recipe, data, layout, model, example, val_loader, torch_device, state, reporter)
    bench = _benchmark(recipe, layout, reporter)
    seconds = time.perf_counter() - started
    from supportprune.report import write_report

    write_report(layout, model_name, recipe, data.description, summaries, bench, state, seconds)
    reporter.message(f"report: {layout.report}")
    return CompressResult(layout.root, tuple(summaries), tuple(bench), seconds)


def _enter_phase(phase: str, model: nn.Module, recipe: Recipe, example: torch.Tensor, state: RunState,
                 fresh: bool, reporter: Reporter) -> None:
    if phase == "sparse":
        dsd.begin_sparse(model, recipe.sparse, reset=fresh)
    elif phase == "redense" and fresh:
        state.revived_channels = dsd.redense(model, example)
        reporter.message(f"re-dense: {state.revived_channels} pruned channels back, initialised to zero")


def _run_epoch(phase, model, config, recipe, train_loader, val_loader, optimizer, scheduler, device, example,
               baseline_macs, state, steps, layout, reporter, max_steps) -> None:
    epoch = state.epoch + 1
    started = time.perf_counter()
    lr = optimizer.param_groups[0]["lr"]
    reporter.start(f"{phase} {epoch}/{config.epochs}", steps)
    reseed_epoch(train_loader, recipe.seed, len(state.metrics))
    try:
        loss, top1 = train_epoch(
            model, train_loader, optimizer, scheduler, device, max_steps=max_steps,
            on_step=lambda step, loss, top1: reporter.advance(step, loss=loss, top1=top1),
        )
        # The last step can leave non-finite weights behind a finite loss: never checkpoint those.
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise DivergedError("the weights became non-finite")
    except DivergedError as error:
        reporter.stop()
        kept = "checkpoints/last.pt" if layout.checkpoint.exists() else "no checkpoint yet"
        raise DivergedError(
            f"{phase} epoch {epoch}: {error}; stopped, last good checkpoint kept ({kept}); "
            f"lower {phase}.lr in the recipe and run again (it resumes)"
        ) from None
    reporter.stop()
    record: dict[str, Any] = {"phase": phase, "epoch": epoch, "train_loss": loss, "train_top1": top1, "lr": lr}
    if phase == "sparse":
        record["supports_kept"] = kept_unit_fractions(model)
        if epoch in recipe.sparse.alternation_epochs:
            result = dsd.alternation_point(model, example, recipe.sparse, baseline_macs)
            state.alternations.append({"epoch": epoch, **asdict(result)})
            reporter.message(
                f"alternation point after sparse epoch {epoch}: kept {result.channels_kept}/{result.channels_total} "
                f"channels, {100 * result.macs / baseline_macs:.1f}% of MACs (relative threshold {result.relative_threshold:.4g})"
            )
    record["val_loss"], record["val_top1"] = evaluate(model, val_loader, device)
    record["channels_kept"] = {name: kept for name, (kept, _) in kept_channel_counts(model).items()}
    record["seconds"] = time.perf_counter() - started
    state.metrics.append(record)
    state.epoch = epoch
    reporter.message(
        f"{phase} {epoch}/{config.epochs}: loss {loss:.4f}, train top-1 {top1:.2f}%, val top-1 {record['val_top1']:.2f}% "
        f"({record['seconds']:.1f}s)"
    )
    _save(layout, model, optimizer, scheduler, state)


def _leave_phase(phase, model, example, state, layout, val_loader, device, reporter) -> None:
    if phase == "dense":
        _, state.baseline_top1 = evaluate(model, val_loader, device)
        _save_model_state(layout.model_state("baseline"), model)
    elif phase == "sparse":
        dsd.end_sparse(model)
        _save_model_state(layout.model_state("sparse"), model)  # the masked full model; pruned on export
    else:
        _save_model_state(layout.model_state("dense"), model)


def _save(layout: RunLayout, model: nn.Module, optimizer, scheduler, state: RunState) -> None:
    save_checkpoint(layout.checkpoint, {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "run": asdict(state),
        "rng": {"torch": torch.get_rng_state()},
    })
    lines = "".join(json.dumps(record) + "\n" for record in state.metrics)
    atomic_write_text(layout.metrics, lines)


def _save_model_state(path: Path, model: nn.Module) -> None:
    save_checkpoint(path, {"model": {k: v.cpu() for k, v in model.state_dict().items()}})


def _run_info(model_name: str, recipe: Recipe) -> dict[str, Any]:
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
    from supportprune.checkpoint import read_checkpoint

    if not layout.run_info.exists() or not layout.recipe.exists():
        raise SupportpruneError(f"{layout.root} is not a supportprune run directory (no run.json / recipe.yaml)")
    info = json.loads(layout.run_info.read_text())
    import yaml

    recipe = recipe_from_dict(yaml.safe_load(layout.recipe.read_text()), str(layout.recipe))
    spec = ModelSpec(**info["spec"]) if "spec" in info else None
    if spec is None:
        raise SupportpruneError(f"{layout.run_info} has no model spec: the run never got past loading; run compress again")
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
    del recipe
    return spec, models


def _finish(model_name, spec, recipe, data: DataSplits, layout, model, example, val_loader, device, state, reporter) -> list[ModelSummary]:
    info = json.loads(layout.run_info.read_text())
    info["spec"] = asdict(spec)
    atomic_write_text(layout.run_info, json.dumps(info, indent=2))
    _, models = load_run_models(layout, device)
    return export_models(spec, models, recipe, layout, val_loader, device, reporter)


def export_models(spec, models, recipe, layout, val_loader, device, reporter) -> list[ModelSummary]:
    from supportprune.export import export_onnx

    check_input = _check_batch(val_loader, recipe.export.check_batch)
    summaries, export_record = [], {}
    for kind, model in models.items():
        macs, params = count_macs_params(model, spec.example_input().to(device))
        _, top1 = evaluate(model, val_loader, device)
        check = export_onnx(
            export_ready(model).cpu(), layout.onnx(kind), example_input=spec.example_input(),
            check_input=check_input, tolerance=recipe.export.tolerance, opset=recipe.export.opset,
        )
        reporter.message(f"exported {layout.onnx(kind).name}: {params:,} parameters, {macs / 1e6:.1f} MMACs, "
                         f"top-1 {top1:.2f}%, max |ONNX - PyTorch| {check.max_abs_diff:.2e}")
        summaries.append(ModelSummary(kind, params, macs, top1, layout.onnx(kind).name, check.max_abs_diff))
        export_record[kind] = {"path": layout.onnx(kind).name, "max_abs_diff": check.max_abs_diff,
                               "tolerance": check.tolerance, "check_inputs": check.batch_size}
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
    from supportprune.bench import benchmark_onnx, gpu_available, results_markdown, write_benchmark

    batch_sizes = recipe.bench.gpu_batch_sizes if gpu_available() else recipe.bench.batch_sizes
    results = []
    for kind in MODEL_KINDS:
        reporter.message(f"benchmarking {kind}.onnx at batch sizes {', '.join(map(str, batch_sizes))}")
        results += benchmark_onnx(layout.onnx(kind), name=kind, batch_sizes=batch_sizes,
                                  runs=recipe.bench.runs, warmup=recipe.bench.warmup)
    if results:
        reporter.message(f"ONNX Runtime provider: {results[0].provider}")
    write_benchmark(results, layout.bench_json, layout.bench_md)
    reporter.message(results_markdown(results))
    return results
