"""Latency and throughput of exported ONNX models under ONNX Runtime, on the GPU when there is one.

GPU timings use IO binding with the input already on the device, so they measure the model, not
host-to-device copies. Timings are per ``run`` call with ``time.perf_counter`` after warm-up.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from supportprune.store.atomic import atomic_write_text
from supportprune.errors import SupportpruneError
from supportprune.deploy.providers import (  # noqa: F401  (the providers this module times on)
    CPU, CUDA, DEVICES, TUNED_CUDA_OPTIONS, gpu_available, select_providers, session_providers,
)

CUDA_GRAPH = "+graph"  # suffix of the provider of a result timed as a replayed CUDA graph
_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
_ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


@dataclass(frozen=True)
class BenchResult:
    model: str
    path: str
    provider: str
    batch_size: int
    runs: int
    median_ms: float
    p90_ms: float
    throughput: float  # images/s = batch_size / median seconds
    macs: int = 0  # multiply-accumulates per image, counted from the ONNX graph
    precision: str = "fp32"


def benchmark_onnx(path: str | os.PathLike, *, name: str | None = None, **options: Any) -> list[BenchResult]:
    """Time one model at every batch size on random normal inputs (fixed seed); one result per batch size.
    ``options`` are those of ``benchmark_side_by_side``."""
    return benchmark_side_by_side([(name or Path(path).stem, path)], **options)


def benchmark_side_by_side(
    models: Sequence[tuple[str, str | os.PathLike]],
    *,
    batch_sizes: Sequence[int] = (1, 64),
    runs: int = 50,
    warmup: int = 10,
    device: str = "auto",
    threads: int | None = None,
    cuda_options: dict[str, str] | None = None,
    rounds: int = 5,
    tensorrt: str = "off",
    cuda_graph: bool = False,
) -> list[BenchResult]:
    """Time several ``(name, path)`` models against each other: per batch size, the timed runs are split into
    ``rounds`` that visit every model in turn, so drift of the machine (clocks, other load, caches) falls
    on all of them alike and their ratios stay honest. Results are ordered by model, then batch size.

    ``cuda_options`` are CUDA provider options (default ``TUNED_CUDA_OPTIONS``; ``{}`` for ORT's defaults).
    ``tensorrt`` (auto, on, off) and the providers per precision: ``gpu_providers.providers_for``. ``cuda_graph``:
    at batch 1 on CUDA, every model replays a captured CUDA graph (its provider then reads ``CUDA…+graph``) where
    ORT can capture it, and is timed as usual where not (it says so).
    """
    if runs < 1 or warmup < 0 or not batch_sizes or min(batch_sizes) < 1 or rounds < 1:
        raise SupportpruneError("benchmark needs runs >= 1, warmup >= 0, rounds >= 1 and batch sizes >= 1")
    from supportprune.deploy.gpu_providers import cuda_graph_runner, providers_for

    opened = []
    for name, path in models:
        path = Path(path)
        providers = providers_for(file_precision(path), device, cuda_options=cuda_options, tensorrt=tensorrt,
                                  cache_dir=path.parent / "tensorrt-cache")
        session = open_session(path, providers, threads)
        provider = session.get_providers()[0]
        if device == "cuda" and provider == CPU:
            raise SupportpruneError(f"ONNX Runtime could not start CUDA for {path}; use --device cpu")
        sample_shape, dtype = _input_spec(session.get_inputs()[0], path)
        opened.append((name, path, session, provider, sample_shape, onnx_precision(path, dtype), onnx_macs(path), providers))
    times: dict[tuple[int, int], list[float]] = {}
    graphs: dict[tuple[int, int], bool] = {}
    for batch_size in batch_sizes:
        runners = []
        for index, (_, path, session, provider, sample_shape, precision, _, providers) in enumerate(opened):
            run = None
            if cuda_graph and batch_size == 1 and provider == CUDA:
                run, why = cuda_graph_runner(path, providers, batch_size, open_session)
                if run is None:
                    print(f"{path.name}: no CUDA graph at batch 1 ({why}); timed without", flush=True)
            graphs[(index, batch_size)] = run is not None
            if run is None:
                dtype = np.float16 if precision == "fp16" else np.float32  # int8 QDQ models keep float32 I/O
                x = np.random.default_rng(0).standard_normal((batch_size, *sample_shape)).astype(dtype)
                run = make_runner(session, x)
            time_calls(run, 0, warmup)
            runners.append(run)
        for round_index in range(rounds):
            share = runs // rounds + (1 if round_index < runs % rounds else 0)
            for index, run in enumerate(runners):
                times.setdefault((index, batch_size), []).extend(time_calls(run, share, 0))
    results = []
    for index, (name, path, _, provider, _, precision, macs, _) in enumerate(opened):
        for batch_size in batch_sizes:
            samples = times[(index, batch_size)]
            median = statistics.median(samples)
            results.append(BenchResult(
                model=name, path=str(path), provider=provider + (CUDA_GRAPH if graphs[(index, batch_size)] else ""), batch_size=batch_size, runs=len(samples),
                median_ms=median * 1e3, p90_ms=float(np.percentile(samples, 90)) * 1e3,
                throughput=batch_size / median, macs=macs, precision=precision,
            ))
    return results


def file_precision(path: str | os.PathLike) -> str:
    """``onnx_precision`` read from the file alone (its input's element type), before a session is opened on it."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # missing or corrupt: fp32 here, and opening the session says what is wrong with the file
        return "fp32"
    half = graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 if graph.input else False
    return onnx_precision(path, np.float16 if half else np.float32)


def onnx_precision(path: str | os.PathLike, input_dtype: type = np.float32) -> str:
    """"int8" for a quantized model (QDQ pairs or QLinear operators; its input stays float), else the
    input's float type: "fp16" or "fp32"."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if any(node.op_type in _QUANTIZED_OPS for node in graph.node):
        return "int8"
    return "fp16" if input_dtype == np.float16 else "fp32"


def onnx_macs(path: str | os.PathLike) -> int:
    """Multiply-accumulates per image of the convolutions and matrix products in an ONNX model.

    Shapes come from ONNX shape inference with the batch dimension left symbolic: every output
    element of a Conv costs (C_in / groups) · k_h · k_w MACs, of a Gemm/MatMul one row of the weight.
    In a QDQ (int8) model a weight reaches its Conv through a DequantizeLinear of the int8 initializer.
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {}
    for value in list(model.graph.value_info) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    weights.update({node.output[0]: weights[node.input[0]] for node in model.graph.node
                    if node.op_type == "DequantizeLinear" and node.input[0] in weights})
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in weights:
            continue
        out = shapes.get(node.output[0])
        if not out or any(d is None for d in out[1:]):
            continue
        per_image_outputs = int(np.prod(out[1:]))
        weight = weights[node.input[1]]
        if node.op_type == "Conv":
            total += per_image_outputs * int(np.prod(weight[1:]))
        else:
            trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            total += per_image_outputs * (weight[1] if node.op_type == "Gemm" and trans_b else weight[0])
    return total


def realised_speedups(results: Sequence[BenchResult], baseline: str) -> list[dict[str, Any]]:
    """Per model and batch size: throughput speed-up over ``baseline``, its MACs reduction, and their
    ratio, the share of the MACs saving that became speed (1.0: all of it)."""
    base = {(r.batch_size, r.precision): r for r in results if r.model == baseline}
    rows = []
    for result in results:
        reference = base.get((result.batch_size, result.precision)) or base.get((result.batch_size, "fp32"))
        if reference is None or not result.macs or not reference.macs:
            continue
        speedup = result.throughput / reference.throughput
        reduction = reference.macs / result.macs
        rows.append({"model": result.model, "precision": result.precision, "batch_size": result.batch_size,
                     "speedup": speedup, "macs_reduction": reduction, "realised": speedup / reduction})
    return rows


def slower_warning(rows: Sequence[dict[str, Any]], model: str = "sparse") -> str | None:
    """None when ``model`` ran at least as fast as the baseline at every precision and batch size benchmarked; else
    the warning that says where the cut did not turn into speed, before anyone deploys it."""
    slow = [r for r in rows if r["model"] == model and r["speedup"] < 1.0]
    if not slow:
        return None
    where = ", ".join(f"{r['precision']} batch {r['batch_size']}: {r['speedup']:.2f}×" for r in slow)
    return (f"the {model} model ran slower than the baseline where it was benchmarked ({where}): its MACs cut did not "
            "turn into speed there. Before deploying it there, try sparse.round_to 16 or 64, sparse.allocation: measured "
            "(times whole pruned models on this machine), or deploy the baseline")


def realised_markdown(rows: Sequence[dict[str, Any]], baseline: str) -> str:
    lines = [f"| model | precision | batch | speed-up vs {baseline} | MACs reduction | realised |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['precision']} | {r['batch_size']} | {r['speedup']:.2f} | {r['macs_reduction']:.2f} | "
              f"{r['realised']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def open_session(path: Path | bytes, providers: list, threads: int | None):
    """An ORT session on a model file (or serialised model bytes) with every graph optimisation on."""
    import onnxruntime as ort

    in_memory = isinstance(path, bytes)
    if not in_memory and not path.is_file():
        raise SupportpruneError(f"ONNX model {path} does not exist; export it first")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    # Idle ORT worker threads spin for a while after each run; with several sessions timed in turn, one
    # session's spinning threads would steal the cores of the next. No spinning: every model pays alike.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(path if in_memory else str(path), options, providers=providers)
    except Exception as error:  # ORT's pybind errors share no useful base class
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        what = "an in-memory ONNX model" if in_memory else f"ONNX model {path}"
        raise SupportpruneError(f"{what} cannot be loaded ({first}); export it again") from error


def _input_spec(meta: Any, path: Path) -> tuple[tuple[int, ...], type]:
    """(C, H, W) and numpy dtype of the model's input; the batch dimension is ours to choose."""
    sample_shape = tuple(meta.shape[1:])
    if not all(isinstance(d, int) and d > 0 for d in sample_shape) or meta.type not in _ONNX_DTYPES:
        raise SupportpruneError(
            f"ONNX model {path} has input {meta.name} of shape {meta.shape} and type {meta.type}; "
            "the benchmark needs fixed non-batch dimensions and a float input"
        )
    return sample_shape, _ONNX_DTYPES[meta.type]


def make_runner(session: Any, x: np.ndarray) -> Callable[[], Any]:
    """One inference call of ``session`` (one input, first output) on ``x``. On the GPU the input lives on
    the device and the output stays there, so only the model is timed; ``run_with_iobinding`` returns
    once the device work is done."""
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    if session.get_providers()[0] != CUDA:
        return lambda: session.run([output_name], {input_name: x})
    import onnxruntime as ort

    binding = session.io_binding()
    binding.bind_ortvalue_input(input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    binding.bind_output(output_name, "cuda")
    return lambda: session.run_with_iobinding(binding)


def time_calls(run: Callable[[], Any], runs: int, warmup: int) -> list[float]:
    """Seconds of each of ``runs`` calls of ``run``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def results_markdown(results: Sequence[BenchResult]) -> str:
    lines = [
        "| model | provider | precision | MMACs | batch | median ms | p90 ms | images/s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        provider = r.provider.removesuffix("ExecutionProvider")
        lines.append(
            f"| {r.model} | {provider} | {r.precision} | {r.macs / 1e6:,.1f} | {r.batch_size} | {r.median_ms:.3f} | "
            f"{r.p90_ms:.3f} | {r.throughput:,.1f} |"
        )
    return "\n".join(lines) + "\n"


def environment() -> dict[str, Any]:
    """What the numbers depend on: date, ONNX Runtime version and providers, host, GPU."""
    import onnxruntime as ort

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "host": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "cuda_device": torch.cuda.get_device_name(0) if gpu_available() else None,
    }


def write_benchmark(
    results: Sequence[BenchResult],
    json_path: str | os.PathLike,
    md_path: str | os.PathLike,
    realised: Sequence[dict[str, Any]] = (),
) -> None:
    """Write the results (and realised speed-ups, if given) as JSON with the environment and as
    markdown, each atomically."""
    env = environment()
    payload = {**env, "results": [asdict(r) for r in results], "realised": list(realised)}
    atomic_write_text(json_path, json.dumps(payload, indent=2) + "\n")
    host = env["host"]
    device = env["cuda_device"] or f"{host['processor']}, {host['cpu_count']} CPUs"
    header = f"# ONNX Runtime benchmark\n\n{env['date']}, onnxruntime {env['onnxruntime']}, {device}\n\n"
    baseline = next((r["model"] for r in realised if r["speedup"] == 1.0 and r["macs_reduction"] == 1.0), "baseline")
    realised_table = "\n" + realised_markdown(realised, baseline) if realised else ""
    atomic_write_text(md_path, header + results_markdown(results) + realised_table)
