"""Channel pruning by support, on torch-pruning's dependency graph.

torch-pruning finds, for every channel of every convolution or linear layer, all the weights that
produce or consume it (batch norms, residual adds, concatenations, flattens). We hand it index lists;
it does the bookkeeping. Our own part is small: a pruner for ``SupportSite`` (so the graph slices its
per-channel buffers too), and the decision which channels die, made per coupled group: a channel is
pruned only if its support is zero at every site of its group (a residual stream's channel is pruned
only when every block's output support drops it).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch_pruning as tp
from torch import Tensor, nn

from supportprune.method.support import SupportSite, support_sites

PRUNABLE_ROOTS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class SupportSitePruner(tp.pruner.function.BasePruningFunc):
    """Slices a site's per-channel buffers (β, keep, statistics) with the channels around it."""

    TARGET_MODULES = (SupportSite,)

    def prune_out_channels(self, layer: SupportSite, idxs: Sequence[int]) -> SupportSite:
        remove = set(int(i) for i in idxs)
        keep_idxs = torch.tensor([i for i in range(layer.channels) if i not in remove], dtype=torch.long)
        for name, buffer in list(layer.named_buffers(recurse=False)):
            if buffer.dim() == 1 and buffer.numel() == layer.channels:
                setattr(layer, name, buffer.index_select(0, keep_idxs.to(buffer.device)))
        layer.fixed_support = None
        layer.channels = len(keep_idxs)
        return layer

    prune_in_channels = prune_out_channels  # element-wise: in and out channels are the same

    def get_out_channels(self, layer: SupportSite) -> int:
        return layer.channels

    get_in_channels = get_out_channels


def dependency_graph(model: nn.Module, example_input: Tensor) -> tp.DependencyGraph:
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # the graph is traced through autograd
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, customized_pruners={SupportSite: SupportSitePruner()}, verbose=False
            )
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class SiteMember:
    """A site's place in a pruning group: its channel ``idxs`` map to the group's ``root_idxs``."""

    name: str
    site: SupportSite
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]


@dataclass(frozen=True)
class SiteGroup:
    """A coupled set of channels, rooted at a convolution or linear layer, with the sites inside it."""

    root: nn.Module
    pruning_fn: Callable
    channels: int
    members: tuple[SiteMember, ...]
    group: Any = None  # torch-pruning's group, for its importance criteria
    feeds_concat: bool = False  # its channels reach a concatenation (an inception block's branch outputs)
    # The fewest channels it may keep for the fully-connected layers it feeds (``_fully_connected_floor``).
    min_channels: int = 1

    def rounding(self, round_to: int, concat_round_to: int | None = None) -> int:
        """The multiple this group's kept count is rounded to: ``round_to``, and for a group that feeds a
        concatenation also ``concat_round_to`` when given (their least common multiple). ONNX Runtime's CPU
        kernels keep a Concat, and the pooling after it, in their blocked NCHWc layout only when every input's
        channel count is a multiple of the block (16 with AVX-512): googlenet pruned in 8s ran 0.65 of its MACs
        cut at batch 64, with its Concat inputs in 16s 0.84–0.91 (benchmarks/results/2026-11-24-cpu-share-one-thread.md)."""
        return math.lcm(round_to, concat_round_to) if self.feeds_concat and concat_round_to else round_to

    def floor(self, round_to: int, concat_round_to: int | None = None, max_pruning_ratio: float = 1.0) -> int:
        """The fewest channels this group keeps, whatever a criterion scores: the collapse guard. At most
        ``max_pruning_ratio`` of its channels are cut (Torch-Pruning's ``max_pruning_ratio``), never all of them,
        never so many that a fully-connected layer it feeds is left narrower than its output or the classes
        (``min_channels``); rounded up to the group's multiple. Every plan (threshold search, budget fill,
        latency allocation) keeps at least this many, so every criterion gets the same guard."""
        capped = math.ceil((1.0 - max_pruning_ratio) * self.channels - 1e-9)
        return rounded_keep_count(max(capped, self.min_channels, 1), self.channels,
                                  self.rounding(round_to, concat_round_to))

    def alive(self, site_alive: dict[str, Tensor]) -> Tensor:
        """A root channel lives if any site of the group keeps it."""
        alive = torch.zeros(self.channels, dtype=torch.bool)
        for member in self.members:
            alive[list(member.root_idxs)] |= site_alive[member.name][list(member.idxs)].cpu()
        return alive


