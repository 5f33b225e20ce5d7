"""Theorem 1 for a two-layer network with fixed supports (Huang, Kong, Lucey 2017, Eq. 21–35).

Two layers: y_n = W2 M_n W1 x_n with W1 (d1, d0), W2 (d2, d1), M_n = diag(m_n) the hidden support of
example n and no non-linearity on the output (M⁽²⁾ = I). Stacking over the data (Eq. 23) gives
y = U v with v = vec(W1) ⊗ vec(W2) (``separation``). With the lifting F(p qᵀ) = p ⊗ q, realised as
F(V) = vec(Vᵀ) (Eq. 25, 33), v = F(V) for the rank-one V = vec(W1) vec(W2)ᵀ, of shape (d1 d0, d2 d1),
and (P2) becomes the rank-constrained least squares (P3) over V (Eq. 27).

A structural fact the paper does not mention: entry V[(i, a), (k, j)] = W1[i, a] W2[k, j] reaches the
output only when i = j (hidden unit i feeds W2's column i). Every other column of U is identically zero,
for any data, so U v never sees those entries. Hence:

- λ_min(U) = 0 whenever d1 ≥ 2, and A(V) = U F(V) annihilates rank-one V = e_(i,a) e_(k,j)ᵀ with i ≠ j:
  the RIP of Eq. 35 fails for rank one already, whatever the data;
- the min-norm lifted solution is zero off the identifiable entries; its identifiable part is d1
  blocks B_i = W1[i, :]ᵀ W2[:, i]ᵀ (d0 × d2), one per hidden unit, each rank one at the truth. So
  Eq. 28's single rank-one SVD of V keeps one hidden unit only when d1 ≥ 2; the rank-one projection
  that recovers the network is per block (``unitwise_rank_one_projection``).

``identifiable_columns`` selects the other columns, and the RIP quantities are reported for both the
literal U and this reduced U.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from supportprune.theory.separation import vec

# Eq. 29: (9/10 + ε) m ≤ λ²_min ≤ λ²_max ≤ (11/10 − ε) m for some 0 < ε < 1/10.
RIP_LOW, RIP_HIGH = 0.9, 1.1


def teacher_data(rng: np.random.Generator, n_examples: int, d0: int, d1: int, d2: int, noise: float = 0.0):
    """A random ReLU teacher (W1*, W2*) and N Gaussian inputs; the oracle supports are the teacher's
    hidden ReLU supports m_n = [W1* x_n > 0] (Eq. 12), y_n = W2* (m_n ⊙ W1* x_n) + noise.

    Returns (X (N, d0), masks (N, d1), Y (N, d2), W1*, W2*). Weights are N(0, 1/fan-in).
    """
    W1 = rng.normal(size=(d1, d0)) / np.sqrt(d0)
    W2 = rng.normal(size=(d2, d1)) / np.sqrt(d1)
    X = rng.normal(size=(n_examples, d0))
    masks = (X @ W1.T > 0).astype(float)
    Y = factored_outputs(X, masks, W1, W2) + noise * rng.normal(size=(n_examples, d2))
    return X, masks, Y, W1, W2


def factored_outputs(X: np.ndarray, masks: np.ndarray, W1: np.ndarray, W2: np.ndarray) -> np.ndarray:
    """y_n = W2 (m_n ⊙ W1 x_n) for every example (Eq. 21), shape (N, d2)."""
    return (masks * (X @ W1.T)) @ W2.T


def stacked_two_layer_U(X: np.ndarray, masks: np.ndarray, d2: int) -> np.ndarray:
    """U of Eq. 23 for two layers: U_n = vec(x_nᵀ ⊗ M_n)ᵀ ⊗ I_{d2} (Eq. 14, 17), stacked; shape (N d2, d1² d0 d2).

    Row n·d2 + k is output k of example n, so y = Y.reshape(-1) (row-major over (n, k)) matches.
    Vectorised over n; ``separation.stacked_U`` is the per-example reference (tested equal).
    """
    n, d0 = X.shape
    d1 = masks.shape[1]
    # U1_n[r, a d1 + i] = x_na M_n[r, i]; vec(U1_n)[(a d1 + i) d1 + r] (column-major).
    U1 = np.einsum("na,nri->nair", X, masks[:, :, None] * np.eye(d1)[None]).reshape(n, d0 * d1 * d1)
    # U_n[k, c d2 + s] = vec(U1_n)[c] I[k, s]
    return np.einsum("nc,ks->nkcs", U1, np.eye(d2)).reshape(n * d2, d0 * d1 * d1 * d2)


def lift(V: np.ndarray) -> np.ndarray:
    """F(V) = vec(Vᵀ) (Eq. 33), so F(vec(W1) vec(W2)ᵀ) = vec(W1) ⊗ vec(W2) = v (Eq. 18, 25)."""
    return vec(V.T)


def unlift(f: np.ndarray, d0: int, d1: int, d2: int) -> np.ndarray:
    """The inverse of ``lift``: V of shape (d1 d0, d2 d1)."""
    return f.reshape((d2 * d1, d1 * d0), order="F").T


def identifiable_columns(d0: int, d1: int, d2: int) -> np.ndarray:
    """Boolean mask over the columns of U (entries of v): True where W1[i, a] W2[k, j] has i = j.

    v index = p (d2 d1) + q with p = i + a d1 (W1[i, a] in vec(W1)) and q = k + j d2 (W2[k, j] in vec(W2)).
    The other columns of U are zero for every input and support (module docstring).
    """
    i = np.arange(d1 * d0) % d1
    j = np.arange(d2 * d1) // d2
    return (i[:, None] == j[None, :]).reshape(-1)


@dataclass(frozen=True)
class RipQuantities:
    """Eq. 29's quantities for one U with m = len(y) rows: λ²_min/m and λ²_max/m, where λ² are the
    eigenvalues of UᵀU (λ the singular values of U; λ_min = 0 when U has more columns than rows).

    ``holds``: the literal condition, some ε in (0, 1/10) with 0.9 + ε ≤ λ²_min/m and λ²_max/m ≤ 1.1 − ε,
    i.e. 0.9 < λ²_min/m and λ²_max/m < 1.1. ``holds_after_rescaling``: the same for the best rescaling
    c U (equivalently of the inputs; the loss landscape only scales), i.e. λ²_max/λ²_min < 11/9.
    """

    m: int
    columns: int
    low: float  # λ²_min / m
    high: float  # λ²_max / m

    @property
    def condition(self) -> float:
        return self.high / self.low if self.low > 0 else float("inf")

    @property
    def holds(self) -> bool:
        return self.low > RIP_LOW and self.high < RIP_HIGH

    @property
    def holds_after_rescaling(self) -> bool:
        return self.condition < RIP_HIGH / RIP_LOW


def rip_quantities(U: np.ndarray) -> RipQuantities:
    """λ²_min/m and λ²_max/m of Eq. 29 from the singular values of U (m = number of rows = size of y)."""
    m, n = U.shape
    singular = np.linalg.svd(U, compute_uv=False)
    low = 0.0 if n > m else float(singular[-1] ** 2)
    return RipQuantities(m=m, columns=n, low=low / m, high=float(singular[0] ** 2) / m)


def mse(U: np.ndarray, v: np.ndarray, y: np.ndarray) -> float:
    """The loss of (P2), normalised per entry of y: ||y − U v||² / m (Eq. 24)."""
    return float(np.mean((y - U @ v) ** 2))


def lifted_least_squares(U: np.ndarray, y: np.ndarray, d0: int, d1: int, d2: int) -> np.ndarray:
    """The minimum-norm minimiser of ||y − U F(V)||² over all V, rank ignored (Eq. 26–27 without the
    constraint): a lower bound on the loss of (P2) and (P3). Returns V (d1 d0, d2 d1)."""
    f, *_ = np.linalg.lstsq(U, y, rcond=None)
    return unlift(f, d0, d1, d2)


def rank_one_projection(V: np.ndarray, d0: int, d1: int, d2: int) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 28 as written: V ≈ σ* u* v*ᵀ, vec(W1) = √σ* u*, vec(W2) = √σ* v*. Returns (W1, W2)."""
    u, s, vt = np.linalg.svd(V)
    W1 = (np.sqrt(s[0]) * u[:, 0]).reshape((d1, d0), order="F")
    W2 = (np.sqrt(s[0]) * vt[0]).reshape((d2, d1), order="F")
    return W1, W2


