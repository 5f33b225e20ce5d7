"""The training loop: optimiser, schedule, one epoch of SGD, evaluation. It knows nothing of supports."""

from __future__ import annotations

import math
from typing import Callable, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from supportprune.errors import SupportpruneError
from supportprune.recipe import PhaseConfig


class DivergedError(SupportpruneError):
    """The loss stopped being a finite number."""


class StepListener(Protocol):
    def __call__(self, step: int, loss: float, top1: float) -> None: ...


def choose_device(requested: str = "auto") -> torch.device:
    """The one place the device is chosen: CUDA when present, else CPU; ``--device`` forces one."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise SupportpruneError(f"--device {requested!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SupportpruneError(f"--device {requested}: no CUDA GPU is available here; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    """The one place seeds are set (Python, NumPy, torch on every device)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, config: PhaseConfig) -> torch.optim.SGD:
    # No weight decay on biases and norm scales, the usual practice for ImageNet CNNs.
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() > 1 else no_decay).append(parameter)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
    )


def make_scheduler(optimizer: torch.optim.Optimizer, config: PhaseConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step learning-rate factor: cosine to zero over the phase, ×0.1 every ``step_epochs``, or constant."""
    total = max(1, config.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        if config.schedule == "step":
            return 0.1 ** (step // (config.step_epochs * steps_per_epoch))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    *,
    on_step: Optional[StepListener] = None,
    max_steps: Optional[int] = None,
) -> tuple[float, float]:
    """One pass of SGD over ``loader``; returns (mean loss, top-1 in %). Raises ``DivergedError`` on NaN."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for step, (images, labels) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        if not torch.isfinite(loss):
            raise DivergedError(f"the loss became {loss.item()} at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        batch = labels.numel()
        total_loss += loss.item() * batch
        correct += int((logits.argmax(dim=1) == labels).sum())
        seen += batch
        if on_step is not None:
            on_step(step + 1, total_loss / seen, 100.0 * correct / seen)
    if seen == 0:
        raise SupportpruneError("the training set gave no batch; use a smaller data.batch_size")
    return total_loss / seen, 100.0 * correct / seen


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, on_step: Optional[Callable[[int], None]] = None
) -> tuple[float, float]:
    """(mean loss, top-1 in %) over ``loader``, in eval mode (η* on each example)."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for step, (images, labels) in enumerate(loader):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
        seen += labels.numel()
        if on_step is not None:
            on_step(step + 1)
    if seen == 0:
        raise SupportpruneError("the validation set is empty")
    return total_loss / seen, 100.0 * correct / seen
