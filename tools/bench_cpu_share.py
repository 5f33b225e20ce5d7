"""How much of the MACs cut becomes CPU speed: the realised share (speed-up ÷ MACs reduction) of pruned
models under ONNX Runtime on the CPU, for several torchvision models, MACs targets and allocations, at a
small and a large batch, fp32 and int8 side by side.

Per model, the dense network and its pruned variants (``tools/bench_pruned.py``'s ``pruned_variant``: supports
observed with B-alternation on Gaussian calibration batches, cut by one global threshold or by the layer
latency table) are exported, optionally quantized to static QDQ int8 (``supportprune.deploy.quantize``), and timed
side by side in interleaved rounds (``benchmark_side_by_side``): ratios stay honest on a loaded machine.
Timing depends on channel counts, not on which channels survive, so random weights are used.

ReLU6 (mobilenet_v2) is a support site too (clamped at 6; ``method/convert.py``). A model with no ReLU or
ReLU6 at all is pruned by torch-pruning's group L1 importance to the MACs target instead (allocation
``l1``); the table says so.

``--profile`` times each variant whose share is below ``--profile-below`` per node (ORT's profiler) and
prints where the time goes by operator type, dense against pruned. ``--run-dir`` adds top-1 and throughput of
a trained ``supportprune compress`` run's baseline fp32, sparse fp32 and sparse int8 models.

    nice -n 5 python tools/bench_cpu_share.py --models resnet18,mobilenet_v2,googlenet --targets 0.5,0.3 \
        --allocations global,latency --int8 --run-dir runs/resnet18 --out benchmarks/results/cpu-share.md
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pruned import print_and_write, pruned_variant  # noqa: E402
from supportprune.method.allocation import layer_shapes  # noqa: E402
from supportprune.deploy.benchmark import benchmark_side_by_side, environment, open_session  # noqa: E402
from supportprune.deploy.export import export_onnx  # noqa: E402
from supportprune.deploy.latency_table import measure_latency_table  # noqa: E402
from supportprune.inputs.models import ModelSpec, build_model  # noqa: E402
from supportprune.method.pruning import count_macs_params  # noqa: E402
from supportprune.deploy.quantize import quantize_int8  # noqa: E402
from supportprune.errors import SupportpruneError  # noqa: E402
from supportprune.method.convert import TraceError, convert_relus, export_ready  # noqa: E402


def l1_variant(model, example, target: float, round_to: int):
    """Channels pruned by torch-pruning's group L1 importance over the whole network (classifier kept) to
    ``target`` of the MACs: the pruning ratio is bisected on copies. Depthwise convolutions are pruned with
    their input channels, so groups stay equal to channels."""
    import torch_pruning as tp

    dense_macs = count_macs_params(model, example)[0]
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]

    def prune(ratio: float):
        candidate = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(candidate, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                      pruning_ratio=ratio, global_pruning=True, round_to=round_to,
                                      ignored_layers=[dict(candidate.named_modules())[n] for n, m in model.named_modules()
                                                      if any(m is c for c in classifier)])
        pruner.step()
        return candidate, count_macs_params(candidate, example)[0] / dense_macs

    low, high, best = 0.0, 0.95, None
    for _ in range(10):
        ratio = (low + high) / 2
        candidate, kept = prune(ratio)
        if best is None or abs(kept - target) < abs(best[1] - target):
            best = (candidate, kept)
        low, high = (ratio, high) if kept > target else (low, ratio)
    for module in best[0].modules():
        if isinstance(module, torch.nn.Conv2d) and module.groups > 1:
            assert module.groups == module.in_channels == module.out_channels, "depthwise conv lost groups == channels"
    return best[0].eval()


def has_support_sites(spec: ModelSpec, example) -> bool:
    try:
        convert_relus(build_model(spec).eval(), example)
        return True
    except (TraceError, SupportpruneError):  # no ReLU or ReLU6 call site
        return False


def op_type_seconds(path: Path, batch_size: int, runs: int, threads: int | None) -> dict[str, float]:
    """Median-free profile: total seconds per operator type over ``runs`` runs, from ORT's per-node profiler."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.profile_file_prefix = str(path.with_suffix(""))
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    meta = session.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal((batch_size, *meta.shape[1:])).astype(np.float32)
    for _ in range(runs + 3):
        session.run(None, {meta.name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"] / 1e6
    return dict(totals)


def profile_text(dense: Path, pruned: Path, label: str, batch_size: int, runs: int, reduction: float) -> str:
    d, p = op_type_seconds(dense, batch_size, runs, None), op_type_seconds(pruned, batch_size, runs, None)
    total_d, total_p = sum(d.values()), sum(p.values())
    lines = [f"Profile of {label} at batch {batch_size} ({runs} runs; kernel time by operator type; MACs reduction "
             f"{reduction:.2f}×, kernel-time reduction {total_d / max(total_p, 1e-12):.2f}×):", "",
             "| op type | dense ms/run | share | pruned ms/run | share | dense ÷ pruned |", "|---|---:|---:|---:|---:|---:|"]
    for op in sorted(set(d) | set(p), key=lambda o: -d.get(o, 0.0))[:8]:
        a, b = d.get(op, 0.0), p.get(op, 0.0)
        lines.append(f"| {op} | {1e3 * a / runs:.3f} | {a / total_d:.0%} | {1e3 * b / runs:.3f} | {b / total_p:.0%} | "
                     f"{a / b if b else float('inf'):.2f} |")
    return "\n".join(lines) + "\n"


def run_models(args, spec_of, batch_sizes, tmp: Path):
    rows, extra = [], []
    for name in args.models.split(","):
        spec = spec_of(name)
        example = spec.example_input(1)
        torch.manual_seed(0)
        calibration = [torch.randn(16, spec.in_channels, spec.input_size, spec.input_size) for _ in range(2)]
        check = torch.randn(4, spec.in_channels, spec.input_size, spec.input_size)
        supported = has_support_sites(spec, example)
        allocations = args.allocations.split(",") if supported else ["l1"]
        variants = [("dense", 1.0, None)] + [(a, float(t), None) for t in args.targets.split(",") for a in allocations]
        table = None
        models, meta = [], {}
        for allocation, target, _ in variants:
            model = build_model(spec).eval()
            if allocation == "latency" and table is None:
                shapes = layer_shapes(convert_relus(build_model(spec).eval(), example), example)
                table = measure_latency_table(shapes, batch_size=max(batch_sizes), round_to=args.round_to, device="cpu")
            if allocation == "l1":
                pruned = l1_variant(model, example, target, args.round_to)
            elif allocation == "dense":
                pruned = convert_relus(model, example).eval() if supported else model
            else:
                pruned, _ = pruned_variant(model, example, target, args.round_to, calibration, allocation,
                                           table if allocation == "latency" else None, args.concat_round_to)
            key = f"{name}-{allocation}-{target:g}"
            path = tmp / f"{key}.onnx"
            export_onnx(export_ready(pruned) if supported else pruned, path, example_input=example, check_input=check,
                        tolerance=1e-2)
            models.append((key, path))
            meta[key] = (name, allocation, target, path)
            if args.int8:
                int8 = quantize_int8(path, tmp / f"{key}.int8.onnx", [c.numpy() for c in calibration])
                models.append((key, int8))  # same name; the result's precision says int8
            print(f"exported {key}", flush=True)
        results = benchmark_side_by_side(models, batch_sizes=batch_sizes, runs=args.runs, warmup=args.warmup,
                                         rounds=args.rounds, device="cpu", threads=args.threads)
        by = {(r.model, r.precision, r.batch_size): r for r in results}
        dense_key = f"{name}-dense-1"
        for key, (_, allocation, target, path) in meta.items():
            for precision in ("fp32", "int8") if args.int8 else ("fp32",):
                cells, reduction = [], by[(dense_key, "fp32", batch_sizes[0])].macs / by[(key, precision, batch_sizes[0])].macs
                for b in batch_sizes:
                    speedup = by[(key, precision, b)].throughput / by[(dense_key, precision, b)].throughput
                    cells.append((by[(key, precision, b)].throughput, speedup, speedup / reduction))
                over_fp32 = by[(key, precision, max(batch_sizes))].throughput / by[(dense_key, "fp32", max(batch_sizes))].throughput
                rows.append((name, precision, allocation, target, by[(key, precision, batch_sizes[0])].macs, reduction,
                             cells, over_fp32))
                share = min(c[2] for c in cells)
                if args.profile and precision == "fp32" and allocation != "dense" and share < args.profile_below:
                    for b in batch_sizes:
                        extra.append(profile_text(meta[dense_key][3], path, f"{key} (fp32)", b, args.profile_runs, reduction))
    return rows, extra


def trained_run_text(run_dir: Path, batch_sizes, args) -> str:
    """Top-1 of a compress run's baseline fp32, sparse fp32 and sparse int8 ONNX models on its validation
    images, and their throughput side by side."""
    import yaml

    from supportprune.inputs.data import load_data, make_loaders
    from supportprune.inputs.recipe import recipe_from_dict

    recipe = recipe_from_dict(yaml.safe_load((run_dir / "recipe.yaml").read_text()), str(run_dir / "recipe.yaml"))
    data = load_data(recipe.data.source, input_size=recipe.data.input_size, mean=recipe.data.mean,
                     std=recipe.data.std, channels=recipe.data.channels)
    _, val_loader = make_loaders(data, batch_size=256, workers=0, seed=recipe.seed)
    files = [("baseline", run_dir / "baseline.onnx"), ("sparse", run_dir / "sparse.onnx"), ("sparse", run_dir / "sparse.int8.onnx")]
    top1 = {}
    for name, path in files:
        session = open_session(path, ["CPUExecutionProvider"], args.threads)
        correct = seen = 0
        for x, y in val_loader:
            logits = session.run(None, {session.get_inputs()[0].name: x.numpy().astype(np.float32)})[0]
            correct += int((logits.argmax(1) == y.numpy()).sum())
            seen += len(y)
        top1[path.name] = 100.0 * correct / seen
    results = benchmark_side_by_side(files, batch_sizes=batch_sizes, runs=args.runs, warmup=args.warmup,
                                     rounds=args.rounds, device="cpu", threads=args.threads)
    by = {(r.model, r.precision, r.batch_size): r for r in results}
    lines = [f"Trained models of `{run_dir}` ({data.description}, {len(val_loader.dataset)} validation images):", "",
             "| model | file | MMACs | top-1 (%) | " + " | ".join(f"batch {b}: images/s | vs baseline fp32" for b in batch_sizes) + " |",
             "|---|---|---:|---:|" + "---:|---:|" * len(batch_sizes)]
    for name, path in files:
        precision = "int8" if ".int8." in path.name else "fp32"
        cells = [f"{by[(name, precision, b)].throughput:,.0f} | {by[(name, precision, b)].throughput / by[('baseline', 'fp32', b)].throughput:.2f}×"
                 for b in batch_sizes]
        lines.append(f"| {name} {precision} | {path.name} | {by[(name, precision, batch_sizes[0])].macs / 1e6:.1f} | "
                     f"{top1[path.name]:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), '' elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,mobilenet_v2,googlenet")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=1, help="input channels (1: the embedded Fashion-MNIST data)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--targets", default="0.5,0.3", help="fractions of MACs to keep")
    parser.add_argument("--allocations", default="global,latency")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--concat-round-to", type=int, default=None,
                        help="round channels that reach a Concat to this (sparse.concat_round_to; default: --round-to)")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's)")
    parser.add_argument("--int8", action="store_true", help="also time static QDQ int8 versions of every model")
    parser.add_argument("--profile", action="store_true", help="per-node ORT profile where the share is low")
    parser.add_argument("--profile-below", type=float, default=0.9)
    parser.add_argument("--profile-runs", type=int, default=20)
    parser.add_argument("--run-dir", type=Path, default=None, help="a finished `supportprune compress` run (with int8)")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    args = parser.parse_args()

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows, profiles = run_models(args, lambda n: ModelSpec(n, args.classes, args.channels, args.input_size),
                                    batch_sizes, Path(tmp))
    header = ("| model | precision | allocation | MACs kept (target) | MMACs | MACs reduction | "
              + " | ".join(f"batch {b}: images/s | speed-up | share" for b in batch_sizes)
              + f" | batch {max(batch_sizes)} vs dense fp32 |")
    lines = [header, "|" + "---|" * (7 + 3 * len(batch_sizes))]
    for name, precision, allocation, target, macs, reduction, cells, over_fp32 in rows:
        lines.append(f"| {name} | {precision} | {allocation} | {'' if allocation == 'dense' else f'{target:g}'} | "
                     f"{macs / 1e6:.1f} | {reduction:.2f} | "
                     + " | ".join(f"{t:,.0f} | {s:.2f} | {r:.2f}" for t, s, r in cells) + f" | {over_fp32:.2f}× |")
    shares = [c[2] for row in rows if row[1] == "fp32" and row[2] != "dense" for c in row[6]]
    env = environment()
    host = env["host"]
    import onnx
    import torch_pruning

    text = (
        f"# CPU speed against MACs: realised share of the cut (ONNX Runtime, CPU)\n\n"
        f"Date {datetime.now(timezone.utc):%Y-%m-%d}; {cpu_model() or host['processor']}, {host['cpu_count']} CPUs, {host['platform']}; "
        f"python {host['python']}, onnxruntime {env['onnxruntime']}, onnx {onnx.__version__}, torch {torch.__version__}, "
        f"torch-pruning {torch_pruning.__version__}; input {args.channels}×{args.input_size}×{args.input_size}, "
        f"{args.classes} classes, random weights (timing only); channels rounded to {args.round_to} (into a Concat: {args.concat_round_to or args.round_to}); median of "
        f"{args.runs} runs in {args.rounds} interleaved rounds over all variants of a model after {args.warmup} warm-up.\n\n"
        f"Command: `python tools/bench_cpu_share.py {' '.join(sys.argv[1:])}`\n\n"
        "share = speed-up ÷ MACs reduction against the dense model of the same precision (1.0: the MACs cut became "
        "speed in full); MACs counted from the ONNX graphs. Allocation l1: no ReLU or ReLU6 support sites, pruned by "
        "torch-pruning group L1 importance to the target instead.\n\n"
        + "\n".join(lines) + "\n"
        + (f"\nfp32 pruned variants: share median {statistics.median(shares):.2f}, min {min(shares):.2f}, "
           f"{sum(s >= 0.9 for s in shares)} of {len(shares)} at 0.9 or more.\n" if shares else "")
        + ("\n" + "\n".join(profiles) if profiles else "")
        + ("\n" + trained_run_text(args.run_dir, batch_sizes, args) if args.run_dir else "")
    )
    print_and_write(text, args.out)


if __name__ == "__main__":
    main()
