"""The table of the criteria study (issue #20): for each criterion, its gap to the best criterion of each case
(starting point × MACs target), its mean gap and its WORST gap; the default's row; re-Dense against the start.

    python benchmarks/criteria/summarise.py [--default support] [--out results/study]

Reads every results/study-NAME-STAGE/results.json (benchmarks/criteria/study.py) and writes OUT/table.md and
OUT/summary.json. Two tables: the screen (seed 0, every criterion) and the seeds (mean over seeds 0-2 of the
criteria run with three seeds). A run that kept more than its target (+0.01) did not reach it (a criterion that
cannot measure a network, bn_scale without batch norm): it is left out of that case's best and counts as missing.
A criterion's worst gap is taken over the cases it ran; a criterion missing a case is marked.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

RUN = re.compile(r"^(global|latency)-macs([\d.]+)-(.+)-seed(\d+)$")
TOLERANCE = 0.01  # MACs kept above the target that still counts as reaching it


def load_runs(results: Path) -> dict[tuple[str, float], dict[str, dict[int, dict]]]:
    """(starting point, target) -> method -> seed -> run summary, over every stage's results.json."""
    cases: dict = defaultdict(lambda: defaultdict(dict))
    for path in sorted(results.glob("study-*-*/results.json")):
        model = path.parent.name[len("study-"):].rsplit("-", 1)[0]
        for name, run in json.loads(path.read_text())["runs"].items():
            match = RUN.match(name)
            if match is None or match.group(1) != "global":
                continue
            target, method, seed = float(match.group(2)), match.group(3), int(match.group(4))
            cases[(model, target)][method][seed] = run
    return cases


def reached(run: dict, target: float) -> bool:
    return run["macs_kept"] <= target + TOLERANCE


def table(cases, seeds: tuple[int, ...], methods: list[str] | None = None) -> dict:
    """Per case and method: mean/std of sparse and re-Dense top-1 over ``seeds`` (runs that have them all and
    reached the target), the case's best mean, each method's gap to it; per method mean and worst gap."""
    rows: dict = defaultdict(dict)
    best: dict = {}
    for case, by_method in sorted(cases.items()):
        means = {}
        for method, runs in by_method.items():
            if methods is not None and method not in methods:
                continue
            if not all(s in runs for s in seeds) or not all(reached(runs[s], case[1]) for s in seeds):
                rows[method][case] = None
                continue
            sparse = [runs[s]["sparse_top1"] for s in seeds]
            redense = [runs[s]["redense_top1"] for s in seeds]
            rows[method][case] = {
                "sparse": statistics.mean(sparse), "sparse_std": statistics.stdev(sparse) if len(sparse) > 1 else 0.0,
                "redense": statistics.mean(redense), "redense_std": statistics.stdev(redense) if len(redense) > 1 else 0.0,
                "macs_kept": statistics.mean(runs[s]["macs_kept"] for s in seeds),
                "start": runs[seeds[0]]["baseline_top1"]}
            means[method] = rows[method][case]["sparse"]
        if means:
            best[case] = max(means.items(), key=lambda item: item[1])
    summary = {}
    for method, by_case in rows.items():
        gaps = {case: cell["sparse"] - best[case][1] for case, cell in by_case.items() if cell is not None and case in best}
        missing = [case for case in best if by_case.get(case) is None]
        if not gaps:
            continue
        summary[method] = {"mean_gap": statistics.mean(gaps.values()), "worst_gap": min(gaps.values()),
                           "worst_case": min(gaps, key=gaps.get), "gaps": gaps, "missing": missing}
    return {"rows": rows, "best": best, "summary": summary}


def choose_default(summary: dict) -> str | None:
    """The smallest worst-case gap over every case (a criterion missing a case cannot be chosen); ties: the mean."""
    complete = {m: s for m, s in summary.items() if not s["missing"]}
    if not complete:
        return None
    return max(complete, key=lambda m: (round(complete[m]["worst_gap"], 2), complete[m]["mean_gap"]))


def _case(case) -> str:
    return f"{case[0]} @{case[1]:g}"


