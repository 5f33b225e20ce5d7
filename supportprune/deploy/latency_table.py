"""Layer latency tables measured with ONNX Runtime on the device that will run the pruned model.

Every convolution (with its ReLU) and linear layer of a model is built alone as a one-node ONNX model
at a grid of input and output widths, and timed on the provider ``bench.select_providers`` picks (the
CUDA provider with the tuned options when there is a GPU). Layers of the same shape are timed once.
The table predicts a layer's latency at any widths by bilinear interpolation on its grid; the
latency-aware allocation (``allocation.py``) asks it which cuts save time on *this* device.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from supportprune.method.allocation import LayerShape
from supportprune.store.atomic import atomic_write_text
from supportprune.deploy.benchmark import make_runner, open_session, session_providers, time_calls
from supportprune.errors import SupportpruneError
from supportprune.method.pruning import rounded_keep_count

# Widths timed per layer and dimension, as fractions of the full width (0: the narrowest allowed).
GRID_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
TABLE_VERSION = 1


@dataclass(frozen=True)
class LayerGrid:
    in_widths: tuple[int, ...]
    out_widths: tuple[int, ...]
    # [in index][out index]: median latency of one batch, less the fixed cost of a run that does no work
    seconds: tuple[tuple[float, ...], ...]

    def predict(self, in_channels: float, out_channels: float) -> float:
        rows = [float(np.interp(out_channels, self.out_widths, row)) for row in self.seconds]
        return float(np.interp(in_channels, self.in_widths, rows))


@dataclass(frozen=True)
class LatencyTable:
    """Measured per-layer latency at one batch size, precision and provider; callable as
    ``table(layer_name, in_channels, out_channels) -> seconds``."""

    provider: str
    batch_size: int
    precision: str
    round_to: int
    layers: dict[str, LayerGrid]

    def __call__(self, name: str, in_channels: int, out_channels: int) -> float:
        grid = self.layers.get(name)
        if grid is None:
            raise KeyError(f"latency table has no layer {name!r}")
        return grid.predict(in_channels, out_channels)

    def to_json(self) -> str:
        payload = {"version": TABLE_VERSION, **{k: v for k, v in asdict(self).items() if k != "layers"},
                   "layers": {name: asdict(grid) for name, grid in self.layers.items()}}
        return json.dumps(payload, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "latency table") -> "LatencyTable":
        try:
            payload = json.loads(text)
            if payload.get("version") != TABLE_VERSION:
                raise ValueError(f"version {payload.get('version')!r}, expected {TABLE_VERSION}")
            layers = {
                name: LayerGrid(tuple(grid["in_widths"]), tuple(grid["out_widths"]),
                                tuple(tuple(float(s) for s in row) for row in grid["seconds"]))
                for name, grid in payload["layers"].items()
            }
            return cls(str(payload["provider"]), int(payload["batch_size"]), str(payload["precision"]),
                       int(payload["round_to"]), layers)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise SupportpruneError(f"{source} is not a valid latency table ({error}); delete it to measure again") from None

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:  # JSON only: a table is never unpickled
            reason = (error.strerror or str(error)) if isinstance(error, OSError) else "not UTF-8 text"
            raise SupportpruneError(f"cannot read latency table {path}: {reason}; give a latency-table.json "
                                    "written by supportprune, or delete it to measure again") from None
        return cls.from_json(text, str(path))

    def covers(self, shapes: dict[str, LayerShape]) -> bool:
        """Whether this table has every layer of ``shapes``, at the same full widths."""
        return all(
            name in self.layers and self.layers[name].in_widths[-1] == shape.in_channels
            and self.layers[name].out_widths[-1] == shape.out_channels
            for name, shape in shapes.items()
        )

    def matches(self, shapes: dict[str, LayerShape], batch_size: int, precision: str, round_to: int) -> bool:
        """Whether this table was measured for these layers and settings (a cached table may be stale)."""
        return (self.batch_size, self.precision, self.round_to) == (batch_size, precision, round_to) and self.covers(shapes)


def grid_widths(channels: int, round_to: int) -> tuple[int, ...]:
    """The widths a layer is timed at: multiples of ``round_to`` (as pruning leaves them) at the grid's
    fractions, from the narrowest allowed to the full width."""
    return tuple(sorted({rounded_keep_count(max(1, math.ceil(f * channels)), channels, round_to)
                         for f in GRID_FRACTIONS}))


def measure_latency_table(
    shapes: dict[str, LayerShape],
    *,
    batch_size: int,
    round_to: int = 1,
    precision: str = "fp32",
    device: str = "auto",
    runs: int = 20,
    warmup: int = 3,
    progress: Optional[Callable[[int, int], None]] = None,
) -> LatencyTable:
    """Time every layer of ``shapes`` alone at ``grid_widths`` of its input and output channels, less the
    fixed cost of one ONNX Runtime run (timed on a model that does no work with the same input).

    ``progress(done, total)`` is called after each timed point (for a progress bar).
    """
    if precision not in ("fp32", "fp16"):
        raise SupportpruneError(f"latency precision must be fp32 or fp16, got {precision!r}")
    providers = session_providers(device)
    provider = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    plans = {}
    for shape in shapes.values():
        key = shape.signature()
        if key not in plans:
            plans[key] = (shape, grid_widths(shape.in_channels, round_to), grid_widths(shape.out_channels, round_to))
    total = sum(len(ins) * len(outs) for _, ins, outs in plans.values())
    done = 0
    measured = {}
    for key, (shape, in_widths, out_widths) in plans.items():
        rows = []
        for in_width in in_widths:
            # Every session.run pays a fixed cost (dispatch, input and output handling) that a layer inside
            # the whole model does not pay on its own: measured on a model that does no work, and taken off.
            overhead = _time_model(_no_work_model_bytes(shape, in_width, precision),
                                   _input(shape, in_width, in_width, batch_size, precision), providers, runs, warmup)
            row = []
            for out_width in out_widths:
                seconds = _time_model(layer_model_bytes(shape, in_width, out_width, precision),
                                      _input(shape, in_width, out_width, batch_size, precision), providers, runs, warmup)
                row.append(max(seconds - overhead, 0.0))
                done += 1
                if progress is not None:
                    progress(done, total)
            rows.append(tuple(row))
        measured[key] = LayerGrid(in_widths, out_widths, tuple(rows))
    layers = {name: measured[shape.signature()] for name, shape in shapes.items()}
    return LatencyTable(provider, batch_size, precision, round_to, layers)


def layer_model_bytes(shape: LayerShape, in_width: int, out_width: int, precision: str = "fp32") -> bytes:
    """A one-layer ONNX model: Conv (+ bias) + Relu, or Gemm, at the given widths, random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dtype, elem = (np.float16, TensorProto.FLOAT16) if precision == "fp16" else (np.float32, TensorProto.FLOAT)
    rng = np.random.default_rng(0)
    if shape.kind == "linear":
        weight = numpy_helper.from_array((rng.standard_normal((out_width, in_width)) * 0.01).astype(dtype), "weight")
        bias = numpy_helper.from_array(np.zeros(out_width, dtype), "bias")
        nodes = [helper.make_node("Gemm", ["input", "weight", "bias"], ["output"], transB=1)]
        inputs = [helper.make_tensor_value_info("input", elem, ["batch", in_width])]
        outputs = [helper.make_tensor_value_info("output", elem, ["batch", out_width])]
    else:
        groups = out_width if shape.depthwise else shape.groups
        in_width = out_width if shape.depthwise else in_width
        per_group = in_width // groups
        weight = numpy_helper.from_array(
            (rng.standard_normal((out_width, per_group, *shape.kernel)) * 0.01).astype(dtype), "weight")
        bias = numpy_helper.from_array(np.zeros(out_width, dtype), "bias")
        pads = list(shape.padding) * 2 if all(isinstance(p, int) for p in shape.padding) else None
        attributes = dict(kernel_shape=list(shape.kernel), strides=list(shape.stride), dilations=list(shape.dilation),
                          group=groups)
        if pads is not None:
            attributes["pads"] = pads
        else:
            attributes["auto_pad"] = "SAME_UPPER" if shape.padding == ("same",) else "VALID"
        nodes = [helper.make_node("Conv", ["input", "weight", "bias"], ["conv"], **attributes),
                 helper.make_node("Relu", ["conv"], ["output"])]
        inputs = [helper.make_tensor_value_info("input", elem, ["batch", in_width, *shape.input_size])]
        outputs = [helper.make_tensor_value_info("output", elem, ["batch", out_width, *shape.output_size])]
    graph = helper.make_graph(nodes, f"{shape.name}-{in_width}-{out_width}", inputs, outputs, [weight, bias])
    # IR version 8 (opset 18's): older ONNX Runtimes reject the newest IR versions onnx writes by default.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return model.SerializeToString()


def _input(shape: LayerShape, in_width: int, out_width: int, batch_size: int, precision: str) -> np.ndarray:
    sample = [in_width] if shape.kind == "linear" else [out_width if shape.depthwise else in_width, *shape.input_size]
    return np.random.default_rng(1).standard_normal((batch_size, *sample)).astype(
        np.float16 if precision == "fp16" else np.float32)


def _no_work_model_bytes(shape: LayerShape, in_width: int, precision: str) -> bytes:
    """A model with the layer's input and no work (its output is the input's shape): one run's fixed cost."""
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    dims = ["batch", in_width] + ([] if shape.kind == "linear" else list(shape.input_size))
    graph = helper.make_graph([helper.make_node("Shape", ["input"], ["output"])], "no-work",
                              [helper.make_tensor_value_info("input", elem, dims)],
                              [helper.make_tensor_value_info("output", TensorProto.INT64, [len(dims)])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8).SerializeToString()


def _time_model(model: bytes, x: np.ndarray, providers: list, runs: int, warmup: int) -> float:
    return statistics.median(time_calls(make_runner(open_session(model, providers, None), x), runs, warmup))
