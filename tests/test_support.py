"""Supports against the paper's equations (Eq. 9, 12, 13, 41), on hand-computed values."""

import pytest
import torch
import torchvision
from torch import nn

from supportprune.method.convert import (
    convert_relus,
    export_ready,
)
from supportprune.method.support import (
    SupportSite,
    batch_support_mask,
    batch_unit_energy,
    capture_supports,
    fix_supports,
    positive_hard_threshold,
    release_supports,
    set_site_mode,
    support,
    support_sites,
)
from tiny_models import BiasFreeChain, TinyConcatNet, TinyResNet


def test_positive_hard_threshold_is_relu_at_zero():
    q = torch.randn(64, 8, 5, 5)
    q[0, 0, 0, 0] = 0.0
    assert torch.equal(positive_hard_threshold(q, 0.0), torch.relu(q))
    assert torch.equal(positive_hard_threshold(q, torch.zeros(8)), torch.relu(q))


def test_positive_hard_threshold_keeps_q_above_beta_unshifted():
    q = torch.tensor([[-1.0, 0.2, 0.5, 0.7, 2.0]])
    # Eq. 9: q if q > β else 0 — no subtraction of β, unlike ReLU(q − β) of Eq. 7.
    assert torch.equal(positive_hard_threshold(q, 0.5), torch.tensor([[0.0, 0.0, 0.0, 0.7, 2.0]]))


def test_per_channel_beta_and_support():
    q = torch.tensor([[[1.0, 3.0]], [[1.0, 3.0]]]).view(1, 2, 1, 2)  # channel 0: [1, 3], channel 1: [1, 3]
    beta = torch.tensor([0.5, 2.0])
    assert positive_hard_threshold(q, beta).flatten().tolist() == [1.0, 3.0, 0.0, 3.0]
    assert support(q, beta).flatten().tolist() == [True, True, False, True]  # Eq. 12


def test_batch_mask_element_granularity_matches_eq41_by_hand():
    # Batch of N=2, C=2 channels of 1×2 positions.
    x = torch.tensor([
        [[[1.0, 0.0]], [[2.0, 0.5]]],
        [[[1.0, 0.0]], [[0.0, 0.5]]],
    ])
    energy = batch_unit_energy(x, "element")  # Σ_n x_i²
    assert energy.flatten().tolist() == [2.0, 0.0, 4.0, 0.5]
    mean = (2.0 + 0.0 + 4.0 + 0.5) / 4  # 1.625
    # m_i = 1 iff Σ_n x_i² > β, with β = 0.5 × mean = 0.8125
    mask = batch_support_mask(x, 0.5, "element")
    assert mask.shape == (2, 1, 2)
    assert mask.flatten().tolist() == [True, False, True, False]
    assert (energy.flatten() > 0.5 * mean).tolist() == mask.flatten().tolist()


def test_batch_mask_channel_granularity_sums_positions():
    x = torch.tensor([
        [[[1.0, 0.0]], [[0.2, 0.1]], [[3.0, 0.0]]],
        [[[1.0, 1.0]], [[0.1, 0.0]], [[0.0, 0.0]]],
    ])
    energy = batch_unit_energy(x, "channel")
    assert torch.allclose(energy, torch.tensor([3.0, 0.06, 9.0]))
    mean = (3.0 + 0.06 + 9.0) / 3  # 4.02
    mask = batch_support_mask(x, 0.5, "channel")  # β = 2.01
    assert mask.shape == (3, 1, 1)
    assert mask.flatten().tolist() == [True, False, True]
    assert batch_support_mask(x, 0.0, "channel").flatten().tolist() == [True, True, True]
    assert batch_support_mask(x, 3.001 / mean, "channel").flatten().tolist() == [False, False, True]


def test_site_batch_mode_multiplies_activations_by_mask_and_records_stats():
    site = SupportSite(3).train()
    site.mode, site.granularity, site.record_stats = "batch", "channel", True
    site.relative_threshold.fill_(0.5)
    q = torch.tensor([
        [[[1.0, -5.0]], [[0.2, 0.1]], [[3.0, 0.0]]],
        [[[1.0, 1.0]], [[0.1, -7.0]], [[0.0, 0.0]]],
    ])
    out = site(q)
    activation = torch.relu(q)
    expected = activation * torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    assert torch.equal(out, expected)
    assert site.stat_batches.item() == 1
    assert site.stat_support_batches.tolist() == [1.0, 0.0, 1.0]
    assert torch.allclose(site.stat_energy, torch.tensor([3.0, 0.06, 9.0], dtype=torch.float64))  # 0.2² + 0.1² + 0.1²
    site.eval()  # test time: η* on each example, no batch mask
    assert torch.equal(site(q), activation)


