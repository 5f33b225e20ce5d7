"""The fused SupportSite path (one where with a folded threshold, ReLU's backward on the saved output)
against the reference path (``SupportSite.fused = False``) and the plain reference functions."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

from supportprune.method.convert import convert_relus
from supportprune.method.support import (
    SupportSite,
    batch_support_mask,
    batch_unit_energy,
    positive_hard_threshold,
    relative_energy,
    set_site_mode,
    support_sites,
)
from tiny_models import TinyResNet

STATS = ("stat_batches", "stat_support_batches", "stat_energy", "stat_max_relative_energy", "stat_kept_units")


def _site(channels, granularity, *, beta=None, keep=None, relative_threshold=0.5, mode="batch"):
    site = SupportSite(channels).train()
    site.mode, site.granularity, site.record_stats = mode, granularity, True
    site.relative_threshold.fill_(relative_threshold)
    if beta is not None:
        site.beta.copy_(beta)
    if keep is not None:
        site.keep.copy_(keep)
    return site


def _run(site, q, fused, grad_out):
    site = copy.deepcopy(site)
    site.fused = fused
    q = q.detach().clone().requires_grad_(True)
    out = site(q)
    out.backward(grad_out)
    return site, out.detach(), q.grad


def _compare(site, q, *, atol=0.0, rtol=0.0, stats_rtol=1e-6):
    grad_out = torch.randn_like(q)
    reference, out_ref, grad_ref = _run(site, q, False, grad_out)
    fused, out_fused, grad_fused = _run(site, q, True, grad_out)
    assert out_fused.dtype == out_ref.dtype and out_fused.shape == out_ref.shape
    torch.testing.assert_close(out_fused, out_ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(grad_fused, grad_ref, atol=atol, rtol=rtol)
    for name in STATS:
        torch.testing.assert_close(getattr(fused, name), getattr(reference, name), rtol=stats_rtol, atol=0.0,
                                   msg=lambda m, name=name: f"{name}: {m}")
    return out_fused, grad_fused


def _beta_and_keep(channels):
    beta = torch.rand(channels) * 0.5
    beta[0] = 0.0
    keep = torch.ones(channels)
    keep[1::3] = 0.0
    return beta, keep


@pytest.mark.parametrize("granularity", ["element", "channel"])
@pytest.mark.parametrize("shape", [(16, 6, 5, 7), (32, 6)])
def test_fused_batch_mode_equals_reference_fp32(granularity, shape):
    channels = shape[1]
    scale = torch.linspace(0.1, 2.0, channels).view((1, -1) + (1,) * (len(shape) - 2))
    q = torch.randn(shape) * scale  # channel energies far apart: channel masks are not all ones
    beta, keep = _beta_and_keep(channels)
    for site in (_site(channels, granularity), _site(channels, granularity, beta=beta, keep=keep)):
        out, grad = _compare(site, q)
        # Both follow Eq. 41 as computed by the plain reference functions.
        activation = positive_hard_threshold(q, site.beta) * site.keep.view((1, -1) + (1,) * (q.dim() - 2))
        mask = batch_support_mask(activation, 0.5, granularity, site.keep)
        torch.testing.assert_close(out, activation * mask)
        assert 0 < int((out != 0).sum()) < int((activation != 0).sum())  # the mask removed something


def test_fused_batch_mode_masks_and_gradients_by_hand():
    site = _site(3, "channel", beta=torch.tensor([0.0, 0.0, 0.5]))
    q = torch.tensor([
        [[[1.0, -5.0]], [[0.2, 0.1]], [[3.0, 0.4]]],
        [[[1.0, 1.0]], [[0.1, -7.0]], [[0.0, 0.0]]],
    ], requires_grad=True)
    out = site(q)
    # η*: channel 2 loses 0.4 (≤ β); energies [3, 0.06, 9], mean 4.02, β_rel = 2.01: channel 1 masked.
    expected = torch.tensor([
        [[[1.0, 0.0]], [[0.0, 0.0]], [[3.0, 0.0]]],
        [[[1.0, 1.0]], [[0.0, 0.0]], [[0.0, 0.0]]],
    ])
    assert torch.equal(out, expected)
    out.sum().backward()
    assert torch.equal(q.grad, (expected > 0).float())
    assert site.stat_support_batches.tolist() == [1.0, 0.0, 1.0]
    assert torch.allclose(site.stat_energy, torch.tensor([3.0, 0.06, 9.0], dtype=torch.float64))


@pytest.mark.parametrize("granularity", ["element", "channel"])
def test_fused_batch_mode_bf16_within_tolerance(granularity):
    q = torch.randn(16, 8, 6, 6).bfloat16()
    beta, keep = _beta_and_keep(8)
    site = _site(8, granularity, beta=beta, keep=keep, relative_threshold=0.3)
    # Same bf16 values pass; energies accumulate in fp32 in both paths (summation order differs).
    _compare(site, q, atol=0.0, rtol=0.0, stats_rtol=1e-5)


def test_fused_energy_is_fp32_accumulated_for_bf16():
    q = torch.rand(64, 4, 8, 8).bfloat16() + 1.0
    site = _site(4, "channel", relative_threshold=0.0)
    site(q)
    expected = batch_unit_energy(torch.relu(q), "channel").double()
    torch.testing.assert_close(site.stat_energy, expected, rtol=1e-4, atol=0.0)  # fp32 summation order
    assert site.stat_energy.tolist() != batch_unit_energy(torch.relu(q), "channel").bfloat16().double().tolist()


@pytest.mark.parametrize("mode", ["threshold", "batch"])
def test_fused_threshold_and_eval_paths_equal_reference(mode):
    beta, keep = _beta_and_keep(6)
    q = torch.randn(8, 6, 4, 4)
    site = _site(6, "channel", beta=beta, keep=keep, mode=mode)
    for train in (True, False):
        site.train(train)
        if train and mode == "batch":
            continue  # covered above
        _compare(site, q)
        with torch.no_grad():
            reference = positive_hard_threshold(q, beta) * keep.view(1, -1, 1, 1)
            assert torch.equal(site(q), reference)


def test_fused_backward_saves_only_the_output():
    site = _site(4, "channel")
    q = torch.randn(8, 4, 5, 5, requires_grad=True)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = site(q)
    assert len(saved) == 1 and saved[0].data_ptr() == out.data_ptr()


def test_fused_stats_follow_relative_energy():
    site = _site(5, "element", relative_threshold=0.7)
    q = torch.randn(12, 5, 3, 3)
    site(q)
    energy = batch_unit_energy(torch.relu(q), "element")
    relative = relative_energy(energy, site.keep)
    torch.testing.assert_close(site.stat_max_relative_energy, relative.flatten(1).amax(1), rtol=1e-6, atol=0)
    torch.testing.assert_close(site.stat_kept_units, (relative > 0.7).float().mean().double(), rtol=1e-6, atol=0)


def _converted(model_factory, example, granularity):
    model = convert_relus(model_factory().eval(), example).train()
    set_site_mode(model, "batch", granularity=granularity, relative_threshold=0.5, record_stats=True)
    for _, site in support_sites(model):
        site.beta.uniform_(0.0, 0.05)
        site.keep[0] = 0.0
    return model


def _step_grads(model, images, labels, fused):
    model = copy.deepcopy(model)
    for _, site in support_sites(model):
        site.fused = fused
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    stats = {f"{n}.{s}": getattr(site, s).clone() for n, site in support_sites(model) for s in STATS}
    return loss.detach(), grads, stats


@pytest.mark.parametrize(("network", "granularity"), [("tiny", "element"), ("tiny", "channel"), ("resnet18", "channel")])
def test_converted_network_parameter_gradients_match(network, granularity):
    if network == "tiny":
        factory, images = TinyResNet, torch.randn(8, 1, 12, 12)
    else:
        factory, images = (lambda: torchvision.models.resnet18(num_classes=10)), torch.randn(4, 3, 32, 32)
    labels = torch.randint(0, 10, (images.shape[0],))
    model = _converted(factory, images[:2], granularity)
    loss_ref, grads_ref, stats_ref = _step_grads(model, images, labels, fused=False)
    loss, grads, stats = _step_grads(model, images, labels, fused=True)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-6)
    for name in grads_ref:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    for name in stats_ref:
        torch.testing.assert_close(stats[name], stats_ref[name], rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")


def test_reference_selected_per_class_and_per_instance(monkeypatch):
    """Which path a forward takes: the fused one by default, the reference one for an instance or the
    whole class set to ``fused = False``, and the reference one in fixed mode whatever the flag."""
    taken = []
    for path in ("_forward_reference", "_forward_batch_fused", "_forward_threshold_fused"):
        original = getattr(SupportSite, path)
        monkeypatch.setattr(SupportSite, path, lambda self, q, _p=path, _f=original: taken.append(_p) or _f(self, q))
    q = torch.randn(4, 3, 5, 5)

    def path_of(site):
        taken.clear()
        site(q)
        return taken

    assert path_of(_site(3, "channel")) == ["_forward_batch_fused"]
    assert path_of(_site(3, "channel").eval()) == ["_forward_threshold_fused"]
    one = _site(3, "channel")
    one.fused = False
    assert path_of(one) == ["_forward_reference"]
    assert path_of(_site(3, "channel")) == ["_forward_batch_fused"]  # the other instances stay fused
    fixed = _site(3, "channel", mode="fixed")
    fixed.fixed_support = torch.ones(4, 3, dtype=torch.bool)
    assert path_of(fixed) == ["_forward_reference"]
    monkeypatch.setattr(SupportSite, "fused", False)
    assert path_of(_site(3, "channel")) == ["_forward_reference"]
    assert path_of(_site(3, "element", mode="threshold")) == ["_forward_reference"]


def _compile_works() -> bool:
    try:
        torch.compile(lambda x: x * 2)(torch.ones(2))
        return True
    except Exception:  # no C++ compiler, or no Inductor backend on this build
        return False


@pytest.mark.parametrize("granularity", ["element", "channel"])
def test_compiled_batch_site_matches_reference(granularity):
    if not _compile_works():
        pytest.skip("torch.compile is unavailable here")
    torch._dynamo.reset()
    beta, keep = _beta_and_keep(6)
    site = _site(6, granularity, beta=beta, keep=keep)
    q = torch.randn(16, 6, 5, 5)
    grad_out = torch.randn_like(q)
    reference, out_ref, grad_ref = _run(site, q, False, grad_out)
    compiled_site = copy.deepcopy(site)
    compiled = torch.compile(compiled_site, fullgraph=True)
    x = q.clone().requires_grad_(True)
    out = compiled(x)
    out.backward(grad_out)
    torch.testing.assert_close(out.detach(), out_ref)
    torch.testing.assert_close(x.grad, grad_ref)
    for name in STATS:
        torch.testing.assert_close(getattr(compiled_site, name), getattr(reference, name), rtol=1e-5, atol=0.0)


def test_eager_relu_shortcut_follows_beta_changes():
    site = _site(4, "channel", mode="threshold")
    q = torch.randn(8, 4, 3, 3)
    assert torch.equal(site(q), torch.relu(q))  # β = 0: ReLU's kernel
    site.beta[2] = 0.3  # in place: the cached "β = 0" must not survive
    expected = positive_hard_threshold(q, site.beta)
    assert torch.equal(site(q), expected)
    site.beta = torch.zeros(4)  # replaced
    assert torch.equal(site(q), torch.relu(q))


@pytest.mark.parametrize("granularity", ["element", "channel"])
@pytest.mark.parametrize("with_beta", [False, True])
def test_inplace_site_equals_reference_and_writes_into_its_input(granularity, with_beta):
    torch.manual_seed(4)
    beta, keep = _beta_and_keep(6)
    site = _site(6, granularity, beta=beta if with_beta else None, keep=keep)
    inplace = copy.deepcopy(site)
    inplace.inplace = True
    x = torch.randn(16, 6, 5, 7)
    grad_out = torch.randn_like(x)
    reference, out_ref, grad_ref = _run(site, x, False, grad_out)
    leaf = x.clone().requires_grad_(True)
    q = leaf * 1.0  # a non-leaf, as a batch norm's output is
    out = inplace(q)
    assert out.data_ptr() == q.data_ptr()  # no new activation
    out.backward(grad_out)
    torch.testing.assert_close(out.detach(), out_ref, atol=0, rtol=0)
    torch.testing.assert_close(leaf.grad, grad_ref, atol=0, rtol=0)
    for name in STATS:
        torch.testing.assert_close(getattr(inplace, name), getattr(reference, name), rtol=1e-6, atol=0.0)


def test_sites_are_inplace_exactly_where_the_relus_were():
    class Mixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.module_inplace = torch.nn.ReLU(inplace=True)
            self.module_plain = torch.nn.ReLU()

        def forward(self, x):
            x = self.module_inplace(self.conv(x))
            x = self.module_plain(x * 2)
            x = F.relu(x * 2, inplace=True)
            x = F.relu(x * 2)
            return torch.relu_(x * 2).relu_()

    model = convert_relus(Mixed(), torch.randn(2, 1, 6, 6))
    assert [site.inplace for _, site in support_sites(model)] == [True, False, True, False, True, True]
    # A converted torchvision model computes the same as before, in-place sites and all.
    reference = torchvision.models.resnet18(num_classes=10).eval()
    converted = convert_relus(copy.deepcopy(reference), torch.randn(1, 3, 32, 32)).eval()
    assert all(site.inplace for _, site in support_sites(converted))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(converted(x), reference(x))
