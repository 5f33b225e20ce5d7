"""INT8 export: static QDQ quantization keeps float I/O and per-channel int8 weights, calibrates on the images it
is given, agrees with fp32, and says so (a warning in the output and export.json) when it does not."""

import copy
import json

import numpy as np
import onnx
import pytest
import torch

from supportprune.deploy import quantize
from supportprune.deploy.benchmark import onnx_macs, onnx_precision
from supportprune.pipelines.deliver import export_models
from supportprune.store.layout import RunLayout
from supportprune.deploy.export import export_onnx
from supportprune.inputs.models import ModelSpec
from supportprune.deploy.quantize import (
    agreement_warning,
    calibration_batches,
    onnx_top1_agreement,
    onnx_top1_comparison,
    quantize_int8,
)
from supportprune.method.convert import export_ready
from supportprune.inputs.recipe import ExportConfig, Recipe
from tests.tiny_models import TinyResNet


class _Messages:
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


def _trained_free_model():
    torch.manual_seed(0)
    model = TinyResNet(in_channels=1, num_classes=10, width=8).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding and ranges matter
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


def _loader(images, batch=16, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(images, 1, 12, 12, generator=generator)
    y = torch.randint(0, 10, (images,), generator=generator)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, images, batch)]


def test_calibration_batches_take_exactly_the_first_images():
    loader = _loader(50, batch=16)
    batches = calibration_batches(loader, 40)
    assert [len(b) for b in batches] == [16, 16, 8]  # 40 = 16 + 16 + 8: the third batch is cut
    assert all(b.dtype == np.float32 for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), torch.cat([x for x, _ in loader])[:40].numpy())


def test_quantize_int8_writes_a_qdq_model_with_float_io_per_channel_weights_and_fp32_agreement(tmp_path):
    model = _trained_free_model()
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    loader = _loader(128)
    export_onnx(model, fp32, example_input=torch.randn(1, 1, 12, 12), check_input=loader[0][0])
    quantize_int8(fp32, int8, calibration_batches(loader, 64))

    graph = onnx.load(str(int8)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # drop-in for the fp32 file
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ops = [node.op_type for node in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    initializers = {init.name: init for init in graph.initializer}
    conv_weights = [initializers[n.input[0]] for n in graph.node
                    if n.op_type == "DequantizeLinear" and n.input[0] in initializers and len(initializers[n.input[0]].dims) == 4]
    assert len(conv_weights) == 5  # stem + two convolutions in each of the two blocks
    assert all(w.data_type == onnx.TensorProto.INT8 for w in conv_weights)
    # Per channel: one scale per output channel of each convolution (width 8).
    scales = [initializers[n.input[1]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in
              {w.name for w in conv_weights}]
    assert all(list(s.dims) == [8] for s in scales)
    # The benchmark sees an int8 model with the fp32 model's MACs (weights reached through DequantizeLinear).
    assert onnx_precision(int8) == "int8" and onnx_precision(fp32) == "fp32"
    assert onnx_macs(int8) == onnx_macs(fp32) > 0
    assert onnx_top1_agreement(model, int8, loader, 128) >= 0.95


def test_agreement_warning_says_what_fell_short_and_what_to_do():
    assert agreement_warning("sparse.int8.onnx", 0.995) is None
    assert agreement_warning("sparse.int8.onnx", 0.99) is None  # the bound itself passes
    text = agreement_warning("sparse.int8.onnx", 0.9812)
    assert text.startswith("sparse.int8.onnx: int8 top-1 agrees with fp32 on only 98.12%")
    assert "needs 99%" in text and "export.calibration_images" in text and "export.int8: false" in text


def test_agreement_warning_tells_lost_accuracy_from_borderline_disagreement():
    lost = agreement_warning("sparse.int8.onnx", 0.95, top1=78.0, reference_top1=81.7)
    assert "loses 3.70 points" in lost
    borderline = agreement_warning("sparse.int8.onnx", 0.972, top1=82.4, reference_top1=81.7)
    assert "decision boundary" in borderline and "loses" not in borderline


def test_top1_comparison_counts_by_hand(tmp_path):
    """A linear model exported to ONNX against a reference that differs on known images."""
    from supportprune.deploy.quantize import onnx_top1_comparison

    onnx_model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        onnx_model.weight.copy_(torch.eye(2))  # picks the larger coordinate
    reference = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))  # picks class 1 only when x0 < 0
    path = tmp_path / "m.onnx"
    torch.onnx.export(onnx_model, (torch.zeros(1, 2),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}})
    images = torch.tensor([[2.0, 1.0], [1.0, 2.0], [-1.0, 0.5], [3.0, 4.0]])
    labels = torch.tensor([0, 1, 1, 0])
    # onnx picks 0, 1, 1, 1 (right on 3 of 4); reference picks 0, 0, 1, 0 (right on 3 of 4); they agree on 2.
    compared = onnx_top1_comparison(reference, path, [(images, labels)], 4)
    assert (compared.agreement, compared.top1, compared.reference_top1, compared.images) == (0.5, 75.0, 75.0, 4)


@pytest.mark.parametrize("minimum, warned", [(1.01, True), (0.0, False)])
def test_export_models_records_int8_agreement_and_warns_below_the_bound(tmp_path, monkeypatch, minimum, warned):
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", minimum)  # 1.01: no agreement can reach it
    recipe = Recipe(export=ExportConfig(check_batch=8, int8=True, calibration_images=32, agreement_images=48))
    layout = RunLayout(tmp_path)
    reporter = _Messages()
    spec = ModelSpec("tiny", 10, 1, 12)
    model = _trained_free_model()
    export_models(spec, {"baseline": model, "dense": copy.deepcopy(model)}, recipe, layout, _loader(48), "cpu",
                  reporter, calibration_loader=_loader(64, seed=2))
    record = json.loads(layout.export_json.read_text())["exports"]["baseline.int8"]
    assert (tmp_path / "baseline.int8.onnx").is_file() and record["calibration_images"] == 32
    # What is recorded is the comparison on the first agreement_images validation images, made again here.
    again = onnx_top1_comparison(export_ready(model), tmp_path / "baseline.int8.onnx", _loader(48), 48)
    assert (record["top1_agreement_with_fp32"], record["top1"]) == (again.agreement, again.top1)
    warnings = [line for line in reporter.lines if line.startswith("warning: ")]
    if warned:  # one line for the run, naming each model that fell short
        assert record["warning"] and len(warnings) == 1
        assert f"{100 * record['top1_agreement_with_fp32']:.1f}% (baseline)" in warnings[0] and "(dense)" in warnings[0]
        assert f"{100 * record['top1_agreement_with_fp32']:.2f}%" in record["warning"]
    else:
        assert record["warning"] is None and not warnings


def test_recipe_rejects_no_calibration_images():
    from supportprune.inputs.typed_yaml import RecipeError
    from supportprune.inputs.recipe import recipe_from_dict

    with pytest.raises(RecipeError, match="export.calibration_images: must be >= 1"):
        recipe_from_dict({"version": 1, "export": {"int8": True, "calibration_images": 0}})
