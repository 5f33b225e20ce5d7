"""Learned sparsity before the cut: a growing group penalty on the channels the cut would remove.

The support criterion thresholds support energy once, at the alternation point; the network then loses
those channels in one step. Here (``sparse.group_decay``, as GReg's growing regularisation, Wang et al.,
"Neural pruning via growing regularization", ICLR 2021, and DepGraph's sparse training), in the Sparse epochs up
to the first alternation point the channels that the criterion's plan would cut at the target are chosen
again every few steps from the current scores, and after each optimizer step the weights that produce them
(the convolution's or linear layer's output rows and bias, a batch norm's scale and shift) are multiplied by
exp(-r_t), with r_t growing linearly so that the rates sum to ``group_decay`` e-folds by the cut. Their
outputs fade, their support energy goes to zero, the rest of the network learns to do without them while it
can still adapt, and the cut removes channels with (almost) zero support, as the paper's rule says.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from supportprune.method.pruning import apply_keep_masks, pruned_slices

_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def decay_rate(step: int, steps: int, total: float) -> float:
    """The e-folds applied after step ``step`` (1-based) of ``steps``: linear growth, summing to ``total``."""
    if not 1 <= step <= steps:
        return 0.0
    return total * 2.0 * step / (steps * (steps + 1))


def producing_slices(model: nn.Module, example_input: Tensor, keep: dict[str, Tensor]) -> list[tuple[str, list[int]]]:
    """(module name, channel indices) of every weight that produces a channel ``keep`` (0/1 per site) removes."""
    trial = copy.deepcopy(model)
    apply_keep_masks(trial, keep)
    names = {module: name for name, module in trial.named_modules()}
    slices = []
    for module, idxs, out_channels in pruned_slices(trial, example_input)[0]:
        if module not in names:
            continue
        depthwise = isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.out_channels
        if (isinstance(module, _PRODUCERS) and (out_channels or depthwise)) or (
                isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine):
            slices.append((names[module], list(idxs)))
    return slices


@torch.no_grad()
def fade(model: nn.Module, slices: list[tuple[str, list[int]]], rate: float) -> None:
    """Multiply the producing weights of ``slices`` by exp(-rate)."""
    factor = math.exp(-rate)
    for name, idxs in slices:
        module = model.get_submodule(name)
        for tensor in (module.weight, module.bias):
            if tensor is not None:
                tensor[idxs] *= factor
