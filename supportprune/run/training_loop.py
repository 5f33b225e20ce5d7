"""The training loop: optimiser, schedule, one epoch of SGD, evaluation. It knows nothing of supports."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from supportprune.errors import SupportpruneError
from supportprune.inputs.recipe import PhaseConfig


class DivergedError(SupportpruneError):
    """The loss stopped being a finite number."""


class LossFunction(Protocol):
    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor: ...


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The default training loss; others (``distill.DistillationLoss``) take the same arguments."""
    return F.cross_entropy(logits, labels)


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


@dataclass
class EpochProgress:
    """Running sums of an epoch, so an interrupted epoch can resume and still report exact totals."""

    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def top1(self) -> float:
        return 100.0 * self.correct / max(self.seen, 1)


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    *,
    progress: Optional[EpochProgress] = None,
    on_step: Optional[StepListener] = None,
    max_steps: Optional[int] = None,
    stop_after: Optional[Callable[[EpochProgress], bool]] = None,
    bf16: bool = False,
    channels_last: bool = False,
    before_batch: Optional[Callable[[torch.Tensor], None]] = None,
    loss_fn: LossFunction = cross_entropy_loss,
) -> EpochProgress:
    """SGD over ``loader`` (continuing ``progress`` when an epoch resumes). Stops early when
    ``stop_after(progress)`` says so after a step. Raises ``DivergedError`` on a non-finite loss.
    ``bf16``: forward under bfloat16 autocast; ``channels_last``: NHWC inputs (the model is expected
    to be converted by the caller). ``before_batch(indices)`` runs before each forward pass (the
    I-alternation loop fixes that batch's stored supports there). ``loss_fn(logits, labels, images)``
    is the loss minimised (cross-entropy unless given)."""
    progress = progress or EpochProgress()
    model.train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for batch in loader:
        if max_steps is not None and progress.step >= max_steps:
            break
        images, labels = batch[0], batch[1]
        if before_batch is not None:  # batches of ExampleIndices carry the example indices third
            before_batch(batch[2])
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
            loss = loss_fn(logits.float(), labels, images)
        if not torch.isfinite(loss):
            raise DivergedError(f"the loss became {loss.item()} at step {progress.step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        batch = labels.numel()
        progress.step += 1
        progress.loss_sum += loss.item() * batch
        progress.correct += int((logits.argmax(dim=1) == labels).sum())
        progress.seen += batch
        if on_step is not None:
            on_step(progress.step, progress.loss, progress.top1)
        if stop_after is not None and stop_after(progress):
            break
    if progress.seen == 0:
        raise SupportpruneError("the training set gave no batch; use a smaller data.batch_size")
    return progress


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    on_step: Optional[Callable[[int], None]] = None,
    reduce: Callable[[list[float]], list[float]] = lambda sums: sums,
) -> tuple[float, float]:
    """(mean loss, top-1 in %) over ``loader``, in eval mode (η* on each example); summed over all
    processes by ``reduce`` in a data-parallel run, where each rank holds a shard of the validation set."""
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
    total_loss, correct, seen = reduce([total_loss, correct, seen])
    if seen == 0:
        raise SupportpruneError("the validation set is empty")
    return total_loss / seen, 100.0 * correct / seen
