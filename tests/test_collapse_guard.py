"""The collapse guard (issue #20): whatever a criterion scores, every plan keeps at least
``SiteGroup.floor`` channels of each coupled group: no more than ``max_pruning_ratio`` of them cut, never
all, and never a fully-connected layer narrower than its output or the classes. Checked for every
registered channel criterion at a target no guard-respecting plan can reach (every group at its floor)."""

import math

import pytest
import torch
from torch import nn

from supportprune.inputs.recipe import SparseConfig
from supportprune.method import dsd
from supportprune.method.allocation import layer_shapes
from supportprune.method.criteria import REGISTRY, make_criterion
from supportprune.method.pruning import count_macs_params, dependency_graph, site_groups
from supportprune.method.convert import convert_relus
from supportprune.method.support import support_sites
from tests.tiny_models import TinyResNet

EXAMPLE = torch.zeros(2, 1, 8, 8)
CHANNEL = sorted(name for name in REGISTRY if name != "magnitude")  # magnitude prunes weights, not channels


class WideFC(nn.Module):
    """Issue #20's held-out shape in miniature: two convolutions with pooling, then a fully-connected layer
    wider than the classes (32 → 16 → 10; the 8 channels of conv2 give 4 inputs each to fc1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.fc2 = nn.Linear(32, 16), nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(torch.flatten(x, 1))))


def _model(net, seed=0):
    torch.manual_seed(seed)
    model = convert_relus(net(), EXAMPLE)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # fresh scales are all 1: bn_scale would tie every channel
            module.weight.data.uniform_(0.2, 1.5)
    return model


def _batch(seed, n=8):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def _decide(model, config, **kwargs):
    """One alternation point as a run makes it: the support observes batches in B-alternation, the
    gradient criteria observe theirs."""
    criterion = make_criterion(config)
    dsd.begin_sparse(model, config)
    model.train()
    for b in range(3):
        images, labels = _batch(b)
        model(images)
    for b in range(criterion.observe_batches):
        criterion.observe(model, *_batch(b))
    baseline, _ = count_macs_params(model, EXAMPLE)
    return dsd.alternation_point(model, EXAMPLE, config, baseline, criterion=criterion, **kwargs)


def _kept_per_group(model):
    keep = {name: site.keep > 0 for name, site in support_sites(model)}
    return [(group, int(group.alive(keep).sum())) for group in site_groups(dependency_graph(model, EXAMPLE))]


def _by_root(model):
    names = {module: name for name, module in model.named_modules()}
    return {names[group.root]: count for group, count in _kept_per_group(model)}


@pytest.mark.parametrize("criterion", CHANNEL)
def test_no_criterion_cuts_past_the_guard(criterion):
    """At 1% of the MACs the cut goes as deep as the guard lets it: a quarter of each group's channels
    (max_pruning_ratio 0.75), conv2 at least 4 (fc1 reads 4 inputs per channel and has 16 outputs), fc1 at
    least 10 (the classes; fc2 has 10 outputs). Without the guard every group a criterion measures fell
    to one channel. (A criterion that cannot measure a group, bn_scale on fc1, keeps it whole.)"""
    model = _model(WideFC)
    config = SparseConfig(criterion=criterion, target_macs=0.01, epochs=1, observe_batches=2, round_to=1,
                          relative_threshold=0.5, max_pruning_ratio=0.75)
    _decide(model, config)
    floors = {"conv1": 2, "conv2": 4, "fc1": 10}
    kept = _by_root(model)
    assert set(kept) == set(floors)
    assert all(kept[name] >= floors[name] for name in floors), kept
    assert kept["conv1"] == floors["conv1"]  # every criterion measures conv1: the cut reached its floor


@pytest.mark.parametrize("criterion", CHANNEL)
def test_the_ratio_caps_every_group_of_a_residual_net(criterion):
    """TinyResNet (width 8, a residual stream coupled across blocks): at most half cut with ratio 0.5, and
    the blocks' inner groups, which every criterion measures, cut to exactly half."""
    model = _model(TinyResNet)
    config = SparseConfig(criterion=criterion, target_macs=0.01, epochs=1, observe_batches=2, round_to=1,
                          relative_threshold=0.5, max_pruning_ratio=0.5)
    _decide(model, config)
    groups = _kept_per_group(model)
    assert len(groups) == 3 and all(count >= math.ceil(0.5 * group.channels) for group, count in groups)
    assert sum(count == math.ceil(0.5 * group.channels) for group, count in groups) >= 2


def test_fully_connected_floor_holds_without_a_ratio():
    """max_pruning_ratio 1 turns the cap off, not the rest of the guard: no layer empties, the hidden
    fully-connected layer keeps the classes."""
    model = _model(WideFC)
    config = SparseConfig(criterion="l1", target_macs=0.01, epochs=1, round_to=1, max_pruning_ratio=1.0)
    _decide(model, config)
    assert _by_root(model) == {"conv1": 1, "conv2": 4, "fc1": 10}


def test_latency_allocation_stops_at_the_floor():
    """The latency allocation's greedy cut has the same floors (a table that predicts time as MACs)."""
    model = _model(WideFC)
    shapes = layer_shapes(model, EXAMPLE)
    latency = lambda name, i, o: shapes[name].macs(i, o) * 1e-9  # noqa: E731
    config = SparseConfig(criterion="lamp", target_macs=0.01, epochs=1, round_to=1, allocation="latency",
                          max_pruning_ratio=0.75)
    _decide(model, config, layer_latency=latency)
    assert _by_root(model) == {"conv1": 2, "conv2": 4, "fc1": 10}


def test_floor_rounds_up_to_the_groups_multiple():
    model = _model(WideFC)
    names = {module: name for name, module in model.named_modules()}
    floors = {names[g.root]: g.floor(4, None, 0.75) for g in site_groups(dependency_graph(model, EXAMPLE))}
    assert floors == {"conv1": 4, "conv2": 4, "fc1": 12}  # 2 → 4, 4, 10 → 12
