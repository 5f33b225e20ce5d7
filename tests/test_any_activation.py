"""Models without ReLU (SiLU, Hardswish, GELU) compress with the weight criteria, through the CLI: their other
activations become channel gates act(q)·keep, so the physically pruned model equals the masked one and its ONNX
export agrees with it. The support criterion needs ReLU call sites: asked for on such a model it is one line."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from supportprune.cli import app
from supportprune.pipelines.deliver import load_run_models
from supportprune.inputs.models import ModelSpec, build_model
from supportprune.inputs.recipe import CRITERION_WITHOUT_RELU, load_recipe
from supportprune.method.convert import convert_relus
from supportprune.method.support import support_sites
from supportprune.store.checkpoint import read_checkpoint
from supportprune.store.layout import RunLayout
from tests.cli_helpers import one_line_error, write_recipe

runner = CliRunner()

RECIPE = {
    "version": 1, "description": "test: no ReLU", "seed": 0,
    "data": {"source": "embedded", "input_size": 16, "batch_size": 16},
    "dense": {"epochs": 0, "lr": 0.05},
    "sparse": {"epochs": 1, "lr": 0.01, "prune_at": [1], "target_macs": 0.5, "round_to": 1},
    "redense": {"epochs": 1, "lr": 0.005, "distill": None},
    "export": {"check_batch": 4, "int8": False},
    "bench": {"batch_sizes": [1], "runs": 1, "warmup": 1},
}


def _compress(tmp_path, model, *args, **changes):
    recipe = write_recipe(tmp_path / "recipe.yaml", RECIPE, **changes)
    out = tmp_path / "out"
    result = runner.invoke(app, ["compress", model, "--recipe", str(recipe), "--out", str(out), "--max-steps", "2", *args])
    return result, out


def _check_sparse_run(out):
    """Fewer MACs; the physically pruned model computes what the masked full model computes; its ONNX export agrees."""
    layout = RunLayout(out)
    exported = {m["kind"]: m for m in json.loads(layout.export_json.read_text())["models"]}
    assert exported["sparse"]["macs"] < 0.8 * exported["baseline"]["macs"]
    spec, models = load_run_models(layout)
    masked = convert_relus(build_model(spec, None), spec.example_input(), gate_activations=spec.gate_activations)
    masked.load_state_dict(read_checkpoint(layout.model_state("sparse"))["model"])
    masked.eval()
    assert any(bool((site.keep == 0).any()) for _, site in support_sites(masked))
    x = torch.randn(5, spec.in_channels, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = masked(x)
        torch.testing.assert_close(models["sparse"](x), expected, atol=1e-4, rtol=1e-4)
    session = ort.InferenceSession(str(layout.onnx("sparse")), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(onnx_out, expected.numpy(), atol=1e-3, rtol=1e-3)
    return spec


def test_user_silu_cnn_is_pruned_by_the_weight_criterion_for_models_without_relu(tmp_path):
    result, out = _compress(tmp_path, "user_models:SiluNet")
    assert result.exit_code == 0, result.output
    assert f"pruned by {CRITERION_WITHOUT_RELU} (sparse.criterion_without_relu)" in result.output
    assert "found SiLU" in result.output
    spec = _check_sparse_run(out)
    assert spec.gate_activations
    report = (out / "report.md").read_text()
    assert f"pruned by {CRITERION_WITHOUT_RELU}" in report


def test_support_asked_for_on_a_model_without_relu_is_one_line_naming_the_activation(tmp_path):
    result, _ = _compress(tmp_path, "user_models:SiluNet", "--criterion", "support")
    one_line_error(result, "--criterion support needs ReLU or ReLU6", "SiLU", f"--criterion {CRITERION_WITHOUT_RELU}")


def test_criterion_without_relu_must_be_a_weight_criterion(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE, **{"sparse.criterion_without_relu": "support"})
    with pytest.raises(Exception, match="criterion_without_relu"):
        load_recipe(recipe)


@pytest.mark.slow  # minutes: the MACs-target search rebuilds the dependency graph of ~80 layers many times
@pytest.mark.parametrize("model", ["efficientnet_b0", "mobilenet_v3_small"])
def test_torchvision_models_without_or_with_few_relus_compress_by_l1(tmp_path, model):
    result, out = _compress(tmp_path, model, "--criterion", "l1")
    assert result.exit_code == 0, result.output
    _check_sparse_run(out)


@pytest.mark.parametrize("model", ["efficientnet_b0", "mobilenet_v3_small"])
def test_gated_torchvision_models_prune_exactly_and_export_with_parity(model, tmp_path):
    """The same checks as the CLI's (slow) in the default suite: random cuts at every site, gates included."""
    from supportprune.deploy.export import export_onnx
    from supportprune.method import dsd
    from supportprune.method.pruning import apply_keep_masks, count_macs_params, plan_keep_masks
    from supportprune.method.convert import export_ready

    spec = ModelSpec(model, 4, 3, 32)
    example = spec.example_input()
    masked = convert_relus(build_model(spec).eval(), example, gate_activations=True).eval()
    gates = [site.gate_name for _, site in support_sites(masked) if site.gate is not None]
    assert {"SiLU", "Sigmoid"} <= set(gates) if model == "efficientnet_b0" else {"Hardswish", "Hardsigmoid"} <= set(gates)
    generator = torch.Generator().manual_seed(0)
    zero = {name: torch.rand(site.channels, generator=generator) < 0.5 for name, site in support_sites(masked)}
    apply_keep_masks(masked, plan_keep_masks(masked, example, zero))
    sparse = dsd.build_sparse_model(masked, example).eval()
    assert count_macs_params(sparse, example)[0] < 0.9 * count_macs_params(masked, example)[0]
    x = torch.randn(3, 3, 32, 32, generator=generator)
    with torch.no_grad():
        expected = masked(x)
        torch.testing.assert_close(sparse(x), expected, atol=1e-5, rtol=1e-5)
    check = export_onnx(export_ready(sparse), tmp_path / "sparse.onnx", example_input=example, check_input=x, tolerance=1e-3)
    assert check.max_abs_diff < 1e-3


def test_mixed_model_under_the_support_says_which_layers_have_support_sites():
    from supportprune.run.setup import support_site_note

    spec = ModelSpec("mobilenet_v3_small", 10, 1, 32)
    model = convert_relus(build_model(spec), spec.example_input())
    note = support_site_note(model, spec, ["Hardswish", "Hardsigmoid"])
    assert "support sites at its ReLU/ReLU6 calls only (features.0" not in note  # the stem is Hardswish
    first = next(name for name, _ in support_sites(model))
    assert f"({first}, " in note and "Hardswish" in note
