"""I-alternation (Eq. 36–38), the bit-packed store of per-example supports, MaskT, and the lifted
objective of a two-layer network with fixed supports (Eq. 24)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from supportprune.method.alternation import (
    estimate_instance_supports,
    instance_support_mask,
    majority_supports,
    recalibrate_batch_norm,
    support_dims,
)
from supportprune.inputs.datasets import DataSplits
from supportprune.inputs.data import make_loaders, reseed_epoch
from supportprune.run.stored_supports import InstanceMaskStore, MaskBudgetError, choose_storage, required_bytes
from supportprune.method.convert import convert_relus
from supportprune.method.support import fix_supports, release_supports, set_site_mode, support_sites
from supportprune.theory.lifted import stacked_two_layer_U
from supportprune.theory.separation import separated_v
from supportprune.run.training_loop import train_epoch
from tests.tiny_models import BiasFreeChain, TinyResNet


def test_instance_mask_is_eq38_by_hand():
    # Example 1: x² = [1, 4, 0, 9], mean 3.5; τ = 0.5 gives β = 1.75, so m = [0, 1, 0, 1].
    # Example 2: x² = [0.25, 0, 1, 1], mean 0.5625; τ = 0.5 gives β = 0.28125, so m = [0, 0, 1, 1].
    x = torch.tensor([[1.0, 2.0, 0.0, 3.0], [0.5, 0.0, 1.0, 1.0]])
    expected = torch.tensor([[False, True, False, True], [False, False, True, True]])
    assert torch.equal(instance_support_mask(x, 0.5, "element"), expected)
    # τ = 0: [x² > 0], ReLU's support of a thresholded activation.
    assert torch.equal(instance_support_mask(x, 0.0, "element"), x > 0)


def test_instance_channel_mask_sums_each_channel_over_positions():
    # One example, 2 channels of 2 positions: channel energies [1 + 4, 0.25 + 0] = [5, 0.25], mean 2.625.
    x = torch.tensor([[[1.0, 2.0], [0.5, 0.0]]])
    assert torch.equal(instance_support_mask(x, 0.1, "channel"), torch.tensor([[True, False]]))  # β = 0.2625
    assert torch.equal(instance_support_mask(x, 0.01, "channel"), torch.tensor([[True, True]]))  # β = 0.02625


def test_estimated_supports_are_eq38_of_each_example_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7, bias=False), nn.ReLU(), nn.Linear(7, 3, bias=False))
    inputs = torch.randn(6, 5)
    converted = convert_relus(model, inputs)
    supports = estimate_instance_supports(converted, inputs, 0.3, "element")
    hidden = torch.relu(inputs @ model[0].weight.T)
    for n in range(len(inputs)):
        energy = hidden[n] ** 2
        by_hand = energy > 0.3 * energy.mean()
        (mask,) = supports.values()
        assert torch.equal(mask[n], by_hand)
        # One example alone gives the same support as inside a batch: nothing is shared.
        alone = estimate_instance_supports(converted, inputs[n:n + 1], 0.3, "element")
        assert torch.equal(next(iter(alone.values()))[0], by_hand)


def test_store_round_trips_bit_exactly_in_any_order(tmp_path):
    shapes = {"a": (3, 5, 5), "b": (7,), "c": (1, 3, 3)}  # 75 + 7 + 9 = 91 bits: not a multiple of 8
    examples = 37
    generator = torch.Generator().manual_seed(1)
    truth = {name: torch.rand((examples,) + shape, generator=generator) > 0.5 for name, shape in shapes.items()}
    for path in (None, tmp_path / "disk.npy"):
        store = InstanceMaskStore.empty(shapes, examples, path)
        order = torch.randperm(examples, generator=generator)
        for chunk in order.split(8):  # written out of order, in batches
            store.write(chunk, {name: masks[chunk] for name, masks in truth.items()})
        query = torch.randperm(examples, generator=generator)[:13]
        read = store.read(query)
        for name in shapes:
            assert read[name].dtype == torch.bool
            assert torch.equal(read[name], truth[name][query])
        counts = store.support_counts(chunk=5)
        for name in shapes:
            assert torch.equal(counts[name], truth[name].sum(dim=0))
        store.save(tmp_path / "saved.npy")
        for storage in ("memory", "disk"):
            reopened = InstanceMaskStore.open(shapes, tmp_path / "saved.npy", storage)
            assert torch.equal(reopened.read(query)["a"], truth["a"][query])
    assert required_bytes(shapes, examples) == examples * 12


def test_store_refuses_memory_beyond_the_budget():
    shapes = {"site": (64, 32, 32)}
    with pytest.raises(MaskBudgetError, match="mask_memory_mb"):
        choose_storage(shapes, 10_000, "memory", budget_bytes=2**20)
    assert choose_storage(shapes, 10_000, "auto", budget_bytes=2**20) == "disk"
    assert choose_storage(shapes, 10, "auto", budget_bytes=2**20) == "memory"


class _IdentityImages(torch.utils.data.Dataset):
    """Image n is constant n: the forward pass can tell which examples it sees."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        return torch.full((1, 4, 4), float(index)), index % 3


