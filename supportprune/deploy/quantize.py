"""Static INT8 quantization of an exported fp32 ONNX model, and the check that it still picks the same classes.

ONNX Runtime's post-training static quantization, as its documentation recommends for CNNs on a CPU:
``quant_pre_process`` first (symbolic shape inference, ORT's graph optimisation, ONNX shape inference: the
quantizer places QuantizeLinear/DequantizeLinear pairs best on an optimised graph with known shapes), then
``quantize_static`` in the QDQ format with per-channel weights, activation ranges calibrated (min/max) on
training images. Activations unsigned, weights signed (U8S8): ORT's documentation names S8S8 the first
choice for QDQ, but on x86 its integer kernels are built for u8×s8 (VNNI's VPDPBUSD): S8S8 ran slower than
fp32, U8S8 faster (benchmarks/results/2026-12-04-recipe-choices.md). ``reduce_range`` (7-bit weights)
only helps CPUs without VNNI, where U8S8 can saturate, and is off; the agreement check catches such a loss.
The QDQ model keeps float32 input and output, so it is a drop-in replacement for the fp32 file.
"""

from __future__ import annotations

from dataclasses import dataclass

import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from supportprune.store.atomic import atomic_write_bytes
from supportprune.errors import SupportpruneError

MAX_TOP1_LOSS = 1.0  # points of top-1 int8 may lose against fp32 and still be called accurate (issue 15's bound)
MIN_AGREEMENT = 0.99  # int8 top-1 must match fp32 on at least this share of validation images


def calibration_batches(loader: Iterable, images: int) -> list[np.ndarray]:
    """The first ``images`` inputs of ``loader`` (batches of (inputs, labels)) as float32 arrays."""
    batches, seen = [], 0
    for inputs, *_ in loader:
        batch = inputs[: images - seen].detach().cpu().numpy().astype(np.float32)
        batches.append(batch)
        seen += len(batch)
        if seen >= images:
            break
    if not seen:
        raise SupportpruneError("INT8 calibration found no images; check the training data or export.calibration_images")
    return batches


