"""Distillation from the Dense model (Hinton et al. 2015) as the Sparse/re-Dense loss."""

import math

import pytest
import torch
from torch import nn

from supportprune.method.distill import DistillationLoss, distillation_loss
from supportprune.inputs.typed_yaml import RecipeError
from supportprune.inputs.recipe import DistillConfig, recipe_from_dict
from supportprune.run.training_loop import cross_entropy_loss


def _softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def test_distillation_loss_is_its_formula_on_a_hand_built_batch():
    student = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]
    teacher = [[1.5, 1.0, -0.5], [-1.0, 2.0, 2.5]]
    labels = [0, 2]
    alpha, t = 0.3, 2.0
    ce = sum(-math.log(_softmax(s, 1.0)[y]) for s, y in zip(student, labels)) / 2
    kl = sum(sum(p * math.log(p / q) for p, q in zip(_softmax(z_t, t), _softmax(z_s, t)))
             for z_s, z_t in zip(student, teacher)) / 2  # KL(softmax(z_t/T) ‖ softmax(z_s/T)), batch mean
    expected = (1 - alpha) * ce + alpha * t * t * kl
    got = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), alpha, t)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), 0.0, t)) == pytest.approx(ce, rel=1e-6)


def test_the_teacher_is_frozen_in_eval_mode_and_only_the_student_learns():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    student = nn.Linear(4, 3)
    loss_fn = DistillationLoss(teacher, alpha=1.0, temperature=3.0)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    images, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = loss_fn(student(images), labels, images)
    loss.backward()
    assert student.weight.grad is not None and float(student.weight.grad.abs().sum()) > 0
    expected = distillation_loss(student(images), teacher(images), labels, 1.0, 3.0)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert float(cross_entropy_loss(student(images), labels, images).detach()) == pytest.approx(
        float(nn.functional.cross_entropy(student(images), labels).detach()))


def test_distill_keys_are_validated():
    recipe = recipe_from_dict({"redense": {"distill": {"alpha": 0.5, "temperature": 2}}, "sparse": {"distill": None}})
    assert (recipe.redense.distill.alpha, recipe.redense.distill.temperature, recipe.sparse.distill) == (0.5, 2.0, None)
    # On by default (it won from trained starting points): α 0.7, T 4
    assert recipe_from_dict({}).sparse.distill == recipe_from_dict({}).redense.distill == DistillConfig(0.7, 4.0)
    with pytest.raises(RecipeError, match="sparse.distill.alpha: a weight in"):
        recipe_from_dict({"sparse": {"distill": {"alpha": 1.5}}})
    with pytest.raises(RecipeError, match="dense.distill: unknown key"):
        recipe_from_dict({"dense": {"distill": {"alpha": 0.5}}})
