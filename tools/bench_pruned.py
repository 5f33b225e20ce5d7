"""Side-by-side ONNX Runtime benchmark: a dense torchvision model against support-pruned versions of it.

For each MACs target, channel rounding and allocation, supports are observed with B-alternation on
calibration batches (Gaussian images: the timing depends on channel counts, not on which channels
survive) and the model is pruned to the target with torch-pruning: by one threshold over the network
(allocation global), or spread over the channel groups by layer latencies measured with ONNX Runtime
on this device (allocation latency; the table is timed at the largest batch size). All variants are
exported, then timed side by side (interleaved rounds). Prints (and writes, with --out) a table of
throughput speed-up against the MACs reduction.

    python tools/bench_pruned.py --model resnet18 --input-size 224 --targets 0.5 --round-to 8 \
        --allocations global,latency --batch-sizes 1,256 --out benchmarks/results/resnet18-cuda.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supportprune.method import dsd  # noqa: E402
from supportprune.method.allocation import layer_shapes  # noqa: E402
from supportprune.store.atomic import atomic_write_text  # noqa: E402
from supportprune.deploy.benchmark import (  # noqa: E402
    TUNED_CUDA_OPTIONS,
    benchmark_side_by_side,
    environment,
    session_providers,
)
from supportprune.deploy.graph_report import (  # noqa: E402
    comparison_markdown,
    layer_times_alone,
    layers_markdown,
    node_profile,
    profile_markdown,
)
from supportprune.deploy.latency_table import measure_latency_table  # noqa: E402
from supportprune.deploy.gpu_providers import NOT_ACCELERATED, int8_accelerated, providers_for  # noqa: E402
from supportprune.deploy.measured_timing import WholeModelTimer  # noqa: E402
from supportprune.deploy.quantize import quantize_int8  # noqa: E402
from supportprune.deploy.export import export_onnx  # noqa: E402
from supportprune.inputs.models import ModelSpec, build_model  # noqa: E402
from supportprune.method.pruning import count_macs_params  # noqa: E402
from supportprune.inputs.recipe import SparseConfig  # noqa: E402
from supportprune.method.convert import convert_relus, export_ready  # noqa: E402


def pruned_variant(model, example, target: float, round_to: int, calibration: list[torch.Tensor],
                   allocation: str = "global", layer_latency=None, concat_round_to: int | None = None,
                   model_time=None):
    """The support-pruned model and the alternation point's result (None for the dense model)."""
    variant = convert_relus(model, example)
    if target >= 1.0:
        return variant.eval(), None
    config = SparseConfig(epochs=1, target_macs=target, round_to=round_to, concat_round_to=concat_round_to,
                          granularity="channel", allocation=allocation)
    dsd.begin_sparse(variant, config)
    variant.train()
    with torch.no_grad():
        for batch in calibration:
            variant(batch)
    result = dsd.alternation_point(variant, example, config, count_macs_params(variant, example)[0],
                                   layer_latency=layer_latency, model_time=model_time)
    dsd.end_sparse(variant)
    return dsd.build_sparse_model(variant.eval(), example), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--targets", default="0.5", help="fractions of MACs to keep, comma-separated")
    parser.add_argument("--round-to", default="1,8", help="channel roundings to compare, comma-separated")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--allocations", default="global", help="global, latency, measured (comma-separated); the "
                        "target is the MACs share for global and the time share for latency and measured")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model and batch size")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the runs are split into")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="auto", help="ONNX Runtime device: auto, cuda, cpu")
    parser.add_argument("--precisions", default="fp32", help="fp32, fp16, int8 (static QDQ; comma-separated)")
    parser.add_argument("--tensorrt", default="off", choices=("auto", "on", "off"),
                        help="ONNX Runtime's TensorRT provider: auto (when installed), on, off")
    parser.add_argument("--cuda-graph", action="store_true", help="at batch 1 on CUDA, replay captured CUDA graphs")
    parser.add_argument("--latency-precision", default=None, help="precision the latency table is timed in "
                        "(default: fp16 when it is among --precisions, else fp32)")
    parser.add_argument("--cuda-defaults", action="store_true", help="ORT's default CUDA options instead of the tuned ones")
    parser.add_argument("--compare-graphs", action="store_true", help="compare each pruned graph with the dense one, "
                        "as exported and as ONNX Runtime optimises it for the provider (op counts, layout and Cast nodes, "
                        "misaligned widths); the optimised models are kept next to --out")
    parser.add_argument("--profile", action="store_true", help="per-node ORT profile of dense and each pruned variant at "
                        "the largest batch, and every layer timed alone at dense and pruned widths")
    parser.add_argument("--profile-runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="markdown results file to write")
    args = parser.parse_args()

    torch.manual_seed(0)
    spec = ModelSpec(args.model, args.classes, args.channels, args.input_size)
    example = spec.example_input(1)
    calibration = [torch.randn(16, args.channels, args.input_size, args.input_size) for _ in range(2)]
    check = torch.randn(4, args.channels, args.input_size, args.input_size)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    precisions = args.precisions.split(",")
    latency_precision = args.latency_precision or ("fp16" if "fp16" in precisions else "fp32")
    allocations = args.allocations.split(",")
    variants = [(1.0, 1, "dense")] + [(float(t), int(r), a) for t in args.targets.split(",")
                                      for r in args.round_to.split(",") for a in allocations]
    tables = {}
    rows, models, shapes, reports = [], [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for target, round_to, allocation in variants:
            model = build_model(spec).eval()
            table = None
            if allocation == "latency":
                if round_to not in tables:
                    shapes = layer_shapes(convert_relus(build_model(spec).eval(), example), example)
                    tables[round_to] = measure_latency_table(shapes, batch_size=max(batch_sizes), round_to=round_to,
                                                             precision=latency_precision, device=args.device)
                    print(f"latency table (round_to {round_to}, batch {max(batch_sizes)}, {latency_precision}) "
                          f"on {tables[round_to].provider}", flush=True)
                table = tables[round_to]
            timer = None
            if allocation == "measured":  # whole models, timed at the largest batch in the latency precision
                timer = WholeModelTimer(convert_relus(build_model(spec).eval(), example), example,
                                        batch_size=max(batch_sizes), precision=latency_precision, device=args.device,
                                        runs=max(5, args.runs // 3), warmup=args.warmup,
                                        cuda_options={} if args.cuda_defaults else None)
            pruned, point = pruned_variant(model, example, target, round_to, calibration, allocation, table,
                                           model_time=timer)
            if timer is not None:
                print(f"measured allocation: {timer.timed} whole models timed, measured speed-up "
                      f"{point.measured_speedup:.2f}× (target {1 / target:.2f}×)", flush=True)
            pruned = export_ready(pruned)
            shapes[(target, round_to, allocation)] = layer_shapes(pruned, example)
            predicted = None if point is None else point.measured_speedup or point.predicted_speedup
            for precision in precisions:
                path = Path(tmp) / f"{args.model}-{target}-{round_to}-{allocation}-{precision}.onnx"
                fp32_path = path.with_name(path.stem + "-for-int8.onnx") if precision == "int8" else path
                export_onnx(pruned, fp32_path, example_input=example, check_input=check, tolerance=1e-2,
                            fp16=precision == "fp16")
                if precision == "int8":  # static QDQ, calibrated on the Gaussian calibration batches
                    quantize_int8(fp32_path, path, [batch.numpy() for batch in calibration])
                rows.append((target, round_to, allocation, precision, path.stem, predicted))
                models.append((path.stem, path))
                print(f"exported {path.stem}", flush=True)
        if args.compare_graphs or args.profile:
            keep = args.out.parent / f"{args.out.stem}-graphs" if args.out else Path(tmp)
            keep.mkdir(parents=True, exist_ok=True)
            reports = diagnose(args, rows, dict(models), shapes, session_providers(args.device, {} if args.cuda_defaults else None),
                               max(batch_sizes), keep)
        skipped = set()
        if "int8" in precisions and not int8_accelerated(providers_for("int8", args.device, tensorrt=args.tensorrt)):
            skipped = {stem for *_, precision, stem, _ in rows if precision == "int8"}
            print(f"int8 models: {NOT_ACCELERATED}, not timed", flush=True)
        results = benchmark_side_by_side([m for m in models if m[0] not in skipped], batch_sizes=batch_sizes,
                                         runs=args.runs, warmup=args.warmup, rounds=args.rounds, device=args.device,
                                         cuda_options={} if args.cuda_defaults else None, tensorrt=args.tensorrt,
                                         cuda_graph=args.cuda_graph)
    rows = [row for row in rows if row[4] not in skipped]
    by_model = {}
    for result in results:
        by_model.setdefault(result.model, []).append(result)
    reference = {(p, r.batch_size): r for t, _, _, p, stem, _ in rows if t >= 1.0 for r in by_model[stem]}
    fp32_dense = {b: reference[("fp32", b)] for b in batch_sizes if ("fp32", b) in reference}
    header = "| precision | MACs target | round_to | allocation | predicted speed-up | GMACs | MACs reduction | " + " | ".join(
        f"batch {b}: images/s | speed-up | realised" for b in batch_sizes) + " |"
    lines = [header, "|" + "---|" * (7 + 3 * len(batch_sizes))]
    for target, round_to, allocation, precision, stem, predicted in rows:
        measured = by_model[stem]
        base = reference[(precision, measured[0].batch_size)]
        reduction = base.macs / measured[0].macs
        cells = []
        for result in measured:
            speedup = result.throughput / reference[(precision, result.batch_size)].throughput
            cells += [f"{result.throughput:,.0f}", f"{speedup:.2f}", f"{speedup / reduction:.2f}"]
        label = "none (dense)" if target >= 1.0 else f"{target:g}"
        lines.append(f"| {precision} | {label} | {round_to} | {allocation if target < 1.0 else ''} | "
                     f"{f'{predicted:.2f}' if predicted else ''} | {measured[0].macs / 1e9:.3f} | {reduction:.2f} | " + " | ".join(cells) + " |")
    if skipped:
        lines.append("")
        lines.append(f"int8: {NOT_ACCELERATED} (ONNX Runtime's CUDA provider runs QDQ models with float kernels); not timed.")
    if "fp16" in precisions and fp32_dense:
        lines.append("")
        lines.append("Dense fp16 over dense fp32: " + ", ".join(
            f"batch {b}: {reference[('fp16', b)].throughput / fp32_dense[b].throughput:.2f}×" for b in fp32_dense))
    env = environment()
    provider = results[0].provider
    options = "ORT default CUDA options" if args.cuda_defaults else f"tuned CUDA options {TUNED_CUDA_OPTIONS}"
    text = (
        f"# {args.model}: support-pruned vs dense, ONNX Runtime ({provider})\n\n"
        f"Date {datetime.now(timezone.utc):%Y-%m-%d}; device: {env.get('cuda_device') or env['host']['processor'] + ', ' + str(env['host']['cpu_count']) + ' CPUs'}; "
        f"onnxruntime {env.get('onnxruntime')}; input {args.channels}×{args.input_size}×{args.input_size}; "
        f"median of {args.runs} runs (in {args.rounds} interleaved rounds over all variants) after {args.warmup} warm-up"
        + (f"; {options}" if provider.startswith("CUDA") else "") + ".\n"
        f"Command: `python tools/bench_pruned.py {' '.join(sys.argv[1:])}`\n\n"
        "Speed-ups are against the dense model of the same precision. 'realised' = speed-up ÷ MACs reduction "
        "(1.0: the MACs saving fully turned into speed). 'predicted speed-up': for allocation latency, what the layer "
        f"latency table (batch {max(batch_sizes)}, {latency_precision}) predicted for the conv and linear layers; for "
        f"allocation measured, the whole model's speed-up as timed during the search (batch {max(batch_sizes)}, "
        f"{latency_precision}).\n\n"
        + "\n".join(lines) + "\n"
        + ("\n## Why: graphs and profiles\n\n" + "\n".join(reports) if reports else "")
    )
    print_and_write(text, args.out)


def diagnose(args, rows, paths, shapes, providers, batch_size: int, keep: Path) -> list[str]:
    """Each pruned variant against the dense model of its precision: the graphs (--compare-graphs) and where the
    time goes (--profile: ORT's per-node profile, and every layer alone at dense and pruned widths)."""
    dense = {precision: stem for target, _, _, precision, stem, _ in rows if target >= 1.0}
    reports, profiles = [], {}
    for target, round_to, allocation, precision, stem, _ in rows:
        if target >= 1.0:
            continue
        dense_path, path = paths[dense[precision]], paths[stem]
        label = f"{stem} vs dense {precision}"
        if args.compare_graphs:
            reports.append(comparison_markdown(label, dense_path, path, providers, keep))
        if args.profile:
            for name, model_path in ((dense[precision], dense_path), (stem, path)):
                if name not in profiles:
                    profiles[name] = node_profile(model_path, providers, batch_size, args.profile_runs)
            reports.append(profile_markdown(label, profiles[dense[precision]], profiles[stem]))
            rows_alone = layer_times_alone(shapes[(1.0, 1, "dense")], shapes[(target, round_to, allocation)], providers,
                                           batch_size, precision, runs=args.profile_runs)
            reports.append(layers_markdown(label, rows_alone, batch_size))
        print(f"diagnosed {stem}", flush=True)
    return reports


def print_and_write(text: str, out: Path | None) -> None:
    """Print the results and, when ``out`` is given, write them there (atomically, folders created)."""
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)


if __name__ == "__main__":
    main()
