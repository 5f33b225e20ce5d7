"""Support pruning on torch-pruning's dependency graph: what is removed, what the pruned model computes."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from supportprune.method import dsd
from supportprune.method.pruning import (
    apply_keep_masks,
    count_macs_params,
    dependency_graph,
    plan_keep_masks,
    prune_to_keep_masks,
    rounded_keep_count,
    search_relative_threshold,
    site_groups,
    zero_pruned_connections,
)
from supportprune.inputs.recipe import SparseConfig
from supportprune.method.convert import convert_relus
from supportprune.method.support import support_sites
from tiny_models import BiasFreeChain, TinyConcatNet, TinyResNet


def _converted(model, size=8, channels=1):
    example = torch.randn(2, channels, size, size)
    return convert_relus(model.eval(), example).eval(), example


def _zero(model, chosen: dict[str, list[int]]):
    return {
        name: torch.tensor([i in chosen.get(name, []) for i in range(site.channels)])
        for name, site in support_sites(model)
    }


def test_chain_removes_exactly_the_zero_support_channels_and_counts_macs_by_hand():
    model, example = _converted(BiasFreeChain())
    zero = _zero(model, {"relu1": [0, 3], "relu2": [4]})
    keep = plan_keep_masks(model, example, zero)
    assert keep["relu1"].tolist() == [0, 1, 1, 0, 1, 1]
    assert keep["relu2"].tolist() == [1, 1, 1, 1, 0]
    apply_keep_masks(model, keep)
    pruned = prune_to_keep_masks(model, example)
    assert (pruned.conv1.out_channels, pruned.conv2.in_channels, pruned.conv2.out_channels) == (4, 4, 4)
    assert pruned.fc.in_features == 4 * 64
    # MACs by hand on 8×8: conv1 1→4 (3×3), conv2 4→4 (3×3), fc 256→3.
    macs, params = count_macs_params(pruned, example)
    assert macs == 64 * 4 * 9 + 64 * 4 * 4 * 9 + 256 * 3
    assert params == 4 * 9 + 4 * 4 * 9 + 256 * 3
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(pruned(x), model(x), atol=1e-6)


def test_residual_channel_is_pruned_only_when_zero_at_every_coupled_site():
    model, example = _converted(TinyResNet())
    # The residual stream couples the stem and both blocks' output sites (relu, block1.relu_1, block2.relu_1).
    zero = _zero(model, {
        "relu": [0, 1], "block1.relu_1": [0, 1], "block2.relu_1": [0],  # only channel 0 is zero everywhere
        "block1.relu": [2, 5], "block2.relu": [7],                     # inner channels: not coupled
    })
    keep = plan_keep_masks(model, example, zero)
    for name in ("relu", "block1.relu_1", "block2.relu_1"):
        assert keep[name].tolist() == [0, 1, 1, 1, 1, 1, 1, 1]
    assert keep["block1.relu"].tolist() == [1, 1, 0, 1, 1, 0, 1, 1]
    assert keep["block2.relu"].tolist() == [1, 1, 1, 1, 1, 1, 1, 0]
    apply_keep_masks(model, keep)
    pruned = prune_to_keep_masks(model, example)
    assert pruned.stem.out_channels == 7 and pruned.fc.in_features == 7
    assert pruned.block1.conv1.out_channels == 6 and pruned.block2.conv1.out_channels == 7
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(pruned(x), model(x), atol=1e-5)


def test_concat_offsets_are_tracked():
    model, example = _converted(TinyConcatNet(), size=16)
    zero = _zero(model, {"branch1.relu": [1], "branch2.1.relu": [0, 5], "branch2.0.relu": [3], "head_conv.relu": [2]})
    apply_keep_masks(model, plan_keep_masks(model, example, zero))
    pruned = prune_to_keep_masks(model, example)
    assert pruned.head_conv.conv.in_channels == 12 - 3
    assert pruned.fc.in_features == 7 * 16
    x = torch.randn(3, 1, 16, 16)
    assert torch.allclose(pruned(x), model(x), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "googlenet"])
def test_sparse_torchvision_model_equals_masked_full_model(name):
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = torchvision.models.get_model(name, num_classes=10, **kwargs)
    model, example = _converted(model, size=32, channels=3)
    generator = torch.Generator().manual_seed(1)
    zero = {n: torch.rand(s.channels, generator=generator) < 0.5 for n, s in support_sites(model)}
    apply_keep_masks(model, plan_keep_masks(model, example, zero))
    pruned = prune_to_keep_masks(model, example)
    assert count_macs_params(pruned, example)[0] < 0.7 * count_macs_params(model, example)[0]
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(pruned(x), model(x), atol=1e-4)


def test_round_to_gives_multiples_and_never_prunes_below_one_multiple():
    assert rounded_keep_count(alive=5, channels=64, round_to=8) == 8
    assert rounded_keep_count(alive=0, channels=64, round_to=8) == 8
    assert rounded_keep_count(alive=17, channels=64, round_to=8) == 24
    assert rounded_keep_count(alive=0, channels=64, round_to=1) == 1
    assert rounded_keep_count(alive=60, channels=62, round_to=8) == 62  # never above the layer's width
    model = torchvision.models.resnet18(num_classes=10)
    model, example = _converted(model, size=32, channels=3)
    generator = torch.Generator().manual_seed(2)
    zero = {n: torch.rand(s.channels, generator=generator) < 0.9 for n, s in support_sites(model)}
    keep = plan_keep_masks(model, example, zero, round_to=8)
    for name, mask in keep.items():
        assert int(mask.sum()) % 8 == 0 and int(mask.sum()) >= 8, name
    apply_keep_masks(model, keep)
    pruned = prune_to_keep_masks(model, example)
    for module in pruned.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels > 3:
            assert module.out_channels % 8 == 0 and module.in_channels % 8 == 0


def test_channels_into_a_concat_round_to_their_own_multiple():
    model = torchvision.models.googlenet(num_classes=10, aux_logits=False, init_weights=True)
    model, example = _converted(model, size=32, channels=3)
    generator = torch.Generator().manual_seed(3)
    zero = {n: torch.rand(s.channels, generator=generator) < 0.8 for n, s in support_sites(model)}
    keep = plan_keep_masks(model, example, zero, round_to=8, concat_round_to=16)
    graph = dependency_graph(model, example)
    groups = list(site_groups(graph))
    assert sum(g.feeds_concat for g in groups) == 4 * 9  # four branches of nine inception blocks
    for group in groups:
        kept = int(group.alive({name: mask > 0 for name, mask in keep.items()}).sum())
        multiple = 16 if group.feeds_concat else 8
        assert kept % multiple == 0 or kept == group.channels, (group.members[0].name, kept)
    apply_keep_masks(model, keep)
    pruned = prune_to_keep_masks(model, example)
    blocks = ["inception3a", "inception3b", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e",
              "inception5a", "inception5b"]
    for block in blocks:
        branch_outputs = ["branch1.conv", "branch2.1.conv", "branch3.1.conv", "branch4.1.conv"]
        assert [pruned.get_submodule(f"{block}.{conv}").out_channels % 16 for conv in branch_outputs] == [0, 0, 0, 0]
    assert any(conv.out_channels % 16 for conv in pruned.modules() if isinstance(conv, nn.Conv2d))  # others: 8s
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(pruned(x), model(x), atol=1e-4)


def test_concat_rounding_is_a_multiple_of_both_and_ignores_concats_along_other_dimensions():
    from supportprune.method.pruning import SiteGroup

    assert SiteGroup(None, None, 64, (), feeds_concat=True).rounding(8, 12) == 24
    assert SiteGroup(None, None, 64, (), feeds_concat=True).rounding(32, 16) == 32
    assert SiteGroup(None, None, 64, (), feeds_concat=False).rounding(8, 16) == 8

    class SpatialConcat(nn.Module):  # torch.cat along the height: no channel is concatenated
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 12, 3, padding=1), nn.Conv2d(1, 12, 3, padding=1)
            self.relu_a, self.relu_b = nn.ReLU(), nn.ReLU()
            self.head = nn.Conv2d(12, 4, 1)

        def forward(self, x):
            return self.head(torch.cat([self.relu_a(self.a(x)), self.relu_b(self.b(x))], dim=2))

    model, example = _converted(SpatialConcat())
    assert not any(group.feeds_concat for group in site_groups(dependency_graph(model, example)))
    model, example = _converted(TinyConcatNet(), size=16)
    assert any(group.feeds_concat for group in site_groups(dependency_graph(model, example)))


def test_alternation_point_rounds_concat_inputs_by_the_recipe():
    model = torchvision.models.googlenet(num_classes=10, aux_logits=False, init_weights=True)
    model, example = _converted(model, size=32, channels=3)
    macs, _ = count_macs_params(model, example)
    config = SparseConfig(epochs=1, target_macs=0.5, criterion="l1", round_to=8, concat_round_to=16)
    dsd.alternation_point(model, example, config, macs)
    pruned = prune_to_keep_masks(model, example)
    widths = [pruned.get_submodule(f"inception4{b}.branch2.1.conv").out_channels for b in "abcde"]
    assert all(width % 16 == 0 for width in widths), widths


def test_round_to_revives_the_strongest_channels():
    model, example = _converted(BiasFreeChain())
    zero = _zero(model, {"relu1": [0, 1, 2, 3, 4]})
    scores = {"relu1": torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2, 5.0]), "relu2": torch.ones(5)}
    keep = plan_keep_masks(model, example, zero, round_to=3, scores=scores)
    assert keep["relu1"].tolist() == [0, 1, 0, 1, 0, 1]


def test_redense_restores_shapes_with_pruned_weights_at_zero():
    model, example = _converted(TinyResNet())
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    zero = _zero(model, {"block1.relu": [2, 5]})
    apply_keep_masks(model, plan_keep_masks(model, example, zero))
    before = model(torch.ones(1, 1, 8, 8))
    revived = zero_pruned_connections(model, example)
    assert revived == 2
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert torch.equal(model.block1.conv1.weight[[2, 5]], torch.zeros(2, 8, 3, 3))
    assert torch.equal(model.block1.bn1.weight[[2, 5]], torch.zeros(2))
    assert torch.equal(model.block1.bn1.bias[[2, 5]], torch.zeros(2))
    assert torch.equal(model.block1.conv2.weight[:, [2, 5]], torch.zeros(8, 2, 3, 3))
    assert model.block1.conv1.weight[[0, 1, 3, 4, 6, 7]].abs().sum() > 0
    assert all(bool((site.keep == 1).all()) for _, site in support_sites(model))
    # Zero-initialised channels contribute nothing: the re-dense model starts as the sparse one.
    assert torch.allclose(model(torch.ones(1, 1, 8, 8)), before, atol=1e-6)


def test_alternation_point_prunes_channels_whose_batch_support_stayed_zero():
    model, example = _converted(BiasFreeChain())
    model.train()
    config = SparseConfig(epochs=1, relative_threshold=0.0, granularity="channel")
    dsd.begin_sparse(model, config)
    with torch.no_grad():
        model.conv1.weight[2] = 0.0  # channel 2 of relu1 never fires: zero support in every batch
    for _ in range(3):
        model(torch.randn(8, 1, 8, 8))
    baseline_macs = count_macs_params(model, example)[0]
    result = dsd.alternation_point(model, example, config, baseline_macs)
    keep = dict((name, site.keep.tolist()) for name, site in support_sites(model))
    assert keep["relu1"] == [1, 1, 0, 1, 1, 1]
    assert result.channels_kept == 10 and result.channels_total == 11 and result.observed_batches == 3
    assert result.macs < baseline_macs
    assert all(int(site.stat_batches) == 0 for _, site in support_sites(model))  # statistics restart


def _macs_at_threshold(model, example, max_relative, threshold):
    """MACs after pruning every channel whose max relative energy is ≤ threshold (and what couples to it)."""
    zero = {name: values <= threshold for name, values in max_relative.items()}
    trial = copy.deepcopy(model)
    apply_keep_masks(trial, plan_keep_masks(trial, example, zero, scores=max_relative))
    return count_macs_params(prune_to_keep_masks(trial, example), example)[0]


def test_threshold_search_meets_the_macs_target():
    model = torchvision.models.resnet18(num_classes=10)
    model, example = _converted(model, size=32, channels=3)
    model.train()
    config = SparseConfig(epochs=1, target_macs=0.5, granularity="channel")
    dsd.begin_sparse(model, config)
    for _ in range(2):
        model(torch.randn(8, 3, 32, 32))
    baseline = count_macs_params(model, example)[0]
    max_relative = {n: s.stat_max_relative_energy.clone() for n, s in support_sites(model)}
    threshold, keep, macs = search_relative_threshold(model, example, max_relative, int(0.5 * baseline))
    assert macs <= 0.5 * baseline
    assert _macs_at_threshold(model, example, max_relative, threshold) == macs
    # The smallest threshold that meets the target, not an over-cut: the next recorded value below it
    # (or 0, pruning only channels that never fired) leaves more MACs than the target.
    below = torch.cat([v.flatten() for v in max_relative.values()])
    below = below[below < threshold]
    assert threshold > 0
    lower = float(below.max()) if below.numel() else 0.0
    assert _macs_at_threshold(model, example, max_relative, lower) > int(0.5 * baseline)
    for name, mask in keep.items():
        # Channels kept have max relative energy above the threshold or were coupled to one that has.
        assert bool((max_relative[name][mask == 0] <= threshold).all())


@pytest.mark.parametrize("round_to", [1, 4])
def test_the_budget_left_by_the_search_is_filled_best_score_first(round_to):
    from supportprune.method.pruning import fill_macs_budget, plan_keep_masks

    from digit_classifier import DigitNet

    torch.manual_seed(0)
    model, example = _converted(DigitNet(input_size=32), size=32)
    baseline = count_macs_params(model, example)[0]
    target = int(0.5 * baseline)
    scores = {name: torch.rand(site.channels) for name, site in support_sites(model)}
    _, searched, searched_macs = search_relative_threshold(model, example, scores, target, round_to=round_to)
    keep, macs = fill_macs_budget(model, example, scores, searched, searched_macs, target, round_to=round_to)
    assert searched_macs <= macs <= target
    if round_to == 1:  # here the search stops at 48.6% of the MACs; the fill brings it to 49.9% (round_to 4: 38.8% to 41.1%)
        assert macs > searched_macs
    assert macs == _pruned_macs(model, example, keep)
    assert all(bool((keep[n] >= searched[n]).all()) for n in keep)  # only gives channels back
    # Maximal: no single channel still pruned fits in what is left of the budget.
    for name, mask in keep.items():
        for index in (mask == 0).nonzero().flatten().tolist():
            zero = {n: m == 0 for n, m in keep.items()}
            zero[name][index] = False
            grown = plan_keep_masks(model, example, zero, round_to=round_to, scores=scores)
            assert _pruned_macs(model, example, grown) > target


def _pruned_macs(model, example, keep):
    trial = copy.deepcopy(model)
    apply_keep_masks(trial, keep)
    return count_macs_params(prune_to_keep_masks(trial, example), example)[0]
