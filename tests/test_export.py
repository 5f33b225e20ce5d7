"""ONNX export: parity with PyTorch, dynamic batch, atomic writes and one-line errors (CPU only)."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.fx as fx
from torch import nn

import supportprune.deploy.export as export
from supportprune.errors import SupportpruneError
from supportprune.deploy.export import ExportCheck, export_onnx


class ConvBnRelu(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class TinyNet(nn.Module):
    """conv-bn-relu stem, a residual add, a channel concat and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBnRelu(1, 8)
        self.res = ConvBnRelu(8, 8)
        self.branch = ConvBnRelu(8, 4)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12 * 2 * 2, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.res(x) + x
        x = torch.cat([x, self.branch(x)], dim=1)
        return self.fc(torch.flatten(self.pool(x), 1))


class WhereThreshold(nn.Module):
    """The eval forward of a support site: η*(x; β) per channel, pruned channels zeroed."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("beta", torch.rand(channels) * 0.2)
        self.register_buffer("keep", (torch.arange(channels) % 3 != 0).float())

    def forward(self, x):
        return torch.where(x > self.beta.view(1, -1, 1, 1), x, 0) * self.keep.view(1, -1, 1, 1)


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics, so BatchNorm folding errors would show."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def traced_with_thresholds() -> fx.GraphModule:
    """TinyNet traced by torch.fx with every ReLU module replaced by a WhereThreshold."""
    model = randomize_bn(TinyNet())
    graph_module = fx.symbolic_trace(model)
    for name, module in list(graph_module.named_modules()):
        if isinstance(module, nn.ReLU):
            parent, _, child = name.rpartition(".")
            channels = graph_module.get_submodule(parent).bn.num_features
            setattr(graph_module.get_submodule(parent), child, WhereThreshold(channels))
    graph_module.recompile()
    return graph_module.eval()


def with_support_sites() -> nn.Module:
    """TinyNet as the compressor hands it over: every ReLU a SupportSite with β > 0 and pruned channels."""
    from supportprune.method.convert import convert_relus
    from supportprune.method.support import support_sites

    model = convert_relus(randomize_bn(TinyNet()), images(2))
    for _, site in support_sites(model):
        site.beta.uniform_(0.0, 0.2)
        site.keep[::3] = 0
    return model.eval()


MODELS = {"plain": lambda: randomize_bn(TinyNet()), "fx_where": traced_with_thresholds, "support_sites": with_support_sites}


def images(batch: int) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8)


def run_ort(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x.numpy()})[0]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_export_matches_torch_with_dynamic_batch(kind, tmp_path):
    model = MODELS[kind]()
    path = tmp_path / "out" / "model.onnx"

    check = export_onnx(model, path, example_input=images(1), check_input=images(16))

    assert isinstance(check, ExportCheck)
    assert check.path == path and check.batch_size == 16 and check.tolerance == 1e-3
    assert 0 <= check.max_abs_diff < 1e-4
    onnx.checker.check_model(onnx.load(str(path)))
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # single file, no temp left
    for batch in (1, 5):
        x = images(batch)
        with torch.no_grad():
            expected = model(x).numpy()
        got = run_ort(path, x)
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_where_threshold_really_prunes():
    model = traced_with_thresholds()
    site = next(m for m in model.modules() if isinstance(m, WhereThreshold))
    x = torch.randn(4, 8, 3, 3)
    out = site(x)
    assert (out[:, 0] == 0).all() and (out[:, 3] == 0).all()  # keep = 0 channels
    assert ((out == 0) | (x > site.beta.view(1, -1, 1, 1))).all()


def test_export_restores_training_mode_and_device(tmp_path):
    model = randomize_bn(TinyNet()).train()
    model.res.bn.eval()  # a frozen submodule must stay frozen
    export_onnx(model, tmp_path / "m.onnx", example_input=images(2), check_input=images(4))
    assert model.training and model.stem.training and not model.res.bn.training
    assert next(model.parameters()).device.type == "cpu"


def test_mismatch_raises_and_leaves_existing_file_untouched(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")
    real = export._torch_logits
    monkeypatch.setattr(export, "_torch_logits", lambda *args: real(*args) + 0.5)

    with pytest.raises(SupportpruneError, match=r"ONNX export of TinyNet differs from PyTorch by 0\.5"):
        export_onnx(randomize_bn(TinyNet()), path, example_input=images(2), check_input=images(4))

    assert path.read_bytes() == b"previous export"
    assert leftovers(tmp_path) == []


class DataDependent(nn.Module):
    def forward(self, x):
        return x.flatten(1) if x.sum() > 0 else -x.flatten(1)


class TupleOutput(nn.Module):
    def forward(self, x):
        return x.flatten(1), x.mean()


@pytest.mark.parametrize("model, message", [
    (DataDependent(), r"^ONNX export of DataDependent failed: \S"),
    (TupleOutput(), r"^TupleOutput returns tuple, not one logits tensor"),
])
def test_export_failure_is_one_line_supportprune_error(model, message, tmp_path):
    with pytest.raises(SupportpruneError, match=message) as info:
        export_onnx(model, tmp_path / "m.onnx", example_input=images(2), check_input=images(3))
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
