"""Sparse-step pruning criteria: one strategy per file, and the registry from recipe names to strategies.

``make_criterion(config)`` builds the criterion ``sparse.criterion`` names; every channel criterion is
matched to the target by the same threshold search (``dsd.alternation_point``), magnitude prunes weights.
"""

from __future__ import annotations

from typing import Callable

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
from supportprune.inputs.recipe import SparseConfig

# recipe name → strategy, built from the Sparse step's config and the run's seed
REGISTRY: dict[str, Callable[[SparseConfig, int], Criterion]] = {
    "support": lambda config, seed: (InstanceSupportCriterion if config.alternation == "instance"
                                     else BatchSupportCriterion)(config.support_statistic),
    "magnitude": lambda config, seed: MagnitudeCriterion(),
    "random": lambda config, seed: RandomCriterion(seed),
    "taylor": lambda config, seed: TaylorCriterion(config.observe_batches),
    "hessian": lambda config, seed: HessianCriterion(config.observe_batches),
    **{name: (lambda config, seed, name=name, make=make: ImportanceCriterion(name, make()))
       for name, make in WEIGHT_IMPORTANCES.items()},
}


def make_criterion(config: SparseConfig, *, seed: int = 0) -> Criterion:
    if config.criterion not in REGISTRY:
        raise ValueError(f"criterion must be one of {', '.join(REGISTRY)}, got {config.criterion!r}")
    return REGISTRY[config.criterion](config, seed)


def channel_scores(model, example_input, criterion: str, *, seed: int = 0):
    """Scores of a channel criterion that observes nothing (l1, l2, fpgm, lamp, bn_scale, random)."""
    return make_criterion(SparseConfig(criterion=criterion, target_macs=1.0), seed=seed).scores(model, example_input)


__all__ = [
    "REGISTRY", "Criterion", "make_criterion", "channel_scores", "apply_weight_masks", "magnitude_masks",
    "nonzero_parameters", "prunable_weights", "sparsity_matching_parameters",
]
