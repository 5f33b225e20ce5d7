"""Gradient importances from torch-pruning (1.6.1): they observe a few training batches before deciding.

- ``taylor``: ``GroupTaylorImportance`` (Molchanov et al. 2019): Σ|w·∂L/∂w| over the channel's weights,
  with ∂L/∂w accumulated over the observed batches (torch-pruning's usage: several ``backward`` calls
  without zeroing the gradient), here as their mean;
- ``hessian``: ``GroupHessianImportance`` (optimal brain damage): Σ w²·h with h the diagonal of the
  empirical Fisher, the mean of squared per-example gradients (torch-pruning's documented usage: the
  loss with ``reduction='none'``, one ``backward`` per example). torch-pruning's own ``accumulate_grad``
  keys its check by name but stores by parameter, so it keeps only the last example; we accumulate here.

The batches are observed in eval mode (batch norm on its running statistics, sites thresholding each
example), so observing changes nothing in the model; the training gradients are put back afterwards.
The accumulated gradients are the criterion's state.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn

from supportprune.method.criteria.base import Criterion
from supportprune.method.criteria.importance import group_scores


@contextmanager
def _gradients(model: nn.Module, grads: dict[str, Tensor] | None = None) -> Iterator[None]:
    """Inside: every parameter's ``.grad`` is ``grads[name]`` (None when absent); afterwards the gradients
    from before are back. With ``grads`` None the block starts from no gradient (for its own backward)."""
    parameters = dict(model.named_parameters())
    saved = {name: p.grad for name, p in parameters.items()}
    was_training = model.training
    try:
        for name, p in parameters.items():
            p.grad = None if grads is None or name not in grads else grads[name].to(p.device, p.dtype)
        yield
    finally:
        for name, p in parameters.items():
            p.grad = saved[name]
        model.train(was_training)


class GradientCriterion(Criterion):
    """Accumulates one tensor per parameter over the observed batches; scores with their mean as ``.grad``."""

    importance: tp.importance.Importance

    def __init__(self, observe_batches: int) -> None:
        self.observe_batches = observe_batches
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def _accumulate(self, model: nn.Module, weight: int = 1, power: int = 1) -> None:
        for name, p in model.named_parameters():
            if p.grad is not None:
                value = p.grad.detach().float().pow(power) * weight
                self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()

    def mean_gradients(self) -> dict[str, Tensor]:
        return {name: total / max(self.count, 1) for name, total in self.sums.items()}

    def scores(self, model: nn.Module, example_input: Tensor) -> dict[str, Tensor]:
        if self.count == 0:
            raise ValueError(f"criterion {self.name} observed no batch; it scores channels by their gradients")
        with _gradients(model, self.mean_gradients()):
            return group_scores(model, example_input, lambda group: self.importance(group.group))

    def reset(self) -> None:
        self.sums, self.count = {}, 0

    def state_dict(self) -> dict[str, Tensor]:
        return {"count": torch.tensor(self.count), **{f"sum.{name}": t.cpu() for name, t in self.sums.items()}}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.count = int(state.get("count", 0))
        self.sums = {key[len("sum."):]: t.clone() for key, t in state.items() if key.startswith("sum.")}


class TaylorCriterion(GradientCriterion):
    name = "taylor"

    def __init__(self, observe_batches: int) -> None:
        super().__init__(observe_batches)
        self.importance = tp.importance.GroupTaylorImportance()

    def observe(self, model: nn.Module, images: Tensor, labels: Tensor) -> None:
        """∂L/∂w of the batch's mean loss, added to the sum."""
        with _gradients(model), torch.enable_grad():
            model.eval()
            F.cross_entropy(model(images), labels).backward()
            self._accumulate(model)
        self.count += 1


class HessianCriterion(GradientCriterion):
    name = "hessian"

    def __init__(self, observe_batches: int) -> None:
        super().__init__(observe_batches)
        self.importance = tp.importance.GroupHessianImportance()

    def observe(self, model: nn.Module, images: Tensor, labels: Tensor) -> None:
        """(∂ℓ_n/∂w)² of every example n of the batch, added to the sum (one backward per example)."""
        with _gradients(model), torch.enable_grad():
            model.eval()
            losses = F.cross_entropy(model(images), labels, reduction="none")
            for n, loss in enumerate(losses):
                model.zero_grad(set_to_none=True)
                loss.backward(retain_graph=n + 1 < len(losses))
                self._accumulate(model, power=2)
        self.count += len(losses)
