"""Delivering a finished ``compress`` run: its three models (baseline, sparse, dense) rebuilt from the run
directory, exported to ONNX (fp32, and fp16 and int8 when the recipe asks) and checked, benchmarked side by side,
and the run's report written (``deliver_run``)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from supportprune.deploy.gpu_providers import NOT_ACCELERATED
from supportprune.deploy.quantize import onnx_top1_agreement as top1_agreement
from supportprune.errors import SupportpruneError
from supportprune.inputs.data import recipe_loaders
from supportprune.inputs.models import ModelSpec, build_model
from supportprune.inputs.recipe import Recipe
from supportprune.method import dsd
from supportprune.method.pruning import count_macs_params
from supportprune.method.convert import convert_relus, export_ready
from supportprune.store.atomic import atomic_write_text
from supportprune.store.checkpoint import read_checkpoint
from supportprune.store.layout import RunLayout
from supportprune.store.reporter import Reporter
from supportprune.reports.run_report import write_report
from supportprune.run.context import RunContext
from supportprune.run.signals import stage
from supportprune.run.training_loop import evaluate

MODEL_KINDS = ("baseline", "sparse", "dense")


@dataclass(frozen=True)
class ModelSummary:
    kind: str
    params: int
    macs: int
    top1: float
    onnx: str
    max_abs_diff: float


def deliver_run(context: RunContext) -> tuple[list[ModelSummary], list[Any]]:
    """Rank 0, after training: export and check the three models, benchmark them, write the report."""
    recipe, layout, reporter = context.recipe, context.layout, context.reporter
    # Each rank validated on its shard; the exported models are checked on the whole validation set.
    full_val = context.val_loader if not context.cluster.distributed else recipe_loaders(
        recipe.data, recipe.seed, context.data)[2]
    with stage("export"):
        spec, models = load_run_models(layout, context.device)
        summaries = export_models(spec, models, recipe, layout, full_val, context.device, reporter, context.train_loader)
    with stage("benchmarking"):
        bench = benchmark_models(recipe, layout, reporter)
    seconds = time.perf_counter() - context.started
    with stage("writing the report"):
        write_report(layout, context.model_name, recipe, context.data.description, summaries, bench, context.state,
                     seconds, context.notes)
    reporter.message(f"report: {layout.report}")
    return summaries, bench


def load_run_models(layout: RunLayout, device: torch.device | str = "cpu") -> tuple[ModelSpec, dict[str, nn.Module]]:
    """Rebuild the baseline, sparse (physically pruned) and dense models of a finished run."""
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
        model = convert_relus(build_model(spec, None), spec.example_input(), gate_activations=spec.gate_activations)
        model.load_state_dict(read_checkpoint(path)["model"])
        if kind == "sparse":
            model = dsd.build_sparse_model(model, spec.example_input())
        models[kind] = model.to(device).eval()
    return spec, models


def export_models(spec, models, recipe, layout, val_loader, device, reporter, calibration_loader=None) -> list[ModelSummary]:
    """Export each model to ONNX (fp32; fp16 and int8 too when the recipe asks). Reduced-precision exports
    record how often their top-1 agrees with the fp32 model's; int8 is calibrated on ``calibration_loader``
    (training images; the validation images when None) and warns below ``quantize.MIN_AGREEMENT``."""
    from supportprune.deploy.benchmark import onnx_macs
    from supportprune.deploy.export import export_onnx
    from supportprune.deploy.quantize import (
        INT8_OPTIONS,
        agreement_warning,
        calibration_batches,
        onnx_top1_comparison,
        quantize_int8,
        run_warning,
    )

    check_input = check_batch(val_loader, recipe.export.check_batch)
    calibration = (calibration_batches(val_loader if calibration_loader is None else calibration_loader,
                                       recipe.export.calibration_images)
                   if recipe.export.int8 else None)
    summaries, export_record, shortfalls = [], {}, []
    for kind, model in models.items():
        _, params = count_macs_params(model, spec.example_input().to(device))
        _, top1 = evaluate(model, val_loader, device)
        ready = export_ready(model).cpu()
        for fp16 in (False, True) if recipe.export.fp16 else (False,):
            path = layout.onnx(kind, fp16)
            with stage(f"export of {path.name}"):
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
            with stage(f"int8 calibration of {layout.onnx(kind).name}"):
                path = quantize_int8(layout.onnx(kind), layout.onnx(kind, int8=True), calibration, INT8_OPTIONS)
            compared = onnx_top1_comparison(ready, path, val_loader, recipe.export.agreement_images)
            agreement = compared.agreement
            warning = agreement_warning(path.name, agreement, top1=compared.top1, reference_top1=compared.reference_top1)
            export_record[path.stem] = {"path": path.name, "calibration_images": sum(len(b) for b in calibration),
                                        "top1_agreement_with_fp32": agreement, "top1": compared.top1,
                                        "fp32_top1_same_images": compared.reference_top1, "warning": warning}
            reporter.message(f"exported {path.name}: int8 top-1 agrees with fp32 on {100 * agreement:.2f}%; top-1 "
                             f"{compared.top1:.2f}% (fp32 {compared.reference_top1:.2f}%)")
            if warning:
                shortfalls.append((kind, agreement, compared.top1, compared.reference_top1))
        # Counted from the exported graph, as the benchmark table counts them: the log, report and table agree.
        macs = onnx_macs(layout.onnx(kind))
        reporter.message(f"{kind}: {params:,} parameters, {macs / 1e6:.1f} MMACs, top-1 {top1:.2f}%")
        summaries.append(ModelSummary(kind, params, macs, top1, layout.onnx(kind).name, export_record[kind]["max_abs_diff"]))
    if shortfalls:  # one line for the run, not one per model
        reporter.message(f"warning: {run_warning(shortfalls)}")
    atomic_write_text(layout.export_json, json.dumps({"models": [asdict(s) for s in summaries], "exports": export_record}, indent=2))
    return summaries


def check_batch(loader, size: int) -> torch.Tensor:
    images = []
    for batch, _ in loader:
        images.append(batch)
        if sum(len(b) for b in images) >= size:
            break
    return torch.cat(images)[:size].cpu()


def int8_timed_here(device: str = "auto") -> bool:
    """Whether int8 models run int8 kernels on the provider this machine benchmarks with (CPU, TensorRT: yes;
    the CUDA provider alone: no, they are marked ``NOT_ACCELERATED`` instead of timed)."""
    from supportprune.deploy.gpu_providers import int8_accelerated, providers_for

    return int8_accelerated(providers_for("int8", device, tensorrt="auto"))


def benchmark_models(recipe: Recipe, layout: RunLayout, reporter: Reporter) -> list[Any]:
    """The exported models side by side on ONNX Runtime; benchmark.json and benchmark.md."""
    from supportprune.deploy.benchmark import (
        benchmark_side_by_side,
        gpu_available,
        realised_markdown,
        realised_speedups,
        results_markdown,
        slower_warning,
        write_benchmark,
    )

    batch_sizes = recipe.bench.gpu_batch_sizes if gpu_available() else recipe.bench.batch_sizes
    models = [(kind, layout.onnx(kind, fp16)) for fp16 in ((False, True) if recipe.export.fp16 else (False,))
              for kind in MODEL_KINDS]
    if recipe.export.int8 and not int8_timed_here():
        reporter.message(f"int8 models: {NOT_ACCELERATED} (ONNX Runtime's CUDA provider runs QDQ models with float "
                         "kernels, slower than fp32); not timed here: time them on the CPU provider "
                         "(tools/bench_cpu_share.py) or with TensorRT installed")
    elif recipe.export.int8:  # same names as fp32; the results' precision (read from the graph) tells them apart
        models += [(kind, layout.onnx(kind, int8=True)) for kind in MODEL_KINDS]
    reporter.message(f"benchmarking {', '.join(path.name for _, path in models)} side by side at batch sizes "
                     f"{', '.join(map(str, batch_sizes))}")
    results = benchmark_side_by_side(models, batch_sizes=batch_sizes, runs=recipe.bench.runs, warmup=recipe.bench.warmup,
                                     tensorrt="auto")
    if results:
        reporter.message(f"ONNX Runtime provider: {results[0].provider}")
    realised = realised_speedups(results, "baseline")
    write_benchmark(results, layout.bench_json, layout.bench_md, realised=realised)
    reporter.message(results_markdown(results))
    reporter.message(realised_markdown([r for r in realised if r["model"] == "sparse"], "baseline"))
    warning = slower_warning(realised)
    if warning:
        reporter.message(f"warning: {warning}")
    return results
