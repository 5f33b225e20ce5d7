"""Where a run stands, and the checkpoint that holds it: state dicts and plain data only, read back with
``weights_only=True``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from supportprune.store.atomic import atomic_write_text
from supportprune.store.checkpoint import save_checkpoint
from supportprune.store.layout import RunLayout


@dataclass
class RunState:
    """Where a run stands; saved in every checkpoint."""

    phase_index: int = 0
    epoch: int = 0  # epochs finished in the current phase
    step: int = 0  # steps finished in the current epoch (checkpoints inside an epoch)
    partial: dict[str, Any] = field(default_factory=dict)  # running sums of the current epoch
    metrics: list[dict[str, Any]] = field(default_factory=list)
    alternations: list[dict[str, Any]] = field(default_factory=list)
    baseline_top1: Optional[float] = None  # the starting model's, after the head warm-up and Dense step: before any cut
    untrained_head_top1: Optional[float] = None  # before the head warm-up, with the replaced head untrained
    revived_channels: Optional[int] = None
    channels_total: dict[str, int] = field(default_factory=dict)
    # [phase, step within the phase, mean training loss, training error (%)] over the last window of steps
    curve: list[list[Any]] = field(default_factory=list)
    curve_mark: list[float] = field(default_factory=lambda: [-1, 0.0, 0, 0])  # epoch number, loss_sum, correct, seen at the last point
    mask_round: Optional[list[Any]] = None  # [phase, epoch] whose estimation the stored instance supports are


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(rng: dict[str, Any], cluster, reporter) -> None:
    """Each rank continues from its own random-number state. A checkpoint written by another number of
    processes (or before per-rank states were kept) cannot give every rank its own: then every rank takes
    rank 0's, and the run says so (its shards differ anyway, so it cannot continue as the interrupted run
    would have)."""
    ranks = rng.get("ranks") or [{"torch": rng["torch"], "cuda": rng.get("cuda")}]
    if len(ranks) == cluster.world_size:
        own = ranks[cluster.rank]
    else:
        own = ranks[0]
        reporter.message(f"warning: the checkpoint was written by {len(ranks)} process(es), this run has "
                         f"{cluster.world_size}: every process continues from rank 0's random-number state")
    torch.set_rng_state(own["torch"])
    if own.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(own["cuda"])


def save_run(layout: RunLayout, model: nn.Module, optimizer, scheduler, state: RunState,
             rng_states: list[dict[str, Any]], phase_states: dict[str, Any] | None = None) -> None:
    """The checkpoint (model, optimizer, scheduler, run state, every rank's RNG state, and what the phases keep:
    ``criterion``, ``revive_store``) and metrics.jsonl."""
    phase_states = {"criterion": {}, "revive_store": None, **(phase_states or {})}
    save_checkpoint(layout.checkpoint, {
        "model": model.state_dict(),
        "criterion": phase_states["criterion"] or {},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "run": asdict(state),
        "revive_store": phase_states["revive_store"],
        "rng": {**rng_states[0], "ranks": rng_states},  # torch/cuda: rank 0's, as earlier checkpoints hold
    })
    lines = "".join(json.dumps(record) + "\n" for record in state.metrics)
    atomic_write_text(layout.metrics, lines)


def save_model_state(path: Path, model: nn.Module) -> None:
    save_checkpoint(path, {"model": {k: v.cpu() for k, v in model.state_dict().items()}})
