"""Conversion of ReLU call sites in models torch.fx cannot trace: one recorded forward pass, then routed
sites. Every check compares against the original model, the fx path, or hand-counted call sites."""

import copy
import re
import subprocess
import sys

import pytest
import torch
import torch.fx as fx
import torchvision
from torch import nn

from supportprune.method import convert, dsd
from supportprune.errors import SupportpruneError
from supportprune.deploy.export import export_onnx
from supportprune.method.pruning import apply_keep_masks, plan_keep_masks, prune_to_keep_masks
from supportprune.method.convert import TraceError, convert_relus, export_ready
from supportprune.method.support import SupportSite, support_sites
from user_models import DataDependentBatch, Functional, GeluNet, MobileNetStyle, Nested, Reused, ShapeChecked

# Hand-counted call sites: (name, channels, in-place, upper clamp) in module order.
EXPECTED_SITES = {
    ShapeChecked: [("relu1", 6, False, None), ("relu2", 5, True, None), ("relu3", 7, False, None)],
    Functional: [("block.relu", 4, False, None), ("relu", 5, False, None), ("relu_1", 6, False, None),
                 ("relu_2", 6, True, None), ("relu_3", 5, True, None), ("relu_4", 4, True, None)],
    Reused: [("act.0", 4, True, None), ("act.1", 6, True, None), ("act.2", 5, True, None)],
    # The ReLU module shared by stages.0.b and stages.1.a is called twice: one router, two sites.
    Nested: [("stages.0.a.2", 4, False, None), ("stages.0.b.1.0", 6, False, None), ("stages.0.b.1.1", 6, False, None)],
    MobileNetStyle: [("stem.2", 8, True, 6.0), ("block.conv.2", 16, True, 6.0), ("block.conv.5", 16, True, 6.0),
                     ("relu6", 12, False, 6.0)],
}
MODELS = list(EXPECTED_SITES)