def markdown(title: str, result: dict, default: str | None, seeds: tuple[int, ...]) -> list[str]:
    cases = sorted(result["best"])
    summary = result["summary"]
    order = sorted(summary, key=lambda m: (-round(summary[m]["worst_gap"], 2), -summary[m]["mean_gap"]))
    lines = [f"## {title}", "",
             "Gap in sparse top-1 (points) to the best criterion of each case"
             + (f" (mean over seeds {', '.join(map(str, seeds))})" if len(seeds) > 1 else f" (seed {seeds[0]})")
             + "; – : not run or did not reach the target.", "",
             "| criterion | mean gap | worst gap | worst case | " + " | ".join(_case(c) for c in cases) + " |",
             "|---|---|---|---|" + "---|" * len(cases)]
    for method in order:
        s = summary[method]
        cells = [f"{s['gaps'][c]:+.2f}" if c in s["gaps"] else "–" for c in cases]
        name = f"**{method}** (default)" if method == default else method
        lines.append(f"| {name} | {s['mean_gap']:+.2f} | {s['worst_gap']:+.2f} | {_case(s['worst_case'])} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| case | start top-1 | best | best sparse top-1 | "
              + (f"{default} sparse top-1 | {default} MACs kept | {default} re-Dense top-1 | re-Dense − start |"
                 if default else ""),
              "|---|---|---|---|" + ("---|---|---|---|" if default else "")]
    for case in cases:
        method, value = result["best"][case]
        cell = result["rows"][method][case]
        best_std = f" ± {cell['sparse_std']:.2f}" if len(seeds) > 1 else ""
        line = f"| {_case(case)} | {cell['start']:.2f} | {method} | {value:.2f}{best_std} |"
        if default:
            d = result["rows"].get(default, {}).get(case)
            if d is None:
                line += " – | – | – | – |"
            else:
                pm = (lambda v, s: f"{v:.2f} ± {s:.2f}") if len(seeds) > 1 else (lambda v, s: f"{v:.2f}")
                line += (f" {pm(d['sparse'], d['sparse_std'])} | {d['macs_kept']:.3f} | {pm(d['redense'], d['redense_std'])} |"
                         f" {d['redense'] - d['start']:+.2f} |")
        lines.append(line)
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="results", type=Path)
    parser.add_argument("--out", default="results/study", type=Path)
    parser.add_argument("--default", help="the criterion shown as the default (default: the one chosen)")
    args = parser.parse_args(argv)
    cases = load_runs(args.results)
    screen = table(cases, (0,))
    seeded = table(cases, (0, 1, 2))
    chosen = choose_default(seeded["summary"]) or choose_default(screen["summary"])
    default = args.default or chosen
    lines = ["# The criteria study (issue #20): which criterion carries over", "",
             "Written by benchmarks/criteria/summarise.py from results/study-*/results.json "
             "(benchmarks/criteria/study.py; recipe benchmarks/criteria/study.yaml). Cases: starting point @ "
             "fraction of the MACs kept. Chosen by the smallest worst-case gap (ties: the mean gap), over the "
             f"seeds table where a criterion has every case there, else the screen: **{chosen}**.", ""]
    if seeded["summary"]:
        lines += markdown("Seeds 0-2: the strongest criteria and the default candidates", seeded, default, (0, 1, 2))
    else:
        lines += ["No criterion has runs with seeds 0-2 yet: the choice is the screen's (one seed).", ""]
    lines += markdown("Screen: every criterion, seed 0", screen, default, (0,))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n".join(lines))

    def plain(result):
        return {"best": {_case(c): v for c, v in result["best"].items()},
                "summary": {m: {**s, "worst_case": _case(s["worst_case"]), "gaps": {_case(c): g for c, g in s["gaps"].items()},
                                "missing": [_case(c) for c in s["missing"]]} for m, s in result["summary"].items()}}
    (args.out / "summary.json").write_text(json.dumps({"chosen": chosen, "screen": plain(screen),
                                                       "seeds": plain(seeded)}, indent=1) + "\n")
    print(f"chosen: {chosen}; wrote {args.out / 'table.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
