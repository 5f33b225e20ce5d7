"""Where to prune: a latency-aware allocation of the MACs budget over the coupled channel groups.

A global threshold on the support statistics removes the channels with the weakest support wherever
they are. The MACs fall, but on a GPU the time of the network follows the layers that kept their
width (early, high-resolution layers are memory-bound; late ones are small), so half the MACs bought
almost no speed (benchmarks/results/2026-11-23-h100-gpu-speed.md). Here the support still decides
*which* channels of a group go (the weakest first), but *how many per group* is decided greedily:
each step removes ``round_to`` channels from the group whose removal costs the least support per
second of predicted latency saved (a greedy knapsack, as in HALP: Shen et al., "Structural pruning
via latency-saliency knapsack", NeurIPS 2022), until the predicted latency meets its target. The
constraint is the time itself: a MACs budget would make the greedy trade support for MACs, and which
cut saves MACs is not which cut saves time.

Latency is predicted per layer by a caller-supplied ``layer_latency(name, in_channels, out_channels)``
(in practice, a table measured with ONNX Runtime on the deployment device: ``latency.LatencyTable``).
Everything here is pure computation over the model, the dependency graph and that callable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from supportprune.method.pruning import dependency_graph, macs_with_keep_masks, site_groups
from supportprune.method.support import support_sites

LayerLatency = Callable[[str, int, int], float]


@dataclass(frozen=True)
class LayerShape:
    """A convolution or linear layer as it runs in the model: what its latency and MACs depend on."""

    name: str
    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    input_size: tuple[int, ...] = ()  # spatial size of the input (conv)
    output_size: tuple[int, ...] = ()  # spatial size of the output (conv)

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def macs(self, in_channels: int, out_channels: int) -> int:
        """Multiply-accumulates per example at the given widths."""
        if self.kind == "linear":
            return in_channels * out_channels
        per_output = math.prod(self.kernel) * (1 if self.depthwise else in_channels // self.groups)
        return out_channels * per_output * math.prod(self.output_size)

    def signature(self) -> tuple:
        """Layers with equal signatures run the same kernels: their latency is measured once."""
        return (self.kind, self.in_channels, self.out_channels, self.kernel, self.stride, self.padding,
                self.dilation, self.groups, self.input_size)


def layer_shapes(model: nn.Module, example_input: Tensor) -> dict[str, LayerShape]:
    """Every Conv2d and Linear of ``model`` with the spatial sizes it sees on ``example_input``."""
    shapes: dict[str, LayerShape] = {}
    hooks = []

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                shapes[name] = LayerShape(
                    name, "conv", module.in_channels, module.out_channels, tuple(module.kernel_size),
                    tuple(module.stride), _pair(module.padding), tuple(module.dilation), module.groups,
                    tuple(inputs[0].shape[2:]), tuple(output.shape[2:]),
                )
            else:
                shapes[name] = LayerShape(name, "linear", module.in_features, module.out_features)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(record(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input[:1])
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return shapes


def _pair(padding) -> tuple[int, ...]:
    if isinstance(padding, str):  # "same"/"valid": latency tables only need it as a key
        return (padding,)  # type: ignore[return-value]
    return tuple(padding)


@dataclass
class _Group:
    """A coupled channel group during allocation: its channels weakest first, and the layer widths it sets."""

    order: list[int]  # root channel indices still alive, weakest support first
    scores: Tensor  # per root channel
    dead: int  # root channels already pruned before this allocation
    channels: int
    round_to: int  # its kept count is a multiple of this (SiteGroup.rounding)
    floor: int  # it never keeps fewer (SiteGroup.floor: the collapse guard)
    layers: list[tuple[str, str, float]] = field(default_factory=list)  # (layer, "in"|"out", widths per channel)
    kept: int = 0

    def next_kept(self) -> int | None:
        """Kept count after one more step, or None when the group is at its floor (the collapse guard)."""
        step = ((self.kept - 1) // self.round_to) * self.round_to
        new = max(self.floor, step)
        return new if new < self.kept else None


def latency_aware_keep_masks(
    model: nn.Module,
    example_input: Tensor,
    scores: dict[str, Tensor],
    target_latency: float,
    layer_latency: LayerLatency,
    *,
    round_to: int = 1,
    concat_round_to: int | None = None,
    max_pruning_ratio: float = 1.0,
) -> tuple[dict[str, Tensor], int, float]:
    """Keep masks (per site, 0/1) that bring the predicted latency of the pruned model's convolution and
    linear layers to ``target_latency`` (seconds, as ``layer_latency`` counts them) or below, or as close
    as the floors (``SiteGroup.floor``: the collapse guard with ``max_pruning_ratio``, in multiples of
    ``SiteGroup.rounding`` of ``round_to`` and ``concat_round_to``) allow.

    ``scores[site]`` ranks a site's channels (support statistics, or a baseline's norms); a root channel
    scores the highest of its sites (it lives while any site needs it). Channels already pruned stay
    pruned. Returns (keep masks, MACs of the pruned model as torch-pruning counts them, predicted
    latency of the pruned model's convolution and linear layers).
    """
    graph = dependency_graph(model, example_input)
    shapes = layer_shapes(model, example_input)
    names = {module: name for name, module in model.named_modules()}
    groups: list[tuple[object, _Group]] = []
    for site_group in site_groups(graph):
        score = torch.full((site_group.channels,), -math.inf)
        previously_alive = torch.zeros(site_group.channels, dtype=torch.bool)
        for member in site_group.members:
            root = list(member.root_idxs)
            member_score = scores[member.name].detach().float().cpu()[list(member.idxs)]
            score[root] = torch.maximum(score[root], member_score)
            previously_alive[root] |= (member.site.keep.cpu() > 0)[list(member.idxs)]
        alive = previously_alive.nonzero().flatten()
        order = alive[torch.argsort(score[alive], stable=True)].tolist()
        state = _Group(order, score, site_group.channels - len(order), site_group.channels,
                       site_group.rounding(round_to, concat_round_to),
                       site_group.floor(round_to, concat_round_to, max_pruning_ratio), kept=len(order))
        for item in site_group.group:
            layer = names.get(item.dep.target.module)
            if layer in shapes and item.idxs:
                direction = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
                state.layers.append((layer, direction, len(item.idxs) / site_group.channels))
        groups.append((site_group, state))

    removed = {(name, d): 0.0 for name in shapes for d in ("in", "out")}
    for _, state in groups:
        for layer, direction, per_channel in state.layers:
            removed[(layer, direction)] += state.dead * per_channel

    def width(name: str, removal: dict[tuple[str, str], float]) -> tuple[int, int]:
        shape = shapes[name]
        return (max(1, round(shape.in_channels - removal[(name, "in")])),
                max(1, round(shape.out_channels - removal[(name, "out")])))

    def latency(name: str, removal: dict[tuple[str, str], float]) -> float:
        in_channels, out_channels = width(name, removal)
        if shapes[name].depthwise:  # its input channels are its output channels
            in_channels = out_channels
        return layer_latency(name, in_channels, out_channels)

    layer_latencies = {name: latency(name, removed) for name in shapes}

    def keep_masks() -> dict[str, Tensor]:
        keep = {name: (site.keep > 0).cpu().clone() for name, site in support_sites(model)}
        for site_group, state in groups:
            alive = torch.zeros(site_group.channels, dtype=torch.bool)
            alive[state.order[len(state.order) - state.kept:]] = True
            for member in site_group.members:
                keep[member.name][list(member.idxs)] = alive[list(member.root_idxs)]
        return {name: mask.float() for name, mask in keep.items()}

    def step() -> bool:
        """Remove one rounding step from the best group; False when no group has a cut that saves time."""
        best = None
        for index, (_, state) in enumerate(groups):
            new_kept = state.next_kept()
            if new_kept is None:
                continue
            going = state.order[len(state.order) - state.kept: len(state.order) - new_kept]
            support_lost = float(state.scores[going].clamp(min=0).sum())
            trial = dict(removed)
            for layer, direction, per_channel in state.layers:
                trial[(layer, direction)] += (state.kept - new_kept) * per_channel
            touched = {layer for layer, _, _ in state.layers}
            latency_saved = sum(layer_latencies[layer] - latency(layer, trial) for layer in touched)
            if latency_saved <= 0:  # a cut that saves no measurable time is never worth support
                continue
            # Least support lost per second saved; among free cuts (dead channels), the one saving the most.
            key = (support_lost / latency_saved, -latency_saved)
            if best is None or key < best[0]:
                best = (key, index, new_kept, trial, touched)
        if best is None:
            return False
        _, index, new_kept, trial, touched = best
        groups[index][1].kept = new_kept
        removed.update(trial)
        for layer in touched:
            layer_latencies[layer] = latency(layer, removed)
        return True

    while sum(layer_latencies.values()) > target_latency and step():
        pass
    keep = keep_masks()
    return keep, macs_with_keep_masks(model, example_input, keep), sum(layer_latencies.values())


def predicted_latency(model: nn.Module, example_input: Tensor, layer_latency: LayerLatency) -> float:
    """Predicted latency of ``model``'s convolution and linear layers at their current widths."""
    total = 0.0
    for name, shape in layer_shapes(model, example_input).items():
        total += layer_latency(name, shape.in_channels, shape.out_channels)
    return total


