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

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from supportprune.method.allocation import LayerLatency, latency_aware_keep_masks, predicted_latency
from supportprune.method.measured_allocation import ModelTime, measured_keep_masks
from supportprune.method.criteria import Criterion, apply_weight_masks, magnitude_masks, make_criterion, nonzero_parameters
from supportprune.method.pruning import (
    apply_keep_masks,
    count_macs_params,
    fill_macs_budget,
    plan_keep_masks,
    prune_to_keep_masks,
    pruned_connection_masks,
    pruned_slices,
    search_relative_threshold,
    zero_pruned_connections,
)
from supportprune.method.convert import recorded_site_producers
from supportprune.method.support import SupportSite, reset_support_stats, set_site_mode, support_sites

# The recipe's sparse section (inputs.recipe.SparseConfig, a frozen dataclass): the method reads its settings and
# imports nothing of the recipe, so recipes can take their names (criteria, granularities) from the method.
SparseConfig = Any


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
    # allocation measured: the whole model timed on the target, dense ÷ pruned, and whether it met target_latency
    measured_speedup: float | None = None
    measured_target_met: bool | None = None


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
    model_time: ModelTime | None = None,
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
    score lost (``allocation.latency_aware_keep_masks``); the reported threshold is the highest score pruned.
    ``allocation: measured`` (needs ``model_time``, which times the whole model pruned to given keep masks on the
    target) cuts until the measured time is ``target_latency`` of the dense model's (``measured_allocation``)."""
    observed = max((int(site.stat_batches) for _, site in support_sites(model)), default=0)
    criterion = criterion or make_criterion(config, seed=seed)
    scores = criterion.scores(model, example_input)
    predicted_speedup = measured = None
    rounding = _rounding(config)
    if config.allocation == "measured":
        if model_time is None:
            raise ValueError("allocation measured needs a whole-model timing function")
        measured = measured_keep_masks(model, example_input, scores, config.latency_target, model_time, **rounding)
        keep = measured.keep
        threshold = _highest_pruned(model, scores, keep)
    elif config.allocation == "latency":
        if layer_latency is None:
            raise ValueError("allocation latency needs a layer latency table")
        dense_latency = predicted_latency(model, example_input, layer_latency)  # the masked model has full widths
        keep, _, latency = latency_aware_keep_masks(
            model, example_input, scores, config.latency_target * dense_latency, layer_latency, **rounding
        )
        threshold = _highest_pruned(model, scores, keep)
        predicted_speedup = dense_latency / latency if latency > 0 else None
    elif config.target_macs is not None:
        threshold, keep = planned_cut(model, example_input, config, baseline_macs, scores)
    else:  # the support without a target: the channels whose support stayed zero at the training threshold
        threshold = float(next(site for _, site in support_sites(model)).relative_threshold)
        keep = plan_keep_masks(model, example_input, zero_support_channels(model), scores=scores, **rounding)
    criterion.reset()
    apply_keep_masks(model, keep)
    reset_support_stats(model)
    macs, params = count_macs_params(prune_to_keep_masks(model, example_input), example_input)
    kept = sum(int(mask.sum()) for mask in keep.values())
    total = sum(mask.numel() for mask in keep.values())
    return AlternationResult(threshold, kept, total, macs, observed, params, config.criterion, config.allocation,
                             predicted_speedup, measured.speedup if measured else None,
                             measured.reached if measured else None)


def _highest_pruned(model: nn.Module, scores: dict[str, Tensor], keep: dict[str, Tensor]) -> float:
    """The highest score among the channels a plan prunes now (the threshold an allocation amounts to)."""
    pruned = [scores[name].cpu()[(site.keep.cpu() > 0) & (keep[name].cpu() == 0)] for name, site in support_sites(model)]
    return float(torch.cat(pruned).max()) if sum(p.numel() for p in pruned) else 0.0


def _rounding(config: SparseConfig) -> dict:
    """Every plan, one rounding rule and one collapse guard (``SiteGroup.floor``), whatever the criterion."""
    return {"round_to": config.round_to, "concat_round_to": config.concat_round_to,
            "max_pruning_ratio": config.max_pruning_ratio}


def planned_cut(model: nn.Module, example_input: Tensor, config: SparseConfig, baseline_macs: int,
                scores: dict[str, Tensor], *, fill: bool = True) -> tuple[float, dict[str, Tensor]]:
    """The global cut of ``scores`` to ``config.target_macs``: the threshold search, then (``fill``) the budget
    given back best score first. Returns (threshold, keep masks)."""
    target = int(config.target_macs * baseline_macs)
    rounding = _rounding(config)
    threshold, keep, macs = search_relative_threshold(model, example_input, scores, target, **rounding)
    if fill:
        keep, _ = fill_macs_budget(model, example_input, scores, keep, macs, target, **rounding)
    return threshold, keep


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


def scheduled_target(config: SparseConfig, epoch: int, final: float | None = None) -> float | None:
    """The share of MACs (or, with ``final``, of that target) to keep at the alternation point after
    ``epoch``. Point k of K (``config.alternation_epochs``), r = k/K, final target t:

        final:  t at every point (one-shot at the first)
        linear: 1 − (1 − t)·r
        cubic:  t + (1 − t)·(1 − r)³   (Zhu & Gupta 2017, AGP: cuts most while the network is most redundant)

    Every schedule reaches t at the last point."""
    target = config.target_macs if final is None else final
    if target is None or config.target_schedule == "final":
        return target
    points = config.alternation_epochs
    done = (points.index(epoch) + 1) / len(points)
    if config.target_schedule == "linear":
        return 1.0 - (1.0 - target) * done
    return target + (1.0 - target) * (1.0 - done) ** 3


