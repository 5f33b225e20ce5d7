"""Whole pruned models timed on the deployment provider: the timing ``sparse.allocation: measured`` searches with.

The full-width model is exported to ONNX once (``export.export_onnx``, checked against PyTorch, in the precision
asked). A candidate is that graph with every weight (and per-channel parameter) cut to the shape torch-pruning gives
the model pruned to the candidate's keep masks: pruning changes widths only, never operators (the exported dense
and pruned graphs have the same operators in the same order: ``tools/bench_pruned.py --compare-graphs``), so a
candidate runs the kernels the real export of that model would, without a 2-5 s export for each. Weight values do
not change the time; they are the dense weights' leading slices. The search's final model is exported for real and
benchmarked after the run.
"""

from __future__ import annotations

import copy
import statistics
from collections import OrderedDict
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from supportprune.deploy.benchmark import make_runner, open_session, session_providers, time_calls
from supportprune.errors import SupportpruneError
from supportprune.method.pruning import apply_keep_masks, prune_to_keep_masks
from supportprune.method.convert import export_ready
from supportprune.method.support import set_site_mode, support_sites

PRECISIONS = ("fp32", "fp16")


class WholeModelTimer:
    """``timer(keep_masks) -> seconds``: median time of one batch of the model pruned to ``keep_masks``.

    ``device``: as ``benchmark.select_providers`` (CUDA with the tuned options when asked or available).
    ``log`` (optional) receives one line per timed model."""

    def __init__(self, model: nn.Module, example_input: Tensor, *, batch_size: int, precision: str = "fp32",
                 device: str = "auto", runs: int = 20, warmup: int = 3, threads: int | None = None,
                 cuda_options: dict[str, str] | None = None, log: Callable[[str], None] | None = None) -> None:
        if precision not in PRECISIONS:
            raise SupportpruneError(f"measured allocation: precision must be fp32 or fp16, got {precision!r}")
        self.example = example_input[:1].detach().cpu()
        self.model = _timing_copy(model)
        self.providers = session_providers(device, cuda_options)
        self.provider = self.providers[0][0] if isinstance(self.providers[0], tuple) else self.providers[0]
        self.batch_size, self.precision, self.runs, self.warmup, self.threads = batch_size, precision, runs, warmup, threads
        self.log = log
        self.dense_bytes = _export_bytes(export_ready(self.model), self.example, precision == "fp16")
        self.timed = 0
        self.export_each = False  # set when the dense export cannot be cut to a candidate (see _candidate_runner)
        # The search times the current model and a candidate alternately: the last few stay open (LRU).
        self._runners: OrderedDict[bytes, Callable[[], object]] = OrderedDict()

    def __call__(self, keep: dict[str, Tensor]) -> float:
        key = b"".join((mask > 0).cpu().numpy().tobytes() for _, mask in sorted(keep.items()))
        if key not in self._runners:
            self._runners[key] = self._candidate_runner(keep)
            while len(self._runners) > 3:
                self._runners.popitem(last=False)
        self._runners.move_to_end(key)
        return self._time(self._runners[key])

    def candidate_bytes(self, keep: dict[str, Tensor]) -> bytes:
        """The dense export with its weights cut to the model pruned to ``keep``."""
        return with_widths_of(self.dense_bytes, self._pruned(keep))

    def _pruned(self, keep: dict[str, Tensor]) -> nn.Module:
        trial = copy.deepcopy(self.model)
        apply_keep_masks(trial, keep)
        return prune_to_keep_masks(trial, self.example)

    def _candidate_runner(self, keep: dict[str, Tensor]) -> Callable[[], object]:
        """The cut dense export, or, for a model whose export holds per-channel constants the cut cannot follow
        (sites with β ≠ 0 export their thresholds folded into new constants), the real export of each candidate."""
        pruned = self._pruned(keep)
        if not self.export_each:
            try:
                return self.runner(with_widths_of(self.dense_bytes, pruned))
            except SupportpruneError:
                self.export_each = True
                if self.log is not None:
                    self.log("measured allocation: the dense export cannot be cut to a candidate's widths; "
                             "exporting every candidate instead (slower)")
        return self.runner(_export_bytes(export_ready(pruned), self.example, self.precision == "fp16"))

    def runner(self, data: bytes) -> Callable[[], object]:
        """One batch of the model ``data`` on the provider, warmed up."""
        try:
            session = open_session(data, self.providers, self.threads)
        except SupportpruneError as error:  # a candidate whose cut widths some node of the export does not follow
            raise SupportpruneError(f"measured allocation: a pruned candidate does not load in ONNX Runtime ({error}); "
                                    "use sparse.allocation: latency or global for this model") from error
        meta = session.get_inputs()[0]
        dtype = np.float16 if self.precision == "fp16" else np.float32
        x = np.random.default_rng(0).standard_normal((self.batch_size, *meta.shape[1:])).astype(dtype)
        run = make_runner(session, x)
        self._time(run, self.warmup, 0)
        return run

    def time_bytes(self, data: bytes) -> float:
        return self._time(self.runner(data))

    def _time(self, run: Callable[[], object], runs: int | None = None, warmup: int = 0) -> float:
        try:
            seconds = statistics.median(time_calls(run, self.runs if runs is None else runs, warmup) or [0.0])
        except Exception as error:  # ORT's pybind errors share no useful base class
            raise SupportpruneError(
                f"measured allocation: ONNX Runtime cannot run a pruned candidate ({str(error).strip().splitlines()[0]}); "
                "use sparse.allocation: latency or global for this model"
            ) from error
        if runs is not None:  # a warm-up, not a timing
            return seconds
        self.timed += 1
        if self.log is not None:
            self.log(f"timed whole model {self.timed}: {1e3 * seconds:.3f} ms at batch {self.batch_size}")
        return seconds


