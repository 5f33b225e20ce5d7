"""The Python API: learned-support pruning inside your own training loop.

The CLI's Sparse step as one small object, the way Torch-Pruning's pruners and torchao's quantizers are used::

    pruner = SupportPruner(model, example_input, target_macs=0.5)   # ReLUs become support sites (η*, Eq. 9)
    pruner.start_sparse()               # training batches now apply B-alternation masks (Eq. 39–41)
    ... your training loop on pruner.model ...
    pruner.prune()                      # an alternation point: channels with the weakest support go, to the target
    ... more training (the pruned channels stay at zero) ...
    sparse = pruner.sparse_model()      # physically smaller, equal to the masked model
    pruner.redense()                    # DSD's re-dense: pruned channels back, with the weights they had
    pruner.export(sparse, "sparse.onnx")

Every method calls the same functions (``supportprune.method.dsd``, ``supportprune.method.support``, ``supportprune.deploy.export``) that
``supportprune compress`` runs; nothing here reads or writes files except ``export``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from supportprune.method import dsd
from supportprune.method.convert import convert_relus
from supportprune.errors import SupportpruneError
from supportprune.deploy.export import ExportCheck, export_onnx
from supportprune.method.pruning import count_macs_params
from supportprune.inputs.recipe import REVIVALS, SparseConfig
from supportprune.method.convert import export_ready
from supportprune.method.support import kept_channel_counts
from supportprune.method.criteria.importance import WEIGHT_IMPORTANCES


# What prune() can score from the model alone or from the masks start_sparse records; taylor and hessian need the
# gradients the CLI's Sparse step observes, and magnitude prunes weights, not channels.
API_CRITERIA = ("support", "random", *WEIGHT_IMPORTANCES)
_UNAVAILABLE = {"taylor": "it needs gradients observed by the CLI's Sparse step",
                "hessian": "it needs gradients observed by the CLI's Sparse step",
                "magnitude": "it prunes single weights, not channels"}


class SupportPruner:
    """Prunes ``model``'s channels by their learned support (Huang, Kong, Lucey 2017, section 4.2) to a MACs target.

    ``model`` is converted on construction (``pruner.model``: train and evaluate that one). Options are those of
    a recipe's ``sparse`` section: ``target_macs`` (fraction of MACs kept), ``relative_threshold`` (Eq. 41's β as
    a multiple of each site's mean unit energy, for the training masks), ``granularity`` (``channel`` or
    ``element``), ``round_to`` (kept channel counts are multiples of it), ``concat_round_to`` (channels that reach a
    concatenation are multiples of it too, as in the shipped recipes; None: only ``round_to``), ``criterion`` (``support`` or a
    channel baseline scored from the weights: ``API_CRITERIA``).
    """

    def __init__(self, model: nn.Module, example_input: Tensor, *, target_macs: float | None = 0.5,
                 relative_threshold: float = 0.0, granularity: str = "channel", round_to: int = 8,
                 concat_round_to: int | None = 16, criterion: str = "support", seed: int = 0) -> None:
        try:
            self.config = SparseConfig(epochs=1, target_macs=target_macs, relative_threshold=relative_threshold,
                                       granularity=granularity, round_to=round_to, concat_round_to=concat_round_to,
                                       criterion=criterion)
        except ValueError as error:
            raise SupportpruneError(f"SupportPruner: {error}") from None
        if criterion not in API_CRITERIA:  # checked here, not when prune() is first called
            raise SupportpruneError(
                f"SupportPruner: criterion {criterion!r} is not available here ({_UNAVAILABLE.get(criterion, 'unknown')}); "
                f"use one of {', '.join(API_CRITERIA)}, or `supportprune compress --criterion {criterion}`")
        self.example_input = example_input.detach()
        self.seed = seed
        self.model = convert_relus(model, self.example_input)
        self.baseline_macs, self.baseline_params = count_macs_params(self.model, self.example_input)
        self._pruned_weights: dict[str, Tensor] | None = None  # what pruned channels had, for redense's restore

    def start_sparse(self) -> None:
        """From now on each training batch applies its B-alternation mask and the support statistics are recorded.
        η*'s β is first estimated from the trained biases (``dsd.estimate_beta``), as the CLI's Sparse step does."""
        if self.config.estimates_beta:
            dsd.estimate_beta(self.model, self.example_input)
        dsd.begin_sparse(self.model, self.config)

    def prune(self) -> dsd.AlternationResult:
        """An alternation point: prune (by keep masks) the channels whose support was weakest since
        ``start_sparse`` or the previous ``prune``, so the model keeps ``target_macs`` of its MACs."""
        self._pruned_weights = dsd.remember_pruned_weights(self._pruned_weights, self.model, self.example_input)
        return dsd.alternation_point(self.model, self.example_input, self.config, self.baseline_macs, seed=self.seed)

    def kept_channels(self) -> dict[str, tuple[int, int]]:
        """Per support site, (channels kept, channels in all)."""
        return kept_channel_counts(self.model)

    def sparse_model(self) -> nn.Module:
        """A physically pruned copy, in eval mode, computing what the masked ``pruner.model`` computes."""
        dsd.end_sparse(self.model)
        return dsd.build_sparse_model(self.model, self.example_input).eval()

    def redense(self, revive: str = "restore") -> int:
        """DSD's re-dense step on ``pruner.model`` (train it again afterwards). ``revive`` as the recipe's
        ``redense.revive``: ``restore`` (default) brings pruned channels back with the weights they had when
        pruned, ``zero`` at zero (DSD's own: they then get no gradient), ``reinit`` with fresh producing weights.
        Returns how many channels came back."""
        if revive not in REVIVALS:
            raise SupportpruneError(f"SupportPruner.redense: revive must be one of {', '.join(REVIVALS)}, got {revive!r}")
        if revive == "restore" and self._pruned_weights is None:
            raise SupportpruneError("SupportPruner.redense: nothing was pruned yet; call prune() first")
        return dsd.redense(self.model, self.example_input, revive, self._pruned_weights)

    def export(self, model: nn.Module, path: str | Path, *, check_input: Tensor | None = None,
               tolerance: float = 1e-3) -> ExportCheck:
        """Write ``model`` (``pruner.model`` or ``sparse_model()``) to ONNX, checked against PyTorch with ONNX Runtime."""
        check = self.example_input if check_input is None else check_input
        with torch.no_grad():
            return export_onnx(export_ready(model), path, example_input=self.example_input, check_input=check,
                               tolerance=tolerance)
