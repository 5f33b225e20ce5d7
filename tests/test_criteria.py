"""The Sparse step's criteria: torch-pruning importances against torch-pruning itself, their MACs-matched
pruning, the support statistics by hand, a criterion's state, DSD's magnitude masks, and a CLI run."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from typer.testing import CliRunner

from supportprune.method import dsd
from supportprune.cli import app
from supportprune.method.criteria import (
    REGISTRY,
    channel_scores,
    make_criterion,
    magnitude_masks,
    nonzero_parameters,
    prunable_weights,
    sparsity_matching_parameters,
)
from supportprune.method.criteria.gradients import TaylorCriterion
from supportprune.method.criteria.support_statistics import support_statistic
from supportprune.method.pruning import (
    apply_keep_masks,
    count_macs_params,
    dependency_graph,
    plan_keep_masks,
    prune_to_keep_masks,
    search_relative_threshold,
    site_groups,
)
from supportprune.method.criteria import CHANNEL_CRITERIA, CRITERIA
from supportprune.inputs.recipe import SparseConfig
from supportprune.method.convert import convert_relus
from supportprune.method.support import set_site_mode, support_sites
from tests.cli_helpers import write_recipe
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


# --- every criterion through one interface ---------------------------------------------------------

EXAMPLE = torch.zeros(2, 1, 8, 8)


def _tiny_resnet(seed: int = 0) -> nn.Module:
    """TinyResNet with random batch-norm scales (fresh ones are all 1: bn_scale would tie every channel)."""
    torch.manual_seed(seed)
    model = convert_relus(TinyResNet(), EXAMPLE)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.2, 1.5)
    return model


def _batch(seed: int, n: int = 4):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def _observed(criterion, model, batches=1):
    for b in range(criterion.observe_batches and batches):
        criterion.observe(model, *_batch(b))
    return criterion


def test_the_registry_builds_every_recipe_criterion():
    assert set(REGISTRY) == set(CRITERIA)
    for name in CRITERIA:
        config = SparseConfig(criterion=name, target_macs=0.5, epochs=1)
        assert make_criterion(config).name == name


def _largest_one_channel_step(model, example):
    """The most MACs that pruning one more channel of any coupled group removes."""
    baseline, _ = count_macs_params(model, example)
    steps = []
    for group in site_groups(dependency_graph(model, example)):
        trial = copy.deepcopy(model)
        names = {member.name for member in group.members}
        for name, site in support_sites(trial):
            if name in names:
                member = next(m for m in group.members if m.name == name)
                site.keep[[i for i, r in zip(member.idxs, member.root_idxs) if r == 0]] = 0
        steps.append(baseline - count_macs_params(prune_to_keep_masks(trial, example), example)[0])
    return max(steps)


@pytest.mark.parametrize("criterion", [c for c in CHANNEL_CRITERIA if c not in ("l1", "l2", "random")])
def test_each_channel_criterion_prunes_to_its_target(criterion):
    model = _tiny_resnet()
    baseline, _ = count_macs_params(model, EXAMPLE)
    config = SparseConfig(criterion=criterion, target_macs=0.5, epochs=1, observe_batches=2)
    result = dsd.alternation_point(model, EXAMPLE, config, baseline, criterion=_observed(make_criterion(config), model, 2))
    assert result.criterion == criterion
    assert result.macs <= 0.5 * baseline < baseline
    assert result.macs >= 0.5 * baseline - _largest_one_channel_step(model, EXAMPLE)


@pytest.mark.parametrize("statistic", ["frequency", "energy_x_consumer", "energy_lamp"])
def test_support_statistics_prune_to_the_target(statistic):
    model = _tiny_resnet()
    baseline, _ = count_macs_params(model, EXAMPLE)
    config = SparseConfig(target_macs=0.5, epochs=1, relative_threshold=0.5, support_statistic=statistic)
    dsd.begin_sparse(model, config)
    model.train()
    for b in range(3):
        model(_batch(b, 8)[0])
    result = dsd.alternation_point(model, EXAMPLE, config, baseline)
    assert 0.5 * baseline - _largest_one_channel_step(model, EXAMPLE) <= result.macs <= 0.5 * baseline


@pytest.mark.parametrize("criterion", ["taylor", "lamp"])
def test_latency_allocation_takes_any_criterions_scores(criterion):
    """With a table that predicts time as MACs, the latency allocation halves the predicted time on the
    criterion's scores."""
    from supportprune.method.allocation import layer_shapes

    model = _tiny_resnet()
    shapes = layer_shapes(model, EXAMPLE)
    latency = lambda name, i, o: shapes[name].macs(i, o) * 1e-9  # noqa: E731
    baseline, _ = count_macs_params(model, EXAMPLE)
    config = SparseConfig(criterion=criterion, target_macs=0.5, epochs=1, allocation="latency", observe_batches=1)
    result = dsd.alternation_point(model, EXAMPLE, config, baseline, layer_latency=latency,
                                   criterion=_observed(make_criterion(config), model))
    assert result.criterion == criterion and result.predicted_speedup >= 2.0
    assert result.macs < baseline


