"""What every Sparse-step pruning criterion offers the run, whatever decides the pruning.

A criterion may observe training batches at an alternation point (``observe``: the gradient criteria
need a few), then scores every site's channels (``scores``: higher is more important) or, for a weight
criterion, gives weight keep masks. The scores are matched to the target by the caller
(``dsd.alternation_point``: the same threshold search on MACs, or the latency allocation, for every
criterion). What a criterion has observed is its state (``state_dict``), saved with the run's checkpoints.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn


class Criterion:
    """The interface; the defaults fit a criterion that observes nothing and has no state."""

    name: ClassVar[str] = ""
    prunes: ClassVar[str] = "channels"  # or "weights" (unstructured: ``weight_masks`` instead of ``scores``)
    observe_batches: int = 0  # training batches ``observe`` wants before each decision (0: none)

    def observe(self, model: nn.Module, images: Tensor, labels: Tensor) -> None:
        """Take one training batch into account (called ``observe_batches`` times before ``scores``)."""

    def scores(self, model: nn.Module, example_input: Tensor) -> dict[str, Tensor]:
        """Per site, a score per channel (higher: more important). Channels of a coupled group that have
        nothing to be measured by score +inf (kept)."""
        raise NotImplementedError(f"criterion {self.name} does not score channels")

    def reset(self) -> None:
        """Forget what was observed (after each decision: the next one observes anew)."""

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"criterion {self.name} has no state, got keys {sorted(state)}")
