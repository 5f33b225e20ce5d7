"""I-alternation (Huang, Kong, Lucey 2017, section 4.1, Eq. 36–38) and the MaskT test mode.

I-alternation keeps one multi-layer support per training example. With weights fixed, Eq. 36 is
solved in closed form unit by unit (Eq. 37): m_i = 1 iff x_i² > β (Eq. 38), where x is the site's
activation for that one example. With the supports fixed, the network is linear in its input (Eq. 13)
and its weights are trained for a gap of epochs; then the supports are re-estimated.

Eq. 38 is Eq. 41 for a batch of one example, and β is expressed the same way: ``relative_threshold``
times the example's mean unit energy at the site, so one number serves every layer. With
``relative_threshold`` = 0 and β = 0, the support is ReLU's, [q > 0].

Everything here is a function of tensors and modules; the training loop stores the masks (``mask_store``)
and decides when to estimate them.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from supportprune.method.support import Granularity, SupportSite, _per_channel, support_sites

# How `train` trains its supports: none (plain SGD, ReLU), instance (I-alternation, Eq. 36–38), batch (B-alternation,
# Eq. 39–41); the Sparse step alternates by instance or batch.
ALTERNATIONS = ("none", "instance", "batch")


def instance_unit_energy(x: Tensor, granularity: Granularity) -> Tensor:
    """x_i² for every example and unit: (N, *x.shape[1:]) for ``element``; (N, C) for ``channel``
    (a channel's energy summed over its positions)."""
    energy = x.float().square()
    if granularity == "channel" and energy.dim() > 2:
        energy = energy.flatten(2).sum(dim=2)
    return energy


def instance_relative_energy(energy: Tensor, keep: Tensor | None = None) -> Tensor:
    """Each example's unit energies divided by that example's mean unit energy at the site; pruned
    channels (``keep`` = 0) are left out of the mean, as in ``support.relative_energy``."""
    flat = energy.flatten(1)
    if keep is None:
        mean = flat.mean(dim=1)
    else:
        live = _per_channel(keep.to(energy.dtype), energy).expand_as(energy).flatten(1)
        mean = (flat * live).sum(dim=1) / live.sum(dim=1).clamp(min=1)
    mean = mean.clamp(min=torch.finfo(energy.dtype).tiny)
    return energy / mean.view((-1,) + (1,) * (energy.dim() - 1))


def instance_support_mask(
    x: Tensor, relative_threshold: float, granularity: Granularity, keep: Tensor | None = None
) -> Tensor:
    """Eq. 38 for every example of ``x`` on its own: m_i = 1 iff x_i² > β, β = ``relative_threshold`` ×
    the example's mean unit energy. Boolean, (N, *x.shape[1:]) or (N, C) for ``channel``."""
    return instance_relative_energy(instance_unit_energy(x, granularity), keep) > relative_threshold


@torch.no_grad()
def estimate_instance_supports(
    model: nn.Module, images: Tensor, relative_threshold: float, granularity: Granularity, *, record_stats: bool = False
) -> dict[str, Tensor]:
    """One support per example of ``images`` at every site (Eq. 38), from the current weights.

    The model runs in eval mode with every site thresholding (η*, pruned channels removed), so the
    activation x of Eq. 38 is what each site would output for that example alone. ``record_stats``
    also adds each example's *channel* supports, under the site's own ``relative_threshold``, to the
    sites' statistics (examples with support, largest relative energy per channel): the Sparse step's
    pruning reads them exactly as it reads B-alternation's.
    Returns {site name: boolean (N, *unit_shape)}.
    """
    sites = dict(support_sites(model))
    saved_modes = {name: site.mode for name, site in sites.items()}
    supports: dict[str, Tensor] = {}

    def hook(name: str):
        def capture(module: SupportSite, args, output: Tensor) -> None:
            supports[name] = instance_support_mask(output, relative_threshold, granularity, module.keep)
            if record_stats:
                energy = instance_unit_energy(output, "channel")
                relative = instance_relative_energy(energy, module.keep)
                _record_instance(module, energy, relative, relative > module.relative_threshold)
        return capture

    handles = [site.register_forward_hook(hook(name)) for name, site in sites.items()]
    was_training = model.training
    for site in sites.values():
        site.mode = "threshold"
    model.eval()
    try:
        model(images)
    finally:
        for handle in handles:
            handle.remove()
        for name, site in sites.items():
            site.mode = saved_modes[name]
        model.train(was_training)
    return supports


def _record_instance(site: SupportSite, energy: Tensor, relative: Tensor, mask: Tensor) -> None:
    """Add one batch of per-example channel supports, (N, C), to the site's statistics (one observation
    per example)."""
    site.stat_batches += mask.shape[0]
    site.stat_support_batches += mask.float().sum(dim=0)
    site.stat_energy += energy.sum(dim=0).double()
    site.stat_max_relative_energy.copy_(torch.maximum(site.stat_max_relative_energy, relative.amax(dim=0)))
    site.stat_kept_units += mask.float().mean(dim=1).sum().double()


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Re-estimate every batch norm's running statistics from ``batches`` (an exact average over them),
    with the sites as they are set (η* after an I-alternation epoch). Returns the batches used.

    Why: while the supports are fixed, a site passes m ⊙ q, negative q included where the stored support
    is 1, so the running statistics that training accumulates describe that linearised network, not the
    η* network that is tested. Measured on the embedded data: a DSD (I-alternation) sparse resnet18 had
    22% top-1 with the statistics of its fixed-support epoch and 79% after this pass.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = {norm: norm.momentum for norm in norms}
    was_training = model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    used = 0
    try:
        for images in batches:
            model(images)
            used += 1
    finally:
        for norm in norms:
            norm.momentum = momenta[norm]
        model.train(was_training)
    return used


def majority_supports(support_counts: dict[str, Tensor], examples: int) -> dict[str, Tensor]:
    """MaskT's test-time supports: unit i is on iff its support was 1 for more than half of the
    ``examples`` training examples (``support_counts``: per site, how many were on, per unit).

    The paper's Table 2 ablation ("applies the binary mask rather than ReLU activations for testing")
    does not say which mask a test example gets; a test example has no stored support, so it gets the
    training set's majority support, the same for every example. Shape (1, *unit_shape).
    """
    return {name: (counts > examples / 2).unsqueeze(0) for name, counts in support_counts.items()}


def support_dims(model: nn.Module, example_input: Tensor, granularity: Granularity) -> dict[str, tuple[int, ...]]:
    """Per site, the shape of one example's support: the activation's shape without the batch dim
    (``element``) or (C,) (``channel``)."""
    shapes: dict[str, tuple[int, ...]] = {}
    masks = estimate_instance_supports(model, example_input[:1], 0.0, granularity)
    for name, mask in masks.items():
        shapes[name] = tuple(mask.shape[1:])
    return shapes