def _group_rooted_at(model, layer):
    graph = dependency_graph(model, EXAMPLE)
    group = next(g for g in site_groups(graph) if g.root is model.get_submodule(layer))
    direct = graph.get_pruning_group(model.get_submodule(layer), tp.prune_conv_out_channels, idxs=list(range(group.channels)))
    return group, direct


def _set_grads(model, grads):
    for name, p in model.named_parameters():
        p.grad = grads.get(name)


@pytest.mark.parametrize("criterion, importance", [
    ("l1", lambda: tp.importance.GroupMagnitudeImportance(p=1)),
    ("l2", lambda: tp.importance.GroupMagnitudeImportance(p=2)),
    ("fpgm", lambda: tp.importance.FPGMImportance()),
    ("lamp", lambda: tp.importance.LAMPImportance()),
    ("bn_scale", lambda: tp.importance.BNScaleImportance()),
    ("taylor", lambda: tp.importance.GroupTaylorImportance()),
    ("hessian", lambda: tp.importance.GroupHessianImportance()),
])
def test_scores_are_torch_prunings_importance_of_the_group(criterion, importance):
    """Reference: torch-pruning's importance on the group it builds itself for block1.conv1's output
    channels, with the gradients its documented usage gives (Taylor: the batches' gradients summed, here
    averaged, which the group-mean normaliser cancels; Hessian: squared per-example gradients, averaged)."""
    model = _tiny_resnet()
    config = SparseConfig(criterion=criterion, target_macs=0.5, epochs=1, observe_batches=2)
    scores = _observed(make_criterion(config), model, 2).scores(model, EXAMPLE)
    grads = {}
    model.eval()
    for b in range(2):
        images, labels = _batch(b)
        if criterion == "taylor":
            model.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            for name, p in model.named_parameters():
                grads[name] = grads.get(name, 0) + p.grad / 2
        for n in range(len(labels)) if criterion == "hessian" else ():
            model.zero_grad()
            F.cross_entropy(model(images[n:n + 1]), labels[n:n + 1]).backward()
            for name, p in model.named_parameters():
                grads[name] = grads.get(name, 0) + p.grad.pow(2) / 8
    _set_grads(model, grads)
    group, direct = _group_rooted_at(model, "block1.conv1")
    expected = importance()(direct).float()
    (member,) = group.members
    torch.testing.assert_close(scores[member.name][list(member.idxs)], expected[list(member.root_idxs)], rtol=1e-4, atol=1e-6)


def test_bn_scale_keeps_groups_without_a_batch_norm():
    model = convert_relus(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), torch.zeros(2, 4))
    (scores,) = channel_scores(model, torch.zeros(2, 4), "bn_scale").values()
    assert torch.isinf(scores).all()


def test_taylor_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    model = _tiny_resnet()
    observed = _observed(TaylorCriterion(observe_batches=2), model, 2)
    torch.save(observed.state_dict(), tmp_path / "criterion.pt")
    restored = TaylorCriterion(observe_batches=2)
    restored.load_state_dict(torch.load(tmp_path / "criterion.pt", weights_only=True))
    assert restored.count == 2
    for criterion in (observed, restored):  # both go on observing the same batch
        criterion.observe(model, *_batch(7))
    a, b = observed.scores(model, EXAMPLE), restored.scores(model, EXAMPLE)
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = _observed(TaylorCriterion(observe_batches=1), model, 1).scores(model, EXAMPLE)
    assert not all(torch.allclose(a[k], fresh[k]) for k in a)  # the restored accumulation mattered
    observed.reset()
    assert observed.state_dict()["count"] == 0 and len(observed.state_dict()) == 1


