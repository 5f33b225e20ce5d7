"""What the reports say when something is missing: seeds whose run gave NaN are named, and a missing
plotting backend is a line in the report (and a warning), not silence."""

import math
import sys
from types import SimpleNamespace

import pytest

from supportprune.reports import experiment_report as experiment
from supportprune.reports.run_report import write_train_report
from supportprune.theory.report import run_theory


def test_a_seed_that_gave_nan_is_named_not_dropped():
    # Mean and sample std of the seeds that gave numbers (1 and 3): 2 ± √2.
    assert experiment._fmt([1.0, math.nan, 3.0], seeds=[0, 1, 2]) == "2.00 ± 1.41 (2 of 3 seeds; seed 1 diverged (NaN))"
    assert experiment._fmt([math.nan, 4.0, math.nan], 1, [7, 8, 9]) == "4.0 ± 0.0 (1 of 3 seeds; seeds 7, 9 diverged (NaN))"
    assert experiment._fmt([math.nan], seeds=[3]) == "– (0 of 1 seeds; seed 3 diverged (NaN))"
    assert experiment._fmt([1.0, 3.0], seeds=[0, 1]) == "2.00 ± 1.41"


@pytest.fixture
def no_matplotlib(monkeypatch):
    """`import matplotlib` fails, as where it is not installed."""
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_train_report_without_matplotlib_says_the_plot_was_skipped(tmp_path, no_matplotlib, capsys):
    layout = SimpleNamespace(report=tmp_path / "report.md", plots=tmp_path / "plots")
    recipe = SimpleNamespace(seed=0, train=SimpleNamespace(alternation="none", granularity="channel",
                                                             relative_threshold=0.2, warmup_epochs=1, gap_epochs=2))
    metrics = [{"epoch": 1, "train_loss": 1.0, "train_top1": 50.0, "val_loss": 1.1, "val_top1": 45.0, "seconds": 1.0}]
    result = {"seconds": 1.0, "val_error": 55.0, "val_loss": 1.1, "maskt_val_error": 60.0, "maskt_val_loss": 1.2}
    write_train_report(layout, "tiny", recipe, "embedded data", SimpleNamespace(metrics=metrics, curve=[]), result)
    report = layout.report.read_text()
    assert "Plots skipped: matplotlib cannot be imported" in report and "![" not in report
    assert "warning: Plots skipped: matplotlib cannot be imported" in capsys.readouterr().err


def test_theory_report_without_matplotlib_says_the_plots_were_skipped(tmp_path, no_matplotlib, capsys):
    report = run_theory(tmp_path, quick=True, message=lambda line: None).read_text()
    assert "Plots skipped: matplotlib cannot be imported" in report and "![" not in report
    assert "## In short" in report and "matplotlib not installed" in report
    assert not list(tmp_path.glob("*.png"))
    assert "warning: Plots skipped" in capsys.readouterr().err