def scheduled_config(config: SparseConfig, epoch: int) -> SparseConfig:
    """``config`` with the targets of the alternation point after ``epoch`` (``scheduled_target``)."""
    if config.target_schedule == "final" or config.target_macs is None:
        return config
    latency = None if config.target_latency is None else scheduled_target(config, epoch, config.target_latency)
    return dataclasses.replace(config, target_macs=scheduled_target(config, epoch), target_latency=latency)


_BIASED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm)


def estimate_beta(model: nn.Module, example_input: Tensor | None = None) -> tuple[int, int]:
    """η*'s β as the paper sets it: the learnable threshold/bias of ReLU(Wz − β) (Eq. 7), found by regular
    SGD before alternation (section 4.1: "The bias β is also initialized this way"), then used in
    η*{Wz; β} (Eq. 9). Where a site's input comes straight from a layer with a bias b (a batch norm's
    shift, a convolution's or linear layer's bias) and nothing else reads that layer, b moves into the
    threshold: β ← β − b, b ← 0, and b is frozen (η*'s output does not depend on β where it is
    differentiable, so β gets no gradient: it stays what SGD made it). Idempotent (β − 0 = β), so it
    is run again when a run resumes. Sites fed otherwise (a residual sum) keep β = 0. Sites with a
    negative β take the reference path: the fused backward assumes β ≥ 0. Returns (sites estimated, sites).
    The producers come from the fx graph, or, for a model converted without torch.fx, from one recorded
    forward pass on ``example_input`` (without it, such a model keeps β = 0 everywhere)."""
    sites = dict(support_sites(model))
    if not sites:
        raise ValueError("estimate_beta needs the converted model (convert_relus)")
    modules = dict(model.named_modules())
    if isinstance(model, torch.fx.GraphModule):
        producers = {}
        for node in model.graph.nodes:
            if node.op != "call_module" or node.target not in sites:
                continue
            producer_node = node.args[0]
            if producer_node.op == "call_module" and len(producer_node.users) == 1:
                producers[node.target] = producer_node.target
    elif example_input is not None:
        producers = recorded_site_producers(model, example_input, _BIASED)
    else:
        producers = {}
    estimated = 0
    for name, site in sites.items():
        producer = modules.get(producers.get(name, ""))
        bias = getattr(producer, "bias", None) if isinstance(producer, _BIASED) else None
        if bias is None or bias.shape != site.beta.shape:
            continue
        with torch.no_grad():
            site.beta.sub_(bias.detach().to(site.beta.dtype))
            bias.zero_()
        bias.requires_grad_(False)
        site.fused = not bool((site.beta < 0).any())
        estimated += 1
    return estimated, len(sites)


def remember_pruned_weights(saved: dict[str, Tensor] | None, model: nn.Module, example_input: Tensor) -> dict[str, Tensor]:
    """Before an alternation point: the weights every connection had while its channel was alive
    (``redense.revive: restore``). Connections pruned at an earlier point keep their earlier values."""
    pruned = pruned_connection_masks(model, example_input)
    state = model.state_dict()
    keys = [key for key, value in state.items() if value.is_floating_point()]
    if saved is None:
        return {key: state[key].detach().clone() for key in keys}
    return {key: torch.where(pruned[key], saved[key].to(state[key].device), state[key]) if key in pruned
            else state[key].detach().clone() for key in keys}


def redense(model: nn.Module, example_input: Tensor, revive: str = "zero", saved: dict[str, Tensor] | None = None) -> int:
    """DSD's re-dense step: pruned channels return. Returns the channel count. ``revive``:

    - zero: every weight that produces or consumes them is zero (DSD). A saddle: their output is zero,
      so neither kind of weight gets a gradient, and they stay zero.
    - restore: their weights as they were when they were pruned (``saved``, from ``remember_pruned_weights``).
    - reinit: producing weights re-drawn (Kaiming, fan-out, as torchvision initialises), batch-norm scale 1,
      consuming weights zero: the network computes what the pruned one did, and the consuming weights
      get a gradient (the revived channels' outputs are no longer zero)."""
    end_sparse(model)
    if revive == "restore":
        if saved is None:
            raise ValueError("revive restore needs the weights saved at the alternation points")
        masks = pruned_connection_masks(model, example_input)
        channels = zero_pruned_connections(model, example_input)
        with torch.no_grad():
            for key, value in model.state_dict().items():
                if key in masks and key in saved:
                    value.copy_(torch.where(masks[key], saved[key].to(value.device), value))
        return channels
    slices = pruned_slices(model, example_input)[0] if revive == "reinit" else []
    channels = zero_pruned_connections(model, example_input)
    with torch.no_grad():
        for module, idxs, out_channels in slices:
            depthwise = isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.out_channels
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and (out_channels or depthwise):
                fresh = torch.empty_like(module.weight)
                nn.init.kaiming_normal_(fresh, mode="fan_out", nonlinearity="relu")
                module.weight[idxs] = fresh[idxs]
            elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                module.weight[idxs] = 1.0
    return channels