# --- support statistics by hand ---------------------------------------------------------------------


def test_support_statistics_by_hand():
    """Linear(4→3) → site → Linear(3→2), B-alternation (Eq. 41) on two batches, every number by hand."""
    torch.manual_seed(0)
    model = convert_relus(nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False)), torch.zeros(2, 4))
    W1, W2 = model.get_submodule("0").weight.detach(), model.get_submodule("2").weight.detach()
    set_site_mode(model, "batch", granularity="channel", relative_threshold=0.8, record_stats=True)
    model.train()
    batches = [torch.randn(5, 4), torch.randn(5, 4) * torch.tensor([2.0, 0.1, 1.0, 0.5])]
    energies, relatives, supports = [], [], []
    for x in batches:
        model(x)
        energy = (x @ W1.T).clamp(min=0).pow(2).sum(0)  # Σ over the batch of η*(q)², β = 0
        relatives.append(energy / energy.mean())
        supports.append(relatives[-1] > 0.8)
        energies.append(energy)
    relatives, supports = torch.stack(relatives), torch.stack(supports).float()
    assert 0 < supports.sum() < supports.numel()  # the example exercises both outcomes

    max_energy = relatives.max(0).values
    torch.testing.assert_close(support_statistic(model, torch.zeros(2, 4), "max_energy"), {"1": max_energy})
    frequency = supports.mean(0) + max_energy / (1 + max_energy) / 3
    torch.testing.assert_close(support_statistic(model, torch.zeros(2, 4), "frequency"), {"1": frequency})
    mean_energy = torch.stack(energies).mean(0)
    consumer = W2.pow(2).sum(0)  # ||W2[:, c]||²: the weights that read channel c
    expected = mean_energy / mean_energy.mean() * consumer / consumer.mean()
    got = support_statistic(model, torch.zeros(2, 4), "energy_x_consumer")
    torch.testing.assert_close(got, {"1": expected}, rtol=1e-5, atol=1e-6)
    # LAMP's rescaling: each channel's mean energy over the sum of those at least as strong.
    lamp = torch.stack([mean_energy[c] / mean_energy[mean_energy >= mean_energy[c]].sum() for c in range(3)])
    torch.testing.assert_close(support_statistic(model, torch.zeros(2, 4), "energy_lamp"), {"1": lamp}, rtol=1e-5, atol=1e-6)


def test_lamp_rescaling_by_hand():
    from supportprune.method.criteria.support_statistics import lamp_rescaled

    values = torch.tensor([1.0, 4.0, 2.0, 3.0])
    live = torch.tensor([True, True, True, False])  # the 3 was pruned earlier: it neither scores nor counts
    torch.testing.assert_close(lamp_rescaled(values, live), torch.tensor([1 / 7, 1.0, 2 / 6, 0.0]))


# --- end to end ------------------------------------------------------------------------------------

SMOKE_RECIPE = {
    "version": 1,
    "seed": 3,
    "data": {"source": "embedded", "input_size": 12, "batch_size": 32},
    "dense": {"epochs": 1, "lr": 0.05},
    "sparse": {"epochs": 1, "lr": 0.01, "observe_batches": 2},
    "redense": {"epochs": 1, "lr": 0.005},
}


def test_compress_with_the_taylor_criterion_end_to_end(tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", SMOKE_RECIPE)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["compress", "tiny_models:tiny_resnet", "--recipe", str(recipe), "--out", str(out),
                                      "--max-steps", "2", "--criterion", "taylor", "--target-macs", "0.5"])
    assert result.exit_code == 0, result.output
    assert "taylor channel criterion" in result.output
    exported = {m["kind"]: m for m in json.loads((out / "export.json").read_text())["models"]}
    assert exported["sparse"]["macs"] < 0.7 * exported["baseline"]["macs"]
