"""Data-parallel scaling of a B-alternation training step: steps/s with 1, 2, ... processes.

Each process trains its share of the same global batch with DistributedDataParallel; every support
site all-reduces its batch energies, so all ranks apply the global mask. Launch it plainly: it starts
torchrun itself for each process count and prints a table.

    python tools/bench_ddp_scaling.py --processes 1,2 --model resnet18 --input-size 32 --global-batch 128
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    import torch
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from supportprune.run.distributed import cluster_device, init_cluster, shutdown_cluster
    from supportprune.inputs.models import ModelSpec, build_model
    from supportprune.method.convert import convert_relus
    from supportprune.method.support import set_site_mode

    cluster = init_cluster(args.device)
    device = torch.device(cluster_device(cluster, args.device) if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    spec = ModelSpec(args.model, 10, args.channels, args.input_size)
    model = convert_relus(build_model(spec), spec.example_input()).to(device)
    set_site_mode(model, "batch", granularity="channel", relative_threshold=0.2, record_stats=True,
                  global_supports=cluster.distributed)
    trained = DistributedDataParallel(model) if cluster.distributed else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    local = args.global_batch // cluster.world_size
    images = torch.randn(local, args.channels, args.input_size, args.input_size, device=device)
    labels = torch.randint(0, 10, (local,), device=device)
    trained.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(trained(images), labels).backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    cluster.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    cluster.barrier()
    elapsed = time.perf_counter() - started
    if cluster.is_main:
        print(f"RESULT {cluster.world_size} {args.steps / elapsed:.4f}", flush=True)
    shutdown_cluster(cluster)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads-per-process", type=int, default=0, help="0: cores ÷ processes")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    rows = []
    cores = os.cpu_count() or 1
    for processes in [int(p) for p in args.processes.split(",")]:
        threads = args.threads_per_process or max(1, cores // processes)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   __file__, "--worker", *sys.argv[1:]]
        output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        steps_per_second = float(next(line for line in output.splitlines() if line.startswith("RESULT")).split()[2])
        rows.append((processes, threads, steps_per_second))
        print(f"{processes} process(es) × {threads} thread(s): {steps_per_second:.3f} steps/s", flush=True)

    base = rows[0][2]
    lines = ["| processes | threads each | steps/s | images/s | speed-up |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {p} | {t} | {s:.3f} | {s * args.global_batch:,.0f} | {s / base:.2f} |" for p, t, s in rows]
    text = (
        f"# DDP scaling of a B-alternation training step ({args.model}, {args.channels}×{args.input_size}², "
        f"global batch {args.global_batch}, device {args.device})\n\n"
        f"Date {datetime.now(timezone.utc):%Y-%m-%d}; host: {os.cpu_count()} CPUs. Steps/s over {args.steps} steps after "
        f"{args.warmup} warm-up, one run, gloo on CPU; every support site all-reduces its batch energies.\nCommand: `python tools/bench_ddp_scaling.py {' '.join(sys.argv[1:])}`\n\n"
        + "\n".join(lines) + "\n"
    )
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
