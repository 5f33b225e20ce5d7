"""timm models by name (``timm:NAME``, the optional extra): built with ``timm.create_model`` with random weights
(nothing downloaded), the head and first convolution adapted like torchvision's, --model-arg passed through."""

import sys

import pytest
import torch
from typer.testing import CliRunner

from supportprune.cli import app
from supportprune.errors import SupportpruneError
from supportprune.inputs.models import ModelSpec, build_model, check_forward
from supportprune.method.convert import convert_relus
from supportprune.method.support import support_sites
from tests.cli_helpers import one_line_error, write_recipe

timm = pytest.importorskip("timm")
runner = CliRunner()


@pytest.mark.parametrize("name, gates", [("resnet10t", False), ("mobilenetv3_small_050", True)])
def test_timm_model_is_built_adapted_and_converted(name, gates):
    spec = ModelSpec(f"timm:{name}", 3, 1, 32, {"drop_rate": 0.2})
    model = build_model(spec)
    assert model.drop_rate == 0.2  # --model-arg reached timm.create_model
    check_forward(model, spec)
    assert model.num_classes == 3 and model.get_classifier().out_features == 3
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1
    reference = build_model(spec)
    reference.load_state_dict(model.state_dict())
    converted = convert_relus(model, spec.example_input(), gate_activations=gates).eval()
    assert len(list(support_sites(converted))) > 5
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(converted(x), reference.eval()(x))


def test_timm_weights_file_of_another_class_count_loads_and_the_head_is_replaced_and_said(tmp_path):
    source = timm.create_model("resnet10t", pretrained=False, num_classes=7)
    path = tmp_path / "resnet10t.pt"
    torch.save(source.state_dict(), path)
    changes = []
    model = build_model(ModelSpec("timm:resnet10t", 3, 3, 32), str(path), changes)
    torch.testing.assert_close(model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    assert [p for p, _ in changes] == ["fc"] and "7-class head fc replaced" in changes[0][1]


def test_unknown_timm_model_and_missing_timm_are_one_line(monkeypatch):
    with pytest.raises(SupportpruneError, match="unknown timm model 'resnet10x'"):
        build_model(ModelSpec("timm:resnet10x", 3, 3, 32))
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(SupportpruneError, match=r"pip install 'supportprune\[timm\]'"):
        build_model(ModelSpec("timm:resnet10t", 3, 3, 32))


def test_timm_model_compresses_through_the_cli(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", {
        "version": 1, "description": "test: timm", "seed": 0,
        "data": {"source": "embedded", "input_size": 32, "batch_size": 16},
        "dense": {"epochs": 1, "lr": 0.05},
        "sparse": {"epochs": 1, "lr": 0.01, "prune_at": [1], "target_macs": 0.5, "round_to": 8},
        "redense": {"epochs": 1, "lr": 0.005},
        "export": {"check_batch": 4, "int8": False},
        "bench": {"batch_sizes": [1], "runs": 1, "warmup": 1},
    })
    result = runner.invoke(app, ["compress", "timm:resnet10t", "--recipe", str(recipe), "--out", str(tmp_path / "out"),
                                 "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    missing = runner.invoke(app, ["compress", "timm:not_a_model", "--recipe", str(recipe), "--out", str(tmp_path / "o2")])
    one_line_error(missing, "unknown timm model")
