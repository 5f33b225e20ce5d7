"""Sparse-step pruning criteria: one strategy per file, and the registry from recipe names to strategies.

``make_criterion(config)`` builds the criterion ``sparse.criterion`` names; every channel criterion is
matched to the target by the same threshold search (``dsd.alternation_point``), magnitude prunes weights.
The registry is the one list of names: the recipe accepts its keys (``CRITERIA``), so adding a criterion is
one entry here. ``config`` is the recipe's sparse section (``inputs.recipe.SparseConfig``).
"""

from __future__ import annotations

from typing import Any, Callable

from supportprune.method.criteria.base import Criterion
from supportprune.method.criteria.gradients import HessianCriterion, TaylorCriterion
from supportprune.method.criteria.importance import WEIGHT_IMPORTANCES, ImportanceCriterion, RandomCriterion
from supportprune.method.criteria.magnitude import (
    MagnitudeCriterion,
    apply_weight_masks,
    magnitude_masks,
    nonzero_parameters,
    prunable_weights,
    sparsity_matching_parameters,
)
from supportprune.method.criteria.support_batch import BatchSupportCriterion
from supportprune.method.criteria.support_instance import InstanceSupportCriterion
from supportprune.method.criteria.support_statistics import STATISTICS


def _weight_importance(name: str) -> Callable[[Any, int], Criterion]:
    return lambda config, seed: ImportanceCriterion(name, WEIGHT_IMPORTANCES[name]())


# recipe name → strategy, built from the Sparse step's config and the run's seed
REGISTRY: dict[str, Callable[[Any, int], Criterion]] = {
    "support": lambda config, seed: (InstanceSupportCriterion if config.alternation == "instance"
                                     else BatchSupportCriterion)(config.support_statistic),
    "magnitude": lambda config, seed: MagnitudeCriterion(),
    "l1": _weight_importance("l1"),
    "l2": _weight_importance("l2"),
    "random": lambda config, seed: RandomCriterion(seed),
    "taylor": lambda config, seed: TaylorCriterion(config.observe_batches),
    "fpgm": _weight_importance("fpgm"),
    "lamp": _weight_importance("lamp"),
    "hessian": lambda config, seed: HessianCriterion(config.observe_batches),
    "bn_scale": _weight_importance("bn_scale"),
}
CRITERIA = tuple(REGISTRY)  # what sparse.criterion accepts
CHANNEL_CRITERIA = tuple(name for name in REGISTRY if name not in ("support", "magnitude"))  # baselines to a MACs target
SUPPORT_STATISTICS = tuple(STATISTICS)  # what sparse.support_statistic accepts


def make_criterion(config: Any, *, seed: int = 0) -> Criterion:
    if config.criterion not in REGISTRY:
        raise ValueError(f"criterion must be one of {', '.join(REGISTRY)}, got {config.criterion!r}")
    return REGISTRY[config.criterion](config, seed)


def channel_scores(model, example_input, criterion: str, *, seed: int = 0):
    """Scores of a channel criterion that observes nothing (l1, l2, fpgm, lamp, bn_scale, random): their
    strategies read no setting of the sparse section."""
    if criterion not in REGISTRY:
        raise ValueError(f"criterion must be one of {', '.join(REGISTRY)}, got {criterion!r}")
    return REGISTRY[criterion](None, seed).scores(model, example_input)


__all__ = [
    "REGISTRY", "CRITERIA", "CHANNEL_CRITERIA", "SUPPORT_STATISTICS", "Criterion", "make_criterion", "channel_scores",
    "apply_weight_masks", "magnitude_masks",
    "nonzero_parameters", "prunable_weights", "sparsity_matching_parameters",
]
