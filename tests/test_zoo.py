"""A model zoo through the CLI: torchvision architectures and user-style models compress at target_macs 0.5 with
tiny inputs and a few steps. For each: the sparse model keeps fewer MACs, the physically pruned model computes
what the masked full model computes, and the three ONNX files match PyTorch (export checks each on real inputs).

Everything here is random-weight and a few steps long: it tests the mechanics on every architecture, not accuracy.
MobileNetV2, GoogLeNet, DenseNet-121 (minutes to export on 2 cores) and VGG (a 100M-parameter classifier at any
input size) are marked slow: `pytest -m slow` runs them."""

import json

import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from supportprune.store.checkpoint import read_checkpoint
from supportprune.cli import app
from supportprune.pipelines.deliver import load_run_models
from supportprune.store.layout import RunLayout
from supportprune.method.convert import convert_relus
from supportprune.inputs.models import build_model
from tests.cli_helpers import write_recipe

runner = CliRunner()

ZOO_RECIPE = {
    "version": 1, "description": "test: zoo", "seed": 0,
    "data": {"source": "embedded", "input_size": 32, "batch_size": 8},
    "dense": {"epochs": 0},
    "sparse": {"epochs": 1, "lr": 0.001, "relative_threshold": 0.2, "prune_at": [1], "target_macs": 0.5, "round_to": 1},
    "redense": {"epochs": 0},
    "export": {"check_batch": 4},
    "bench": {"batch_sizes": [1], "runs": 1, "warmup": 1},
}

MODELS = [
    ("resnet18", []),
    # ReLU6 sites (clamped η*), depthwise groups, linear bottlenecks; functional ReLUs and concatenations: several
    # minutes each on 2 cores (exporting three models), so slow; tests/test_convert.py covers both patterns quickly.
    pytest.param("mobilenet_v2", [], marks=pytest.mark.slow),
    pytest.param("googlenet", [], marks=pytest.mark.slow),
    pytest.param("densenet121", [], marks=pytest.mark.slow),  # dense concatenations; 121 layers to export
    pytest.param("vgg11", [], marks=pytest.mark.slow),
    # user-style models: a factory with arguments, a shape check in forward (no torch.fx), F.relu, a reused ReLU
    ("digit_classifier:DigitNet", ["--model-arg", "input_size=32"]),
    ("user_models:Functional", []),
]


@pytest.mark.parametrize("model, extra", MODELS, ids=lambda value: value if isinstance(value, str) else " ".join(value))
def test_zoo_model_compresses(tmp_path, model, extra, record_property):
    recipe = write_recipe(tmp_path / "zoo.yaml", ZOO_RECIPE)
    out = tmp_path / "out"
    result = runner.invoke(app, ["compress", model, "--recipe", str(recipe), "--out", str(out), "--max-steps", "2", *extra])
    assert result.exit_code == 0, result.output

    exported = json.loads((out / "export.json").read_text())
    macs = {m["kind"]: m["macs"] for m in exported["models"]}
    assert macs["sparse"] <= 0.5 * macs["baseline"] * 1.02  # the target, up to one channel of the search
    assert macs["sparse"] < macs["dense"] == macs["baseline"]
    assert set(exported["exports"]) == {"baseline", "sparse", "dense"}  # each checked on validation images

    # The physically pruned model computes what the masked full model computes.
    spec, models = load_run_models(RunLayout(out))
    masked = convert_relus(build_model(spec, None), spec.example_input())
    masked.load_state_dict(read_checkpoint(out / "models" / "sparse.pt")["model"])
    masked.eval()
    batch = torch.randn(4, spec.in_channels, spec.input_size, spec.input_size)
    with torch.no_grad():
        expected, got = masked(batch), models["sparse"](batch)
    scale = float(expected.abs().max())
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * scale), float((got - expected).abs().max())

    # ONNX parity of the pruned model on this batch too.
    session = ort.InferenceSession(str(out / "sparse.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
    onnx_diff = float(abs(onnx_out - got.numpy()).max())
    assert onnx_diff <= 1e-3 * max(1.0, scale)
    # For the zoo table (`pytest tests/test_zoo.py --junitxml=zoo.xml`).
    record_property("macs_kept", round(macs["sparse"] / macs["baseline"], 4))
    record_property("export_max_abs_diff", max(r["max_abs_diff"] for r in exported["exports"].values()))
    record_property("sparse_vs_masked_max_abs_diff", float((got - expected).abs().max()))
