"""Where to prune, decided by timing whole pruned models: ``sparse.allocation: measured``.

Layers timed alone miss what the runtime does between them (layouts, fusions, the kernels it picks for a
width): on an H200 the layer table predicted 1.30× and the whole model ran 0.83×. As NetAdapt does (Yang et al.,
"NetAdapt: platform-aware neural network adaptation for mobile applications", ECCV 2018), every candidate
here is the whole model, pruned, run on the target, and timed; a candidate is accepted by its measured time.

Each step proposes, for every coupled channel group, cutting its weakest channels by ``step_fraction`` of its
full width (rounded to the group's multiple, at least one multiple), times each proposal against the current model
(``model_time``, the two alternately, ``repeats`` times: a loaded machine drifts more than one cut saves), and keeps
the one that loses the least support per share of time saved, once a second, independent timing confirms it (the
lowest of many noisy timings is optimistic); proposals that save no time are never taken. At the end the chosen
model is timed side by side with the full-width one; short of the target, the search goes on from that timing.
Measurements of the proposals not taken stay as estimates for the next step and are timed again only when one of
them comes out best (lazy greedy: a cut that was slow to pay stays slow, so few are timed twice). The search
stops when the measured time is ``target_fraction`` of the full-width model's or below, or no cut saves time.

Pure over the model and the injected ``model_time(keep_masks) -> seconds`` (the deployment side exports and
times; tests give a deterministic one).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from supportprune.method.pruning import dependency_graph, site_groups
from supportprune.method.support import support_sites

# Seconds one forward pass of the whole model takes when pruned to the given keep masks (site -> 0/1 per channel).
ModelTime = Callable[[dict[str, Tensor]], float]


@dataclass(frozen=True)
class MeasuredAllocation:
    keep: dict[str, Tensor]  # per site, 0/1
    full_seconds: float  # the model with every channel kept
    start_seconds: float  # the model as it came in (channels pruned at earlier points stay pruned)
    seconds: float  # the model pruned to ``keep``, timed side by side with the full-width model at the end
    steps: int  # cuts accepted
    timings: int  # whole models timed
    reached: bool  # seconds <= target

    @property
    def speedup(self) -> float:
        return self.full_seconds / self.seconds if self.seconds > 0 else math.inf


@dataclass
class _Candidate:
    order: list[int]  # root channels alive at the start, weakest first
    scores: Tensor
    channels: int
    rounding: int
    floor: int  # the collapse guard's fewest channels (SiteGroup.floor)
    members: list = field(default_factory=list)
    kept: int = 0
    # last measurement of this group's next cut: (state version it was measured at, time ÷ current model's time,
    # support lost, whether it is a second, independent timing)
    measured: tuple[int, float, float, bool] | None = None

    def next_kept(self, step_fraction: float) -> int | None:
        cut = max(self.rounding, int(step_fraction * self.channels) // self.rounding * self.rounding)
        new = max(self.floor, (self.kept - cut) // self.rounding * self.rounding)
        return new if new < self.kept else None

    def support_lost(self, new_kept: int) -> float:
        going = self.order[len(self.order) - self.kept: len(self.order) - new_kept]
        return float(self.scores[going].clamp(min=0).sum())


def measured_keep_masks(
    model: nn.Module,
    example_input: Tensor,
    scores: dict[str, Tensor],
    target_fraction: float,
    model_time: ModelTime,
    *,
    round_to: int = 1,
    concat_round_to: int | None = None,
    max_pruning_ratio: float = 1.0,
    step_fraction: float = 0.125,
    repeats: int = 3,
    max_timings: int = 600,
) -> MeasuredAllocation:
    """Keep masks whose whole pruned model ``model_time`` measures at ``target_fraction`` of the full-width
    model's time or below (or as close as the group floors, one rounding multiple each, and ``max_timings`` allow).

    ``scores[site]`` ranks a site's channels (a root channel scores the highest of its sites); channels already
    pruned stay pruned; kept counts are multiples of ``SiteGroup.rounding(round_to, concat_round_to)``.
    """
    if not 0 < target_fraction <= 1 or not 0 < step_fraction < 1:
        raise ValueError("target_fraction must lie in (0, 1] and step_fraction in (0, 1)")
    graph = dependency_graph(model, example_input)
    groups = []
    for site_group in site_groups(graph):
        score = torch.full((site_group.channels,), -math.inf)
        alive = torch.zeros(site_group.channels, dtype=torch.bool)
        for member in site_group.members:
            root = list(member.root_idxs)
            score[root] = torch.maximum(score[root], scores[member.name].detach().float().cpu()[list(member.idxs)])
            alive[root] |= (member.site.keep.cpu() > 0)[list(member.idxs)]
        living = alive.nonzero().flatten()
        order = living[torch.argsort(score[living], stable=True)].tolist()
        groups.append(_Candidate(order, score, site_group.channels, site_group.rounding(round_to, concat_round_to),
                                 site_group.floor(round_to, concat_round_to, max_pruning_ratio),
                                 list(site_group.members), kept=len(order)))
    base = {name: (site.keep > 0).cpu().clone() for name, site in support_sites(model)}

    def masks(kept: dict[int, int] | None = None) -> dict[str, Tensor]:
        keep = {name: mask.clone() for name, mask in base.items()}
        for index, group in enumerate(groups):
            count = group.kept if kept is None or index not in kept else kept[index]
            alive = torch.zeros(group.channels, dtype=torch.bool)
            alive[group.order[len(group.order) - count:]] = True
            for member in group.members:
                keep[member.name][list(member.idxs)] = alive[list(member.root_idxs)]
        return {name: mask.float() for name, mask in keep.items()}

    timings = 0

    def compare(first: dict[str, Tensor], second: dict[str, Tensor]) -> tuple[float, float]:
        """Median seconds of two models timed alternately ``repeats`` times: drift of the machine (clocks, other
        load) falls on both alike, so their ratio holds where a time taken minutes earlier would not."""
        nonlocal timings
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(repeats):
            for keep, into in ((first, times[0]), (second, times[1])):
                into.append(float(model_time(keep)))
                timings += 1
        return statistics.median(times[0]), statistics.median(times[1])

    ones = {name: torch.ones_like(mask, dtype=torch.float) for name, mask in base.items()}
    if all(bool(mask.all()) for mask in base.values()):
        full_seconds = float(model_time(ones))
        timings += 1
        fraction = 1.0  # of the full-width model's time, the current model takes
    else:
        full_seconds, start_seconds = compare(ones, masks())
        fraction = start_seconds / full_seconds
    full, start_fraction, version, steps = full_seconds, fraction, 0, 0

    def key(group: _Candidate) -> float:
        """Support lost per share of the full model's time saved (∞: the cut saves nothing)."""
        _, ratio, lost, _ = group.measured  # type: ignore[misc]
        saved = fraction * (1.0 - ratio)
        return lost / saved if saved > 0 else math.inf

    def measure(index: int, confirmed: bool = False) -> None:
        new_kept = groups[index].next_kept(step_fraction)
        current, candidate = compare(masks(), masks({index: new_kept}))
        groups[index].measured = (version, candidate / current, groups[index].support_lost(new_kept), confirmed)

    verified = None
    for _ in range(3):  # the estimate (a product of measured ratios) is checked against the model itself
        while fraction > target_fraction and timings < max_timings:
            live = [i for i, g in enumerate(groups) if g.next_kept(step_fraction) is not None]
            for index in live:  # first sight of a group's next cut (or its estimate was dropped): time it
                if groups[index].measured is None and timings < max_timings:
                    measure(index)
            ranked = sorted((i for i in live if groups[i].measured is not None), key=lambda i: key(groups[i]))
            if not ranked:
                break
            best = groups[ranked[0]]
            if key(best) == math.inf:  # no estimate saves time: drop the stale ones and time them on this model
                stale = [i for i in ranked if groups[i].measured[0] != version]
                if not stale:
                    break  # every cut, timed against the current model, saves nothing
                for index in stale:
                    groups[index].measured = None
                continue
            if best.measured[0] != version or not best.measured[3]:
                # An estimate from an earlier model, or the lowest of many noisy timings (the winner's curse):
                # timed again, independently, before it is taken, and taken at that second timing.
                measure(ranked[0], confirmed=best.measured[0] == version)
                continue
            best.kept = best.next_kept(step_fraction)
            fraction, version, steps = fraction * best.measured[1], version + 1, steps + 1
            best.measured = None
        if steps == 0 or timings >= max_timings:
            break
        verified = compare(ones, masks())  # the full-width and the chosen model, side by side
        if verified[1] <= target_fraction * verified[0]:
            break
        fraction, version = verified[1] / verified[0], version + 1  # short of the target: go on from the truth
    if verified is not None:
        full, fraction = verified[0], verified[1] / verified[0]
    return MeasuredAllocation(masks(), full, full * start_fraction, full * fraction, steps, timings,
                              fraction <= target_fraction)