def images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def randomize_bn(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model


def fresh(cls) -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(cls()).eval()


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_fx_cannot_trace_these_models(cls):
    model = cls()  # built outside the check: only the trace may raise, and only fx's refusal counts
    with pytest.raises(fx.proxy.TraceError, match="control flow"):
        fx.symbolic_trace(model)


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_every_call_site_gets_its_own_site_and_the_function_is_unchanged(cls):
    model = fresh(cls)
    reference = copy.deepcopy(model)
    converted = convert_relus(model, images(2))
    sites = [(name, site.channels, site.inplace, site.upper) for name, site in support_sites(converted)]
    assert sites == EXPECTED_SITES[cls]
    assert len({id(site) for _, site in support_sites(converted)}) == len(sites)
    assert not any(type(m) in (nn.ReLU, nn.ReLU6) for m in converted.modules())
    other = {k for k in reference.state_dict()}
    assert other <= set(converted.state_dict())  # every other layer keeps its key
    x = images(5, seed=1)
    for _ in range(2):  # routing restarts at every forward
        assert torch.equal(converted(x), reference(x))


@pytest.mark.parametrize("cls", [Functional, Reused, MobileNetStyle], ids=lambda c: c.__name__)
def test_training_gradients_equal_the_original(cls):
    model = fresh(cls).train()
    reference = copy.deepcopy(model)
    converted = convert_relus(model, images(2)).train()
    x = images(6, seed=2) * 4  # some ReLU6 inputs above 6: the clamp's zero gradient shows
    converted(x).square().sum().backward()
    reference(x).square().sum().backward()
    for (name, p), (_, p_ref) in zip(converted.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, msg=name)


def test_relu6_site_clamps_in_every_mode_with_the_clamp_in_its_gradient():
    site = SupportSite(2, upper=6.0)
    site.beta.copy_(torch.tensor([0.5, 0.0]))
    q = torch.tensor([[[0.25, 0.75, 7.0]], [[-1.0, 2.0, 9.0]]]).view(1, 2, 1, 3).requires_grad_(True)
    out = site(q)
    # min(η*(q; β), 6): channel 0 drops 0.25 (≤ β = 0.5), both channels saturate at 6.
    assert out.flatten().tolist() == [0.0, 0.75, 6.0, 0.0, 2.0, 6.0]
    out.sum().backward()
    assert q.grad.flatten().tolist() == [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    site.train()
    site.mode, site.relative_threshold = "batch", torch.tensor(0.0)
    assert site(q).flatten().tolist() == [0.0, 0.75, 6.0, 0.0, 2.0, 6.0]
    site.keep[1] = 0.0
    site.fixed_support = torch.tensor([[1.0, 1.0]])
    site.mode = "fixed"
    assert site(q).flatten().tolist() == [0.25, 0.75, 6.0, 0.0, 0.0, 0.0]


def test_model_without_relu_names_the_activations_it_found():
    with pytest.raises(TraceError, match=r"GeluNet has no ReLU call site .*found GELU, SiLU, F\.gelu; supportprune needs ReLU") as info:
        convert_relus(GeluNet(), images(2))
    assert isinstance(info.value, SupportpruneError) and "\n" not in str(info.value)


def test_a_forward_with_other_relu_calls_than_recorded_raises_instead_of_misrouting():
    model = convert_relus(DataDependentBatch().eval(), images(2))
    assert [name for name, _ in support_sites(model)] == ["act.0", "act.1", "relu"]
    model(images(3))
    with pytest.raises(TraceError, match=r"more functional ReLU calls than the 1 recorded"):
        model(images(5))
    with pytest.raises(TraceError, match=r"called more than 2 times in one forward"):
        model(images(7))
    model(images(3))  # the routing restarts: the model works again on the recorded path
    fewer = convert_relus(DataDependentBatch().eval(), images(5))
    with pytest.raises(TraceError, match=r"other ReLU calls than the recorded one: functional ReLU calls \(1 of 2\)"):
        fewer(images(2))


def site_masks(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(site.channels, generator=generator) < 0.4 for name, site in support_sites(model)}


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_pruned_model_equals_the_masked_full_model(cls):
    example = images(2)
    model = convert_relus(fresh(cls), example)
    keep = plan_keep_masks(model, example, site_masks(model, seed=3))
    assert sum(int((mask == 0).sum()) for mask in keep.values()) > 0
    apply_keep_masks(model, keep)
    pruned = prune_to_keep_masks(model, example)
    sparse = dsd.build_sparse_model(model, example)
    params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in pruned.parameters()) < params
    x = images(4, seed=4)
    expected = model(x)
    torch.testing.assert_close(pruned(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse(x), expected, atol=1e-5, rtol=1e-5)
    for name, site in support_sites(pruned):
        assert site.channels == int(keep[name].sum())  # each site lost exactly its pruned channels
    if cls is MobileNetStyle:  # the residual stream also carries the block's linear bottleneck: never pruned
        assert bool(site_masks(model, seed=3)["stem.2"].any()) and bool((keep["stem.2"] == 1).all())


@pytest.mark.parametrize("cls", [ShapeChecked, Functional, Reused, MobileNetStyle], ids=lambda c: c.__name__)
def test_onnx_export_keeps_parity_with_thresholds_and_pruned_channels(cls, tmp_path):
    model = convert_relus(fresh(cls), images(2))
    generator = torch.Generator().manual_seed(5)
    for _, site in support_sites(model):
        site.beta.uniform_(0.0, 0.2, generator=generator)
        site.keep[::3] = 0
    check = export_onnx(model, tmp_path / "m.onnx", example_input=images(1), check_input=images(6, seed=6))
    assert check.max_abs_diff < 1e-4
    # export_ready: untouched sites become ReLU modules, and the routing still sends every call right.
    plain = convert_relus(fresh(cls), images(2))
    first_name, first = next(iter(support_sites(plain)))
    first.keep[0] = 0.0
    ready = export_ready(plain)
    assert sum(isinstance(m, SupportSite) for m in ready.modules()) == 1
    assert sum(type(m) in (nn.ReLU, nn.ReLU6) for m in ready.modules()) == len(EXPECTED_SITES[cls]) - 1
    x = images(3, seed=7)
    assert torch.equal(ready(x), plain.eval()(x))
    check = export_onnx(ready, tmp_path / "ready.onnx", example_input=images(1), check_input=images(6, seed=6))
    assert check.max_abs_diff < 1e-4


def _as_fx_name(name: str) -> str:
    """The fallback names a twice-called module's sites ``relu.0``, ``relu.1``; fx names them ``relu``, ``relu_1``."""
    return re.sub(r"\.(\d+)$", lambda m: "" if m.group(1) == "0" else f"_{m.group(1)}", name) if re.search(
        r"relu\.\d+$", name) else name


def test_resnet18_without_fx_gives_the_sites_of_the_fx_path(monkeypatch):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    example = torch.randn(2, 3, 32, 32)
    traced = convert_relus(copy.deepcopy(model), example)
    assert isinstance(traced, fx.GraphModule)

    def untraceable(*args, **kwargs):
        raise RuntimeError("symbolic tracing unavailable")

    monkeypatch.setattr(convert, "_trace_in_both_modes", untraceable)
    recorded = convert_relus(copy.deepcopy(model), example)
    assert not isinstance(recorded, fx.GraphModule)
    fx_sites = {name: (site.channels, site.inplace) for name, site in support_sites(traced)}
    recorded_sites = {_as_fx_name(name): (site.channels, site.inplace) for name, site in support_sites(recorded)}
    assert len(recorded_sites) == 17 and recorded_sites == fx_sites
    # Same thresholds and pruned channels at same-named sites → same function: each call reaches its site.
    generator = torch.Generator().manual_seed(8)
    fx_by_name = dict(support_sites(traced))
    for name, site in support_sites(recorded):
        site.beta.uniform_(0.0, 0.3, generator=generator)
        site.keep.bernoulli_(0.8, generator=generator)
        fx_by_name[_as_fx_name(name)].load_state_dict(site.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(recorded(x), traced(x), atol=0, rtol=0)


def test_convert_and_support_import_in_either_order_and_name_their_own_definitions():
    """convert.py builds on support.py, never the other way: either imports first, and support.py does not
    hand out convert.py's functions (an import names the module that defines what it takes)."""
    for first, second in (("convert", "support"), ("support", "convert")):
        code = (f"import supportprune.method.{first}, supportprune.method.{second}; import supportprune.method.support as s; "
                "assert not any(hasattr(s, name) for name in ('convert_relus', 'TraceError', 'export_ready'))")
        subprocess.run([sys.executable, "-c", code], check=True)