def test_stored_supports_reach_the_right_examples_under_shuffling():
    torch.manual_seed(0)
    examples = 40
    model = convert_relus(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)),
                          torch.zeros(2, 1, 4, 4))
    (name, site), = support_sites(model)
    shapes = support_dims(model, torch.zeros(2, 1, 4, 4), "element")
    truth = torch.rand((examples,) + shapes[name]) > 0.5
    store = InstanceMaskStore.empty(shapes, examples)
    store.write(torch.arange(examples), {name: truth})

    seen = []
    site.register_forward_pre_hook(lambda module, args: seen.append(module.fixed_support.clone()))
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 0, 0, 0].long().clone()))
    splits = DataSplits(_IdentityImages(examples), _IdentityImages(4), 3, 1, ("a", "b", "c"), "identity")
    train_loader, _ = make_loaders(splits, batch_size=8, seed=3, with_indices=True)
    reseed_epoch(train_loader, 3, epoch=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    train_epoch(model, train_loader, optimizer, scheduler, torch.device("cpu"),
                before_batch=lambda indices: fix_supports(model, store.read(indices)))
    ids = seen[0::2]
    masks = seen[1::2]
    order = torch.cat(ids)
    assert not torch.equal(order, torch.arange(len(order)))  # the batches really were shuffled
    for batch_ids, batch_masks in zip(ids, masks):
        assert torch.equal(batch_masks, truth[batch_ids])


def test_fixed_two_layer_loss_is_the_lifted_least_squares_of_eq24():
    rng = np.random.default_rng(0)
    d0, d1, d2, examples = 4, 3, 2, 11
    X = rng.normal(size=(examples, d0))
    Y = rng.normal(size=(examples, d2))
    masks = rng.random(size=(examples, d1)) > 0.4
    model = nn.Sequential(nn.Linear(d0, d1, bias=False), nn.ReLU(), nn.Linear(d1, d2, bias=False)).double()
    converted = convert_relus(model, torch.zeros(2, d0, dtype=torch.float64))
    fix_supports(converted, {name: torch.from_numpy(masks) for name, _ in support_sites(converted)})
    outputs = converted(torch.from_numpy(X))
    loss = F.mse_loss(outputs, torch.from_numpy(Y), reduction="sum").item()  # Σ_n ||y_n - f(x_n)||²
    W1, W2 = model[0].weight.detach().numpy(), model[2].weight.detach().numpy()
    U = stacked_two_layer_U(X, masks.astype(float), d2)
    v = separated_v([W1, W2])  # vec(W1) ⊗ vec(W2)
    lifted = float(np.sum((Y.reshape(-1) - U @ v) ** 2))  # ||y - U v||², the bilinear objective
    assert loss == pytest.approx(lifted, rel=1e-10)
    assert loss > 0


def test_maskt_applies_supports_without_thresholding():
    torch.manual_seed(0)
    model = convert_relus(BiasFreeChain(), torch.zeros(2, 1, 8, 8))
    shapes = support_dims(model, torch.zeros(2, 1, 8, 8), "element")
    generator = torch.Generator().manual_seed(0)
    counts = {name: torch.randint(0, 11, shape, generator=generator) for name, shape in shapes.items()}
    majority = majority_supports(counts, examples=10)
    for name in shapes:
        assert torch.equal(majority[name][0], counts[name] > 5)  # more than half of 10
    fix_supports(model, majority)
    x = torch.randn(3, 1, 8, 8)
    # No thresholding: the bias-free network is linear, f(-x) = -f(x) and f(2x) = 2 f(x)...
    torch.testing.assert_close(model(-x), -model(x))
    torch.testing.assert_close(model(2 * x), 2 * model(x))
    # ... and computes m ⊙ q at each site, negative q included.
    chain = BiasFreeChain()
    chain.load_state_dict({k: v for k, v in model.state_dict().items() if k in chain.state_dict()})
    (m1, m2) = [majority[name].float() for name in shapes]
    hidden = m1 * chain.conv1(x)
    expected = chain.fc(torch.flatten(m2 * chain.conv2(hidden), 1))
    torch.testing.assert_close(model(x), expected)
    release_supports(model)
    assert not torch.allclose(model(-x), -model(x))  # back to η*: not linear


def test_estimation_records_pruning_statistics_per_example():
    torch.manual_seed(0)
    model = convert_relus(TinyResNet(), torch.zeros(2, 1, 8, 8))
    set_site_mode(model, "threshold", relative_threshold=0.3)  # the Sparse step's threshold: channel statistics
    images = torch.randn(5, 1, 8, 8)
    activations = {}
    for name, site in support_sites(model):
        site.register_forward_hook(lambda module, args, output, name=name: activations.__setitem__(name, output))
    supports = estimate_instance_supports(model, images, 0.1, "element", record_stats=True)
    for name, site in support_sites(model):
        assert supports[name].shape == activations[name].shape  # the training supports: per unit, τ = 0.1
        assert torch.equal(supports[name], instance_support_mask(activations[name], 0.1, "element"))
        assert int(site.stat_batches) == 5  # one observation per example
        channel = instance_support_mask(activations[name], 0.3, "channel")  # the pruning statistics: per channel, τ = 0.3
        assert torch.equal(site.stat_support_batches, channel.float().sum(dim=0))


def test_batch_norm_recalibration_averages_the_statistics_of_the_eta_star_network():
    torch.manual_seed(0)
    model = convert_relus(nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1),
                                        nn.BatchNorm2d(2)), torch.zeros(2, 1, 6, 6))
    batches = [torch.randn(4, 1, 6, 6) for _ in range(3)]
    norm1, norm2 = model.get_submodule("1"), model.get_submodule("4")
    norm1.running_mean.fill_(5.0)  # stale statistics, as after an epoch with fixed supports
    model.eval()
    assert recalibrate_batch_norm(model, batches) == 3
    assert not model.training and norm1.momentum == 0.1  # the model's mode and momentum are restored
    with torch.no_grad():
        first = [model.get_submodule("0")(x) for x in batches]
        # The second norm sees the η* network: ReLU of the first norm's output with each batch's own statistics.
        second = [model.get_submodule("3")(torch.relu(F.batch_norm(q, None, None, training=True))) for q in first]
    for norm, outputs in ((norm1, first), (norm2, second)):
        expected = torch.stack([q.mean(dim=(0, 2, 3)) for q in outputs]).mean(dim=0)
        torch.testing.assert_close(norm.running_mean, expected)