def unit_blocks(V: np.ndarray, d0: int, d1: int, d2: int) -> np.ndarray:
    """The identifiable blocks B_i = V[(i, ·), (·, i)] = W1[i, :]ᵀ W2[:, i]ᵀ, shape (d1, d0, d2)."""
    rows = np.arange(d0) * d1
    cols = np.arange(d2)
    return np.stack([V[np.ix_(rows + i, cols + i * d2)] for i in range(d1)])


def unitwise_rank_one_projection(V: np.ndarray, d0: int, d1: int, d2: int) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 28 applied to each hidden unit's block B_i: W1[i, :] = √σ u, W2[:, i] = √σ v. Returns (W1, W2)."""
    W1, W2 = np.zeros((d1, d0)), np.zeros((d2, d1))
    for i, block in enumerate(unit_blocks(V, d0, d1, d2)):
        u, s, vt = np.linalg.svd(block)
        W1[i], W2[:, i] = np.sqrt(s[0]) * u[:, 0], np.sqrt(s[0]) * vt[0]
    return W1, W2


def unit_products(W1: np.ndarray, W2: np.ndarray) -> np.ndarray:
    """B_i = W1[i, :]ᵀ W2[:, i]ᵀ for each hidden unit, (…, d1, d0, d2); invariant to the scale ambiguity
    W1[i] → c W1[i], W2[:, i] → W2[:, i] / c (any c ≠ 0: with fixed supports the sign is free too)."""
    return np.einsum("...ia,...ki->...iak", W1, W2)


def weight_error(W1: np.ndarray, W2: np.ndarray, W1_true: np.ndarray, W2_true: np.ndarray) -> np.ndarray:
    """max_i ||B_i − B*_i||_F / ||B*_i||_F: the recovery error up to each unit's scale (batched over leading dims)."""
    B, B_true = unit_products(W1, W2), unit_products(W1_true, W2_true)
    diff = np.sqrt(((B - B_true) ** 2).sum(axis=(-2, -1)))
    return (diff / np.sqrt((B_true ** 2).sum(axis=(-2, -1)))).max(axis=-1)
