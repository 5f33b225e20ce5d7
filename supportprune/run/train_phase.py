"""The one phase of ``supportprune train``: training by alternation (recipe section ``train``) with the support
chosen by ``train.alternation``: none (ReLU, plain SGD), instance (I-alternation, Eq. 36–38) or batch
(B-alternation, Eq. 39–41); then the closing evaluation, with η* on each example and with MaskT."""

from __future__ import annotations

import time
from typing import Any

import torch

from supportprune.method.alternation import estimate_instance_supports, majority_supports
from supportprune.method.support import fix_supports, release_supports, set_site_mode
from supportprune.run.context import RunContext
from supportprune.run.instance_supports import InstanceSupports
from supportprune.run.phases import Phase
from supportprune.run.run_state import save_model_state
from supportprune.run.training_loop import evaluate


class TrainPhase(Phase):
    name = "train"

    def __init__(self, context: RunContext) -> None:
        super().__init__(context)
        self.instance_supports = InstanceSupports(context)
        self.fixed_supports = False  # this epoch trains on stored supports (I-alternation)

    def before_epoch(self, epoch: int):
        train, model = self.context.recipe.train, self.context.model
        self.fixed_supports = False
        if train.alternation == "none" or epoch <= train.warmup_epochs:
            set_site_mode(model, "threshold", record_stats=False)
            return None
        if train.alternation == "batch":
            set_site_mode(model, "batch", granularity=train.granularity,
                          relative_threshold=train.relative_threshold, record_stats=False)
            return None
        # I-alternation: supports estimated at the first epoch of every gap, trained with until the next.
        first = train.warmup_epochs + 1 + (epoch - train.warmup_epochs - 1) // train.gap_epochs * train.gap_epochs
        self.instance_supports.estimate(["train", first], train.relative_threshold, train.granularity, record_stats=False)
        self.fixed_supports = True
        return self.instance_supports.fix_batch_supports

    def after_steps(self, epoch: int) -> None:
        if self.fixed_supports:
            self.instance_supports.release_and_recalibrate()

    def after_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        if self.context.recipe.train.alternation == "instance" and self.instance_supports.store is not None:
            record["supports_kept"] = self.instance_supports.kept_fractions()

    def closing_evaluation(self) -> dict[str, Any]:
        """After the phase (also when a finished run is run again): validation error with η* on each example (the usual
        test), and with MaskT (the training set's majority supports, no thresholding; the paper's Table 2). Rank 0
        saves the trained model (models/trained.pt)."""
        context = self.context
        train, model, device = context.recipe.train, context.model, context.device
        reduce = context.cluster.all_reduce_sum
        release_supports(model)  # every site back to η* (B-alternation's batch mode included)
        val_loss, val_top1 = evaluate(model, context.val_loader, device, reduce=reduce)
        # MaskT uses the supports the network trained with: ReLU's for plain SGD, Eq. 38's otherwise.
        threshold = train.relative_threshold if train.alternation != "none" else 0.0
        counts, examples = self._support_counts(threshold, train.granularity)
        fix_supports(model, {name: mask.to(device) for name, mask in majority_supports(counts, examples).items()})
        maskt_loss, maskt_top1 = evaluate(model, context.val_loader, device, reduce=reduce)
        release_supports(model)
        result = {
            "model": context.model_name, "alternation": train.alternation, "seed": context.recipe.seed,
            "val_loss": val_loss, "val_error": 100.0 - val_top1, "maskt_val_loss": maskt_loss,
            "maskt_val_error": 100.0 - maskt_top1, "maskt_relative_threshold": threshold,
            "epochs": train.epochs, "steps_per_epoch": context.steps_per_epoch(),
            "metrics": context.state.metrics, "curve": context.state.curve,
            "seconds": time.perf_counter() - context.started,
        }
        if context.cluster.is_main:
            save_model_state(context.layout.model_state("trained"), model)
        return result

    @torch.no_grad()
    def _support_counts(self, relative_threshold: float, granularity: str) -> tuple[dict[str, torch.Tensor], int]:
        """Per site and unit, how many training examples have support (Eq. 38) under the final weights."""
        context = self.context
        counts: dict[str, torch.Tensor] = {}
        examples = 0
        for images, _ in context.ordered_train_loader():
            for name, mask in estimate_instance_supports(context.model, images.to(context.device), relative_threshold,
                                                         granularity).items():
                counts[name] = counts.get(name, 0) + mask.sum(dim=0, dtype=torch.long)
            examples += len(images)
        return counts, examples
