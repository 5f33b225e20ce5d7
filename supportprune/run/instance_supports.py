"""I-alternation's supports over a run: every training example's supports (Eq. 38), estimated at the start of an
epoch, stored bit-packed in the run directory (a resumed run trains on the same ones), fixed batch by batch."""

from __future__ import annotations

import itertools
import os
from typing import Any

import torch

from supportprune.method.alternation import estimate_instance_supports, recalibrate_batch_norm, support_dims
from supportprune.method.support import fix_supports, release_supports
from supportprune.run.context import RunContext
from supportprune.run.signals import stage
from supportprune.run.stored_supports import InstanceMaskStore, choose_storage

BATCH_NORM_RECALIBRATION_BATCHES = 100  # after an I-alternation epoch: batches that re-estimate batch-norm statistics


class InstanceSupports:
    def __init__(self, context: RunContext) -> None:
        self.context = context
        self.store = None  # InstanceMaskStore of the estimation round context.state.mask_round

    def estimate(self, round_key: list[Any], relative_threshold: float, granularity: str, *, record_stats: bool) -> None:
        """Make ``self.store`` hold every training example's supports of estimation ``round_key``:
        kept if already there, reopened from the run directory on resume, else estimated now (Eq. 38)."""
        context = self.context
        if self.store is not None and context.state.mask_round == round_key:
            return
        train = context.recipe.train
        path = context.layout.instance_supports
        shapes = support_dims(context.model, context.example, granularity)
        examples = len(context.data.train)
        storage = choose_storage(shapes, examples, train.mask_storage, train.mask_memory_mb * 2**20)
        if context.state.mask_round == round_key and path.exists():
            self.store = InstanceMaskStore.open(shapes, path, storage)
            if self.store.examples == examples:
                return
        self.store = None
        if context.cluster.is_main:
            with stage("estimating the instance supports (I-alternation, Eq. 38)"):
                self._estimate(shapes, examples, storage, relative_threshold, granularity, record_stats, round_key)
        context.cluster.barrier()
        if self.store is None:  # the other ranks read what rank 0 estimated
            self.store = InstanceMaskStore.open(shapes, path, storage)
        context.state.mask_round = round_key

    def _estimate(self, shapes, examples, storage, relative_threshold, granularity, record_stats, round_key) -> None:
        context, reporter = self.context, self.context.reporter
        path = context.layout.instance_supports
        temporary = path.with_name(path.name + ".tmp.npy")
        store = InstanceMaskStore.empty(shapes, examples, temporary if storage == "disk" else None)
        loader = context.ordered_train_loader(with_indices=True)
        reporter.start(f"{round_key[0]} {round_key[1]}: estimating supports (Eq. 38)", len(loader))
        for step, (images, _, indices) in enumerate(loader):
            supports = estimate_instance_supports(context.model, images.to(context.device), relative_threshold,
                                                  granularity, record_stats=record_stats)
            store.write(indices, supports)
            reporter.advance(step + 1)
        reporter.stop()
        if storage == "disk":
            store.rows.flush()
            os.replace(temporary, path)
            store = InstanceMaskStore.open(shapes, path, "disk")
        else:
            store.save(path)  # a resumed run trains on these same supports
        reporter.message(
            f"{round_key[0]} epoch {round_key[1]}: supports of {examples:,} examples estimated, "
            f"{store.nbytes / 2**20:.1f} MiB bit-packed ({storage})"
        )
        self.store = store

    def fix_batch_supports(self, indices: torch.Tensor) -> None:
        """Before each batch: the stored supports of its examples (their indices come with the batch)."""
        fix_supports(self.context.model, self.store.read(indices, self.context.device))

    def release_and_recalibrate(self) -> None:
        """After an epoch with fixed supports: evaluation and the next epoch threshold each example again, with
        batch-norm statistics for the η* network (see ``alternation.recalibrate_batch_norm``), from the
        training set in index order, the same on every rank."""
        context = self.context
        release_supports(context.model)
        batches = itertools.islice(context.ordered_train_loader(), BATCH_NORM_RECALIBRATION_BATCHES)
        recalibrate_batch_norm(context.model, (images.to(context.device) for images, _ in batches))

    def kept_fractions(self) -> dict[str, float]:
        """Per site, the share of units whose stored support is 1, over all examples."""
        counts = self.store.support_counts()
        return {name: float(c.sum()) / (c.numel() * self.store.examples) for name, c in counts.items()}
