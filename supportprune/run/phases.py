"""The phases of ``compress`` (Dense, Sparse, re-Dense), as objects with one lifecycle that the engine drives:
``start`` → per epoch ``before_epoch`` (returns the per-batch hook, or None), ``after_step`` (after every
optimizer step), ``after_steps`` (the epoch's steps done), ``after_epoch`` and ``after_evaluation`` (add to the
epoch's record) → ``finish``; ``state_dict``/``load_state_dict`` carry what a phase keeps across a resume."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Optional

import torch

from supportprune.errors import SupportpruneError
from supportprune.inputs.models import build_model
from supportprune.inputs.recipe import PhaseConfig
from supportprune.method import dsd
from supportprune.method.distill import DistillationLoss
from supportprune.method.convert import convert_relus
from supportprune.method.support import kept_channel_counts, support_sites
from supportprune.store.checkpoint import read_checkpoint
from supportprune.run.context import RunContext
from supportprune.run.run_state import save_model_state
from supportprune.run.training_loop import cross_entropy_loss, evaluate


class Phase:
    """One phase of a run: its name (the recipe's section), its training settings and its loss."""

    name = ""

    def __init__(self, context: RunContext) -> None:
        self.context = context
        self.config: PhaseConfig = getattr(context.recipe, self.name)
        self.loss_fn: Callable = cross_entropy_loss

    def start(self, fresh: bool) -> None:
        """Before the phase's first epoch, or on resume inside it (``fresh`` False: its optimizer state exists)."""
        distill = getattr(self.config, "distill", None)
        self.loss_fn = self.distillation_loss(distill) if distill is not None else cross_entropy_loss

    def before_epoch(self, epoch: int) -> Optional[Callable[[torch.Tensor], None]]:
        return None

    def after_step(self) -> None:
        pass

    def after_steps(self, epoch: int) -> None:
        pass

    def after_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        pass

    def after_evaluation(self, record: dict[str, Any]) -> None:
        record["channels_kept"] = {name: kept for name, (kept, _) in kept_channel_counts(self.context.model).items()}

    def finish(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        pass

    def distillation_loss(self, distill) -> DistillationLoss:
        """The teacher is the model at the end of the Dense step (models/baseline.pt), frozen, in eval mode."""
        context = self.context
        spec = context.spec
        teacher = convert_relus(build_model(spec, None), spec.example_input(), gate_activations=spec.gate_activations)
        teacher.load_state_dict(read_checkpoint(context.layout.model_state("baseline"))["model"])
        return DistillationLoss(teacher.to(context.device), distill.alpha, distill.temperature)

    def save_model(self, kind: str) -> None:
        if self.context.cluster.is_main:
            save_model_state(self.context.layout.model_state(kind), self.context.model)


class HeadPhase(Phase):
    """Head warm-up: the layers replaced to fit the data (``context.new_layers``: a new classifier head, an adapted
    first convolution) train alone, the rest frozen, so that nothing is pruned on an untrained head. Runs only
    when a layer was replaced (``head.epochs`` of the recipe)."""

    name = "head"

    def __init__(self, context: RunContext) -> None:
        super().__init__(context)
        if not context.new_layers:
            self.config = dataclasses.replace(self.config, epochs=0)

    def start(self, fresh: bool) -> None:
        context = self.context
        if self.config.epochs == 0:
            return
        if fresh and context.state.epoch == 0:
            _, top1 = evaluate(context.model, context.val_loader, context.device, reduce=context.cluster.all_reduce_sum)
            context.state.untrained_head_top1 = top1
            context.reporter.message(f"before the head warm-up (new {', '.join(context.new_layers)} untrained): "
                                     f"val top-1 {top1:.2f}%; training {', '.join(context.new_layers)} alone for "
                                     f"{self.config.epochs} epochs (head.epochs)")
        new = {id(p) for path in context.new_layers for p in context.model.get_submodule(path).parameters()}
        for parameter in context.model.parameters():
            parameter.requires_grad_(id(parameter) in new)
        super().start(fresh)

    def finish(self) -> None:
        for parameter in self.context.model.parameters():
            parameter.requires_grad_(True)


class DensePhase(Phase):
    """Dense: the pretrained model fine-tuned with its ReLUs as support sites; its top-1 is the baseline's."""

    name = "dense"

    def finish(self) -> None:
        context = self.context
        _, context.state.baseline_top1 = evaluate(context.model, context.val_loader, context.device,
                                                  reduce=context.cluster.all_reduce_sum)
        context.reporter.message(f"starting model before any cut: val top-1 {context.state.baseline_top1:.2f}% "
                                 "on your validation data")
        self.save_model("baseline")


def estimate_beta(context: RunContext, announce: bool) -> None:
    if context.recipe.sparse.estimates_beta:
        # idempotent: a resumed run re-freezes the moved biases
        estimated, sites = dsd.estimate_beta(context.model, context.example)
        if announce:
            context.reporter.message(f"β estimated (the trained biases) at {estimated} of {sites} sites")


class RedensePhase(Phase):
    """re-Dense: the pruned channels come back (``redense.revive``) and the whole model trains again."""

    name = "redense"

    def __init__(self, context: RunContext, sparse) -> None:
        super().__init__(context)
        self.sparse = sparse  # holds the weights pruned channels had (revive: restore)

    def start(self, fresh: bool) -> None:
        context = self.context
        estimate_beta(context, announce=False)
        if fresh:
            revive = context.recipe.redense.revive
            if revive == "restore" and self.sparse.revive_store is None:
                # No alternation point pruned channels (criterion magnitude prunes single weights): DSD's
                # own re-dense, the pruned weights back at zero, is the only one there is.
                revive = "zero"
            context.state.revived_channels = dsd.redense(context.model, context.example, revive, self.sparse.revive_store)
            how = {"zero": "initialised to zero", "restore": "with the weights they were pruned with",
                   "reinit": "producing weights re-initialised, consuming weights zero"}[revive]
            context.reporter.message(f"re-dense: {context.state.revived_channels} pruned channels back, {how}")
        super().start(fresh)

    def finish(self) -> None:
        self.save_model("dense")


def check_same_keep_masks(context: RunContext) -> None:
    """Every rank must have pruned the same channels."""
    keep = torch.cat([site.keep.flatten().cpu() for _, site in support_sites(context.model)])
    if not context.cluster.same_everywhere(hashlib.sha256(keep.numpy().tobytes()).hexdigest()):
        raise SupportpruneError("the processes disagree on the pruned channels; this is a bug, please report it")
