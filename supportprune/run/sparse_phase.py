"""The Sparse phase of ``compress``: training with supports (B- or I-alternation) or DSD's magnitude masks, and
at the recipe's alternation points the criterion decides which channels die (``sparse.criterion``)."""

from __future__ import annotations

import itertools
from dataclasses import asdict
from typing import Any

from supportprune.method import dsd, group_decay
from supportprune.method.criteria import Criterion, apply_weight_masks, make_criterion, prunable_weights
from supportprune.method.support import kept_unit_fractions, reset_support_stats, support_sites
from supportprune.run.context import RunContext
from supportprune.run.instance_supports import InstanceSupports
from supportprune.run.latency_for_run import latency_table_for_run, model_timer_for_run
from supportprune.run.phases import Phase, check_same_keep_masks, estimate_beta


class SparsePhase(Phase):
    name = "sparse"

    def __init__(self, context: RunContext) -> None:
        super().__init__(context)
        self.weight_masks = None  # magnitude baseline: weights kept zero after each step of the Sparse phase
        self.criterion, self.criterion_state = None, {}  # the criterion and its saved observations
        self.revive_store = None  # redense.revive restore: the weights of channels when they were pruned
        self.instance_supports = InstanceSupports(context)
        self.step, self.fading = 0, []  # group_decay: steps into the Sparse phase, the producing weights fading

    def start(self, fresh: bool) -> None:
        context, sparse = self.context, self.context.recipe.sparse
        estimate_beta(context, announce=fresh)
        dsd.begin_sparse(context.model, sparse, reset=fresh)
        super().start(fresh)
        if sparse.criterion == "magnitude" and not fresh and any(
                a.get("criterion") == "magnitude" for a in context.state.alternations):
            self.weight_masks = {name: w != 0 for name, w in prunable_weights(context.model).items()}

    def before_epoch(self, epoch: int):
        recipe = self.context.recipe
        self.step = (epoch - 1) * self.context.steps_per_epoch()
        if self._fixes_supports():
            # DSD (I-alternation): fresh supports every Sparse epoch, estimated as in `train` (its granularity
            # and threshold: Eq. 38 per unit keeps m ⊆ ReLU's support, so m ⊙ q stays close to η*; whole-channel
            # supports would pass negative q). Their channel statistics, under the Sparse step's threshold,
            # decide the pruning.
            self.instance_supports.estimate(["sparse", epoch], recipe.train.relative_threshold,
                                            recipe.train.granularity, record_stats=True)
            return self.instance_supports.fix_batch_supports
        return None

    def after_step(self) -> None:
        # DSD: pruned weights stay zero while the rest is retrained.
        if self.context.recipe.sparse.criterion == "magnitude" and self.weight_masks:
            apply_weight_masks(self.context.model, self.weight_masks)
        if self.context.recipe.sparse.group_decay:
            self.fade()

    def fade(self) -> None:
        """sparse.group_decay: re-choose every quarter of the way which channels the cut would remove (the
        criterion's plan on the scores so far), then decay their producing weights at the growing rate. The last
        choice restarts the support statistics: the cut then sees the supports of the faded network."""
        context, sparse = self.context, self.context.recipe.sparse
        self.step += 1
        steps = sparse.alternation_epochs[0] * context.steps_per_epoch()
        if self.step > steps:
            return
        every = max(1, steps // 4)
        if (self.step - 1) % every == 0:
            config = dsd.scheduled_config(sparse, sparse.alternation_epochs[0])
            scores = self._criterion().scores(context.model, context.example)
            _, keep = dsd.planned_cut(context.model, context.example, config, context.baseline_macs, scores, fill=False)
            self.fading = group_decay.producing_slices(context.model, context.example, keep)
            if self.step + every > steps:
                reset_support_stats(context.model)
        group_decay.fade(context.model, self.fading, group_decay.decay_rate(self.step, steps, sparse.group_decay))

    def after_steps(self, epoch: int) -> None:
        if self._fixes_supports():
            self.instance_supports.release_and_recalibrate()

    def _fixes_supports(self) -> bool:
        sparse = self.context.recipe.sparse
        return sparse.criterion == "support" and sparse.alternation == "instance"

    def after_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        record["supports_kept"] = kept_unit_fractions(self.context.model)
        if epoch in self.context.recipe.sparse.alternation_epochs:
            self.alternation_point(epoch)

    def finish(self) -> None:
        dsd.end_sparse(self.context.model)
        check_same_keep_masks(self.context)
        self.save_model("sparse")

    def state_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion.state_dict() if self.criterion is not None else self.criterion_state,
                "revive_store": self.revive_store}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.criterion_state = saved.get("criterion") or {}
        self.revive_store = saved.get("revive_store")

    def _criterion(self) -> Criterion:
        """The criterion (``sparse.criterion``), with what it observed restored on resume."""
        if self.criterion is None:
            self.criterion = make_criterion(self.context.recipe.sparse, seed=self.context.recipe.seed)
            self.criterion.load_state_dict(self.criterion_state)
        return self.criterion

    def alternation_point(self, epoch: int) -> None:
        """Rank 0 decides which channels die; every rank applies the same keep masks."""
        context, sparse = self.context, self.context.recipe.sparse
        sites = [site for _, site in support_sites(context.model)]
        if sparse.criterion == "magnitude":  # every rank holds the same weights: no broadcast needed
            result, self.weight_masks = dsd.magnitude_point(context.model, context.example, sparse)
            context.state.alternations.append({"epoch": epoch, **asdict(result)})
            context.reporter.message(
                f"magnitude pruning after sparse epoch {epoch} (DSD): {sparse.magnitude_sparsity:.1%} of every "
                f"layer's weights zeroed, {result.params:,} nonzero parameters left"
            )
            return
        if context.recipe.redense.revive == "restore":  # every rank: each re-densifies its own copy
            self.revive_store = dsd.remember_pruned_weights(self.revive_store, context.model, context.example)
        if context.cluster.is_main:
            table = latency_table_for_run(context) if sparse.allocation == "latency" else None
            timer = model_timer_for_run(context) if sparse.allocation == "measured" else None
            criterion = self._criterion()
            for images, labels in itertools.islice(context.ordered_train_loader(), criterion.observe_batches):
                criterion.observe(context.model, images.to(context.device), labels.to(context.device))
            result = dsd.alternation_point(context.model, context.example, dsd.scheduled_config(sparse, epoch),
                                           context.baseline_macs,
                                           seed=context.recipe.seed, layer_latency=table, criterion=criterion,
                                           model_time=timer)
            context.state.alternations.append({"epoch": epoch, **asdict(result)})
            what = ("support" if sparse.criterion == "support" else f"{sparse.criterion} channel")
            context.reporter.message(
                f"alternation point after sparse epoch {epoch} ({what} criterion): kept {result.channels_kept}/"
                f"{result.channels_total} site channels, {100 * result.macs / context.baseline_macs:.1f}% of MACs "
                f"(pruning threshold {result.relative_threshold:.4g})"
                + (f"; predicted speed-up of the conv/linear layers {result.predicted_speedup:.2f}×"
                   if result.predicted_speedup else "")
                + (f"; measured speed-up of the whole model {result.measured_speedup:.2f}× (target "
                   f"{1 / sparse.latency_target:.2f}×{'' if result.measured_target_met else ', not reached: no further cut saved time within the timing budget'})"
                   if result.measured_speedup else "")
            )
        else:
            reset_support_stats(context.model)
        context.cluster.broadcast_tensors([site.keep for site in sites])
