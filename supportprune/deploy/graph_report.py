"""What separates a pruned ONNX model from its dense original, as the runtime sees them.

Two exported graphs are compared node by node, before and after ONNX Runtime's graph optimisation on a
given provider (the optimised model ORT would run, saved through ``SessionOptions.optimized_model_filepath``):
operator counts, layout nodes (Transpose, NCHWc reorders), Casts, unfolded BatchNormalization, Pad/Slice, and
convolution widths that are not multiples of the 8/16/32 channels tensor cores and vectorised CPU kernels
work in. ``node_profile`` adds where the time goes, per node, from ORT's profiler.

On the CUDA provider ORT's per-node times are the time to *launch* a kernel (the GPU runs asynchronously)
unless ORT was built with CUDA profiling; the report says which it got (``Kernel`` events are GPU time).
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

LAYOUT_OPS = ("Transpose", "ReorderInput", "ReorderOutput", "NhwcMaxPool", "NhwcConv")
SUSPECT_OPS = ("Cast", "BatchNormalization", "Pad", "Slice", "Gather", "Shape", "Expand", "Where", "Greater")
ALIGNMENTS = (8, 16, 32)


@dataclass
class GraphSummary:
    ops: Counter
    conv_widths: list[tuple[str, int, int, int]]  # (node, in channels per group × groups, out channels, groups)
    float_types: Counter  # initializer element types ("float", "float16", ...)

    def misaligned(self, multiple: int) -> list[tuple[str, int, int]]:
        """Convolutions whose input (beyond the image's own channels) or output width is not a multiple of
        ``multiple``; depthwise convolutions count by their channels."""
        first = self.conv_widths[0][0] if self.conv_widths else None
        return [(name, c_in, c_out) for name, c_in, c_out, _ in self.conv_widths
                if c_out % multiple or (name != first and c_in % multiple)]


def summarise(model: Any) -> GraphSummary:
    """Operator counts, convolution widths and initializer types of an ONNX model (a ModelProto or a path)."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    graph = model.graph
    dims = {init.name: list(init.dims) for init in graph.initializer}
    ops = Counter(node.op_type for node in graph.node)
    widths = []
    for node in graph.node:
        if node.op_type in ("Conv", "NhwcConv", "FusedConv") and len(node.input) > 1 and node.input[1] in dims:
            weight = dims[node.input[1]]
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            widths.append((node.name, weight[1] * groups, weight[0], groups))
    types = Counter(onnx.TensorProto.DataType.Name(init.data_type).lower() for init in graph.initializer)
    return GraphSummary(ops, widths, types)


def optimized_model(path: str | os.PathLike, providers: list, out_path: str | os.PathLike) -> Path:
    """The model ONNX Runtime runs after its graph optimisation on ``providers`` (every level on), written to
    ``out_path``. It may hold provider-specific operators (NCHWc reorders, NHWC convolutions)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # ORT warns that such a file is hardware specific: it is, that is the point
    options.optimized_model_filepath = str(out_path)
    ort.InferenceSession(str(path), options, providers=providers)
    return Path(out_path)


def op_sequence_diff(dense: Any, pruned: Any) -> list[str]:
    """Where the operator sequences of two graphs differ (difflib opcodes over op types in graph order):
    one line per inserted, removed or replaced stretch. Empty: the same operators in the same order."""
    import onnx

    def sequence(model: Any) -> list[str]:
        model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        return [node.op_type for node in model.graph.node]

    a, b = sequence(dense), sequence(pruned)
    lines = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag != "equal":
            lines.append(f"{tag} at dense node {i1}: dense {a[i1:i2] or '-'} / pruned {b[j1:j2] or '-'}")
    return lines


@dataclass
class NodeProfile:
    """Per node: total seconds over the profiled runs, its operator type and output shape."""

    runs: int
    nodes: dict[str, tuple[str, float, str]] = field(default_factory=dict)  # name -> (op, seconds, output shape)
    gpu_kernels: bool = False  # True when the times are GPU kernel time (ORT built with CUDA profiling)

    def by_op(self) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for op, seconds, _ in self.nodes.values():
            totals[op] += seconds
        return dict(totals)

    def total(self) -> float:
        return sum(seconds for _, seconds, _ in self.nodes.values())


def parse_profile(events: Sequence[dict], runs: int) -> NodeProfile:
    """ORT profile events (its JSON trace) summed per node. ``Kernel`` events (GPU time, from a CUDA-profiling
    build) take the place of the launch-side ``Node`` events when there are any."""
    profile = NodeProfile(runs)
    kernels = [e for e in events if e.get("cat") == "Kernel"]
    profile.gpu_kernels = bool(kernels)
    totals: dict[str, list] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        name = event["name"].removesuffix("_kernel_time")
        args = event.get("args", {})
        shape = json.dumps(args.get("output_type_shape", ""), separators=(",", ":"))
        entry = totals.setdefault(name, [args.get("op_name", "?"), 0.0, shape])
        entry[1] += 0.0 if kernels else event.get("dur", 0) / 1e6
    for event in kernels:  # a GPU kernel names the node that launched it in args.op_name / args.parent_name
        args = event.get("args", {})
        name = str(args.get("parent_name", args.get("op_name", event.get("name", "?")))).removesuffix("_kernel_time")
        entry = totals.setdefault(name, [args.get("op_name", "?"), 0.0, ""])
        entry[1] += event.get("dur", 0) / 1e6
    profile.nodes = {name: (op, seconds, shape) for name, (op, seconds, shape) in totals.items()}
    return profile


def node_profile(path: str | os.PathLike, providers: list, batch_size: int, runs: int,
                 threads: int | None = None, warmup: int = 3) -> NodeProfile:
    """ORT's per-node profile of ``runs`` runs at ``batch_size`` on ``providers`` (after ``warmup`` runs)."""
    import onnxruntime as ort

    from supportprune.deploy.benchmark import _ONNX_DTYPES

    with tempfile.TemporaryDirectory(prefix="supportprune-profile-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=providers)
        meta = session.get_inputs()[0]
        dtype = _ONNX_DTYPES.get(meta.type, np.float32)
        x = np.random.default_rng(0).standard_normal((batch_size, *meta.shape[1:])).astype(dtype)
        for _ in range(warmup + runs):
            session.run(None, {meta.name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    # Only the timed runs count: node events from the start of the first run after the warm-up on.
    spans = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    start = spans[warmup] if len(spans) > warmup else 0
    node_events = [e for e in events if e.get("cat") in ("Node", "Kernel") and e.get("ts", 0) >= start]
    return parse_profile(node_events, runs)


def comparison_markdown(label: str, dense: str | os.PathLike, pruned: str | os.PathLike, providers: list,
                        workdir: str | os.PathLike) -> str:
    """Dense against pruned, as exported and as ONNX Runtime optimises them for ``providers``: operator counts
    side by side, layout/Cast/suspect nodes, misaligned convolution widths and the operator-sequence diff."""
    provider = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    workdir = Path(workdir)
    graphs = {}
    for kind, path in (("dense", dense), ("pruned", pruned)):
        optimised = optimized_model(path, providers, workdir / f"{Path(path).stem}.{provider}.optimized.onnx")
        graphs[kind] = (summarise(path), summarise(optimised), optimised)
    lines = [f"#### {label}: graphs ({provider.removesuffix('ExecutionProvider')} provider)", "",
             "| op type | dense exported | pruned exported | dense optimised | pruned optimised |", "|---|---:|---:|---:|---:|"]
    ops = sorted(set().union(*(g.ops for pair in graphs.values() for g in pair[:2])))
    for op in ops:
        counts = [graphs[kind][stage].ops.get(op, 0) for stage in (0, 1) for kind in ("dense", "pruned")]
        mark = " ⚠" if op in LAYOUT_OPS + SUSPECT_OPS else ""
        lines.append(f"| {op}{mark} | " + " | ".join(map(str, counts)) + " |")
    lines.append("")
    for kind in ("dense", "pruned"):
        exported, optimised, _ = graphs[kind]
        misaligned = ", ".join(f"{m}: {len(exported.misaligned(m))}/{len(exported.conv_widths)}" for m in ALIGNMENTS)
        lines.append(f"- {kind}: initializers {dict(exported.float_types)}; convolutions with a width not a multiple "
                     f"of {misaligned}")
    for stage, pair in (("exported", (dense, pruned)), ("optimised", (graphs["dense"][2], graphs["pruned"][2]))):
        diff = op_sequence_diff(*pair)
        lines.append(f"- operator sequence, {stage}: " + ("identical" if not diff else f"{len(diff)} differences"))
        lines += [f"  - {line}" for line in diff[:10]]
    return "\n".join(lines) + "\n"


def profile_markdown(label: str, dense: NodeProfile, pruned: NodeProfile, top: int = 10) -> str:
    """Where the time goes, dense against pruned: per operator type, and the nodes whose time fell least."""
    kind = "GPU kernel time" if dense.gpu_kernels else "ORT node time (on CUDA: kernel launch, not GPU time)"
    d, p = dense.by_op(), pruned.by_op()
    total_d, total_p = dense.total(), pruned.total()
    lines = [f"#### {label}: per-node profile ({kind}; ms per run)", "",
             f"Total {1e3 * total_d / dense.runs:.3f} dense, {1e3 * total_p / pruned.runs:.3f} pruned "
             f"({total_d / max(total_p, 1e-12):.2f}×).", "",
             "| op type | dense ms | share | pruned ms | share | dense ÷ pruned |", "|---|---:|---:|---:|---:|---:|"]
    for op in sorted(set(d) | set(p), key=lambda o: -d.get(o, 0.0)):
        a, b = d.get(op, 0.0), p.get(op, 0.0)
        lines.append(f"| {op} | {1e3 * a / dense.runs:.3f} | {a / max(total_d, 1e-12):.0%} | {1e3 * b / pruned.runs:.3f} | "
                     f"{b / max(total_p, 1e-12):.0%} | {a / b if b else float('inf'):.2f} |")
    # Nodes of the same name are the same operator in both graphs when the structure is the same (see the diff).
    shared = [name for name in dense.nodes if name in pruned.nodes]
    if shared:
        def ratio(name: str) -> float:
            return dense.nodes[name][1] / max(pruned.nodes[name][1], 1e-12)

        lines += ["", f"Nodes whose time fell least (of {len(shared)} in both):", "",
                  "| node | op | dense ms | pruned ms | dense ÷ pruned | pruned output |", "|---|---|---:|---:|---:|---|"]
        for name in sorted(shared, key=ratio)[:top]:
            op, a, _ = dense.nodes[name]
            b, shape = pruned.nodes[name][1], pruned.nodes[name][2]
            lines.append(f"| {name} | {op} | {1e3 * a / dense.runs:.3f} | {1e3 * b / pruned.runs:.3f} | {ratio(name):.2f} | "
                         f"`{shape}` |")
    return "\n".join(lines) + "\n"


def layer_times_alone(dense_shapes: dict, pruned_shapes: dict, providers: list, batch_size: int, precision: str,
                      runs: int = 20, warmup: int = 3) -> list[tuple[str, float, float, float]]:
    """Every convolution and linear layer built alone (``latency_table.layer_model_bytes``: Conv + Relu, or Gemm) at
    its dense and at its pruned widths and timed on ``providers``, the two alternating run by run. The GPU time of
    each layer, which ORT's profiler cannot give on CUDA. Per layer: (name, dense s, pruned s, MACs reduction)."""
    from supportprune.deploy.benchmark import make_runner, open_session, time_calls
    from supportprune.deploy.latency_table import _input, layer_model_bytes

    rows = []
    for name, dense in dense_shapes.items():
        pruned = pruned_shapes.get(name)
        if pruned is None:
            continue
        runners = []
        for shape in (dense, pruned):
            session = open_session(layer_model_bytes(dense, shape.in_channels, shape.out_channels, precision), providers, None)
            runners.append(make_runner(session, _input(dense, shape.in_channels, shape.out_channels, batch_size, precision)))
        samples: list[list[float]] = [[], []]
        for run in runners:
            time_calls(run, 0, warmup)  # warm-up: cuDNN's algorithm search, allocations
        for _ in range(runs):
            for index, run in enumerate(runners):
                samples[index] += time_calls(run, 1, 0)
        reduction = dense.macs(dense.in_channels, dense.out_channels) / max(pruned.macs(pruned.in_channels, pruned.out_channels), 1)
        rows.append((name, float(np.median(samples[0])), float(np.median(samples[1])), reduction))
    return rows


def layers_markdown(label: str, rows: Sequence[tuple[str, float, float, float]], batch_size: int) -> str:
    """The layers alone, dense against pruned; the ones where the pruned layer is not faster are marked."""
    lines = [f"#### {label}: each layer alone at batch {batch_size} (median ms)", "",
             "| layer | dense ms | pruned ms | speed-up | MACs reduction | |", "|---|---:|---:|---:|---:|---|"]
    for name, dense, pruned, reduction in rows:
        speedup = dense / max(pruned, 1e-12)
        lines.append(f"| {name} | {1e3 * dense:.3f} | {1e3 * pruned:.3f} | {speedup:.2f} | {reduction:.2f} | "
                     f"{'slower pruned' if speedup < 1 else ''} |")
    total_d, total_p = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines.append(f"\nSum of the layers alone: {1e3 * total_d:.3f} ms dense, {1e3 * total_p:.3f} ms pruned "
                 f"({total_d / max(total_p, 1e-12):.2f}×).")
    return "\n".join(lines) + "\n"
