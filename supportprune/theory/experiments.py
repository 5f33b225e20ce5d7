"""The experiments behind ``supportprune theory``: pure computation, results as dataclasses, no files.

Every random draw comes from ``np.random.default_rng([seed, …])`` keyed by the experiment and cell, so a
cell's numbers do not depend on which other cells were run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from supportprune.theory import factored_gd, lifted, tian


@dataclass(frozen=True)
class Theorem1Config:
    widths: tuple[int, ...] = (1, 2, 3, 4)
    sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    d0: int = 5  # inputs
    d2: int = 1  # outputs: m = N d2 is the size of y
    starts: int = 12  # random starts of gradient descent per cell
    lr: float = 0.5  # GD's first step; backtracking adapts it per run
    max_steps: int = 4000
    noise: float = 0.0  # noise-free teacher: the global optimum of (P2) is 0, reached by the teacher
    seed: int = 0


QUICK_THEOREM1 = Theorem1Config(widths=(1, 2), sizes=(16, 64, 256), starts=4, max_steps=800)

# A run "reached the global optimum" when its loss is within this fraction of E[y²] of the lifted
# least-squares loss (a lower bound on every run's loss), and "recovered the teacher" when every hidden
# unit's product W1[i]ᵀW2[:, i]ᵀ is within this relative error of the teacher's.
GLOBAL_LOSS_TOLERANCE = 1e-8
RECOVERY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Theorem1Cell:
    width: int
    n_examples: int
    parameters: int  # identifiable lifted unknowns d0 d1 d2
    rip_full: lifted.RipQuantities  # Eq. 29 on the paper's U (Eq. 23)
    rip_reduced: lifted.RipQuantities  # Eq. 29 on U without its identically-zero columns
    mean_square_y: float
    least_squares_loss: float  # lifted, unconstrained: a lower bound (Eq. 27 without rank)
    least_squares_weight_error: float  # after the per-unit rank-one projection
    eq28_loss: float  # Eq. 28 literally: one rank-one SVD of the whole V
    unitwise_loss: float  # Eq. 28 per hidden unit's block
    gd_losses: np.ndarray  # (R,)
    gd_weight_errors: np.ndarray  # (R,)
    gd_steps: int
    curve_steps: np.ndarray = field(repr=False)
    curves: np.ndarray = field(repr=False)  # (R, T)

    @property
    def gd_reached_global(self) -> np.ndarray:
        return self.gd_losses - self.least_squares_loss <= GLOBAL_LOSS_TOLERANCE * self.mean_square_y

    @property
    def gd_recovered(self) -> np.ndarray:
        return self.gd_weight_errors < RECOVERY_TOLERANCE

    @property
    def gd_still_descending(self) -> np.ndarray:
        """Runs that missed the global optimum but whose loss fell by more than 10% over the last half of
        the steps: out of budget rather than stuck (slow escapes from the saddles at W2[:, i] = 0)."""
        half = int(np.argmin(np.abs(self.curve_steps - self.gd_steps / 2)))
        return ~self.gd_reached_global & (self.curves[:, -1] < 0.9 * self.curves[:, half])

    @property
    def gd_stuck(self) -> np.ndarray:
        """Runs that missed the global optimum and whose loss fell by less than 10% over the last half of the
        steps: at or near a non-global critical point, or on a very flat plateau (not distinguished here)."""
        return ~self.gd_reached_global & ~self.gd_still_descending

    @property
    def least_squares_recovered(self) -> bool:
        return self.least_squares_weight_error < RECOVERY_TOLERANCE


def theorem1_cell(config: Theorem1Config, width: int, n_examples: int) -> Theorem1Cell:
    """One (width, N) cell: teacher data with oracle supports, RIP quantities, the lifted optimum, and GD."""
    d0, d1, d2 = config.d0, width, config.d2
    rng = np.random.default_rng([config.seed, 1, width, n_examples])
    X, masks, Y, W1_true, W2_true = lifted.teacher_data(rng, n_examples, d0, d1, d2, config.noise)
    U = lifted.stacked_two_layer_U(X, masks, d2)  # Eq. 23
    y = Y.reshape(-1)
    V = lifted.lifted_least_squares(U, y, d0, d1, d2)
    W1_eq28, W2_eq28 = lifted.rank_one_projection(V, d0, d1, d2)
    W1_unit, W2_unit = lifted.unitwise_rank_one_projection(V, d0, d1, d2)
    starts_W1, starts_W2 = factored_gd.random_starts(rng, config.starts, d0, d1, d2)
    runs = factored_gd.gradient_descent(X, masks, Y, starts_W1, starts_W2, lr=config.lr, max_steps=config.max_steps)
    return Theorem1Cell(
        width=width, n_examples=n_examples, parameters=d0 * d1 * d2,
        rip_full=lifted.rip_quantities(U),
        rip_reduced=lifted.rip_quantities(U[:, lifted.identifiable_columns(d0, d1, d2)]),
        mean_square_y=float(np.mean(Y ** 2)),
        least_squares_loss=lifted.mse(U, lifted.lift(V), y),
        least_squares_weight_error=float(lifted.weight_error(W1_unit, W2_unit, W1_true, W2_true)),
        eq28_loss=float(factored_gd.factored_losses(X, masks, Y, W1_eq28[None], W2_eq28[None])[0]),
        unitwise_loss=float(factored_gd.factored_losses(X, masks, Y, W1_unit[None], W2_unit[None])[0]),
        gd_losses=runs.losses, gd_weight_errors=lifted.weight_error(runs.W1, runs.W2, W1_true, W2_true),
        gd_steps=runs.steps, curve_steps=runs.curve_steps, curves=runs.curves,
    )


def theorem1_sweep(config: Theorem1Config) -> list[Theorem1Cell]:
    return [theorem1_cell(config, width, n) for width in config.widths for n in config.sizes]


def separation_errors(seed: int, trials: int = 20) -> dict[int, float]:
    """Largest |U v − F(x; W, M)| over random 2- and 3-layer networks, inputs and supports (Eq. 19)."""
    from supportprune.theory import separation

    rng = np.random.default_rng([seed, 0])
    errors = {}
    for layers in (2, 3):
        worst = 0.0
        for _ in range(trials):
            dims = rng.integers(2, 5, size=layers + 1)
            weights = [rng.normal(size=(dims[l + 1], dims[l])) for l in range(layers)]
            supports = [(rng.random(d) < 0.5).astype(float) for d in dims[1:-1]] + [np.ones(dims[-1])]
            x = rng.normal(size=dims[0])
            got = separation.separated_U(x, supports) @ separation.separated_v(weights)
            worst = max(worst, float(np.abs(got - separation.forward_fixed_supports(x, weights, supports)).max()))
        errors[layers] = worst
    return errors


# ---------------------------------------------------------------------------------------------------
# Tian (2017)


@dataclass(frozen=True)
class TianConfig:
    d: int = 10
    samples: int = 400_000  # Monte Carlo inputs per check
    angles: int = 13  # θ values in [0, π] for the single-unit check
    units: tuple[int, ...] = (1, 2, 4)  # K for the random multi-unit checks
    starts: int = 200  # population-GD starts (single unit)
    lr: float = 0.5
    steps: int = 400
    seed: int = 0


QUICK_TIAN = TianConfig(samples=40_000, angles=5, units=(1, 2), starts=20, steps=200)


@dataclass(frozen=True)
class AngleCheck:
    theta: float
    check: tian.MonteCarloCheck
    e_component: tuple[float, float, float]  # closed form, MC, SE along e (student direction)
    perp_component: tuple[float, float, float]  # along the part of w* orthogonal to e


@dataclass(frozen=True)
class TianDynamics:
    start_distances: np.ndarray  # ||w⁰ − w*|| / ||w*||
    start_angles: np.ndarray  # θ⁰
    in_region: np.ndarray  # w⁰ ∈ Ω
    final_distances: np.ndarray  # ||w^T − w*|| / ||w*||
    curves: np.ndarray  # (starts, steps + 1) relative distance
    small_init_in_region: float  # share of 100,000 N(0, (0.01/√d)² I) draws in Ω (Tian: close to ½)

    @property
    def converged(self) -> np.ndarray:
        return self.final_distances < 1e-6


@dataclass(frozen=True)
class TianResults:
    angle_checks: list[AngleCheck]
    unit_checks: list[tuple[int, tian.MonteCarloCheck]]
    dynamics: TianDynamics


def tian_checks(config: TianConfig) -> TianResults:
    d = config.d
    rng = np.random.default_rng([config.seed, 2])
    # Student w = 0.8 e₁, teacher w* = cos θ e₁ + sin θ e₂: coordinate 0 of the gradient is its component
    # along e = w/||w||, coordinate 1 along the part of w* orthogonal to e, each with its exact SE.
    w = np.zeros(d)
    w[0] = 0.8
    angle_checks = []
    for theta in np.linspace(0.0, np.pi, config.angles):
        w_star = np.zeros(d)
        w_star[0], w_star[1] = np.cos(theta), np.sin(theta)
        check = tian.monte_carlo_gradient(rng, w[None], w_star[None], config.samples)
        part = lambda i: (float(check.closed_form[0, i]), float(check.estimate[0, i]), float(check.standard_error[0, i]))
        angle_checks.append(AngleCheck(float(theta), check, part(0), part(1)))
    # Random students and teachers with K units.
    unit_checks = []
    for K in config.units:
        W, W_teacher = rng.normal(size=(K, d)) / np.sqrt(d), rng.normal(size=(K, d)) / np.sqrt(d)
        unit_checks.append((K, tian.monte_carlo_gradient(rng, W, W_teacher, config.samples)))
    return TianResults(angle_checks, unit_checks, tian_dynamics(config, rng))


def tian_dynamics(config: TianConfig, rng: np.random.Generator) -> TianDynamics:
    """Population GD for one ReLU (K = 1) from two kinds of random start, half each: uniform direction
    with norm uniform in [0.05, 2] ||w*|| (mostly outside Ω in d = 10), and Tian's small initialisation
    N(0, (0.01/√d)² I) (inside Ω with probability close to ½). Ω = {||w − w*|| < ||w*||}."""
    d = config.d
    w_star = rng.normal(size=d)
    w_star /= np.linalg.norm(w_star)
    wide = rng.normal(size=(config.starts - config.starts // 2, d))
    wide *= (rng.uniform(0.05, 2.0, size=len(wide)) / np.linalg.norm(wide, axis=1))[:, None]
    small = rng.normal(size=(config.starts // 2, d)) * 0.01 / np.sqrt(d)
    starts = np.concatenate([wide, small])
    curves = np.array([
        tian.population_gradient_descent(w0[None], w_star[None], lr=config.lr, steps=config.steps)[1] for w0 in starts
    ])
    many_small = rng.normal(size=(100_000, d)) * 0.01 / np.sqrt(d)
    return TianDynamics(
        start_distances=np.linalg.norm(starts - w_star, axis=1),
        start_angles=np.array([tian.angle(w0, w_star) for w0 in starts]),
        in_region=np.array([tian.in_tian_region(w0, w_star) for w0 in starts]),
        final_distances=curves[:, -1], curves=curves,
        small_init_in_region=float(np.mean(np.linalg.norm(many_small - w_star, axis=1) < 1.0)),
    )
