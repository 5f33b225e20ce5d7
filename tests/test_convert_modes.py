"""Converted models keep the original's training and eval behaviour: dropout, ``if self.training:`` branches,
batch-norm statistics and training-only auxiliary heads, on the torch.fx path and on the recorded path. Every
check runs the unconverted model beside the converted one, in both modes."""

import copy

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from supportprune.method import convert
from supportprune.method.convert import convert_relus
from supportprune.method.support import support_sites


class FunctionalDropout(nn.Module):
    """Dropout as a function of ``self.training`` and torchvision's stochastic depth (fx traces into both)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.drop_path = StochasticDepth(0.5, "row")
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        x = x + self.drop_path(F.relu(self.conv2(x)))
        return self.fc(F.dropout(x.mean(dim=(2, 3)), 0.5, self.training))


class TrainingBranch(nn.Module):
    """``if self.training:`` around layers: noise in training only, before a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = self.bn(self.conv(x))
        if self.training:
            x = x + 0.1 * torch.randn_like(x)
        return self.fc(torch.relu(x).mean(dim=(2, 3)))


class AuxiliaryHead(nn.Module):
    """An auxiliary head that runs only in training, with ReLU calls of its own (a module reused by the trunk and
    the head, and a functional one), between the trunk's calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.aux_conv = nn.Conv2d(6, 4, 1)
        self.aux_fc = nn.Linear(4, 3)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.act(self.conv1(x))
        aux = None
        if self.training:
            aux = self.aux_fc(F.relu(self.act(self.aux_conv(x)) - 0.1).mean(dim=(2, 3)))
        out = self.fc(self.act(self.conv2(x)).mean(dim=(2, 3)))
        return out if aux is None else out + 0.3 * aux


MODELS = [FunctionalDropout, TrainingBranch, AuxiliaryHead]


def _untraceable(*args, **kwargs):
    raise RuntimeError("no fx")


def _convert(model, example, path, monkeypatch):
    if path == "recorded":
        monkeypatch.setattr(convert, "_trace_in_both_modes", _untraceable)
    return convert_relus(model, example)


def _outputs(model, x, seed):
    torch.manual_seed(seed)
    return model(x)


@pytest.mark.parametrize("path", ["fx", "recorded"])
@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_converted_model_behaves_like_the_original_in_both_modes(cls, path, monkeypatch):
    torch.manual_seed(0)
    original = cls()  # a fresh model is in training mode, as the run converts it
    converted = _convert(copy.deepcopy(original), torch.randn(2, 1, 8, 8), path, monkeypatch)
    if path == "recorded":
        assert not isinstance(converted, fx.GraphModule)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for training in (True, False, True):
        original.train(training)
        converted.train(training)
        expected, got = _outputs(original, x, seed=3), _outputs(converted, x, seed=3)
        torch.testing.assert_close(got, expected, msg=f"training={training}")
        again, got_again = _outputs(original, x, seed=4), _outputs(converted, x, seed=4)
        torch.testing.assert_close(got_again, again)
        # in training the randomness is real (another seed, another output); in eval there is none
        assert torch.allclose(again, expected) != training or cls is AuxiliaryHead  # (no randomness there)
    # Batch norm: the statistics moved in training, the same in both
    reference = dict(original.named_buffers())
    for name, buffer in converted.named_buffers():
        if name in reference:
            torch.testing.assert_close(buffer, reference[name], msg=name)
    moved = [name for name, buffer in reference.items() if name.endswith("running_mean") and bool((buffer != 0).any())]
    assert moved or cls is AuxiliaryHead


def test_training_only_relu_calls_get_sites_of_their_own_and_train():
    torch.manual_seed(0)
    converted = convert_relus(AuxiliaryHead(), torch.randn(2, 1, 8, 8))
    names = [name for name, _ in support_sites(converted)]
    # act: the trunk's two calls and the head's one; the head's functional F.relu
    assert sorted(names) == ["act.0", "act.1", "act.2", "relu"]
    converted.train()
    loss = converted(torch.randn(4, 1, 8, 8)).square().sum()
    loss.backward()
    assert converted.aux_conv.weight.grad is not None and bool(converted.aux_conv.weight.grad.abs().sum() > 0)
    converted.eval()
    converted(torch.randn(4, 1, 8, 8))  # eval mode makes the trunk's calls only, and the routing agrees


def test_fx_path_keeps_a_mode_independent_graph():
    """A model whose mode only reaches dropout and stochastic depth stays on the fx path, with the mode read
    at run time."""
    converted = convert_relus(FunctionalDropout(), torch.randn(2, 1, 8, 8))
    assert isinstance(converted, fx.GraphModule)
    assert "= self.training" in converted.code and "= self.drop_path.training" in converted.code  # not a constant
