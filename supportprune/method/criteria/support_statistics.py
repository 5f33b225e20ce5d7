"""Channel scores derived from the support statistics the sites record in the Sparse step (``sparse.support_statistic``).

- ``max_energy``: the largest relative energy the channel had in any observed batch. Its support stayed
  zero at threshold τ exactly when this is ≤ τ (Eq. 41), so a threshold on it is a threshold on the support.
- ``frequency``: the share of observed batches (I-alternation: examples) in which the channel's support
  was non-zero; ties (many channels are always on) are broken by ``max_energy``, by less than one batch.
- ``energy_x_consumer``: the channel's mean energy relative to its site's mean, times the squared norm of
  the weights that consume it (every conv/linear input-channel slice of its coupled group, as
  torch-pruning's dependency graph finds them) relative to its group's mean: the energy the channel
  feeds forward, not only the energy it has.

- ``energy_lamp``: the channel's mean energy per batch, rescaled within its site as LAMP rescales squared
  weight norms (Lee et al. 2021): e_c / Σ_{j: e_j ≥ e_c} e_j over the site's live channels. The largest
  channel of every site scores 1, and a channel's score falls with the energy of the channels stronger
  than it, so one global threshold prunes wide layers of many weak channels harder than narrow ones.

Sites that observed no batch score zero everywhere (as ``max_energy`` always did). Pure functions.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch_pruning as tp
from torch import Tensor, nn

from supportprune.method.pruning import SiteGroup, dependency_graph, site_groups
from supportprune.method.support import support_sites

CONSUMER_HANDLERS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


def max_energy(model: nn.Module) -> dict[str, Tensor]:
    return {name: site.stat_max_relative_energy.detach().float().cpu().clone() for name, site in support_sites(model)}


def support_frequency(model: nn.Module) -> dict[str, Tensor]:
    scores = {}
    for name, site in support_sites(model):
        batches = int(site.stat_batches)
        frequency = site.stat_support_batches.detach().double().cpu() / max(batches, 1)
        strongest = site.stat_max_relative_energy.detach().double().cpu()
        # Frequencies are multiples of 1/batches: a tie-break below 1/(batches + 1) keeps their order.
        scores[name] = (frequency + strongest / (1 + strongest) / (batches + 1)).float()
    return scores


def mean_energy(site) -> Tensor:
    """A site's energy per channel, averaged over the batches it observed (float64, on the CPU)."""
    return site.stat_energy.detach().double().cpu() / max(int(site.stat_batches), 1)


def relative_mean_energy(model: nn.Module) -> dict[str, Tensor]:
    """Per site, each channel's mean energy per batch over the mean of the site's kept channels."""
    relative = {}
    for name, site in support_sites(model):
        energy = mean_energy(site)
        live = site.keep.detach().cpu() > 0
        mean = energy[live].mean() if bool(live.any()) else energy.new_zeros(())
        relative[name] = (energy / mean if mean > 0 else torch.zeros_like(energy)).float()
    return relative


def consumer_norms(group: SiteGroup) -> Tensor:
    """Per root channel of ``group``, Σ ||W[:, c]||² over the conv/linear layers that read the channel.
    (A flatten maps several input columns of a linear layer to one channel: they add up.)"""
    norms = torch.zeros(group.channels, dtype=torch.float64)
    for item in group.group:
        module, handler = item.dep.target.module, item.dep.handler
        if handler not in CONSUMER_HANDLERS or item.root_idxs is None or None in item.root_idxs:
            continue
        per_input = module.weight.detach().transpose(0, 1).flatten(1).double().pow(2).sum(1).cpu()
        if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups != module.in_channels:
            per_input = per_input.repeat(module.groups)  # torch-pruning's layout of grouped convolutions
        norms.scatter_add_(0, torch.tensor(item.root_idxs), per_input[list(item.idxs)])
    return norms


def energy_x_consumer(model: nn.Module, example_input: Tensor) -> dict[str, Tensor]:
    energy = relative_mean_energy(model)
    scores = {name: torch.zeros(site.channels) for name, site in support_sites(model)}
    for group in site_groups(dependency_graph(model, example_input)):
        norms = consumer_norms(group)
        alive = group.alive({m.name: m.site.keep.cpu() > 0 for m in group.members})
        mean = norms[alive].mean() if bool(alive.any()) else norms.new_zeros(())
        relative = (norms / mean if mean > 0 else torch.ones_like(norms)).float()
        for member in group.members:
            idxs = list(member.idxs)
            scores[member.name][idxs] = energy[member.name][idxs] * relative[list(member.root_idxs)]
    return scores


def lamp_rescaled(values: Tensor, live: Tensor) -> Tensor:
    """LAMP's rescaling of ``values`` over the ``live`` entries: v_c / Σ_{j live, v_j ≥ v_c} v_j (dead: 0)."""
    scores = torch.zeros_like(values, dtype=torch.float64)
    alive = live.nonzero().flatten()
    if alive.numel() == 0:
        return scores.float()
    kept = values[alive].double()
    order = torch.argsort(kept, descending=True, stable=True)
    cumulative = torch.cumsum(kept[order], 0)
    rescaled = torch.where(cumulative > 0, kept[order] / cumulative.clamp_min(1e-300), torch.zeros_like(cumulative))
    scores[alive[order]] = rescaled
    return scores.float()


def energy_lamp(model: nn.Module) -> dict[str, Tensor]:
    scores = {}
    for name, site in support_sites(model):
        energy = mean_energy(site)
        scores[name] = lamp_rescaled(energy, site.keep.detach().cpu() > 0)
    return scores


# name (sparse.support_statistic) → per-site channel scores of the model (and its example input)
STATISTICS: dict[str, Callable[[nn.Module, Tensor], dict[str, Tensor]]] = {
    "max_energy": lambda model, example_input: max_energy(model),
    "frequency": lambda model, example_input: support_frequency(model),
    "energy_x_consumer": energy_x_consumer,
    "energy_lamp": lambda model, example_input: energy_lamp(model),
}


def support_statistic(model: nn.Module, example_input: Tensor, statistic: str) -> dict[str, Tensor]:
    if statistic not in STATISTICS:
        raise ValueError(f"support statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    return STATISTICS[statistic](model, example_input)
