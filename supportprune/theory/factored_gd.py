"""Gradient descent on the factored weights (W1, W2) of (P2) (Eq. 22, 24), from many random starts at once.

This is what training does: the lifted V is never formed. With the supports fixed the loss
||y − W2 (m ⊙ W1 x)||² is a non-convex quartic in (W1, W2); Theorem 1 claims (S)GD reaches its global
optimum under the RIP condition of Eq. 29. Full-batch GD with a backtracking step, vectorised over the starts (leading axis R).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GDRuns:
    W1: np.ndarray  # (R, d1, d0)
    W2: np.ndarray  # (R, d2, d1)
    losses: np.ndarray  # (R,) final ||y − ŷ||² / m
    curve_steps: np.ndarray  # (T,)
    curves: np.ndarray  # (R, T) the loss at curve_steps
    steps: int  # steps actually run (GD stops once every run has converged)


def random_starts(rng: np.random.Generator, starts: int, d0: int, d1: int, d2: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard N(0, 1/fan-in) initialisations, one per start."""
    return rng.normal(size=(starts, d1, d0)) / np.sqrt(d0), rng.normal(size=(starts, d2, d1)) / np.sqrt(d1)


def factored_losses(X, masks, Y, W1, W2) -> np.ndarray:
    """||y − W2 (m ⊙ W1 x)||² / m for each start (W1 (R, d1, d0), W2 (R, d2, d1))."""
    hidden = masks[None] * (X @ W1.transpose(0, 2, 1))  # (R, N, d1); matmul, not einsum: BLAS
    return ((hidden @ W2.transpose(0, 2, 1) - Y[None]) ** 2).mean(axis=(1, 2))


def _loss_and_gradients(X, masks, Y, W1, W2):
    n, d2 = Y.shape
    hidden = masks[None] * (X @ W1.transpose(0, 2, 1))  # (R, N, d1)
    residual = hidden @ W2.transpose(0, 2, 1) - Y[None]  # (R, N, d2)
    grad_out = (2.0 / (n * d2)) * residual
    grad_W1 = ((grad_out @ W2) * masks[None]).transpose(0, 2, 1) @ X  # (R, d1, d0)
    grad_W2 = grad_out.transpose(0, 2, 1) @ hidden  # (R, d2, d1)
    return (residual ** 2).mean(axis=(1, 2)), grad_W1, grad_W2


def gradient_descent(
    X: np.ndarray, masks: np.ndarray, Y: np.ndarray, W1: np.ndarray, W2: np.ndarray, *,
    lr: float, max_steps: int, tolerance: float = 1e-12, curve_points: int = 60,
) -> GDRuns:
    """Full-batch GD on L = ||y − ŷ||² / m with a backtracking (Armijo) step per run: a step that does not
    decrease the loss enough is refused and the run's step halved; an accepted one grows it by 1.2
    (starting from ``lr``). No fixed step size suits every cell: the curvature spans orders of magnitude
    between the widths and data sizes swept, and a fixed one either diverges or crawls. Stops early when
    every run's gradient norm is below ``tolerance`` × E[y²] (a critical point)."""
    scale = float(np.mean(Y ** 2)) or 1.0
    W1, W2 = W1.copy(), W2.copy()
    steps_size = np.full(W1.shape[0], float(lr))
    record = {0} | {int(s) for s in np.geomspace(1, max(max_steps, 1), curve_points)}
    steps_seen, curve = [], []
    loss, grad_W1, grad_W2 = _loss_and_gradients(X, masks, Y, W1, W2)
    step = 0
    for step in range(max_steps + 1):
        if step in record:
            steps_seen.append(step)
            curve.append(loss)
        grad_sq = (grad_W1 ** 2).sum(axis=(1, 2)) + (grad_W2 ** 2).sum(axis=(1, 2))
        if step == max_steps or bool(np.all(np.sqrt(grad_sq) < tolerance * scale)):
            break
        eta = steps_size[:, None, None]
        new_W1, new_W2 = W1 - eta * grad_W1, W2 - eta * grad_W2
        new_loss, new_grad_W1, new_grad_W2 = _loss_and_gradients(X, masks, Y, new_W1, new_W2)
        accept = np.isfinite(new_loss) & (new_loss <= loss - 1e-4 * steps_size * grad_sq)
        keep = accept[:, None, None]
        W1, W2 = np.where(keep, new_W1, W1), np.where(keep, new_W2, W2)
        grad_W1, grad_W2 = np.where(keep, new_grad_W1, grad_W1), np.where(keep, new_grad_W2, grad_W2)
        loss = np.where(accept, new_loss, loss)
        steps_size = np.where(accept, steps_size * 1.2, steps_size * 0.5)
    if steps_seen[-1] != step:
        steps_seen.append(step)
        curve.append(loss)
    return GDRuns(W1=W1, W2=W2, losses=loss, curve_steps=np.array(steps_seen), curves=np.array(curve).T, steps=step)
