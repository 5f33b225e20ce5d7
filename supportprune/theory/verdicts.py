"""The theory report's verdicts, computed from the results: each function maps the numbers a claim rests on
to the sentence the report prints, so a run where a claim fails says so instead of repeating fixed text."""

from __future__ import annotations

SEPARATION_TOLERANCE = 1e-10  # float64 round-off of U v against the network is ~1e-15
MC_Z_LIMIT = 4.0  # with no error, |closed form − MC| / SE > 4 in about 1 of 16,000 coordinates


def separation(max_error: float) -> str:
    if max_error <= SEPARATION_TOLERANCE:
        return "**Separation (Eq. 14–19) holds exactly**"
    return f"**Separation (Eq. 14–19) does not hold**: the error exceeds {SEPARATION_TOLERANCE:g}"


def full_condition(held: int, cells: int, wide_held: int, narrow_held: int, narrow_cells: int) -> str:
    """Eq. 29 on the paper's U: ``held`` of ``cells`` cells; ``wide_held`` of them width ≥ 2, ``narrow_held`` of
    the ``narrow_cells`` width-1 cells."""
    head = (f"**Theorem 1's condition (Eq. 29) never held for the paper's U**: in 0 of {cells} cells. " if held == 0 else
            f"**Theorem 1's condition (Eq. 29) held for the paper's U in {held} of {cells} cells**. ")
    wide = ("For width ≥ 2 it cannot: a column of U multiplying W1[i, a] W2[k, j] with i ≠ j is zero for every "
            "input, so λ_min(U) = 0 and the lifted operator annihilates rank-one matrices; the RIP of Eq. 35 fails "
            "at rank one whatever the data. " if wide_held == 0 else
            f"It held in {wide_held} cell(s) of width ≥ 2, where U has identically-zero columns: "
            "λ_min(U) = 0 there, so this result contradicts the argument and is a bug to look for. ")
    narrow = ("For width 1, λ²/m stays near ½ (E[1(w*ᵀx>0) x xᵀ] = I/2 for x ~ N(0, I)), never inside [0.9, 1.1]."
              if narrow_held == 0 else
              f"For width 1 it held in {narrow_held} of {narrow_cells} cells, although E[1(w*ᵀx>0) x xᵀ] = I/2 "
              "puts λ²/m near ½.")
    return head + wide + narrow


def gd_where_condition_failed(reached: int, descending: int, stuck: int) -> str:
    """GD runs in cells where Eq. 29 failed (after rescaling): reached the optimum, or missed it while still
    descending, or missed it and stopped."""
    if descending + stuck == 0:
        misses = "No run missed the optimum. "
    elif descending > stuck:
        misses = "Most misses were slow runs, not runs stuck at a worse critical point. "
    else:
        misses = "Not all misses were slow runs: some stopped at a loss above the optimum. "
    if reached > 0:
        return misses + "Failure of Eq. 29 did not by itself make GD fail; the condition is sufficient, far from necessary."
    return misses + "No run reached the optimum where Eq. 29 failed: these results do not show it to be unnecessary."


def least_squares(max_loss: float, max_loss_ratio: float, recovered: int, determined: int, eq28_wide_fits: int,
                  wide_cells: int, tolerance: float) -> str:
    """The lifted least squares: its largest loss (and loss / E[y²]) over the cells; of the ``determined`` cells
    (N·d2 ≥ unknowns), ``recovered`` recovered the teacher; Eq. 28's single SVD fitted (loss ≤ tolerance·E[y²])
    ``eq28_wide_fits`` of the ``wide_cells`` width ≥ 2 cells."""
    optimum = (f"reaches the global optimum (loss ≤ {max_loss:.1e}, noise-free teacher) in every cell"
               if max_loss_ratio <= tolerance else
               f"does not always reach the global optimum (loss / E[y²] up to {max_loss_ratio:.1e}, noise-free teacher)")
    recovery = ("recovers the teacher whenever N·d2 ≥ d0·d1·d2" if recovered == determined else
                f"recovers the teacher in only {recovered} of the {determined} cells with N·d2 ≥ d0·d1·d2")
    if eq28_wide_fits == 0:
        eq28 = ("Eq. 28 as written (one rank-one SVD of the whole V) does not recover width ≥ 2 networks (its loss is "
                "in the table): the min-norm V is block-structured with rank = width, and the rank-one projection "
                "must be taken per hidden unit.")
    else:
        eq28 = (f"Eq. 28 as written (one rank-one SVD of the whole V) fitted {eq28_wide_fits} of {wide_cells} width ≥ 2 "
                "cells (its loss is in the table).")
    return f"{optimum} and {recovery}; {eq28}"


def tian_agreement(max_z: float) -> str:
    if max_z <= MC_Z_LIMIT:
        return "**Tian's closed form agrees with Monte Carlo**"
    return f"**Tian's closed form disagrees with Monte Carlo** (some coordinate beyond {MC_Z_LIMIT:g} SE)"


def tian_region(inside_converged: int, inside: int, outside_converged: int, outside: int) -> str:
    if inside_converged < inside:
        return f"Ω was not sufficient here: {inside - inside_converged} start(s) inside it did not converge."
    if outside_converged > 0:
        return "Ω is a sufficient region, not the basin."
    if outside == 0:
        return "No start fell outside Ω."
    return "No start outside Ω converged: here Ω looks like the basin, not just a sufficient region."
