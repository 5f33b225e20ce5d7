"""Knowledge distillation (Hinton, Vinyals, Dean 2015) as a training loss: the student also matches the
softened outputs of a frozen teacher (here the model at the end of the Dense step)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, alpha: float, temperature: float) -> Tensor:
    """(1 − α)·CE(y, z_s) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), the KL averaged over the batch.
    T² keeps the soft term's gradient on the scale of the hard one as T grows (Hinton et al., section 2)."""
    hard = F.cross_entropy(student_logits, labels)
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return (1.0 - alpha) * hard + alpha * temperature**2 * soft


class DistillationLoss:
    """A training loss (``train_epoch``'s ``loss_fn``): the teacher, frozen and in eval mode, sees the same images."""

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.temperature = alpha, temperature

    def __call__(self, logits: Tensor, labels: Tensor, images: Tensor) -> Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(images).float()
        return distillation_loss(logits, teacher_logits, labels, self.alpha, self.temperature)
