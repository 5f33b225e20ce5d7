"""Supports as parameters of their own: positive hard-thresholding, binary supports and B-alternation masks.

Huang, Kong, Lucey (2017), sections 3.1 and 4.2. Everything here is a pure function of tensors or an
``nn.Module``; nothing reads or writes files.

The unit of a support at a site is either one activation (``element``, the paper's unit *i*) or one
channel (``channel``: the energy of a channel is summed over its spatial positions too). The channel
dimension is always dim 1, so the same code serves convolutional (N, C, H, W) and linear (N, C) sites.
"""

from __future__ import annotations

from typing import Iterator, Literal

import torch
from torch import Tensor, nn

Granularity = Literal["element", "channel"]
SiteMode = Literal["threshold", "batch", "fixed"]
GRANULARITIES: tuple[str, ...] = ("element", "channel")


def _per_channel(values: Tensor, like: Tensor) -> Tensor:
    """Reshape a (C,) tensor so it broadcasts along dim 1 of ``like``."""
    return values.view((1, -1) + (1,) * (like.dim() - 2))


def positive_hard_threshold(q: Tensor, beta: Tensor | float = 0.0) -> Tensor:
    """η*(q; β) = q if q > β else 0 (Eq. 9); β is a scalar or one threshold per channel.

    β = 0 is exactly ReLU, so pretrained weights keep their function.
    """
    if isinstance(beta, Tensor) and beta.dim() == 1:
        beta = _per_channel(beta.to(q.dtype), q)
    return torch.where(q > beta, q, torch.zeros((), dtype=q.dtype, device=q.device))


def support(q: Tensor, beta: Tensor | float = 0.0) -> Tensor:
    """The binary support m = [q > β] (Eq. 12), as a boolean tensor shaped like ``q``."""
    if isinstance(beta, Tensor) and beta.dim() == 1:
        beta = _per_channel(beta.to(q.dtype), q)
    return q > beta


def batch_unit_energy(x: Tensor, granularity: Granularity) -> Tensor:
    """Σ_n x_i² over the mini-batch for every unit i (the left side of Eq. 41).

    ``element``: one energy per activation, shape x.shape[1:]. ``channel``: one per channel, shape (C,).
    """
    energy = x.float().square().sum(dim=0)
    if granularity == "channel" and energy.dim() > 1:
        energy = energy.flatten(1).sum(dim=1)
    return energy


def relative_energy(energy: Tensor, keep: Tensor | None = None) -> Tensor:
    """Each unit's energy divided by the site's mean unit energy, so one threshold serves every layer.

    Units of pruned channels (``keep`` = 0) are left out of the mean: they are no longer part of the site.
    """
    if keep is None:
        mean = energy.mean()
    else:
        live = _per_channel(keep, energy.unsqueeze(0)).squeeze(0).expand_as(energy)
        mean = (energy * live).sum() / live.sum().clamp(min=1)
    return energy / mean.clamp(min=torch.finfo(energy.dtype).tiny)


def batch_support_mask(
    x: Tensor, relative_threshold: float, granularity: Granularity, keep: Tensor | None = None
) -> Tensor:
    """The B-alternation mask (Eq. 39–41): m_i = 1 iff Σ_n x_i² > β, one mask shared by the batch.

    The paper's β is expressed here as ``relative_threshold`` times the site's mean unit energy.
    Returns a boolean mask that broadcasts against ``x``: shape x.shape[1:] (element) or (C, 1, ...)
    (channel).
    """
    energy = batch_unit_energy(x, granularity)
    mask = relative_energy(energy, keep) > relative_threshold
    if granularity == "channel":
        mask = mask.view((-1,) + (1,) * (x.dim() - 2))
    return mask


def channel_max(values: Tensor) -> Tensor:
    """The largest value of each channel of a per-unit tensor (C,) or (C, H, W) → (C,)."""
    return values if values.dim() == 1 else values.flatten(1).amax(dim=1)


