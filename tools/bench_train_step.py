"""Training-step throughput of a B-alternation (batch-mask) step against a plain ReLU step.

Three variants of the same network, with the same weights, timed side by side in one process:

- ``plain``: the torchvision model with its ReLUs;
- ``naive``: every ReLU converted to a ``SupportSite`` in batch mode with statistics recorded, on the
  reference path (``SupportSite.fused = False``: η*, × keep, × mask, each saved by autograd);
- ``fused``: the same sites on the fused path (one folded-threshold pass, ReLU's backward).

Each step is zero_grad + forward + cross-entropy + backward + SGD (momentum) step. Settings are
{fp32, bf16 autocast} × {eager, torch.compile}; channels_last on a GPU. Per step: CUDA events (GPU)
or perf_counter (CPU); the variants are measured in interleaved rounds after warm-up, and the median
step time gives images/s. Prints a markdown table (ratios to plain) with the command, device, torch
version and date; ``--out FILE`` writes it too.

    python tools/bench_train_step.py                                  # GPU: resnet18, batch 256, 224×224
    python tools/bench_train_step.py --out benchmarks/results/x.md    # CPU: batch 64, 32×32, 1 channel, eager
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from supportprune.deploy.benchmark import time_calls  # noqa: E402
from supportprune.inputs.models import ModelSpec, build_model  # noqa: E402
from supportprune.method.convert import convert_relus  # noqa: E402
from supportprune.method.support import set_site_mode, support_sites  # noqa: E402

VARIANTS = ("plain", "naive", "fused")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cuda or cpu")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, help="default: 256 on a GPU, 64 on the CPU")
    parser.add_argument("--input-size", type=int, help="default: 224 on a GPU, 32 on the CPU")
    parser.add_argument("--channels", type=int, help="input channels; default: 3 on a GPU, 1 on the CPU")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated: fp32, bf16 (autocast); default: both on a GPU, fp32 on the CPU "
                             "(bf16 convolutions are very slow on CPUs without bf16 instructions)")
    parser.add_argument("--compile", default=None, choices=("no", "yes", "both"),
                        help="torch.compile setting(s); default: both on a GPU, no on the CPU (compiling is slow there)")
    parser.add_argument("--granularity", default="channel", choices=("channel", "element"))
    parser.add_argument("--relative-threshold", type=float, default=0.2)
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per variant (default: 5 GPU, 3 CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default: 10 GPU, 7 CPU)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the variants")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--out", type=Path, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args.device = "cuda" if cuda else "cpu"
    args.batch = args.batch or (256 if cuda else 64)
    args.input_size = args.input_size or (224 if cuda else 32)
    args.channels = args.channels or (3 if cuda else 1)
    args.precisions = args.precisions or ("fp32,bf16" if cuda else "fp32")
    args.compile = args.compile or ("both" if cuda else "no")
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 3)
    args.steps = args.steps if args.steps is not None else (10 if cuda else 7)
    if args.steps * args.rounds < 20:
        parser.error("steps × rounds must be at least 20 (the median is over all timed steps)")
    return args


def make_variants(args: argparse.Namespace, device: torch.device) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    spec = ModelSpec(args.model, 10, args.channels, args.input_size)
    plain = build_model(spec)
    models = {"plain": plain}
    for name, fused in (("naive", False), ("fused", True)):
        converted = convert_relus(copy.deepcopy(plain), spec.example_input())
        set_site_mode(converted, "batch", granularity=args.granularity,
                      relative_threshold=args.relative_threshold, record_stats=True)
        for _, site in support_sites(converted):
            site.fused = fused
        models[name] = converted
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return {name: m.to(device=device, memory_format=memory_format).train() for name, m in models.items()}


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, step, count: int) -> list[float]:
        """Seconds per step, ``count`` steps."""
        if self.cuda:
            events = [torch.cuda.Event(enable_timing=True) for _ in range(count + 1)]
            events[0].record()
            for i in range(count):
                step()
                events[i + 1].record()
            torch.cuda.synchronize()
            return [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(count)]
        return time_calls(step, count, warmup=0)


def bench_setting(args, device, precision: str, compiled: bool, timer: Timer, log) -> dict[str, dict[str, float]]:
    models = make_variants(args, device)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, args.channels, args.input_size, args.input_size, generator=generator)
    images = images.to(device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (args.batch,), generator=generator).to(device)
    autocast = precision == "bf16"

    steps = {}
    for name, model in models.items():
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        forward = torch.compile(model) if compiled else model

        def step(forward=forward, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = F.cross_entropy(forward(images), labels)
            loss.backward()
            optimizer.step()

        steps[name] = step

    result: dict[str, dict[str, float]] = {}
    times: dict[str, list[float]] = {name: [] for name in models}
    for name, step in steps.items():  # warm-up (and compilation) of every variant first
        started = time.perf_counter()
        for _ in range(args.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        log(f"  {precision} {'compiled' if compiled else 'eager'} {name}: warm-up {time.perf_counter() - started:.1f} s")
    for _ in range(args.rounds):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[name] += timer(step, args.steps)
            if device.type == "cuda":
                result.setdefault(name, {})["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    for name in models:
        median = statistics.median(times[name])
        result.setdefault(name, {}).update(images_per_s=args.batch / median, median_ms=median * 1e3)
        log(f"  {precision} {'compiled' if compiled else 'eager'} {name}: {args.batch / median:,.0f} images/s")
    del steps, models
    if compiled:
        torch._dynamo.reset()
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        device_name = torch.cuda.get_device_name(device)
    else:
        import platform

        device_name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    command = "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]))] + (argv if argv is not None else sys.argv[1:]))
    timer = Timer(device)
    compile_settings = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    rows = []
    for compiled in compile_settings:
        for precision in args.precisions.split(","):
            rows.append((precision, compiled, bench_setting(args, device, precision, compiled, timer, log)))

    cuda = device.type == "cuda"
    lines = [
        f"# Training step: plain ReLU vs B-alternation support sites ({args.model}, batch {args.batch})",
        "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`",
        f"- device: {device_name}; torch {torch.__version__}",
        f"- input {args.channels}×{args.input_size}×{args.input_size}, {args.granularity} granularity, relative threshold "
        f"{args.relative_threshold}, statistics recorded; SGD momentum 0.9; "
        f"{'channels_last, cudnn.benchmark' if cuda else 'contiguous (NCHW)'}",
        f"- median of {args.rounds} interleaved rounds × {args.steps} steps after {args.warmup} warm-up steps per variant"
        f" ({'CUDA events' if cuda else 'perf_counter'})",
        "",
        "| precision | torch.compile | plain (images/s) | naive (images/s) | fused (images/s) | naive / plain | fused / plain |"
        + (" peak GiB plain / naive / fused |" if cuda else ""),
        "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if cuda else ""),
    ]
    for precision, compiled, result in rows:
        plain, naive, fused = (result[v]["images_per_s"] for v in VARIANTS)
        line = (f"| {precision} | {'yes' if compiled else 'no'} | {plain:,.0f} | {naive:,.0f} | {fused:,.0f} | "
                f"{naive / plain:.3f} | {fused / plain:.3f} |")
        if cuda:
            line += " " + " / ".join(f"{result[v]['peak_gib']:.2f}" for v in VARIANTS) + " |"
        lines.append(line)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)


if __name__ == "__main__":
    main()
