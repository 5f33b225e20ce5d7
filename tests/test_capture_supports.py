"""``capture_supports``: each site's per-example support m = [q > β] & keep (Eq. 12), checked against
supports computed by hand on a two-layer 1×1 convolution network with known pre-activations."""

import torch
from torch import nn

from supportprune.method.convert import convert_relus
from supportprune.method.support import capture_supports, set_site_mode, support_sites


def _network() -> nn.Module:
    """conv1: q1_c = w_c x + b_c with w = (1, -1, 2), b = (0, 0.5, -1); conv2: q2 = a1_0 + a1_1 - 10 a1_2."""
    first, second = nn.Conv2d(1, 3, 1), nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([1.0, -1.0, 2.0]).view(3, 1, 1, 1))
        first.bias.copy_(torch.tensor([0.0, 0.5, -1.0]))
        second.weight.copy_(torch.tensor([1.0, 1.0, -10.0]).view(1, 3, 1, 1))
    return nn.Sequential(first, nn.ReLU(), second, nn.ReLU())


def test_supports_are_thresholded_at_beta_and_cut_by_the_keep_masks():
    x = torch.tensor([[[[-1.0, 0.0], [0.5, 2.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])  # two examples, 1×2×2
    model = convert_relus(_network(), x)
    (first_name, first), (second_name, second) = support_sites(model)
    with torch.no_grad():
        first.beta.copy_(torch.tensor([0.5, 0.0, 1.0]))
        first.keep.copy_(torch.tensor([1.0, 1.0, 0.0]))  # channel 2 pruned
        second.beta.fill_(0.25)
    set_site_mode(model, "batch")  # B-alternation's mode: capture still thresholds each example at β alone
    model.train()

    supports = capture_supports(model, x)

    # Site 1, example 1: q1 = ([[-1, 0], [0.5, 2]], [[1.5, 0.5], [0, -1.5]], [[-3, -1], [0, 3]]).
    # q > β: channel 0 only at 2 (0.5 is not above 0.5); channel 1 at 1.5 and 0.5; channel 2 at 3, but pruned.
    # Example 2 (x = 0): q1 = b = (0, 0.5, -1): only channel 1, everywhere.
    expected_first = torch.tensor([
        [[[0, 0], [0, 1]], [[1, 1], [0, 0]], [[0, 0], [0, 0]]],
        [[[0, 0], [0, 0]], [[1, 1], [1, 1]], [[0, 0], [0, 0]]],
    ], dtype=torch.bool)
    # Site 2 sees a1 = η*(q1; β) ⊙ keep: example 1, q2 = [[1.5, 0.5], [0, 2]] (were channel 2 not pruned,
    # the bottom-right value would be 2 - 30 < 0); example 2, q2 = 0.5 everywhere. β = 0.25.
    expected_second = torch.tensor([[[[1, 1], [0, 1]]], [[[1, 1], [1, 1]]]], dtype=torch.bool)
    assert set(supports) == {first_name, second_name}
    assert supports[first_name].dtype == torch.bool
    assert torch.equal(supports[first_name], expected_first)
    assert torch.equal(supports[second_name], expected_second)
    assert model.training  # the caller's mode is restored


def test_supports_with_beta_zero_and_nothing_pruned_are_relus_support():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 3, 3)
    network = _network()
    model = convert_relus(network, x)
    supports = capture_supports(model, x)
    q1 = network[0](x)
    q2 = network[2](torch.relu(q1))
    (first_name, _), (second_name, _) = support_sites(model)
    assert torch.equal(supports[first_name], q1 > 0) and torch.equal(supports[second_name], q2 > 0)
