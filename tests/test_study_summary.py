"""The criteria study's summary (benchmarks/criteria/summarise.py): gaps to the best criterion of each case, the
worst gap, and the default chosen by the smallest worst-case gap, on hand-made results."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "criteria" / "summarise.py"
spec = importlib.util.spec_from_file_location("summarise", SCRIPT)
summarise = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summarise)


def _run(sparse, macs=0.5, redense=None, start=90.0):
    return {"sparse_top1": sparse, "redense_top1": redense if redense is not None else sparse + 1,
            "macs_kept": macs, "baseline_top1": start}


def _write(root: Path, model: str, stage: str, runs: dict):
    out = root / f"study-{model}-{stage}"
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({"runs": runs}))


def test_the_default_is_the_smallest_worst_gap_not_the_best_mean(tmp_path):
    # a: best on two cases, collapses on the third (worst gap -30); b: never best, never far (worst -1)
    _write(tmp_path, "m1", "screen", {"global-macs0.5-a-seed0": _run(90), "global-macs0.5-b-seed0": _run(89)})
    _write(tmp_path, "m2", "screen", {"global-macs0.5-a-seed0": _run(80), "global-macs0.5-b-seed0": _run(79.5),
                                      # c kept more than its target: not counted as the best of m2
                                      "global-macs0.5-c-seed0": _run(99, macs=0.6)})
    _write(tmp_path, "m3", "screen", {"global-macs0.3-a-seed0": _run(50, macs=0.3),
                                      "global-macs0.3-b-seed0": _run(80, macs=0.3)})
    cases = summarise.load_runs(tmp_path)
    result = summarise.table(cases, (0,))
    a, b = result["summary"]["a"], result["summary"]["b"]
    assert a["worst_gap"] == -30 and a["mean_gap"] == -10
    assert b["worst_gap"] == -1 and b["mean_gap"] == -0.5
    assert result["best"][("m2", 0.5)] == ("a", 80)
    assert "c" not in result["summary"]  # never reached its target: no gap, cannot be the default
    assert summarise.choose_default(result["summary"]) == "b"


def test_seeds_table_means_over_the_three_seeds(tmp_path):
    runs = {f"global-macs0.5-{m}-seed{s}": _run(v + s) for m, v in (("a", 80), ("b", 81)) for s in (0, 1, 2)}
    _write(tmp_path, "m1", "seeds", runs)
    result = summarise.table(summarise.load_runs(tmp_path), (0, 1, 2))
    cell = result["rows"]["b"][("m1", 0.5)]
    assert cell["sparse"] == 82 and cell["sparse_std"] == 1.0
    assert result["summary"]["a"]["worst_gap"] == -1
