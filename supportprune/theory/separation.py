"""Separation of weights and supports (Huang, Kong, Lucey 2017, section 3.2, Eq. 14–19).

The network is fully connected and bias-free: z⁽⁰⁾ = x, z⁽ˡ⁾ = M⁽ˡ⁾ W⁽ˡ⁾ z⁽ˡ⁻¹⁾ with W⁽ˡ⁾ of shape
(d_l, d_{l-1}) and M⁽ˡ⁾ = diag(m⁽ˡ⁾) a binary support; the last layer has no non-linearity, M⁽ᴸ⁾ = I.

All vec(·) here are column-major (Fortran order), and every formula comes from

    vec(A X B) = (Bᵀ ⊗ A) vec(X).

Layer 1 (Eq. 14): z⁽¹⁾ = M⁽¹⁾ W⁽¹⁾ x = vec(M⁽¹⁾ W⁽¹⁾ x) = (xᵀ ⊗ M⁽¹⁾) vec(W⁽¹⁾), so

    U⁽¹⁾ = xᵀ ⊗ M⁽¹⁾   (d_1 × d_0 d_1),     v⁽¹⁾ = vec(W⁽¹⁾).

(The paper writes x ⊗ M⁽¹⁾; x is a column, so the transpose is needed for the shapes to agree.)

Layer l+1 (Eq. 15–18): z⁽ˡ⁺¹⁾ = M W U⁽ˡ⁾ v⁽ˡ⁾ with M = M⁽ˡ⁺¹⁾, W = W⁽ˡ⁺¹⁾. Writing U⁽ˡ⁾ v⁽ˡ⁾ = Σ_k v_k U[:, k],

    z⁽ˡ⁺¹⁾ = Σ_k v_k M W U[:, k] = Σ_k v_k (U[:, k]ᵀ ⊗ M) vec(W)          (vec(AXB) with B = U[:, k])
           = [U[:, 1]ᵀ ⊗ M, …, U[:, p]ᵀ ⊗ M] (v⁽ˡ⁾ ⊗ vec(W))
           = (vec(U⁽ˡ⁾)ᵀ ⊗ M) (v⁽ˡ⁾ ⊗ vec(W)),

because column-major vec(U) lists U[:, 1], U[:, 2], … in order. Hence

    U⁽ˡ⁺¹⁾ = vec(U⁽ˡ⁾)ᵀ ⊗ M⁽ˡ⁺¹⁾,     v⁽ˡ⁺¹⁾ = v⁽ˡ⁾ ⊗ vec(W⁽ˡ⁺¹⁾),

Eq. 17–18 with the transpose made explicit. U depends only on x and the supports, v only on the
weights, and F(x; W, M) = U⁽ᴸ⁾ v⁽ᴸ⁾ (Eq. 19). Sizes grow as products of all layer sizes, so this is
for small networks only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def vec(matrix: np.ndarray) -> np.ndarray:
    """Column-major vectorisation, the vec(·) of every formula in this package."""
    return np.asarray(matrix).reshape(-1, order="F")


def forward_fixed_supports(x: np.ndarray, weights: Sequence[np.ndarray], supports: Sequence[np.ndarray]) -> np.ndarray:
    """z⁽ᴸ⁾ for one input x (d_0,) with every support fixed: z⁽ˡ⁾ = M⁽ˡ⁾ W⁽ˡ⁾ z⁽ˡ⁻¹⁾ (Eq. 5 with β = 0, Eq. 13).

    ``supports[l]`` is the 0/1 vector m⁽ˡ⁺¹⁾ (d_{l+1},); pass ones for the last layer (M⁽ᴸ⁾ = I).
    With fixed supports the network is linear in x and multilinear in the weights.
    """
    _check_shapes(x, weights, supports)
    z = np.asarray(x, dtype=float)
    for weight, mask in zip(weights, supports):
        z = np.asarray(mask, dtype=float) * (weight @ z)
    return z


def relu_supports(x: np.ndarray, weights: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The supports a ReLU network with these weights has at input x: m⁽ˡ⁾ = [W⁽ˡ⁾ z⁽ˡ⁻¹⁾ > 0] (Eq. 12, β = 0).

    The last layer gets ones (M⁽ᴸ⁾ = I). With these supports ``forward_fixed_supports`` equals the ReLU network.
    """
    z = np.asarray(x, dtype=float)
    supports = []
    for layer, weight in enumerate(weights):
        q = weight @ z
        mask = np.ones_like(q) if layer == len(weights) - 1 else (q > 0).astype(float)
        supports.append(mask)
        z = mask * q
    return supports


def separated_U(x: np.ndarray, supports: Sequence[np.ndarray]) -> np.ndarray:
    """U⁽ᴸ⁾ for one input: U⁽¹⁾ = xᵀ ⊗ M⁽¹⁾ (Eq. 14), U⁽ˡ⁺¹⁾ = vec(U⁽ˡ⁾)ᵀ ⊗ M⁽ˡ⁺¹⁾ (Eq. 17). Shape (d_L, len(v))."""
    x = np.asarray(x, dtype=float)
    U = np.kron(x[None, :], np.diag(np.asarray(supports[0], dtype=float)))
    for mask in supports[1:]:
        U = np.kron(vec(U)[None, :], np.diag(np.asarray(mask, dtype=float)))
    return U


def separated_v(weights: Sequence[np.ndarray]) -> np.ndarray:
    """v⁽ᴸ⁾ from the weights alone: v⁽¹⁾ = vec(W⁽¹⁾) (Eq. 14), v⁽ˡ⁺¹⁾ = v⁽ˡ⁾ ⊗ vec(W⁽ˡ⁺¹⁾) (Eq. 18)."""
    v = vec(weights[0])
    for weight in weights[1:]:
        v = np.kron(v, vec(weight))
    return v


def stacked_U(inputs: np.ndarray, supports: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """U of Eq. 23: the per-example U_n⁽ᴸ⁾ stacked over the N examples, shape (N d_L, len(v)).

    ``inputs`` is (N, d_0); ``supports[n]`` is example n's list of supports. y stacks the same way.
    """
    return np.concatenate([separated_U(x, masks) for x, masks in zip(inputs, supports)], axis=0)


def _check_shapes(x: np.ndarray, weights: Sequence[np.ndarray], supports: Sequence[np.ndarray]) -> None:
    if len(weights) != len(supports):
        raise ValueError(f"{len(weights)} weight matrices but {len(supports)} supports")
    width = np.shape(x)[0]
    for layer, (weight, mask) in enumerate(zip(weights, supports), start=1):
        if weight.shape[1] != width or np.shape(mask) != (weight.shape[0],):
            raise ValueError(f"layer {layer}: W {weight.shape} does not take {width} inputs or mask {np.shape(mask)} is not ({weight.shape[0]},)")
        width = weight.shape[0]