def _timing_copy(model: nn.Module) -> nn.Module:
    """A CPU copy whose sites act as at deployment (threshold mode, no statistics): the model's own sites keep
    training untouched."""
    timing = copy.deepcopy(model).cpu().eval()
    set_site_mode(timing, "threshold", record_stats=False)
    if not any(True for _ in support_sites(timing)):
        raise SupportpruneError("measured allocation needs a converted model with support sites")
    return timing


def _export_bytes(model: nn.Module, example: Tensor, fp16: bool) -> bytes:
    from supportprune.deploy.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="supportprune-measured-") as tmp:
        path = Path(tmp) / "dense.onnx"
        check = torch.randn(2, *example.shape[1:])
        export_onnx(model, path, example_input=example, check_input=check, tolerance=1e-2, fp16=fp16)
        return path.read_bytes()


def with_widths_of(dense_bytes: bytes, pruned: nn.Module) -> bytes:
    """``dense_bytes`` (an export of the full-width model) with every initializer named after a parameter or buffer of
    ``pruned`` cut to that tensor's shape (a BatchNorm folded into a convolution leaves ``<conv>.weight_bias``: cut to
    the convolution's output width), convolution groups set to ``pruned``'s, and flattening Reshapes (``[-1, C]``) to Flatten
    (the exporter writes the classifier's input width into them). Intermediate shape annotations are dropped."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_model_from_string(dense_bytes)
    graph = model.graph
    shapes = {name: tuple(t.shape) for name, t in list(pruned.named_parameters()) + list(pruned.named_buffers())}
    modules = dict(pruned.named_modules())
    for init in graph.initializer:
        shape = shapes.get(init.name)
        if shape is None and init.name.endswith(".weight_bias"):
            module = modules.get(init.name.removesuffix(".weight_bias"))
            width = getattr(module, "out_channels", None) or getattr(module, "out_features", None)
            shape = (width,) if width else None
        if shape is None or tuple(init.dims) == shape:
            continue
        array = numpy_helper.to_array(init)
        if array.ndim != len(shape) or any(n > d for n, d in zip(shape, array.shape)):
            raise SupportpruneError(f"measured allocation: cannot cut {init.name} {array.shape} to {shape}; "
                                    "use sparse.allocation: latency or global for this model")
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array[tuple(slice(0, n) for n in shape)]), init.name))
    constants = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Conv" and len(node.input) > 1:
            module = modules.get(node.input[1].removesuffix(".weight"))
            for attribute in node.attribute:
                if attribute.name == "group" and isinstance(module, nn.Conv2d):
                    attribute.i = module.groups
        elif node.op_type == "Reshape" and node.input[1] in constants:
            target = numpy_helper.to_array(constants[node.input[1]])
            if target.shape == (2,) and target[0] == -1 and target[1] > 0:  # x.view(-1, C): flatten, at any width
                node.op_type = "Flatten"
                del node.input[1:]
                del node.attribute[:]
                node.attribute.append(onnx.helper.make_attribute("axis", 1))
    del graph.value_info[:]
    return model.SerializeToString()
