"""The Sparse step's baselines: channel L1/L2/random scores, their MACs-matched pruning, DSD's magnitude masks."""

import copy
import math

import pytest
import torch
from torch import nn

from supportprune import dsd
from supportprune.criteria import (
    channel_scores,
    magnitude_masks,
    nonzero_parameters,
    prunable_weights,
    sparsity_matching_parameters,
)
from supportprune.pruning import apply_keep_masks, count_macs_params, plan_keep_masks, prune_to_keep_masks, search_relative_threshold
from supportprune.recipe import SparseConfig
from supportprune.support import convert_relus, support_sites
from tests.tiny_models import TinyConcatNet, TinyResNet


def test_l1_and_l2_scores_are_group_norms_by_hand():
    torch.manual_seed(0)
    model = convert_relus(nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False)), torch.zeros(2, 4))
    W1, W2 = model.get_submodule("0").weight.detach(), model.get_submodule("2").weight.detach()
    for criterion, p in (("l1", 1), ("l2", 2)):
        (scores,) = channel_scores(model, torch.zeros(2, 4), criterion).values()
        # torch-pruning's group importance: the mean over the coupled layers of Σ|w|^p of the channel's
        # weights (its row of W1, its column of W2), divided by the mean over the group's channels.
        raw = ((W1.abs() ** p).sum(dim=1) + (W2.abs() ** p).sum(dim=0)) / 2
        torch.testing.assert_close(scores, raw / raw.mean())


def test_random_scores_are_seeded():
    model = convert_relus(TinyResNet(), torch.zeros(2, 1, 8, 8))
    a = channel_scores(model, torch.zeros(2, 1, 8, 8), "random", seed=4)
    b = channel_scores(model, torch.zeros(2, 1, 8, 8), "random", seed=4)
    c = channel_scores(model, torch.zeros(2, 1, 8, 8), "random", seed=5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _macs_when_pruned_at(model, example, scores, threshold):
    zero = {name: values <= threshold for name, values in scores.items()}
    trial = copy.deepcopy(model)
    apply_keep_masks(trial, plan_keep_masks(trial, example, zero, scores=scores))
    return count_macs_params(prune_to_keep_masks(trial, example), example)[0]


@pytest.mark.parametrize("criterion", ["l1", "l2", "random"])
@pytest.mark.parametrize("net", [TinyResNet, TinyConcatNet])
def test_channel_baselines_keep_the_requested_macs(criterion, net):
    """At most the target, and minimal: pruning one score level less would exceed it."""
    torch.manual_seed(0)
    example = torch.zeros(2, 1, 12, 12)
    model = convert_relus(net(), example)
    baseline, _ = count_macs_params(model, example)
    config = SparseConfig(criterion=criterion, target_macs=0.6, round_to=1, epochs=1)
    scores = channel_scores(model, example, criterion, seed=0)
    threshold, _, _ = search_relative_threshold(model, example, scores, int(0.6 * baseline))
    result = dsd.alternation_point(model, example, config, baseline, seed=0)
    assert result.criterion == criterion
    assert result.macs <= 0.6 * baseline
    assert result.macs == count_macs_params(prune_to_keep_masks(model, example), example)[0]
    below = [float(v) for values in scores.values() for v in values if float(v) < threshold]
    previous = max(below, default=-1.0)
    fresh = convert_relus(net(), example)
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("keep")}, strict=False)
    assert _macs_when_pruned_at(fresh, example, scores, previous) > 0.6 * baseline


def test_magnitude_masks_prune_the_smallest_weights_of_every_layer():
    torch.manual_seed(0)
    model = convert_relus(TinyResNet(), torch.zeros(2, 1, 8, 8))
    masks = magnitude_masks(model, 0.3)
    weights = prunable_weights(model)
    assert set(masks) == set(weights)
    for name, weight in weights.items():
        pruned = ~masks[name]
        assert int(pruned.sum()) == math.floor(0.3 * weight.numel())
        assert weight.abs()[pruned].max() <= weight.abs()[masks[name]].min()


def test_magnitude_point_zeroes_weights_and_counts_nonzero_parameters():
    torch.manual_seed(0)
    example = torch.zeros(2, 1, 8, 8)
    model = convert_relus(TinyResNet(), example)
    before = nonzero_parameters(model)
    result, masks = dsd.magnitude_point(model, example, SparseConfig(criterion="magnitude", magnitude_sparsity=0.5, epochs=1))
    removed = sum(int((~m).sum()) for m in masks.values())
    assert result.params == before - removed == nonzero_parameters(model)
    assert result.macs == count_macs_params(model, example)[0]  # unstructured: MACs do not drop


def test_matching_sparsity_removes_the_requested_parameters():
    model = convert_relus(TinyResNet(), torch.zeros(2, 1, 8, 8))
    total = sum(w.numel() for w in prunable_weights(model).values())
    sparsity = sparsity_matching_parameters(model, total // 4)
    assert sparsity == pytest.approx(0.25, abs=1 / total)
    removed = sum(int((~m).sum()) for m in magnitude_masks(model, sparsity).values())
    assert abs(removed - total // 4) <= len(prunable_weights(model))  # one weight per layer of rounding
