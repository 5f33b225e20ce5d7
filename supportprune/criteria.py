"""Baselines for the Sparse step: what decides the pruning when it is not the learned support.

- ``l1``, ``l2``: channel norms of every weight that produces or consumes the channel, as torch-pruning's
  ``GroupMagnitudeImportance`` computes them (mean over the coupled layers, divided by the group's mean,
  so scores compare across layers the way relative energies do);
- ``random``: uniform scores, seeded;
- ``magnitude``: DSD's own criterion (Han et al. 2017): per layer, the smallest weights by |w| are
  zeroed, unstructured. It removes parameters, not MACs on dense hardware.

Channel baselines are pruned to a MACs target with the same search as the support
(``pruning.search_relative_threshold``), so at one target every criterion keeps the same MACs up to
one channel; magnitude is matched on parameters instead. Pure functions, no I/O.
"""

from __future__ import annotations

import math

import torch
import torch_pruning as tp
from torch import Tensor, nn

from supportprune.pruning import dependency_graph, site_groups
from supportprune.recipe import CHANNEL_CRITERIA
from supportprune.support import support_sites

PRUNABLE_WEIGHTS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def channel_scores(model: nn.Module, example_input: Tensor, criterion: str, *, seed: int = 0) -> dict[str, Tensor]:
    """A score per channel of every site (higher: more important) under ``criterion`` (l1, l2, random).

    Channels of one coupled group get the group's score at every site, so the group decision (a channel
    dies only when it scores low everywhere) is the criterion's decision for the group.
    """
    if criterion not in CHANNEL_CRITERIA:
        raise ValueError(f"channel criterion must be one of {CHANNEL_CRITERIA}, got {criterion!r}")
    scores = {name: torch.zeros(site.channels) for name, site in support_sites(model)}
    generator = torch.Generator().manual_seed(seed)
    importance = tp.importance.GroupMagnitudeImportance(p=1 if criterion == "l1" else 2) if criterion != "random" else None
    for group in site_groups(dependency_graph(model, example_input)):
        if importance is None:
            root_scores = torch.rand(group.channels, generator=generator)
        else:
            root_scores = importance(group.group).detach().float().cpu()
        for member in group.members:
            scores[member.name][list(member.idxs)] = root_scores[list(member.root_idxs)]
    return scores


def prunable_weights(model: nn.Module) -> dict[str, Tensor]:
    """The weights DSD prunes: every convolution's and linear layer's weight matrix (biases and norm
    parameters are kept)."""
    return {f"{name}.weight": module.weight for name, module in model.named_modules() if isinstance(module, PRUNABLE_WEIGHTS)}


@torch.no_grad()
def magnitude_masks(model: nn.Module, sparsity: float) -> dict[str, Tensor]:
    """DSD's Sparse step: in every layer, keep the (1 - sparsity) share of weights largest in |w|.
    Returns {parameter name: boolean keep mask}. Ties at the threshold are broken by position."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    masks = {}
    for name, weight in prunable_weights(model).items():
        pruned = int(math.floor(sparsity * weight.numel()))
        mask = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
        if pruned:
            mask[torch.argsort(weight.detach().abs().flatten(), stable=True)[:pruned]] = False
        masks[name] = mask.view_as(weight)
    return masks


@torch.no_grad()
def apply_weight_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Zero the pruned weights (in place); called after every optimiser step of the Sparse phase."""
    parameters = dict(model.named_parameters())
    for name, mask in masks.items():
        parameters[name].mul_(mask.to(parameters[name].dtype))


def sparsity_matching_parameters(model: nn.Module, parameters_to_remove: int) -> float:
    """The per-layer sparsity at which magnitude pruning removes ``parameters_to_remove`` weights (the
    comparison at equal parameters with a channel-pruned model)."""
    total = sum(w.numel() for w in prunable_weights(model).values())
    return min(max(parameters_to_remove / max(total, 1), 0.0), 0.99)


def nonzero_parameters(model: nn.Module) -> int:
    """Parameters that are not exactly zero: what an unstructured-pruned model really keeps."""
    return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))
