"""Export a model to a single-file ONNX model and check it against PyTorch with ONNX Runtime.

The file is only written once it has passed ``onnx.checker`` and a numerical comparison with the
PyTorch model on real inputs, so a file at ``path`` is always a checked export.

Exporter choice: torch.export-based (``dynamo=True``, the default since torch 2.9). The legacy
TorchScript exporter is ~4x faster (resnet18 ≈1.3 s vs ≈5 s on two cores) but is deprecated and
fails on common cases we need, e.g. vgg16 on 32x32 inputs (``adaptive_avg_pool2d`` to 7x7 from a
1x1 map). The dynamo exporter handles resnet18, vgg16 and googlenet fx GraphModules with
``torch.where`` threshold sites, and keeps the batch dimension symbolic.
"""

from __future__ import annotations

import contextlib
import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from supportprune.store.atomic import atomic_write_bytes
from supportprune.errors import SupportpruneError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Protobuf cannot serialise a message of 2 GiB or more; keep a margin for the graph itself.
_SINGLE_FILE_LIMIT_BYTES = 2**31 - 64 * 2**20
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class ExportCheck:
    path: Path
    max_abs_diff: float  # largest |onnxruntime - torch| over the check inputs
    tolerance: float
    batch_size: int  # how many check inputs


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    example_input: torch.Tensor,
    check_input: torch.Tensor,
    tolerance: float = 1e-3,
    opset: int = 18,
    fp16: bool = False,
) -> ExportCheck:
    """Export ``model`` (in eval mode, on the CPU) to ``path`` with a dynamic batch axis.

    ``fp16``: weights, input and output in half precision (tensor cores on GPUs); it is checked against
    the fp32 PyTorch model, with the tolerance raised to fp16's resolution (5e-2 relative) at least.
    Raises SupportpruneError, leaving ``path`` untouched, if the export fails, the model is invalid
    ONNX, or ONNX Runtime's outputs on ``check_input`` differ from PyTorch's by more than
    ``tolerance * max(1, max |torch output|)``.
    """
    path = Path(path)
    name = type(model).__name__
    cpu_model = _on_cpu(model)
    with _eval_mode(cpu_model):
        _check_size(cpu_model, name)
        reference = _torch_logits(cpu_model, check_input, name)
        exported = copy.deepcopy(cpu_model).half() if fp16 else cpu_model
        example = example_input.detach().cpu()
        data = _export_bytes(exported, example.half() if fp16 else example, opset, name)
    _check_onnx(data, name)
    check = check_input.detach().cpu()
    max_diff = _max_ort_diff(data, check.half() if fp16 else check, reference, name)
    if fp16:
        tolerance = max(tolerance, 5e-2)
    limit = tolerance * max(1.0, float(reference.abs().max()))
    if not max_diff <= limit:  # also catches NaN
        raise SupportpruneError(
            f"ONNX export of {name} differs from PyTorch by {max_diff:.3g} (tolerance {limit:.3g}); "
            "the model uses an operation ONNX Runtime computes differently: check its custom modules or pass a larger tolerance"
        )
    atomic_write_bytes(path, data)  # only a checked model ever lands at ``path``
    return ExportCheck(path=path, max_abs_diff=max_diff, tolerance=tolerance, batch_size=len(check_input))


def _on_cpu(model: nn.Module) -> nn.Module:
    """The model itself if it is on the CPU, else a CPU copy: the caller's model never moves."""
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).cpu()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block, then every submodule's own mode back (some may be frozen in eval)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _check_size(model: nn.Module, name: str) -> None:
    size = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    if size >= _SINGLE_FILE_LIMIT_BYTES:
        raise SupportpruneError(
            f"{name} has {size / 2**30:.2f} GiB of weights, too large for a single-file ONNX model (2 GiB limit); "
            "prune or compress it before exporting"
        )


def _torch_logits(model: nn.Module, inputs: torch.Tensor, name: str) -> torch.Tensor:
    with torch.no_grad():
        output = model(inputs.detach().cpu())
    if not isinstance(output, torch.Tensor):
        raise SupportpruneError(
            f"{name} returns {type(output).__name__}, not one logits tensor; export a model whose forward returns logits only"
        )
    return output


def _export_bytes(model: nn.Module, example_input: torch.Tensor, opset: int, name: str) -> bytes:
    """Serialised ONNX model with a symbolic batch dimension, weights embedded (no external data)."""
    try:
        program = torch.onnx.export(
            model,
            (example_input,),
            None,  # keep it in memory: checked first, then written atomically
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
        return program.model_proto.SerializeToString()
    except Exception as error:  # torch.export raises many types; the cause is what the user needs
        raise SupportpruneError(f"ONNX export of {name} failed: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    """First line of the innermost cause: torch.onnx wraps the real reason (e.g. a data-dependent
    guard) in a generic, colour-coded "Failed to export the model" error."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = _ANSI_ESCAPE.sub("", str(error))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _check_onnx(data: bytes, name: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(onnx.load_model_from_string(data))
    except onnx.checker.ValidationError as error:
        raise SupportpruneError(f"ONNX export of {name} is not a valid ONNX model: {_first_line(error)}") from error


def _cpu_session(data: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; ORT's warnings about unused initializers are noise here
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _max_ort_diff(data: bytes, inputs: torch.Tensor, reference: torch.Tensor, name: str) -> float:
    """Largest |ORT - torch| on the full check batch and on its first example alone (dynamic batch)."""
    expected = reference.detach().cpu().numpy()
    batches = [(inputs, expected)] + ([(inputs[:1], expected[:1])] if len(inputs) > 1 else [])
    diffs = []
    try:
        session = _cpu_session(data)
        outputs = [session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0] for batch, _ in batches]
    except Exception as error:  # ORT's pybind errors share no useful base class
        raise SupportpruneError(f"ONNX Runtime cannot run the export of {name}: {_first_line(error)}") from error
    for (batch, want), got in zip(batches, outputs):
        if got.shape != want.shape:
            raise SupportpruneError(
                f"ONNX export of {name} gives shape {tuple(got.shape)} at batch {len(batch)} where PyTorch gives "
                f"{tuple(want.shape)}; make the model's output depend on the batch size only through dim 0"
            )
        diffs.append(float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max(initial=0.0)))
    return max(diffs)