class _OutputSavingThreshold(torch.autograd.Function):
    """out = where(q > t, q, 0) for a constant threshold t ≥ 0 (no gradient); backward is ReLU's:
    grad·[out > 0], from the saved output alone."""

    @staticmethod
    def forward(ctx, q: Tensor, t: Tensor) -> Tensor:
        out = torch.where(q > t, q, 0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, out, 0), None


class _EagerOutput(_OutputSavingThreshold):
    """A site's output computed by ``compute(q)`` in eager kernels (``SupportSite._eager_batch_output``,
    ``_eager_threshold_output``), equal to where(q > t, q, 0) for a constant t ≥ 0; the same backward."""

    @staticmethod
    def forward(ctx, q: Tensor, compute) -> Tensor:
        out = compute(q)
        ctx.save_for_backward(out)
        return out


class _EagerInplaceOutput(_OutputSavingThreshold):
    """``_EagerOutput`` written into q itself, for sites that replaced an in-place ReLU (the model's
    author vouched that q is not needed afterwards; autograd's version check catches it if it is)."""

    @staticmethod
    def forward(ctx, q: Tensor, compute) -> Tensor:
        out = compute(q)
        ctx.mark_dirty(q)
        ctx.save_for_backward(out)
        return out


class SupportSite(nn.Module):
    """One ReLU call site, turned into η* with a per-channel threshold β and a support of its own.

    Modes (set by the algorithm, never by the training loop):
    - ``threshold``: η*(q; β) on every example, the usual train and test behaviour (Eq. 9).
    - ``batch``: in training, η* followed by the B-alternation mask of the mini-batch (Eq. 41); the
      mask is recomputed on the fly from the batch. In eval mode it behaves like ``threshold``.
    - ``fixed``: the output is ``fixed_support * q``; with every site fixed the network is linear in
      its input (Eq. 13).

    ``keep`` (a 0/1 buffer per channel) removes pruned channels in every mode, so a masked full model
    computes what the physically pruned model computes.
    """

    def __init__(self, channels: int, inplace: bool = False, upper: float | None = None, gate=None) -> None:
        super().__init__()
        self.channels = channels
        # A channel gate at another activation (convert_relus(gate_activations=True)): the output is gate(q)·keep in
        # every mode, with no support of its own, so a weight criterion prunes a model without ReLU exactly. An
        # activation module is kept outside the module tree (its state, if any, is not the site's).
        self.gate = gate.forward if isinstance(gate, nn.Module) else gate
        self.gate_name = (type(gate).__name__ if isinstance(gate, nn.Module)
                          else getattr(getattr(gate, "func", gate), "__name__", None) if gate is not None else None)
        self.ungated = False  # export_ready: every channel kept, the bare activation
        # Replaces an in-place ReLU: eager kernels may write the output into q (no allocation, one
        # pass less over memory on the CPU), as the ReLU did.
        self.inplace = inplace
        # Replaces ReLU6 (upper = 6): the output is min(η*(q; β), upper), in every mode. The fused paths
        # assume ReLU's backward (no zero gradient above a clamp), so clamped sites take the reference path.
        self.upper = upper
        self.register_buffer("beta", torch.zeros(channels))
        self.register_buffer("keep", torch.ones(channels))
        self.register_buffer("relative_threshold", torch.zeros(()))
        # Support statistics over the Sparse phase (reset at each alternation point).
        self.register_buffer("stat_batches", torch.zeros((), dtype=torch.long))
        self.register_buffer("stat_support_batches", torch.zeros(channels))
        self.register_buffer("stat_energy", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("stat_max_relative_energy", torch.zeros(channels))
        self.register_buffer("stat_kept_units", torch.zeros((), dtype=torch.float64))
        self.mode: SiteMode = "threshold"
        self.granularity: Granularity = "channel"
        self.record_stats = False
        self.global_supports = False
        self.fixed_support: Tensor | None = None

    def extra_repr(self) -> str:
        if self.gate is not None:
            return f"channels={self.channels}, gate={self.gate_name}"
        clamp = "" if self.upper is None else f", upper={self.upper:g}"
        return f"channels={self.channels}, mode={self.mode}, granularity={self.granularity}{clamp}"

    # The fused forward path (default). ``SupportSite.fused = False`` (on the class or one instance)
    # selects the reference path below, kept for tests and benchmarks.
    fused: bool = True

    def forward(self, q: Tensor) -> Tensor:
        if self.gate is not None:
            out = self.gate(q)
            return out if self.ungated else out * _per_channel(self.keep.to(out.dtype), out)
        if self.mode == "fixed" or not self.fused or self.upper is not None:
            return self._forward_reference(q)
        if self.mode == "batch" and self.training:
            return self._forward_batch_fused(q)
        return self._forward_threshold_fused(q)

    def _forward_reference(self, q: Tensor) -> Tensor:
        """The plain implementation: η*, then × keep, then × the batch mask (three elementwise passes,
        each saved by autograd). The fused path computes exactly this."""
        keep = _per_channel(self.keep.to(q.dtype), q)
        if self.mode == "fixed":
            if self.fixed_support is None:
                raise RuntimeError("SupportSite in fixed mode needs fixed_support; see fix_supports()")
            fixed = self.fixed_support.to(q.dtype)
            # Channel supports, (N, C), apply to every position of their channel. A clamped site stays
            # clamped: it reproduces η* at the input its supports came from, and is linear (Eq. 13)
            # wherever no kept unit exceeds ``upper``.
            return self._clamped(q * fixed.view(fixed.shape + (1,) * (q.dim() - fixed.dim()))) * keep
        activation = self._clamped(positive_hard_threshold(q, self.beta)) * keep
        if self.mode != "batch" or not self.training:
            return activation
        with torch.no_grad():
            mask = self._batch_mask(batch_unit_energy(activation, self.granularity))
            if self.granularity == "channel":
                mask = mask.view((-1,) + (1,) * (q.dim() - 2))
        return activation * mask.to(q.dtype)

    def _clamped(self, activation: Tensor) -> Tensor:
        return activation if self.upper is None else activation.clamp(max=self.upper)

    # --- fused path -------------------------------------------------------------------------------
    # β ≥ 0 is assumed everywhere below (positive hard-thresholding, Eq. 9; β = 0 is ReLU): then
    # out = η*(q; β)·keep·mask is nonzero exactly where the unit passes, so the input gradient is
    # grad·[out > 0], ReLU's backward on the saved output. Nothing else is saved for backward. The
    # batch mask is a constant of the batch (no gradient through its selection), as in the reference.

    def _folded_threshold(self, q: Tensor, mask: Tensor | None = None) -> Tensor:
        """β where the unit is kept (and, with ``mask``, in the batch support), +inf elsewhere, in
        q's dtype and broadcastable against q: one ``where(q > t, q, 0)`` then applies η*, keep and
        the mask at once. ``mask`` is per unit (element: x.shape[1:]) or per channel (channel: (C,))."""
        live = self.keep > 0
        beta = self.beta
        if mask is not None:
            if mask.dim() == 1 or q.dim() == 2:
                live = live & mask
            else:  # element granularity of a (N, C, ...) site: one threshold per unit
                live = _per_channel(live, mask.unsqueeze(0)).squeeze(0) & mask
                beta = _per_channel(beta, mask.unsqueeze(0)).squeeze(0)
        t = torch.where(live, beta, torch.full((), float("inf"), dtype=beta.dtype, device=beta.device))
        t = t.to(q.dtype)
        return _per_channel(t, q) if t.dim() == 1 else t

    def _beta_is_zero(self) -> bool:
        """Whether β = 0 at every channel (η* is ReLU), cached until β changes in place or is replaced.
        Eager only: the check synchronises once per change of β, never per step."""
        key = (id(self.beta), self.beta._version, self.beta.device)
        if getattr(self, "_beta_zero_key", None) != key:
            self._beta_zero = bool((self.beta == 0).all())
            self._beta_zero_key = key
        return self._beta_zero

    def _eager_activation(self, q: Tensor, scale: Tensor | None = None) -> Tensor:
        """η*(q; β)·scale in eager kernels: ReLU (fast everywhere) when β = 0, else the folded-threshold
        ``where``; ``scale`` (keep, or keep·mask: 0/1 per channel, broadcast shape) multiplied in place.
        Written into q for in-place sites."""
        if self._beta_is_zero():
            out = torch.relu_(q) if self.inplace else torch.relu(q)
        else:
            threshold = self._folded_threshold(q)
            out = q.masked_fill_(~(q > threshold), 0) if self.inplace else torch.where(q > threshold, q, 0)
        return out if scale is None else out.mul_(scale)

    @staticmethod
    def _compiled_output(q: Tensor, threshold: Tensor) -> Tensor:
        """where(q > t, q, 0), with ReLU's backward (only the output saved) when a gradient is needed."""
        if torch.is_grad_enabled() and q.requires_grad:
            return _OutputSavingThreshold.apply(q, threshold)
        return torch.where(q > threshold, q, 0)

    def _eager_output(self, q: Tensor, compute) -> Tensor:
        """``compute(q)`` without autograd recording its passes; ReLU's backward on its output."""
        if torch.is_grad_enabled() and q.requires_grad:
            return (_EagerInplaceOutput if self.inplace else _EagerOutput).apply(q, compute)
        with torch.no_grad():
            return compute(q)

    def _forward_threshold_fused(self, q: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return self._compiled_output(q, self._folded_threshold(q))
        return self._eager_output(q, self._eager_threshold_output)

    def _eager_threshold_output(self, q: Tensor) -> Tensor:
        return self._eager_activation(q, _per_channel(self.keep.to(q.dtype), q))

    def _energy_dims(self, q: Tensor) -> tuple[int, ...]:
        if self.granularity == "channel":
            return (0,) + tuple(range(2, q.dim()))
        return (0,)

    def _batch_mask(self, energy: Tensor) -> Tensor:
        """Eq. 41 on the unit energies (all-reduced first for global supports); records statistics."""
        if self.global_supports:  # data-parallel: the energy of the global batch, same mask on every rank
            torch.distributed.all_reduce(energy)
        relative = relative_energy(energy, self.keep)
        mask = relative > self.relative_threshold  # Eq. 41
        if self.record_stats:
            self._record(energy, relative, mask)
        return mask

    def _forward_batch_fused(self, q: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            # Written for Inductor: the energy becomes one reduction that reads q (fp32 accumulation,
            # no temporary), the output one elementwise pass, the rest a few tiny kernels.
            with torch.no_grad():
                activation = torch.where(q > self._folded_threshold(q), q, 0).float()
                energy = (activation * activation).sum(dim=self._energy_dims(q))
                threshold = self._folded_threshold(q, self._batch_mask(energy))
            return self._compiled_output(q, threshold)
        return self._eager_output(q, self._eager_batch_output)

    def _eager_batch_output(self, q: Tensor) -> Tensor:
        """Eager kernels, fewest passes over memory: η* written once (ReLU's kernel when β = 0), its
        energy by one fp32-accumulating reduction (``vector_norm`` reads it without a squared
        temporary; × keep removes pruned channels), then keep·mask multiplied in place."""
        activation = self._eager_activation(q)
        if self.granularity == "channel" and q.device.type == "cpu" and q.dim() > 2 and q.is_contiguous():
            # CPU kernels reduce a contiguous innermost run several times faster than a strided (N, H, W)
            # reduction: per-example channel norms first, then their squares summed over the batch.
            energy = torch.linalg.vector_norm(activation.flatten(2), 2, dim=2, dtype=torch.float32).square_().sum(0)
        else:
            energy = torch.linalg.vector_norm(activation, 2, dim=self._energy_dims(q), dtype=torch.float32).square_()
        keep = self.keep if energy.dim() == 1 else _per_channel(self.keep, energy.unsqueeze(0)).squeeze(0)
        mask = self._batch_mask(energy.mul_(keep))
        scale = mask & (keep > 0)
        if self.granularity == "channel":
            if q.device.type == "cpu" and q.dim() >= 2:
                # On the CPU reading the mask back costs no device sync: zero only the dropped channels
                # instead of multiplying every activation (usually few or none are dropped).
                dropped = (~scale).nonzero().flatten()
                return activation.index_fill_(1, dropped, 0) if dropped.numel() else activation
            scale = scale.view((-1,) + (1,) * (q.dim() - 2))
        return activation.mul_(scale.to(q.dtype))

    @torch.no_grad()
    def _record(self, energy: Tensor, relative: Tensor, mask: Tensor) -> None:
        self.stat_batches += 1
        self.stat_support_batches += channel_max(mask.float())
        channel_energy = energy if energy.dim() == 1 else energy.flatten(1).sum(dim=1)
        self.stat_energy += channel_energy.double()
        self.stat_max_relative_energy.copy_(torch.maximum(self.stat_max_relative_energy, channel_max(relative)))
        self.stat_kept_units += mask.float().mean().double()

    @torch.no_grad()
    def reset_stats(self) -> None:
        for name in ("stat_batches", "stat_support_batches", "stat_energy", "stat_max_relative_energy", "stat_kept_units"):
            getattr(self, name).zero_()


def support_sites(model: nn.Module) -> Iterator[tuple[str, SupportSite]]:
    """Every support site of a converted model, in module order, with its path."""
    for name, module in model.named_modules():
        if isinstance(module, SupportSite):
            yield name, module


def set_site_mode(
    model: nn.Module,
    mode: SiteMode,
    *,
    granularity: Granularity | None = None,
    relative_threshold: float | None = None,
    record_stats: bool | None = None,
    global_supports: bool | None = None,
) -> None:
    """Set every site's mode (and, where given, granularity, threshold, statistics recording, and
    whether batch energies are all-reduced over the process group before thresholding)."""
    if granularity is not None and granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    for _, site in support_sites(model):
        site.mode = mode
        if granularity is not None:
            site.granularity = granularity
        if relative_threshold is not None:
            site.relative_threshold.fill_(relative_threshold)
        if record_stats is not None:
            site.record_stats = record_stats
        if global_supports is not None:
            site.global_supports = global_supports


@torch.no_grad()
def capture_supports(model: nn.Module, inputs: Tensor) -> dict[str, Tensor]:
    """Each site's support m = [q > β] (Eq. 12) for ``inputs``, one mask per example, in eval mode."""
    supports: dict[str, Tensor] = {}
    hooks = []
    for name, site in support_sites(model):
        def hook(module: SupportSite, args, output, name=name):
            supports[name] = support(args[0], module.beta) & (_per_channel(module.keep, args[0]) > 0)
        hooks.append(site.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(inputs)
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    return supports


def fix_supports(model: nn.Module, supports: dict[str, Tensor]) -> None:
    """Put every site in ``fixed`` mode with the given supports (Eq. 13: the network becomes linear).

    A support has one row per example of the next batch (I-alternation), or one row for all (MaskT);
    channel supports, (N, C), apply to every position of their channel."""
    for name, site in support_sites(model):
        site.fixed_support = supports[name]
        site.mode = "fixed"


def release_supports(model: nn.Module) -> None:
    """Leave ``fixed`` mode: back to η* thresholding."""
    for _, site in support_sites(model):
        site.fixed_support = None
        site.mode = "threshold"


def reset_support_stats(model: nn.Module) -> None:
    for _, site in support_sites(model):
        site.reset_stats()


def kept_unit_fractions(model: nn.Module) -> dict[str, float]:
    """Per site, the mean fraction of units whose batch support was 1 since the statistics were reset."""
    return {
        name: float(site.stat_kept_units / site.stat_batches) if site.stat_batches > 0 else 1.0
        for name, site in support_sites(model)
    }


def kept_channel_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Per site, (channels kept, channels in all)."""
    return {name: (int(site.keep.sum()), site.channels) for name, site in support_sites(model)}