def _reader(input_name: str, batches: list[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class BatchReader(CalibrationDataReader):
        """Feeds the calibration batches to ORT's calibrator, one ``{input: batch}`` at a time."""

        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

        def rewind(self) -> None:
            self._batches = iter(batches)

    return BatchReader()


@dataclass(frozen=True)
class Int8Options:
    """How ``quantize_int8`` calibrates: ORT's calibration method (``minmax``, ``percentile``, ``entropy``), the
    percentile (``percentile`` only), and which layers stay in fp32 (ORT's ``nodes_to_exclude``): ``first``, the
    first convolution (it reads the raw input), ``last``, the layer that writes the logits."""

    method: str = "minmax"
    percentile: float = 99.999
    fp32_layers: tuple[str, ...] = ()
    per_channel: bool = True


INT8_OPTIONS = Int8Options()  # what runs use; the alternatives measured: benchmarks/results/2026-12-04-int8-calibration.md


def quantize_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, batches: list[np.ndarray],
                  options: Int8Options = Int8Options()) -> Path:
    """Write the static QDQ INT8 quantization of the fp32 ONNX model at ``fp32_path`` to ``int8_path`` (atomically),
    activation ranges calibrated on ``batches`` as ``options`` say. Raises SupportpruneError, leaving ``int8_path``
    untouched, on failure."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="supportprune-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared))
            methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                       "entropy": CalibrationMethod.Entropy}
            quantize_static(
                str(prepared), str(quantized), _reader(input_name, batches),
                quant_format=QuantFormat.QDQ, per_channel=options.per_channel, reduce_range=False,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=methods[options.method], nodes_to_exclude=_end_nodes(prepared, options.fp32_layers),
                extra_options={"CalibPercentile": options.percentile} if options.method == "percentile" else {},
            )
        except Exception as error:  # the quantizer raises many types; its message is what the user needs
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise SupportpruneError(
                f"INT8 quantization of {fp32_path.name} failed ({type(error).__name__}: {first}); "
                "set export.int8: false to export fp32 models only"
            ) from error
        atomic_write_bytes(int8_path, quantized.read_bytes())
    return int8_path


def _end_nodes(path: Path, which: tuple[str, ...]) -> list[str]:
    """Of the graph at ``path`` (in graph order, which is topological): the first Conv (``first``) and the last
    Gemm/MatMul/Conv (``last``)."""
    import onnx

    if not which:
        return []
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    ends = {"first": next((n.name for n in nodes if n.op_type == "Conv"), None),
            "last": next((n.name for n in reversed(nodes) if n.op_type in ("Gemm", "MatMul", "Conv")), None)}
    return [name for name in dict.fromkeys(ends[end] for end in which) if name]


def agreement_warning(name: str, agreement: float, minimum: Optional[float] = None,
                      top1: Optional[float] = None, reference_top1: Optional[float] = None) -> Optional[str]:
    """None when ``agreement`` (share of images where int8 top-1 equals fp32 top-1) reaches ``minimum``
    (default ``MIN_AGREEMENT``); else the warning that says what fell short, whether that cost accuracy (from the
    two models' top-1 on the same images, when given) and what to try. A warning, not an error: the fp32 models of
    the run are exported and checked already, and stay the ones to deploy."""
    minimum = MIN_AGREEMENT if minimum is None else minimum
    if agreement >= minimum:
        return None
    text = (f"{name}: int8 top-1 agrees with fp32 on only {100 * agreement:.2f}% of the validation images "
            f"(needs {100 * minimum:.0f}%)")
    if top1 is not None and reference_top1 is not None:
        loss = reference_top1 - top1
        if loss > MAX_TOP1_LOSS:
            text += f"; int8 top-1 {top1:.2f}% against fp32's {reference_top1:.2f}%: it loses {loss:.2f} points"
        else:
            text += (f"; int8 top-1 {top1:.2f}% against fp32's {reference_top1:.2f}% on the same images: the two "
                     "disagree on images near a decision boundary, in both directions, rather than losing accuracy")
    return text + "; to agree more, raise export.calibration_images, or deploy the fp32 model (export.int8: false skips int8)"


def run_warning(shortfalls: list[tuple[str, float, float, float]], minimum: Optional[float] = None) -> Optional[str]:
    """One warning line for a run's int8 models whose agreement fell short: ``shortfalls`` holds (model,
    agreement, int8 top-1, fp32 top-1 on the same images) of each; None when there are none."""
    if not shortfalls:
        return None
    minimum = MIN_AGREEMENT if minimum is None else minimum
    shares = ", ".join(f"{100 * agreement:.1f}% ({name})" for name, agreement, _, _ in shortfalls)
    losing = [f"{name} {reference - top1:.2f} points" for name, _, top1, reference in shortfalls
              if reference - top1 > MAX_TOP1_LOSS]
    cost = (f"int8 loses top-1: {', '.join(losing)}" if losing else
            f"each int8 model's top-1 is within {MAX_TOP1_LOSS:g} point of fp32's: they differ on images near a "
            "decision boundary, not in accuracy")
    return (f"int8 top-1 agrees with fp32 on {shares} of the validation images, under the {100 * minimum:.0f}% asked; "
            f"{cost}; deploy fp32 where every prediction must match (export.int8: false skips int8)")


@dataclass(frozen=True)
class Top1Comparison:
    agreement: float  # share of images on which the ONNX model picks the reference's class
    reference_top1: float  # top-1 (%) of the reference on those images
    top1: float  # top-1 (%) of the ONNX model on those images
    images: int


def onnx_top1_comparison(reference: torch.nn.Module, onnx_path: str | os.PathLike, loader: Iterable,
                         images: int) -> Top1Comparison:
    """The ONNX model (ORT, CPU) against ``reference`` on the first ``images`` labelled inputs of ``loader``: how
    often they pick the same class, and each one's top-1. Half-precision models get half-precision inputs; every
    other model (fp32, int8 QDQ) float32."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_meta = session.get_inputs()[0]
    dtype = np.float16 if input_meta.type == "tensor(float16)" else np.float32
    agree = reference_correct = correct = seen = 0
    reference = reference.cpu().eval()
    with torch.no_grad():
        for batch, labels, *_ in loader:
            batch, labels = batch[: images - seen].cpu(), labels[: images - seen].cpu().numpy()
            expected = reference(batch).argmax(dim=1).numpy()
            got = session.run(None, {input_meta.name: batch.numpy().astype(dtype)})[0].argmax(axis=1)
            agree += int((expected == got).sum())
            reference_correct += int((expected == labels).sum())
            correct += int((got == labels).sum())
            seen += len(batch)
            if seen >= images:
                break
    seen = max(seen, 1)
    return Top1Comparison(agree / seen, 100 * reference_correct / seen, 100 * correct / seen, seen)


def onnx_top1_agreement(reference: torch.nn.Module, onnx_path: str | os.PathLike, loader: Iterable, images: int) -> float:
    """Share of the first ``images`` inputs on which the ONNX model (ORT, CPU) picks the class ``reference`` picks."""
    return onnx_top1_comparison(reference, onnx_path, loader, images).agreement
