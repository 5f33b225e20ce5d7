"""What the phases of one run share: its recipe, directory, processes, data, model and state."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from supportprune.inputs.data import ExampleIndices
from supportprune.inputs.models import ModelSpec
from supportprune.inputs.recipe import Recipe
from supportprune.store.layout import RunLayout
from supportprune.store.reporter import Reporter
from supportprune.run.run_state import RunState


@dataclass
class RunContext:
    model_name: str
    recipe: Recipe
    layout: RunLayout
    cluster: Any  # supportprune.run.distributed.Cluster
    reporter: Reporter
    device: torch.device
    data: Any  # supportprune.inputs.data.Data
    train_loader: Any
    val_loader: Any
    spec: ModelSpec
    model: nn.Module
    example: torch.Tensor
    baseline_macs: int
    baseline_params: int
    state: RunState
    max_steps: Optional[int]
    started: float
    notes: list[str] = field(default_factory=list)  # what the run changed or noticed, in the log and the report
    new_layers: list[str] = field(default_factory=list)  # layers replaced to fit the data (the head warm-up trains them)

    def ordered_train_loader(self, with_indices: bool = False):
        """The training set in index order, unshuffled: the passes that estimate supports, count them, or
        recalibrate batch norm see the same examples in the same order on every rank."""
        from torch.utils.data import DataLoader

        dataset = ExampleIndices(self.data.train) if with_indices else self.data.train
        return DataLoader(dataset, batch_size=self.recipe.data.batch_size, shuffle=False, num_workers=self.recipe.data.workers)

    def steps_per_epoch(self) -> int:
        steps = self.train_loader.batch_sampler.steps_per_epoch()
        return steps if self.max_steps is None else min(steps, self.max_steps)
