"""Dense–Sparse–Dense with learned supports: the algorithm's lifecycle, without I/O.

The training loop calls these at a few named points (Han et al. 2017's DSD, with the Sparse step's
magnitude threshold replaced by the B-alternation support of Huang et al. 2017, section 4.2):

    begin_sparse(model, config)                      # sites compute batch masks (Eq. 41), record statistics
    ... train epochs ...
    alternation_point(model, example, config, macs)  # prune channels whose support stayed zero
    ... more epochs, more alternation points ...
    end_sparse(model)                                # back to η* on each example
    sparse_model = build_sparse_model(model, example)  # physically smaller, via torch-pruning
    redense(model, example)                          # pruned connections back, at zero
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from supportprune.allocation import LayerLatency, latency_aware_keep_masks, predicted_latency
from supportprune.criteria import Criterion, apply_weight_masks, magnitude_masks, make_criterion, nonzero_parameters
from supportprune.pruning import (
    apply_keep_masks,
    count_macs_params,
    plan_keep_masks,
    prune_to_keep_masks,
    search_relative_threshold,
    zero_pruned_connections,
)
from supportprune.recipe import SparseConfig
from supportprune.support import reset_support_stats, set_site_mode, support_sites


@dataclass(frozen=True)
class AlternationResult:
    relative_threshold: float
    channels_kept: int
    channels_total: int
    macs: int  # of the model with the pruned channels removed
    observed_batches: int
    params: int = 0  # of the pruned model (magnitude: weights that are not zero)
    criterion: str = "support"
    allocation: str = "global"
    # allocation latency: the latency table's prediction for the conv/linear layers, dense ÷ pruned
    predicted_speedup: float | None = None


def begin_sparse(model: nn.Module, config: SparseConfig, *, reset: bool = True) -> None:
    """Sites switch to B-alternation (support criterion, ``alternation: batch``). With I-alternation the
    sites threshold each example and the loop fixes the supports of each batch (``alternation``); the
    baselines train with plain η* (ReLU), so the runs differ only in what decides the pruning.
    ``reset=False`` resumes a Sparse phase: the threshold (possibly searched) and the statistics
    restored from a checkpoint are kept."""
    batch = config.criterion == "support" and config.alternation == "batch"
    set_site_mode(model, "batch" if batch else "threshold", granularity=config.granularity, record_stats=batch)
    if reset:
        set_site_mode(model, "batch" if batch else "threshold", relative_threshold=config.relative_threshold)
        reset_support_stats(model)


def zero_support_channels(model: nn.Module, relative_threshold: float | None = None) -> dict[str, Tensor]:
    """Per site, the channels whose batch support stayed zero since the statistics were reset.

    With ``relative_threshold`` given, answers for that threshold instead of the one used in training:
    a channel's support stayed zero at τ exactly when its largest relative energy was ≤ τ.
    Sites that saw no batch report no zero channel (no evidence).
    """
    zero = {}
    for name, site in support_sites(model):
        if int(site.stat_batches) == 0:
            zero[name] = torch.zeros(site.channels, dtype=torch.bool)
        elif relative_threshold is None:
            zero[name] = (site.stat_support_batches == 0).cpu()
        else:
            zero[name] = (site.stat_max_relative_energy <= relative_threshold).cpu()
    return zero


def alternation_point(
    model: nn.Module,
    example_input: Tensor,
    config: SparseConfig,
    baseline_macs: int,
    *,
    seed: int = 0,
    layer_latency: LayerLatency | None = None,
    criterion: Criterion | None = None,
) -> AlternationResult:
    """Prune (by keep masks) the channels whose support stayed zero. With a MACs target, the pruning
    threshold is searched so the zero-support channels meet it; the training masks keep the recipe's
    threshold (a threshold high enough to cut half the MACs would, applied to every batch, mask half
    of each layer anew at every step, and training does not survive that). Statistics restart.

    Every channel criterion (``criterion``, built from ``config.criterion`` when not given: the support's
    statistic, or a torch-pruning importance) prunes to the same MACs target by the same search over its
    own scores. (``magnitude`` prunes weights, not channels: see ``magnitude_point``.)

    ``allocation: latency`` (needs ``layer_latency``, a measured table) cuts until the table predicts
    ``target_latency`` (default ``target_macs``) of the dense time, where it saves the most time per unit of
    score lost (``allocation.latency_aware_keep_masks``); the reported threshold is the highest score pruned."""
    observed = max((int(site.stat_batches) for _, site in support_sites(model)), default=0)
    criterion = criterion or make_criterion(config, seed=seed)
    scores = criterion.scores(model, example_input)
    predicted_speedup = None
    if config.allocation == "latency":
        if layer_latency is None:
            raise ValueError("allocation latency needs a layer latency table")
        dense_latency = predicted_latency(model, example_input, layer_latency)  # the masked model has full widths
        keep, _, latency = latency_aware_keep_masks(
            model, example_input, scores, config.latency_target * dense_latency, layer_latency, round_to=config.round_to
        )
        pruned = [scores[name].cpu()[(site.keep.cpu() > 0) & (keep[name] == 0)] for name, site in support_sites(model)]
        threshold = float(torch.cat(pruned).max()) if sum(p.numel() for p in pruned) else 0.0
        predicted_speedup = dense_latency / latency if latency > 0 else None
    elif config.target_macs is not None:
        threshold, keep, _ = search_relative_threshold(
            model, example_input, scores, int(config.target_macs * baseline_macs), round_to=config.round_to
        )
    else:  # the support without a target: the channels whose support stayed zero at the training threshold
        threshold = float(next(site for _, site in support_sites(model)).relative_threshold)
        keep = plan_keep_masks(model, example_input, zero_support_channels(model), round_to=config.round_to, scores=scores)
    criterion.reset()
    apply_keep_masks(model, keep)
    reset_support_stats(model)
    macs, params = count_macs_params(prune_to_keep_masks(model, example_input), example_input)
    kept = sum(int(mask.sum()) for mask in keep.values())
    total = sum(mask.numel() for mask in keep.values())
    return AlternationResult(threshold, kept, total, macs, observed, params, config.criterion, config.allocation,
                             predicted_speedup)


def magnitude_point(
    model: nn.Module, example_input: Tensor, config: SparseConfig
) -> tuple[AlternationResult, dict[str, Tensor]]:
    """DSD's Sparse step (the magnitude baseline): zero the smallest ``magnitude_sparsity`` share of
    every layer's weights. Returns the result and the keep masks the loop re-applies after each step."""
    masks = magnitude_masks(model, config.magnitude_sparsity)
    apply_weight_masks(model, masks)
    reset_support_stats(model)
    macs, _ = count_macs_params(model, example_input)
    channels = sum(site.channels for _, site in support_sites(model))
    result = AlternationResult(config.magnitude_sparsity, channels, channels, macs, 0, nonzero_parameters(model), "magnitude")
    return result, masks


def end_sparse(model: nn.Module) -> None:
    set_site_mode(model, "threshold", record_stats=False)


def build_sparse_model(model: nn.Module, example_input: Tensor) -> nn.Module:
    """The Sparse step's model, physically smaller: the masked model without its pruned channels."""
    sparse = prune_to_keep_masks(model, example_input)
    set_site_mode(sparse, "threshold", record_stats=False)
    return sparse


def redense(model: nn.Module, example_input: Tensor) -> int:
    """DSD's re-dense step: pruned connections return, initialised to zero. Returns the channel count."""
    end_sparse(model)
    return zero_pruned_connections(model, example_input)
