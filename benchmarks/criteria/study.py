"""The criteria study of issue #20: every criterion, same pipeline, from every starting point of the bench.

    nohup nice -n 10 python benchmarks/criteria/study.py screen > logs/study-screen.log 2>&1 &
    python benchmarks/criteria/study.py seeds --criteria support,lamp,l1
    python benchmarks/criteria/summarise.py          # results/study/table.md

Stages (each one ``supportprune experiment`` per starting point; resumable: a finished run is read, not
repeated, and the runs of a stage are shared with the others through runs/study-NAME):

- screen: every channel criterion (random left out: a floor, never a default) at 0.5 and 0.3 of the MACs,
  seed 0: results/study-NAME-screen;
- seeds: the criteria given (the strongest of the screen and every default candidate), seeds 0-2:
  results/study-NAME-seeds;
- learned: the support with the learned sparsity (``sparse.group_decay``, deliverable 3), seed 0 (or --seeds):
  results/study-NAME-learned;
- guard: LAMP and the support without the collapse guard (``sparse.max_pruning_ratio: 1``), seed 0: what the
  guard costs where nothing collapsed: results/study-NAME-guard.

The starting points and their model specs come from starting-points/manifest.json (tools/train_starting_points.py).
Scored on the first 2,000 of Fashion-MNIST's 10,000 test images (runs/study-data-2000: the training files linked,
the test files cut; a top-1 there has a binomial standard error of about 0.7 points, and every run sees the same
images, so differences between criteria are paired), which cuts the evaluations that dominate a short run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tools.train_starting_points import BENCH  # noqa: E402

SOURCE = Path("/usr/share/datasets/fashion-mnist")
SCREEN = ("support", "lamp", "l1", "l2", "fpgm", "taylor", "hessian", "bn_scale")
TEST_IMAGES = 2000
STAGE_VARIANTS = {
    "learned": ["learned: sparse.group_decay=5"],
    "guard": ["lamp_noguard: sparse.criterion=lamp sparse.max_pruning_ratio=1",
              "support_noguard: sparse.max_pruning_ratio=1"],
}


def study_data(out: Path) -> Path:
    """Fashion-MNIST with the first ``TEST_IMAGES`` test images (idx files, header counts rewritten)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        if not (out / name).exists():
            (out / name).symlink_to(SOURCE / name)
    for name, header, item in (("t10k-images-idx3-ubyte.gz", 16, 28 * 28), ("t10k-labels-idx1-ubyte.gz", 8, 1)):
        if (out / name).exists():
            continue
        data = gzip.decompress((SOURCE / name).read_bytes())
        head = bytearray(data[:header])
        head[4:8] = TEST_IMAGES.to_bytes(4, "big")
        tmp = out / (name + ".tmp")
        tmp.write_bytes(gzip.compress(bytes(head) + data[header:header + TEST_IMAGES * item]))
        os.replace(tmp, out / name)
    return out


def command(name: str, entry: dict, stage: str, criteria: str | None, seeds: str, steps: int, data: Path) -> list[str]:
    cmd = [sys.executable, "-m", "supportprune", "experiment", entry["model"],
           "--recipe", "benchmarks/criteria/study.yaml", "--data", f"fashion-mnist:{data}",
           "--weights", f"starting-points/{entry['file']}", "--max-steps", str(steps),
           "--runs-dir", f"runs/study-{name}", "--targets", "0.5,0.3", "--out", f"results/study-{name}-{stage}"]
    for key, value in entry.get("model_args", {}).items():
        cmd += ["--model-arg", f"{key}={value}"]
    if stage in STAGE_VARIANTS:
        cmd += ["--criteria", criteria or "support", "--seeds", seeds]
        for variant in STAGE_VARIANTS[stage]:
            cmd += ["--variant", variant]
    elif stage == "screen":
        cmd += ["--criteria", criteria or ",".join(SCREEN), "--seeds", "0"]
    else:
        cmd += ["--criteria", criteria or "support,lamp", "--seeds", "0,1,2"]
    return cmd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=["screen", "seeds", *STAGE_VARIANTS])
    parser.add_argument("--models", default=",".join(BENCH), help="starting points, in this order")
    parser.add_argument("--criteria", help="comma-separated (default: the stage's)")
    parser.add_argument("--seeds", default="0", help="seeds of the learned and guard stages")
    parser.add_argument("--max-steps", type=int, default=10, help="training steps per epoch of every run")
    parser.add_argument("--wait", type=float, default=0, help="minutes to wait for a starting point still training")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    manifest = json.loads(Path("starting-points/manifest.json").read_text())["models"]
    data = study_data(ROOT / "runs" / f"study-data-{TEST_IMAGES}")
    for name in args.models.split(","):
        waited = 0.0
        while name not in manifest and waited < args.wait:
            time.sleep(30)
            waited += 0.5
            manifest = json.loads(Path("starting-points/manifest.json").read_text())["models"]
        entry = manifest.get(name)
        if entry is None or not Path("starting-points", entry["file"]).exists():
            print(f"study: {name} is not trained yet (tools/train_starting_points.py), skipped", flush=True)
            continue
        entry = {"model": name, **entry}
        cmd = command(name, entry, args.stage, args.criteria, args.seeds, args.max_steps, data)
        print("study: " + " ".join(cmd), flush=True)
        result = subprocess.run(cmd)
        if result.returncode != 0:
            print(f"study: {name} {args.stage} failed (exit {result.returncode}); the next model goes on", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
