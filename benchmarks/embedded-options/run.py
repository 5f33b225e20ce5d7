"""The embedded job (`supportprune compress resnet18`, trained from scratch on the shipped subset) with the support
options of the criteria comparison, over seeds: which of them the embedded recipe should use.

Each variant is the embedded recipe with some keys set; every run is a full `compress` (exports and int8 off, a
short benchmark, since only top-1 is compared). Resumable: finished runs are read, not repeated.

    OMP_NUM_THREADS=1 python benchmarks/embedded-options/run.py [--seeds 0,1,2] [--runs-dir runs/embedded-options]

Prints a Markdown table of sparse and re-Dense top-1 (mean ± std) and writes it to results.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from supportprune.inputs.shipped import shipped_recipes
from supportprune.inputs.recipe import Recipe, load_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[2]
FAST = {"export.int8": False, "bench.runs": 3, "bench.warmup": 1}
BEFORE = {"sparse.relative_threshold": 0.2, "sparse.support_statistic": "max_energy", "sparse.beta": "zero"}
WINNERS = {"sparse.relative_threshold": 0.0, "sparse.support_statistic": "energy_x_consumer", "sparse.beta": "estimated"}
NO_DISTILL = {"sparse.distill": None, "redense.distill": None}
DISTILL = {"sparse.distill": {"alpha": 0.7, "temperature": 4.0}, "redense.distill": {"alpha": 0.7, "temperature": 4.0}}
NOTES = """Runs with `OMP_NUM_THREADS=1`, several at once on a 2-core CPU (top-1 does not depend on the load: runs
repeat bit-exactly on one machine). Distillation's teacher on this job is the Dense step's model, trained 3
epochs from scratch on 5,000 images; from the trained starting points of benchmarks/criteria it is the trained model.
"""
VARIANTS = {
    "before (max_energy, β zero, τ 0.2)": {**BEFORE, **NO_DISTILL},
    "τ 0 only": {**BEFORE, "sparse.relative_threshold": 0.0, **NO_DISTILL},
    "winners without distillation (the recipe)": {**WINNERS, **NO_DISTILL},
    "winners with distillation (α 0.7)": {**WINNERS, **DISTILL},
    "criterion lamp instead of the support (no distillation)": {**WINNERS, **NO_DISTILL, "sparse.criterion": "lamp"},
}


def with_keys(recipe: Recipe, keys: dict) -> Recipe:
    """``recipe`` with dotted keys set, None included (``sparse.distill: null`` switches distillation off)."""
    raw = recipe.to_dict()
    for dotted, value in keys.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return recipe_from_dict(raw, "benchmarks/embedded-options")


def top1(run: Path, phase: str) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["val_top1"] for r in records if r["phase"] == phase][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "embedded-options")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    base = load_recipe(shipped_recipes()["embedded"])
    rows = []
    for index, (name, overrides) in enumerate(VARIANTS.items()):
        text = with_keys(base, {**FAST, **overrides}).to_yaml()
        results = []
        for seed in seeds:
            run = args.runs_dir / f"variant{index}-seed{seed}"
            done = run / "export.json"
            if not done.exists():
                run.mkdir(parents=True, exist_ok=True)
                recipe_file = run.parent / f"variant{index}.yaml"
                recipe_file.write_text(text)
                subprocess.run([sys.executable, "-m", "supportprune", "compress", "resnet18", "--recipe", str(recipe_file),
                                "--seed", str(seed), "--out", str(run)], check=True, cwd=ROOT)
            results.append((top1(run, "sparse"), top1(run, "redense")))
        rows.append((name, results))
    lines = [f"Embedded job, seeds {args.seeds}; top-1 (%) on the 1,000 validation images, mean ± std.", "",
             "| support options | sparse | re-Dense | per seed |", "|---|---:|---:|---|"]
    for name, results in rows:
        sparse, dense = [r[0] for r in results], [r[1] for r in results]
        lines.append(f"| {name} | {statistics.fmean(sparse):.2f} ± {statistics.stdev(sparse):.2f} | "
                     f"{statistics.fmean(dense):.2f} ± {statistics.stdev(dense):.2f} | "
                     + ", ".join(f"{s:.1f}/{d:.1f}" for s, d in results) + " |")
    table = "\n".join(lines)
    print(table)
    (Path(__file__).parent / "results.md").write_text(
        "# Support options on the embedded job\n\nCommand: `OMP_NUM_THREADS=1 python benchmarks/embedded-options/run.py"
        f" --seeds {args.seeds}`\n\n" + table + "\n\n" + NOTES)


if __name__ == "__main__":
    main()
