"""``python -m supportprune.run.launch TORCHRUN-OPTIONS COMMAND ARGS``: torchrun running ``supportprune COMMAND ARGS``
in each process, with failures told the supportprune way. Every rank already ends a failure in its own one-line
``error:``; torchrun would add its agent's log lines and the traceback of its own ChildFailedError. Here they are left
out: a rank that could not speak (killed by a signal, when no rank failed with its own error) gets one line, and
the exit code is the first failed rank's."""

from __future__ import annotations

import logging
import sys

COMMANDS = ("compress", "train", "experiment")


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    argv = list(sys.argv[1:] if argv is None else argv)
    split = next((i for i, arg in enumerate(argv) if arg in COMMANDS), None)
    if split is None:
        print("error: name the supportprune command after torchrun's options, e.g. "
              "python -m supportprune.run.launch --standalone --nproc_per_node 2 compress resnet18", file=sys.stderr)
        return 2
    for name in ("torch.distributed.elastic", "torch.distributed.run"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args([*argv[:split], "-m", "supportprune", *argv[split:]]))
    except ChildFailedError as error:
        failures = sorted(error.failures.items())
        spoke = any(failure.exitcode > 0 for _, failure in failures)
        for rank, failure in failures:
            # torchrun stops the other ranks with SIGTERM once one has failed: that is its teardown, not news,
            # so a killed rank gets a line only when no rank failed with its own error
            if failure.exitcode < 0 and not spoke:
                print(f"error: rank {rank} was killed by {failure.signal_name()}", file=sys.stderr)
        return next((failure.exitcode for _, failure in failures if failure.exitcode > 0), 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
