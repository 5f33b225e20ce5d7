"""sparse.beta estimated: the trained bias before a site becomes η*'s threshold (Eq. 7 → Eq. 9)."""

import dataclasses

import pytest
import torch
from torch import nn

from supportprune.method import dsd
from supportprune.inputs.typed_yaml import RecipeError
from supportprune.inputs.recipe import recipe_from_dict
from supportprune.method.convert import convert_relus
from supportprune.method.support import support_sites
from tests.tiny_models import TinyResNet


def _conv_bn_relu() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([0.5, -0.3, 0.0, 1.2]))  # positive biases give negative thresholds
        model[1].weight.copy_(torch.tensor([1.0, 2.0, 0.5, 1.5]))
    return model.eval()


def test_estimated_beta_is_the_negated_bias_and_eta_star_follows_eq_9():
    x = torch.randn(5, 1, 6, 6)
    plain = _conv_bn_relu()
    bias = plain[1].bias.detach().clone()
    q_with_bias = plain[1](plain[0](x)).detach()  # W z − β of Eq. 7, with β = −bias
    model = convert_relus(_conv_bn_relu(), x)
    assert dsd.estimate_beta(model) == (1, 1)
    (_, site), = support_sites(model)
    torch.testing.assert_close(site.beta, -bias)
    assert float(model.get_submodule("1").bias.abs().sum()) == 0 and not model.get_submodule("1").bias.requires_grad
    q = q_with_bias - bias.view(1, -1, 1, 1)  # W z: the affine part without its bias
    beta = -bias.view(1, -1, 1, 1)
    expected = torch.where(q > beta, q, torch.zeros(()))  # η*{q; β} = q if q > β else 0 (Eq. 9)
    features = model.get_submodule("2")(model.get_submodule("1")(model.get_submodule("0")(x)))
    torch.testing.assert_close(features, expected)
    # η* differs from ReLU by β on the support: ReLU(Wz − β) + β·[Wz > β]
    torch.testing.assert_close(expected, torch.relu(q_with_bias) + beta * (q > beta))
    assert dsd.estimate_beta(model) == (1, 1)  # idempotent (a resumed run applies it again)
    torch.testing.assert_close(site.beta, -bias)


def test_negative_thresholds_get_the_exact_gradient():
    x = torch.randn(5, 1, 6, 6)
    model = convert_relus(_conv_bn_relu(), x)
    dsd.estimate_beta(model)
    (_, site), = support_sites(model)
    assert not site.fused  # β < 0 at channel 1: the fused backward (ReLU's) would be wrong there
    q = torch.randn(5, 4, 6, 6, requires_grad=True)
    site(q).sum().backward()
    torch.testing.assert_close(q.grad, (q > site.beta.view(1, -1, 1, 1)).float())  # d η*/dq = [q > β]


def test_sites_fed_by_a_residual_sum_keep_beta_zero():
    example = torch.zeros(2, 1, 8, 8)
    model = convert_relus(TinyResNet(), example)
    estimated, total = dsd.estimate_beta(model)
    assert (estimated, total) == (3, 5)  # stem and each block's first ReLU; the two post-add ReLUs are not
    post_add = [site for name, site in support_sites(model) if name.endswith("relu_1")]
    assert len(post_add) == 2 and all(float(s.beta.abs().sum()) == 0 for s in post_add)


def test_beta_key_is_validated():
    with pytest.raises(RecipeError, match="sparse.beta: must be one of zero, estimated"):
        recipe_from_dict({"sparse": {"beta": "learned"}})