def test_site_keep_removes_channels_and_gradients_flow_through_kept_units():
    site = SupportSite(2)
    site.keep.copy_(torch.tensor([1.0, 0.0]))
    q = torch.randn(4, 2, 3, 3, requires_grad=True)
    site(q).sum().backward()
    assert torch.equal(q.grad[:, 1], torch.zeros(4, 3, 3))
    assert torch.equal(q.grad[:, 0], (q[:, 0] > 0).float())


def test_convert_gives_every_relu_call_site_its_own_support():
    model = torchvision.models.resnet18(num_classes=10).eval()
    example = torch.randn(2, 3, 32, 32)
    converted = convert_relus(model, example)
    names = [name for name, _ in support_sites(converted)]
    # 1 stem ReLU + 8 BasicBlocks × 2 calls of their one ReLU module.
    assert len(names) == 17
    assert len({id(site) for _, site in support_sites(converted)}) == 17
    assert "layer1.0.relu" in names and "layer1.0.relu_1" in names
    assert not any(isinstance(m, nn.ReLU) for m in converted.modules())
    assert torch.equal(converted(example), model(example))  # β = 0: pretrained function unchanged


def test_convert_catches_functional_relus_and_reports_channels():
    model = TinyConcatNet().eval()
    converted = convert_relus(model, torch.randn(2, 1, 16, 16))
    channels = {name: site.channels for name, site in support_sites(converted)}
    assert channels == {"stem.relu": 8, "branch1.relu": 6, "branch2.0.relu": 4, "branch2.1.relu": 6, "head_conv.relu": 8}


def test_googlenet_has_a_site_per_basic_conv():
    model = torchvision.models.googlenet(num_classes=10, aux_logits=False, init_weights=True).eval()
    converted = convert_relus(model, torch.randn(1, 3, 32, 32))
    # 3 stem convolutions + 9 Inception blocks × 6 BasicConv2d, each ending in F.relu.
    assert len(list(support_sites(converted))) == 3 + 9 * 6


def test_fixed_supports_make_the_network_linear_in_its_input():
    """Eq. 13: with M fixed, F(x) = W3 M2 W2 M1 W1 x, so F(a x + b y) = a F(x) + b F(y)."""
    model = convert_relus(BiasFreeChain().eval(), torch.randn(1, 1, 8, 8)).eval()
    x, y = torch.randn(2, 1, 1, 8, 8)
    supports = capture_supports(model, x)
    fix_supports(model, supports)
    a, b = 1.7, -0.6
    assert torch.allclose(model(a * x + b * y), a * model(x) + b * model(y), atol=1e-5)
    # At the input the supports came from, fixed supports reproduce η* exactly.
    release_supports(model)
    reference = model(x)
    fix_supports(model, supports)
    assert torch.allclose(model(x), reference, atol=1e-6)
    # Without fixed supports the network is not linear.
    release_supports(model)
    assert not torch.allclose(model(a * x + b * y), a * model(x) + b * model(y), atol=1e-3)


def test_fixed_supports_make_resnet_affine():
    """Biases and batch norms make the fixed-support network affine: F(t x + (1-t) y) = t F(x) + (1-t) F(y)."""
    model = convert_relus(TinyResNet().eval(), torch.randn(1, 1, 8, 8)).eval()
    x, y = torch.randn(2, 1, 1, 8, 8)
    fix_supports(model, capture_supports(model, x))
    t = 0.3
    assert torch.allclose(model(t * x + (1 - t) * y), t * model(x) + (1 - t) * model(y), atol=1e-5)


def test_capture_supports_equals_eq12_at_each_site():
    model = convert_relus(TinyResNet().eval(), torch.randn(1, 1, 8, 8)).eval()
    x = torch.randn(3, 1, 8, 8)
    inputs = {}
    handles = [site.register_forward_hook(lambda m, a, o, n=name: inputs.__setitem__(n, a[0].clone()))
               for name, site in support_sites(model)]
    model(x)
    for handle in handles:
        handle.remove()
    for name, mask in capture_supports(model, x).items():
        assert torch.equal(mask, inputs[name] > 0)


def test_set_site_mode_rejects_unknown_granularity():
    model = convert_relus(TinyResNet(), torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="granularity"):
        set_site_mode(model, "batch", granularity="pixel")


def test_export_ready_turns_plain_sites_into_relu():
    model = convert_relus(TinyResNet().eval(), torch.randn(1, 1, 8, 8))
    first = next(site for _, site in support_sites(model))
    first.keep[0] = 0.0
    ready = export_ready(model)
    assert sum(isinstance(m, nn.ReLU) for m in ready.modules()) == 4
    assert sum(isinstance(m, SupportSite) for m in ready.modules()) == 1
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(ready(x), model.eval()(x))
