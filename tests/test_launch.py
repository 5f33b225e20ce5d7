"""Under torchrun (the README's multi-process command) a failure is one line per rank, without the launcher's
traceback or log lines, and the exit code is the ranks'."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_a_failure_under_torchrun_is_one_line_per_rank(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    command = [sys.executable, "-m", "supportprune.run.launch", "--standalone", "--nproc_per_node", "2",
               "compress", "resnet1000", "--device", "cpu", "--out", str(tmp_path / "out")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    ranks = [line.split(":")[1] for line in errors]
    # Every rank fails on the model; torchrun stops a rank still running once another has failed, so a rank may
    # be stopped before it says so: at most one line per rank, each its own error, none about the teardown.
    assert ranks and len(ranks) == len(set(ranks)) and set(ranks) <= {" rank 0", " rank 1"}, output
    assert all("unknown model 'resnet1000'" in line for line in errors), output
    assert "Traceback" not in output and "ChildFailedError" not in output and "elastic" not in output
