"""Channel importances from torch-pruning (1.6.1), scored per coupled group as torch-pruning scores it.

- ``l1``, ``l2``: ``GroupMagnitudeImportance`` (p = 1, 2): Σ|w|^p of every weight that produces or consumes
  the channel, mean over the coupled layers, divided by the group's mean (so scores compare across layers
  the way relative energies do);
- ``fpgm``: ``FPGMImportance`` (He et al. 2019): a channel's summed distance to the group's other channels'
  weights (near the geometric median: redundant, pruned first);
- ``lamp``: ``LAMPImportance`` (Lee et al. 2021): squared norms rescaled by the norms of the group's
  stronger channels;
- ``bn_scale``: ``BNScaleImportance`` (network slimming, Liu et al. 2017): |γ| of the group's batch norms;
- ``random``: uniform scores, seeded.

Adding another torch-pruning importance is one entry in ``WEIGHT_IMPORTANCES`` and one in the registry
(``criteria.REGISTRY``), whose names the recipe accepts. The gradient importances (Taylor, Hessian) are in ``gradients``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch_pruning as tp
from torch import Tensor, nn

from supportprune.method.criteria.base import Criterion
from supportprune.method.pruning import SiteGroup, dependency_graph, site_groups
from supportprune.method.support import support_sites

# recipe name → torch-pruning importance (called on a group, returns a score per root channel)
WEIGHT_IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "fpgm": lambda: tp.importance.FPGMImportance(),
    "lamp": lambda: tp.importance.LAMPImportance(),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
}


def group_scores(
    model: nn.Module, example_input: Tensor, score_group: Callable[[SiteGroup], Optional[Tensor]]
) -> dict[str, Tensor]:
    """Per site, the score of each channel's group, ``score_group(group)`` (one value per root channel).

    Channels of one coupled group get the group's score at every site, so the group decision (a channel
    dies only when it scores low everywhere) is the criterion's decision for the group. A group the
    criterion cannot measure (``None``: bn_scale without a batch norm) scores +inf: it is kept.
    """
    scores = {name: torch.zeros(site.channels) for name, site in support_sites(model)}
    for group in site_groups(dependency_graph(model, example_input)):
        root_scores = score_group(group)
        root_scores = (torch.full((group.channels,), math.inf) if root_scores is None
                       else root_scores.detach().float().cpu())
        for member in group.members:
            scores[member.name][list(member.idxs)] = root_scores[list(member.root_idxs)]
    return scores


class ImportanceCriterion(Criterion):
    """A torch-pruning importance, computed on the weights at the alternation point."""

    def __init__(self, name: str, importance: tp.importance.Importance) -> None:
        self.name, self.importance = name, importance

    def scores(self, model: nn.Module, example_input: Tensor) -> dict[str, Tensor]:
        return group_scores(model, example_input, lambda group: self.importance(group.group))


class RandomCriterion(Criterion):
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def scores(self, model: nn.Module, example_input: Tensor) -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        return group_scores(model, example_input, lambda group: torch.rand(group.channels, generator=generator))
