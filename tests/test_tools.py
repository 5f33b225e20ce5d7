"""Smoke tests of the benchmark scripts in tools/ at tiny sizes on the CPU: they run and print their tables.
The timings themselves are never asserted."""

import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def _run(script, *args):
    done = subprocess.run([sys.executable, str(TOOLS / script), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_bench_pruned_compares_allocations_side_by_side(tmp_path):
    out = tmp_path / "pruned.md"
    _run("bench_pruned.py", "--model", "resnet18", "--input-size", "16", "--channels", "1", "--classes", "10",
         "--targets", "0.5", "--round-to", "8", "--allocations", "global,latency", "--batch-sizes", "1,2",
         "--runs", "2", "--rounds", "2", "--warmup", "0", "--device", "cpu", "--out", str(out))
    rows = [line for line in out.read_text().splitlines() if line.startswith("| fp32")]
    assert [row.split("|")[4].strip() for row in rows] == ["", "global", "latency"]
    dense, global_row, latency_row = ([cell.strip() for cell in row.split("|")] for row in rows)
    assert (dense[7], dense[9], dense[12]) == ("1.00", "1.00", "1.00")  # the dense model is its own reference
    assert float(global_row[7]) > 1.5  # MACs reduction at target 0.5
    # The latency allocation cuts to a predicted time: how much depends on this machine's timings (on a quiet one
    # tiny layers may take no less time at any width, and nothing is cut), but never less than nothing: a cut
    # is made only where the table predicts a saving, and removes MACs, never adds them.
    assert latency_row[5] and not global_row[5]  # only the latency allocation has a prediction
    assert float(latency_row[7]) >= 1.0 and float(latency_row[5]) >= 1.0


def test_bench_cpu_share_lists_fp32_and_int8_rows_with_shares(tmp_path):
    out = tmp_path / "share.md"
    _run("bench_cpu_share.py", "--models", "resnet18", "--input-size", "16", "--targets", "0.5", "--allocations",
         "global", "--batch-sizes", "1,2", "--runs", "2", "--rounds", "1", "--warmup", "0", "--int8", "--out", str(out))
    rows = [[cell.strip() for cell in line.split("|")] for line in out.read_text().splitlines() if line.startswith("| resnet18")]
    assert [(r[2], r[3]) for r in rows] == [("fp32", "dense"), ("int8", "dense"), ("fp32", "global"), ("int8", "global")]
    fp32_dense, int8_dense, fp32_global, int8_global = rows
    assert fp32_dense[6] == int8_dense[6] == "1.00" and fp32_dense[9] == "1.00"  # dense: its own reference
    assert float(fp32_global[6]) == float(int8_global[6]) > 1.5  # int8 keeps the MACs; target 0.5 cuts them
    # share = speed-up ÷ MACs reduction, as printed (rounding: two decimals each).
    for row in (fp32_global, int8_global):
        assert abs(float(row[8]) / float(row[6]) - float(row[9])) <= 0.01 + 0.005 / float(row[6])


def test_bench_train_step_prints_plain_naive_and_fused(tmp_path):
    out = tmp_path / "step.md"
    _run("bench_train_step.py", "--device", "cpu", "--model", "resnet18", "--batch", "4", "--input-size", "16",
         "--warmup", "1", "--steps", "10", "--rounds", "2", "--out", str(out))
    text = out.read_text()
    assert "| fp32 | no |" in text and "fused / plain" in text
