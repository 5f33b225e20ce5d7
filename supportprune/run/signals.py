"""SIGINT and SIGTERM during a run. Inside a training step the step finishes, a checkpoint is written and the run
stops so that it can resume; anywhere else (loading data, building the model, estimating supports, timing layers,
exporting, quantizing, benchmarking, writing the report) the request stops the run at once, by raising
``StopRequested`` from the handler: every output is written atomically, so what had finished stays and a
half-written file never replaces a whole one."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator, Optional

from supportprune.errors import StopRequested, SupportpruneError

_stage = ["starting the run"]  # what the run is doing now, for the message a stop ends with


class RunInterrupted(SupportpruneError):
    """SIGINT/SIGTERM: the current step finished, a checkpoint was written, the run can resume."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name what runs inside the block, so a stop there says where it stopped."""
    previous, _stage[0] = _stage[0], name
    try:
        yield
    finally:
        _stage[0] = previous


def exit_code(signal_name: Optional[str]) -> int:
    return 143 if signal_name == "SIGTERM" else 130


class StopRequests:
    """SIGINT and SIGTERM: inside ``deferred()`` (a training step) the request is recorded and the engine stops after
    the step; elsewhere, or at a second request, ``StopRequested`` is raised at once."""

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        self._previous: dict[int, Any] = {}
        self._deferring = False

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._request)
        return self

    def _request(self, number, frame) -> None:
        repeated = self.signal_name is not None
        self.signal_name = signal.Signals(number).name
        if not self._deferring or repeated:
            raise self.stopped()

    def stopped(self) -> StopRequested:
        return StopRequested(f"stopped by {self.signal_name} during {_stage[0]}; what had finished is kept: run the "
                             "same command again to continue", exit_code(self.signal_name))

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Training steps: a request waits for the end of the step (the engine checks ``signal_name`` and writes a
        checkpoint). A request the block did not act on stops the run when it ends."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.signal_name is not None:
            raise self.stopped()

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
