"""Tian (2017, arXiv 1703.00560): the population gradient of a two-layer ReLU student in closed form.

Student g(x; w) = Σ_j σ(w_jᵀ x), teacher g(x; w*), x ~ N(0, I_d), loss J(w) = ½ E[(g(x; w) − g(x; w*))²].
Its gradient for unit j is E[(g(x; w) − g(x; w*)) 1(w_jᵀx > 0) x] = Σ_k F(e_j, w_k) − Σ_k F(e_j, w*_k), with
e_j = w_j / ||w_j|| and

    F(e, w) = E[1(eᵀx > 0) 1(wᵀx > 0) x xᵀ] w = ((π − θ) w + ||w|| sin θ e) / (2π),      θ = ∠(e, w)

(Tian's Eq. 5 / Lemma 1). It follows from the matrix identity, derived in the plane of a and b (unit
vectors at angle θ ∈ [0, π]; x in polar coordinates, E r² = 2, both half-planes overlap on an arc of
length π − θ) and the orthogonal complement (probability (π − θ)/2π, covariance I):

    E[1(aᵀx > 0) 1(bᵀx > 0) x xᵀ] = ((π − θ) I + sin θ [cos θ (a aᵀ − a⊥a⊥ᵀ) + sin θ (a a⊥ᵀ + a⊥aᵀ)]) / (2π),

a⊥ the unit vector of b − cos θ a; the bracket equals (a bᵀ + b aᵀ − cos θ (a aᵀ + b bᵀ)) / sin θ and
times b gives sin θ a, hence F. At θ = 0 it is I/2 (= E[1(aᵀx>0) x xᵀ]), at θ = π it is 0.

One unit (K = 1): E[∇J] = w/2 − F(e, w*) = ½(w − w*) + (θ w* − ||w*|| sin θ e) / (2π) (Tian's Eq. 6).
Tian's single-ReLU theorem: population gradient descent converges to w* from every start in
Ω = {w : ||w − w*|| < ||w*||}; a small random start lies in Ω with probability close to ½.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def angle(a: np.ndarray, b: np.ndarray) -> float:
    """θ = ∠(a, b) in [0, π]."""
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.arccos(np.clip(cosine, -1.0, 1.0)))


def both_active_second_moment(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """E[1(aᵀx > 0) 1(bᵀx > 0) x xᵀ] for x ~ N(0, I) in closed form (module docstring)."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    theta = angle(a, b)
    d = a.shape[0]
    in_plane = b - (a @ b) * a
    norm = np.linalg.norm(in_plane)
    if norm < 1e-12:  # θ = 0 or π: the sin θ term vanishes, any a⊥ will do
        return (np.pi - theta) * np.eye(d) / (2 * np.pi)
    a_perp = in_plane / norm
    plane = np.cos(theta) * (np.outer(a, a) - np.outer(a_perp, a_perp)) + np.sin(theta) * (np.outer(a, a_perp) + np.outer(a_perp, a))
    return ((np.pi - theta) * np.eye(d) + np.sin(theta) * plane) / (2 * np.pi)


def tian_F(e: np.ndarray, w: np.ndarray) -> np.ndarray:
    """F(e, w) = E[1(eᵀx > 0) 1(wᵀx > 0) x xᵀ] w = ((π − θ) w + ||w|| sin θ e/||e||) / (2π) (Tian, Eq. 5)."""
    e = e / np.linalg.norm(e)
    theta = angle(e, w)
    return ((np.pi - theta) * w + np.linalg.norm(w) * np.sin(theta) * e) / (2 * np.pi)


def population_gradient(W: np.ndarray, W_teacher: np.ndarray) -> np.ndarray:
    """E_x[∇_{w_j} J] for every student unit j (rows of W, shape (K, d)) against the teacher (K*, d):
    Σ_k F(e_j, w_k) − Σ_k F(e_j, w*_k) (Tian, Eq. 5). F(e_j, w_j) = w_j / 2."""
    return np.stack([
        sum(tian_F(w_j, w_k) for w_k in W) - sum(tian_F(w_j, w_star) for w_star in W_teacher)
        for w_j in W
    ])


def sample_gradients(X: np.ndarray, W: np.ndarray, W_teacher: np.ndarray) -> np.ndarray:
    """Per-example gradients (g(x; w) − g(x; w*)) 1(w_jᵀx > 0) x, shape (n, K, d); their mean estimates E[∇J]."""
    relu = lambda z: np.maximum(z, 0.0)
    error = relu(X @ W.T).sum(axis=1) - relu(X @ W_teacher.T).sum(axis=1)  # (n,)
    active = (X @ W.T > 0).astype(float)  # (n, K)
    return error[:, None, None] * active[:, :, None] * X[:, None, :]


@dataclass(frozen=True)
class MonteCarloCheck:
    closed_form: np.ndarray
    estimate: np.ndarray
    standard_error: np.ndarray  # per coordinate: sample std / √n
    samples: int

    @property
    def z_scores(self) -> np.ndarray:
        return np.abs(self.estimate - self.closed_form) / np.maximum(self.standard_error, 1e-300)

    @property
    def max_z(self) -> float:
        return float(self.z_scores.max())


def monte_carlo_gradient(rng: np.random.Generator, W: np.ndarray, W_teacher: np.ndarray, samples: int, chunk: int = 100_000) -> MonteCarloCheck:
    """The closed-form E[∇J] beside its Monte Carlo mean over ``samples`` Gaussian inputs, with the
    standard error of that mean (accumulated in chunks, so memory stays bounded)."""
    d = W.shape[1]
    total = np.zeros(W.shape)
    total_sq = np.zeros(W.shape)
    done = 0
    while done < samples:
        n = min(chunk, samples - done)
        g = sample_gradients(rng.normal(size=(n, d)), W, W_teacher)
        total += g.sum(axis=0)
        total_sq += (g ** 2).sum(axis=0)
        done += n
    mean = total / samples
    variance = np.maximum(total_sq / samples - mean ** 2, 0.0) * samples / (samples - 1)
    return MonteCarloCheck(population_gradient(W, W_teacher), mean, np.sqrt(variance / samples), samples)


def monte_carlo_second_moment(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo mean and standard error of 1(aᵀx > 0) 1(bᵀx > 0) x xᵀ (to check ``both_active_second_moment``)."""
    X = rng.normal(size=(samples, a.shape[0]))
    gate = ((X @ a > 0) & (X @ b > 0)).astype(float)
    outer = gate[:, None, None] * X[:, :, None] * X[:, None, :]
    return outer.mean(axis=0), outer.std(axis=0, ddof=1) / np.sqrt(samples)


def in_tian_region(w: np.ndarray, w_teacher: np.ndarray) -> bool:
    """w ∈ Ω = {w : ||w − w*|| < ||w*||}, the region of Tian's single-ReLU convergence theorem."""
    return bool(np.linalg.norm(w - w_teacher) < np.linalg.norm(w_teacher))


def population_gradient_descent(W: np.ndarray, W_teacher: np.ndarray, *, lr: float, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """w ← w − lr E[∇J(w)] with the closed-form gradient. Returns (final W, distance to the teacher per step),
    the distance being min over unit permutations only when K = 1 (it is ||w − w*|| then)."""
    W = W.copy()
    distances = np.empty(steps + 1)
    for step in range(steps + 1):
        distances[step] = np.linalg.norm(W - W_teacher)
        if step == steps or np.any(np.linalg.norm(W, axis=1) < 1e-12):  # e = w/||w|| undefined at 0
            distances[step + 1:] = distances[step]
            break
        W = W - lr * population_gradient(W, W_teacher)
    return W, distances
