"""The theory report's verdicts follow the numbers: fed results where a claim holds and where it does not,
the sentence changes."""

from supportprune.theory import verdicts


def test_separation_holds_only_within_round_off():
    assert verdicts.separation(1.8e-15) == "**Separation (Eq. 14–19) holds exactly**"
    assert "does not hold" in verdicts.separation(1e-3)


def test_eq29_on_the_papers_u():
    never = verdicts.full_condition(0, 40, 0, 0, 10)
    assert "never held for the paper's U**: in 0 of 40 cells" in never and "For width ≥ 2 it cannot" in never
    assert "never inside [0.9, 1.1]" in never
    narrow = verdicts.full_condition(2, 40, 0, 2, 10)
    assert "never held" not in narrow and "held for the paper's U in 2 of 40 cells" in narrow
    assert "For width 1 it held in 2 of 10 cells" in narrow and "never inside" not in narrow
    wide = verdicts.full_condition(1, 40, 1, 0, 10)
    assert "contradicts the argument" in wide and "it cannot" not in wide


def test_gd_where_eq29_failed():
    slow = verdicts.gd_where_condition_failed(reached=292, descending=106, stuck=22)
    assert slow.startswith("Most misses were slow runs") and "did not by itself make GD fail" in slow
    stuck = verdicts.gd_where_condition_failed(reached=292, descending=5, stuck=22)
    assert stuck.startswith("Not all misses were slow runs")
    none_reached = verdicts.gd_where_condition_failed(reached=0, descending=100, stuck=20)
    assert "did not by itself make GD fail" not in none_reached and "No run reached the optimum" in none_reached


def test_lifted_least_squares():
    holds = verdicts.least_squares(3.8e-30, 1e-29, 30, 30, 0, 30, tolerance=1e-8)
    assert holds.startswith("reaches the global optimum (loss ≤ 3.8e-30, noise-free teacher) in every cell")
    assert "recovers the teacher whenever" in holds and "does not recover width ≥ 2 networks" in holds
    fails = verdicts.least_squares(0.2, 0.5, 28, 30, 3, 30, tolerance=1e-8)
    assert fails.startswith("does not always reach the global optimum (loss / E[y²] up to 5.0e-01")
    assert "recovers the teacher in only 28 of the 30 cells" in fails
    assert "fitted 3 of 30 width ≥ 2 cells" in fails and "does not recover" not in fails


def test_tian_closed_form_against_monte_carlo():
    assert verdicts.tian_agreement(2.72) == "**Tian's closed form agrees with Monte Carlo**"
    assert "disagrees" in verdicts.tian_agreement(6.0)


def test_tian_region():
    assert verdicts.tian_region(73, 73, 127, 127) == "Ω is a sufficient region, not the basin."
    assert "not sufficient here: 3 start(s)" in verdicts.tian_region(70, 73, 127, 127)
    assert "looks like the basin" in verdicts.tian_region(73, 73, 0, 127)