def test_a_model_fx_cannot_trace_gets_beta_from_one_recorded_forward():
    from tests.user_models import ShapeChecked

    x = torch.randn(2, 1, 8, 8)
    torch.manual_seed(0)
    plain = ShapeChecked().eval()
    model = convert_relus(ShapeChecked(), x)  # recorded, not traced
    model.load_state_dict(plain.state_dict(), strict=False)
    assert not isinstance(model, torch.fx.GraphModule)
    biases = {name: model.get_submodule(name).bias.detach().clone() for name in ("conv1", "conv2", "fc1")}
    assert dsd.estimate_beta(model) == (0, 3)  # without an input there is nothing to record
    assert dsd.estimate_beta(model, x) == (3, 3)  # conv1 → relu1, conv2 → relu2 (in place), fc1 → relu3
    for site, producer in (("relu1", "conv1"), ("relu2", "conv2"), ("relu3", "fc1")):
        torch.testing.assert_close(model.get_submodule(site).beta, -biases[producer])
        assert float(model.get_submodule(producer).bias.abs().sum()) == 0
    # η*{Wz; β} on the support, as on the traced path: ReLU(Wz − β) + β·[Wz > β] (Eq. 9)
    q = plain.conv1(x) - biases["conv1"].view(1, -1, 1, 1)
    beta = -biases["conv1"].view(1, -1, 1, 1)
    torch.testing.assert_close(model.relu1(model.conv1(x)), torch.where(q > beta, q, torch.zeros(())))
    assert dsd.estimate_beta(model, x) == (3, 3)  # idempotent


def test_a_layer_read_by_more_than_its_site_keeps_its_bias():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.relu = nn.ReLU()

        def forward(self, x):
            if x.shape[1] != 2:  # not fx-traceable
                raise ValueError("two channels")
            y = self.conv(x)
            return self.relu(y) + y  # y is read by the site and by the sum

    x = torch.randn(2, 2, 5, 5)
    model = convert_relus(Residual(), x)
    bias = model.conv.bias.detach().clone()
    assert dsd.estimate_beta(model, x) == (0, 1)
    torch.testing.assert_close(model.conv.bias.detach(), bias)
    with pytest.raises(ValueError, match="converted model"):
        dsd.estimate_beta(Residual())


@pytest.mark.parametrize("architecture", ["resnet18", "mobilenet_v2"])
def test_the_recorded_forward_finds_the_layers_the_fx_graph_finds(architecture):
    import torchvision

    from supportprune.method.convert import _convert_recorded

    x = torch.randn(2, 3, 32, 32)
    traced = convert_relus(getattr(torchvision.models, architecture)(num_classes=10), x)
    recorded = _convert_recorded(getattr(torchvision.models, architecture)(num_classes=10), x)
    assert isinstance(traced, torch.fx.GraphModule) and not isinstance(recorded, torch.fx.GraphModule)

    def frozen(model):
        return {name for name, module in model.named_modules()
                if getattr(module, "bias", None) is not None and not module.bias.requires_grad}

    assert dsd.estimate_beta(traced) == dsd.estimate_beta(recorded, x)
    assert frozen(traced) == frozen(recorded) != set()  # resnet18: the 9 batch norms not followed by a residual sum


def test_functional_relu_sites_get_their_producers_too():
    from tests.user_models import Functional

    x = torch.randn(2, 1, 16, 16)
    model = convert_relus(Functional(), x)  # six functional spellings behind a shape check, two in place
    # the routing's channel-count checks (x.dim(), x.shape) read no values: every site finds its layer
    assert dsd.estimate_beta(model, x) == (6, 6)


def test_beta_is_a_support_option_baselines_keep_plain_relu():
    from supportprune import SupportPruner

    x = torch.randn(2, 1, 6, 6)
    for criterion, moved in (("support", True), ("l1", False)):
        pruner = SupportPruner(_conv_bn_relu(), x, criterion=criterion, round_to=1)
        assert pruner.config.beta == "zero"  # the default: η* = ReLU exports as a fusable Relu
        pruner.config = dataclasses.replace(pruner.config, beta="estimated")
        pruner.start_sparse()
        (_, site), = support_sites(pruner.model)
        assert bool(site.beta.abs().sum() > 0) is moved
        assert bool(pruner.model.get_submodule("1").bias.abs().sum() == 0) is moved