def _reads_only_sites(node, memo: dict) -> bool:
    """Whether every value reaching ``node`` passed through a support site last (through pooling,
    reshapes, concatenations and element-wise ops only): then a channel all those sites drop is zero."""
    if node in memo:
        return memo[node]
    memo[node] = False  # a cycle never proves anything
    module = node.module
    if isinstance(module, SupportSite):
        result = True
    elif isinstance(module, nn.Module) and any(True for _ in module.parameters(recurse=False)):
        result = False  # a convolution, batch norm or linear layer adds its own (bias) values
    else:
        result = all(_reads_only_sites(source, memo) for source in node.inputs)
    memo[node] = result
    return result


def _consumers_read_sites(graph: tp.DependencyGraph, group) -> bool:
    """A group's channels can be removed exactly only if every layer consuming them reads site outputs.
    MobileNetV2's residual stream does not: its blocks add a linear bottleneck (batch norm, no
    activation) to it, so a channel its one site drops is not zero there."""
    memo: dict = {}
    for item in group:
        node = item.dep.target
        if isinstance(node.module, PRUNABLE_ROOTS) and graph.is_in_channel_pruning_fn(item.dep.handler):
            if not all(_reads_only_sites(source, memo) for source in node.inputs if source.module is not node.module):
                return False
    return True


def _is_channel_concat(module: nn.Module) -> bool:
    """A concatenation along channels: torch-pruning records its inputs' channel counts (``concat_sizes``)
    only for those, not for a ``torch.cat`` along another dimension."""
    return isinstance(module, tp.ops._ConcatOp) and module.concat_sizes is not None


def _fully_connected_floor(graph: tp.DependencyGraph, group, channels: int, classes: int) -> int:
    """The fewest of ``channels`` the group may keep so that a cut leaves no fully-connected layer reading them
    narrower than its own output or than the ``classes`` (a hidden layer of 128 → 10 cut to 4 units cannot
    separate ten classes; issue #20's plain CNN). A flattened feature map gives the layer several inputs per
    channel; a fully-connected layer whose outputs are the channels keeps at least ``classes``. A layer that is
    narrower than that already (ImageNet's 512 → 1000 head) is the architecture's choice, not a cut's: no floor."""
    floor = 1
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, nn.Linear) or not item.idxs:
            continue
        per_channel = len(item.idxs) / channels
        width = max(module.out_features, classes) if graph.is_in_channel_pruning_fn(item.dep.handler) else classes
        needed = math.ceil(width / per_channel)
        if needed <= channels:
            floor = max(floor, needed)
    return floor


