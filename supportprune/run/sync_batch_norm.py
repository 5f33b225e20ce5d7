"""Batch norm over the global batch of a data-parallel run (recipe ``sync_batch_norm``).

Under torchrun each process sees its share of a global batch, so plain batch norm normalises with the
statistics of that share: not what one process training on the whole batch computes. Here the mean and
variance are summed over the processes (the sums are differentiable: ``torch.distributed.nn`` all-reduce
sends each process the gradient of every process's loss through the statistics), so the forward pass,
gradients and running statistics are those of one process on the global batch.

``torch.nn.SyncBatchNorm`` does the same on GPUs only; this one runs on every backend (gloo on CPUs too), and
it changes no module's name, parameters or buffers: checkpoints and state dicts stay those of plain batch
norm, and export rebuilds the models with plain batch norm from them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn


class _GlobalStatistics:
    """Mixed into a batch-norm class: training passes that track gradients use global batch statistics.

    Only those passes: they are the DistributedDataParallel steps, which every process runs in lock-step. The
    passes without gradients (support estimation and pruning analysis, made by rank 0 alone; batch-norm
    recalibration, made by every process on the same examples) keep local statistics and wait for no one."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled() and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        return global_batch_norm(self, input)


class GlobalBatchNorm1d(_GlobalStatistics, nn.BatchNorm1d):
    pass


class GlobalBatchNorm2d(_GlobalStatistics, nn.BatchNorm2d):
    pass


class GlobalBatchNorm3d(_GlobalStatistics, nn.BatchNorm3d):
    pass


_GLOBAL = {nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d, nn.BatchNorm3d: GlobalBatchNorm3d}


def use_global_batch_statistics(model: nn.Module) -> int:
    """Make every batch-norm layer of ``model`` normalise over the global batch; returns how many.

    The layers change class in place (to a subclass that only overrides ``forward``), so the model keeps its
    structure, names, parameters, buffers and hooks, and ``isinstance(layer, nn.BatchNorm2d)`` still holds for
    the pruning tools."""
    converted = 0
    for module in model.modules():
        global_class = _GLOBAL.get(type(module))
        if global_class is not None:
            module.__class__ = global_class
            converted += 1
    return converted


def global_batch_norm(layer: nn.modules.batchnorm._BatchNorm, input: torch.Tensor) -> torch.Tensor:
    """``layer`` in training mode on the concatenation of every process's ``input`` (this process's rows
    returned); running statistics updated as ``F.batch_norm`` does (unbiased variance, momentum or the
    cumulative average when momentum is None). Two passes (mean, then squared deviations) for the accuracy
    of the variance; float32 arithmetic under autocast, as batch norm has there."""
    x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    local_count = x.numel() // x.shape[1]
    totals = dist_nn.all_reduce(torch.cat([x.sum(dims), x.new_tensor([float(local_count)])]))
    count = totals[-1]
    mean = totals[:-1] / count
    centred = x - mean.view(shape)
    variance = dist_nn.all_reduce(centred.square().sum(dims)) / count
    output = centred * torch.rsqrt(variance + layer.eps).view(shape)
    if layer.affine:
        output = output * layer.weight.view(shape) + layer.bias.view(shape)
    if layer.track_running_stats:
        with torch.no_grad():
            layer.num_batches_tracked.add_(1)
            factor = layer.momentum if layer.momentum is not None else 1.0 / float(layer.num_batches_tracked)
            unbiased = variance * (count / (count - 1)) if float(count) > 1 else variance
            layer.running_mean.mul_(1 - factor).add_(mean.to(layer.running_mean.dtype), alpha=factor)
            layer.running_var.mul_(1 - factor).add_(unbiased.to(layer.running_var.dtype), alpha=factor)
    return output
