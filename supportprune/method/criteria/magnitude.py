"""``magnitude``: DSD's own Sparse-step criterion (Han et al. 2017): per layer, the smallest weights by |w|
are zeroed, unstructured. It removes parameters, not MACs on dense hardware, so it is matched on
parameters, not MACs. Pure functions, no I/O.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from supportprune.method.criteria.base import Criterion

PRUNABLE_WEIGHTS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


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


class MagnitudeCriterion(Criterion):
    """Prunes weights, not channels: the loop keeps the masked weights at zero after every step."""

    name = "magnitude"
    prunes = "weights"

    def weight_masks(self, model: nn.Module, sparsity: float) -> dict[str, Tensor]:
        return magnitude_masks(model, sparsity)