def _classes(model: nn.Module) -> int:
    """The width of the classifier's output: the last fully-connected layer's (1 when there is none)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else 1


def site_groups(graph: tp.DependencyGraph) -> Iterator[SiteGroup]:
    """The pruning groups that contain at least one support site; groups without one (the classifier's
    output, say) are never pruned: no support speaks for them, nor are groups whose consumers read
    values that bypass every site (``_consumers_read_sites``)."""
    names = {site: name for name, site in support_sites(graph.model)}
    classes = _classes(graph.model)
    for group in graph.get_all_groups(root_module_types=PRUNABLE_ROOTS):
        if not _consumers_read_sites(graph, group):
            continue
        root_item = group[0]
        members = []
        for item in group:
            module = item.dep.target.module
            if isinstance(module, SupportSite) and item.root_idxs is not None and None not in item.root_idxs:
                members.append(SiteMember(names[module], module, tuple(item.idxs), tuple(item.root_idxs)))
        if members:
            feeds_concat = any(_is_channel_concat(item.dep.source.module) or _is_channel_concat(item.dep.target.module)
                               for item in group)
            channels = len(root_item.idxs)
            yield SiteGroup(root_item.dep.target.module, root_item.dep.handler, channels, tuple(members),
                            group, feeds_concat, _fully_connected_floor(graph, group, channels, classes))


def rounded_keep_count(alive: int, channels: int, round_to: int) -> int:
    """Channels to keep: ``alive`` rounded up to a multiple of ``round_to`` (fast GPU kernels like
    aligned channel counts), never below one multiple (nor below one channel), never above ``channels``."""
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    return min(channels, max(round_to, math.ceil(alive / round_to) * round_to, 1))


def plan_keep_masks(
    model: nn.Module,
    example_input: Tensor,
    zero_support: dict[str, Tensor],
    *,
    round_to: int = 1,
    scores: dict[str, Tensor] | None = None,
    concat_round_to: int | None = None,
    max_pruning_ratio: float = 1.0,
) -> dict[str, Tensor]:
    """Which channels every site keeps, given which channels have zero support at each site.

    ``zero_support[name]`` is a boolean per channel (True: the support stayed zero). Channels already
    pruned (keep = 0) stay pruned. Per coupled group, a channel survives if any site keeps it; then the
    count is rounded up to ``round_to`` (and ``concat_round_to`` for a group feeding a concatenation:
    ``SiteGroup.rounding``) and raised to the group's collapse guard (``SiteGroup.floor``, with
    ``max_pruning_ratio``) by reviving the dead channels with the highest ``scores``.
    Returns a 0/1 float mask per site (the new ``keep`` buffers), consistent within every group.
    """
    graph = dependency_graph(model, example_input)
    site_alive = {
        name: (site.keep > 0).cpu() & ~zero_support[name].cpu() for name, site in support_sites(model)
    }
    keep = {name: (site.keep > 0).cpu().clone() for name, site in support_sites(model)}
    for group in site_groups(graph):
        alive = group.alive(site_alive)
        previously_alive = group.alive({n: k for n, k in keep.items()})
        wanted = max(rounded_keep_count(int(alive.sum()), group.channels, group.rounding(round_to, concat_round_to)),
                     group.floor(round_to, concat_round_to, max_pruning_ratio))
        if wanted > int(alive.sum()):
            score = torch.full((group.channels,), -math.inf)
            for member in group.members:
                member_score = (scores or {}).get(member.name, torch.zeros(member.site.channels)).cpu().float()
                root = list(member.root_idxs)
                score[root] = torch.maximum(score[root], member_score[list(member.idxs)])
            # Prefer channels that are still alive in the network; then the strongest of the rest.
            score = torch.where(previously_alive, score, score - 1e30)
            score[alive] = math.inf
            alive = torch.zeros_like(alive)
            alive[torch.topk(score, wanted).indices] = True
        for member in group.members:
            keep[member.name][list(member.idxs)] = alive[list(member.root_idxs)]
    return {name: mask.float() for name, mask in keep.items()}


@torch.no_grad()
def apply_keep_masks(model: nn.Module, keep: dict[str, Tensor]) -> None:
    for name, site in support_sites(model):
        site.keep.copy_(keep[name].to(site.keep.device))


def _dead_channels(model: nn.Module, example_input: Tensor) -> tuple[tp.DependencyGraph, list[tuple[SiteGroup, list[int]]]]:
    """Per group, the root channels that no site keeps (computed before anything is changed)."""
    graph = dependency_graph(model, example_input)
    site_alive = {name: (site.keep > 0).cpu() for name, site in support_sites(model)}
    dead = []
    for group in site_groups(graph):
        idxs = (~group.alive(site_alive)).nonzero().flatten().tolist()
        if idxs:
            dead.append((group, idxs))
    return graph, dead


def prune_to_keep_masks(model: nn.Module, example_input: Tensor) -> nn.Module:
    """A physically smaller copy of ``model`` without the channels its sites no longer keep.

    On the kept channels it computes exactly what the masked model computes.
    """
    pruned = copy.deepcopy(model)
    _prune_in_place(pruned, example_input)
    return pruned


def _prune_in_place(model: nn.Module, example_input: Tensor) -> None:
    graph, dead = _dead_channels(model, example_input)
    for group, idxs in dead:
        graph.get_pruning_group(group.root, group.pruning_fn, idxs).prune()


def macs_with_keep_masks(model: nn.Module, example_input: Tensor, keep: dict[str, Tensor]) -> int:
    """MACs of ``model`` physically pruned to ``keep`` (0/1 per site channel), counted on one copy of it;
    ``model`` is left as it is. How every MACs target (search, fill, latency allocation) checks a plan."""
    trial = copy.deepcopy(model)
    apply_keep_masks(trial, keep)
    _prune_in_place(trial, example_input)
    return count_macs_params(trial, example_input)[0]


def pruned_slices(model: nn.Module, example_input: Tensor) -> tuple[list[tuple[nn.Module, list[int], bool]], int]:
    """Every (module, channel indices, whether they are its output channels) that produces or consumes a
    channel no site keeps, and how many such channels there are."""
    graph, dead = _dead_channels(model, example_input)
    slices = [(item.dep.target.module, list(item.idxs), graph.is_out_channel_pruning_fn(item.dep.handler))
              for group, idxs in dead for item in graph.get_pruning_group(group.root, group.pruning_fn, idxs)]
    return slices, sum(len(idxs) for _, idxs in dead)


def zero_pruned_connections(model: nn.Module, example_input: Tensor) -> int:
    """Re-dense (DSD): bring pruned channels back, in place, with every weight that produces or consumes
    them set to zero, and reopen their supports (keep = 1). Returns how many channels came back."""
    slices, channels = pruned_slices(model, example_input)
    with torch.no_grad():
        for module, idxs, out_channels in slices:
            _zero_slice(module, idxs, out_channels)
    return channels


def pruned_connection_masks(model: nn.Module, example_input: Tensor) -> dict[str, Tensor]:
    """Per state-dict entry, which elements ``zero_pruned_connections`` would reset (the weights, norm
    statistics and thresholds of channels no site keeps); entries it would not touch are left out."""
    names = {module: name for name, module in model.named_modules()}
    masks: dict[str, Tensor] = {}
    slices, _ = pruned_slices(model, example_input)
    for module, idxs, out_channels in slices:
        if module not in names:  # torch-pruning's stand-ins for functional ops (adds, concatenations) hold nothing
            continue
        probe = copy.deepcopy(module)  # all ones, then zeroed as re-dense would: the zeros mark the elements
        tensors = dict(probe.named_parameters(recurse=False)) | dict(probe.named_buffers(recurse=False))
        with torch.no_grad():
            for tensor in tensors.values():
                if tensor.is_floating_point():
                    tensor.fill_(1.0)
            _zero_slice(probe, idxs, out_channels)
        prefix = f"{names[module]}." if names[module] else ""
        for key, tensor in tensors.items():
            source = tensors["running_mean"] if key == "running_var" and "running_mean" in tensors else tensor
            if source.is_floating_point() and bool((source == 0).any()):
                masks[prefix + key] = masks.get(prefix + key, torch.zeros_like(source, dtype=torch.bool)) | (source == 0)
    return masks


def _zero_slice(module: nn.Module, idxs: list[int], out_channels: bool) -> None:
    if isinstance(module, SupportSite):
        module.keep[idxs] = 1.0
        module.beta[idxs] = 0.0
    elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        depthwise = isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.out_channels
        if out_channels or depthwise:
            module.weight[idxs] = 0.0
            if module.bias is not None:
                module.bias[idxs] = 0.0
        elif isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
            raise ValueError(f"re-dense of grouped convolution {module} is not supported")
        else:
            module.weight[:, idxs] = 0.0
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.affine:
            module.weight[idxs] = 0.0
            module.bias[idxs] = 0.0
        if module.track_running_stats:
            module.running_mean[idxs] = 0.0
            module.running_var[idxs] = 1.0
    elif any(True for _ in module.parameters(recurse=False)):
        raise ValueError(f"re-dense does not know how to zero channels of {type(module).__name__}")


def count_macs_params(model: nn.Module, example_input: Tensor) -> tuple[int, int]:
    """(MACs for one example, parameters), counted by torch-pruning: the one place MACs are counted."""
    macs, params = tp.utils.count_ops_and_params(model, example_input[:1])
    return int(macs), int(params)


def fill_macs_budget(
    model: nn.Module,
    example_input: Tensor,
    scores: dict[str, Tensor],
    keep: dict[str, Tensor],
    macs: int,
    target_macs: int,
    *,
    round_to: int = 1,
    concat_round_to: int | None = None,
    max_pruning_ratio: float = 1.0,
    max_trials: int = 48,
) -> tuple[dict[str, Tensor], int]:
    """``keep`` (a threshold search's masks, whose model has ``macs``, at or under ``target_macs``) with pruned
    channels given back, best score first, while the model stays within ``target_macs``. The threshold search
    stops at the first threshold under the target; with ``round_to`` channels per step a group's count jumps, so
    that can land well under it (a 16-channel layer at ``round_to`` 8 keeps 8 or 16). A channel that does not fit
    rules out the rest of its site. At most ``max_trials`` MACs counts. Returns (keep masks, MACs)."""
    alive = {name: (site.keep > 0).cpu() for name, site in support_sites(model)}
    keep = {name: mask.cpu().clone() for name, mask in keep.items()}
    candidates = sorted(
        ((float(scores[name].cpu().flatten()[index]), name, index)
         for name, mask in keep.items() for index in ((mask == 0) & alive[name]).nonzero().flatten().tolist()),
        key=lambda item: -item[0])
    full: set[str] = set()
    trials = 0
    for _, name, index in candidates:
        if trials >= max_trials:
            break
        if name in full or keep[name][index] > 0:  # a site that is full, or a channel an earlier step brought back
            continue
        zero = {n: mask == 0 for n, mask in keep.items()}
        zero[name][index] = False
        trial_keep = plan_keep_masks(model, example_input, zero, round_to=round_to, scores=scores,
                                     concat_round_to=concat_round_to, max_pruning_ratio=max_pruning_ratio)
        trials += 1
        trial_macs = macs_with_keep_masks(model, example_input, trial_keep)
        if trial_macs <= target_macs:
            keep, macs = trial_keep, trial_macs
        else:
            full.add(name)
    return keep, macs


def search_relative_threshold(
    model: nn.Module,
    example_input: Tensor,
    max_relative_energy: dict[str, Tensor],
    target_macs: int,
    *,
    round_to: int = 1,
    concat_round_to: int | None = None,
    max_pruning_ratio: float = 1.0,
) -> tuple[float, dict[str, Tensor], int]:
    """The smallest relative threshold whose zero-support channels bring MACs to ``target_macs`` or below.

    A channel's support stayed zero at threshold τ exactly when its largest relative energy seen was
    ≤ τ (Eq. 41 per batch), so every candidate τ can be tried from the recorded statistics without
    retraining. Bisection over the recorded values; returns (τ, keep masks, MACs).

    Any per-channel score works the same way (channels scoring ≤ τ die): every criterion's scores
    (``criteria``) are pruned to a MACs target by this same search.
    """
    candidates = torch.unique(torch.cat([v.flatten().float().cpu() for v in max_relative_energy.values()]))
    candidates = candidates[torch.isfinite(candidates)]  # +inf: a channel its criterion cannot measure, kept
    candidates = torch.cat([torch.zeros(1), candidates])

    def evaluate(threshold: float) -> tuple[dict[str, Tensor], int]:
        zero = {name: values.cpu() <= threshold for name, values in max_relative_energy.items()}
        keep = plan_keep_masks(model, example_input, zero, round_to=round_to, scores=max_relative_energy,
                               concat_round_to=concat_round_to, max_pruning_ratio=max_pruning_ratio)
        return keep, macs_with_keep_masks(model, example_input, keep)

    low, high = 0, len(candidates) - 1
    best = None
    while low <= high:
        middle = (low + high) // 2
        keep, macs = evaluate(float(candidates[middle]))
        if macs <= target_macs:
            best = (float(candidates[middle]), keep, macs)
            high = middle - 1
        else:
            low = middle + 1
    if best is None:  # even pruning every candidate leaves more than the target: take the strongest cut
        threshold = float(candidates[-1])
        keep, macs = evaluate(threshold)
        best = (threshold, keep, macs)
    return best
