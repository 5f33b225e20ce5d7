"""supportprune.theory: separation U v (Eq. 14–19), Theorem 1's lifted optimum and RIP quantities (Eq. 23–29),
Tian's closed-form population gradient, and the `theory` command."""

import numpy as np
import pytest
from typer.testing import CliRunner

from supportprune.cli import app
from supportprune.theory import factored_gd, lifted, separation, tian


def _random_network(rng, dims):
    weights = [rng.normal(size=(dims[l + 1], dims[l])) for l in range(len(dims) - 1)]
    supports = [(rng.random(d) < 0.5).astype(float) for d in dims[1:-1]] + [np.ones(dims[-1])]
    return weights, supports


@pytest.mark.parametrize("layers", [2, 3])
def test_U_times_v_is_the_network_output(layers):
    rng = np.random.default_rng(layers)
    for _ in range(10):
        dims = rng.integers(1, 5, size=layers + 1)
        weights, supports = _random_network(rng, dims)
        x = rng.normal(size=dims[0])
        U, v = separation.separated_U(x, supports), separation.separated_v(weights)
        assert U.shape == (dims[-1], v.size)
        np.testing.assert_allclose(U @ v, separation.forward_fixed_supports(x, weights, supports), atol=1e-12)


def test_relu_supports_make_the_fixed_network_the_relu_network():
    rng = np.random.default_rng(0)
    weights, _ = _random_network(rng, [4, 5, 3, 2])
    x = rng.normal(size=4)
    relu = np.maximum(weights[1] @ np.maximum(weights[0] @ x, 0), 0)
    np.testing.assert_allclose(weights[2] @ relu, separation.forward_fixed_supports(x, weights, separation.relu_supports(x, weights)))


def test_stacked_two_layer_U_matches_the_general_construction_and_lifting():
    rng = np.random.default_rng(1)
    d0, d1, d2 = 3, 4, 2
    X, masks, Y, W1, W2 = lifted.teacher_data(rng, 7, d0, d1, d2)
    U = lifted.stacked_two_layer_U(X, masks, d2)
    np.testing.assert_array_equal(U, separation.stacked_U(X, [[m, np.ones(d2)] for m in masks]))
    V = np.outer(separation.vec(W1), separation.vec(W2))
    np.testing.assert_allclose(lifted.lift(V), separation.separated_v([W1, W2]))  # Eq. 25, 33
    np.testing.assert_allclose(U @ lifted.lift(V), Y.reshape(-1), atol=1e-12)
    assert np.all(U[:, ~lifted.identifiable_columns(d0, d1, d2)] == 0)


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_lifted_least_squares_is_never_worse_than_gradient_descent(noise):
    rng = np.random.default_rng(2)
    d0, d1, d2 = 4, 3, 2
    X, masks, Y, W1_true, W2_true = lifted.teacher_data(rng, 40, d0, d1, d2, noise)
    U = lifted.stacked_two_layer_U(X, masks, d2)
    V = lifted.lifted_least_squares(U, Y.reshape(-1), d0, d1, d2)
    optimum = lifted.mse(U, lifted.lift(V), Y.reshape(-1))
    W1, W2 = factored_gd.random_starts(rng, 8, d0, d1, d2)
    runs = factored_gd.gradient_descent(X, masks, Y, W1, W2, lr=0.5, max_steps=400)
    assert np.all(runs.losses >= optimum - 1e-12)
    assert np.all(np.diff(runs.curves, axis=1) <= 1e-12)  # backtracking never accepts an increase
    if noise == 0.0:  # realisable and identifiable (N d2 = 80 ≥ 24 unknowns): the per-unit projection is the teacher
        W1_hat, W2_hat = lifted.unitwise_rank_one_projection(V, d0, d1, d2)
        assert optimum < 1e-20
        assert lifted.weight_error(W1_hat, W2_hat, W1_true, W2_true) < 1e-8


def test_rip_quantities_match_the_eigenvalues_of_UtU():
    rng = np.random.default_rng(3)
    for rows, cols in [(50, 6), (20, 30)]:
        U = rng.normal(size=(rows, cols))
        eig = np.linalg.eigvalsh(U.T @ U)
        rip = lifted.rip_quantities(U)
        assert rip.m == rows
        assert rip.high == pytest.approx(eig.max() / rows, rel=1e-10)
        assert rip.low == pytest.approx(max(eig.min(), 0.0) / rows, abs=1e-10)
    # An orthogonal-columns U scaled to λ² = m satisfies Eq. 29; the paper's U with width ≥ 2 never does.
    Q, _ = np.linalg.qr(rng.normal(size=(40, 5)))
    assert lifted.rip_quantities(Q * np.sqrt(40)).holds
    X, masks, Y, *_ = lifted.teacher_data(rng, 500, 3, 2, 1)
    full = lifted.rip_quantities(lifted.stacked_two_layer_U(X, masks, 1))
    assert full.low == 0.0 and not full.holds and not full.holds_after_rescaling


def test_tian_second_moment_and_gradient_agree_with_monte_carlo():
    rng = np.random.default_rng(4)
    d = 4
    a, b = rng.normal(size=d), rng.normal(size=d)
    mean, se = tian.monte_carlo_second_moment(rng, a, b, 200_000)
    assert np.all(np.abs(mean - tian.both_active_second_moment(a, b)) < 4 * se + 1e-12)
    np.testing.assert_allclose(tian.both_active_second_moment(a, a), np.eye(d) / 2, atol=1e-12)
    np.testing.assert_allclose(tian.both_active_second_moment(a, -a), 0, atol=1e-12)
    for K in (1, 2):
        W, W_teacher = rng.normal(size=(K, d)), rng.normal(size=(K, d))
        check = tian.monte_carlo_gradient(rng, W, W_teacher, 200_000)
        assert check.max_z < 4, check.z_scores


def test_single_relu_population_gd_converges_from_tians_region():
    rng = np.random.default_rng(5)
    w_star = rng.normal(size=6)
    for _ in range(5):
        w0 = w_star + rng.normal(size=6) * 0.3 * np.linalg.norm(w_star) / np.sqrt(6)
        assert tian.in_tian_region(w0, w_star)
        _, distances = tian.population_gradient_descent(w0[None], w_star[None], lr=0.5, steps=300)
        assert distances[-1] < 1e-8 * np.linalg.norm(w_star)


def test_cli_theory_quick_writes_the_report(tmp_path):
    result = CliRunner().invoke(app, ["theory", "--quick", "--out", str(tmp_path / "theory")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "theory" / "report.md").read_text()
    assert "Theorem 1" in report and "supportprune theory --quick" in report
    for name in ("theorem1_sweep.png", "theorem1_loss_curves.png", "tian.png"):
        assert (tmp_path / "theory" / name).stat().st_size > 1000
