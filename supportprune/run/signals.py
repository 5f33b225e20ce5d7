"""SIGINT and SIGTERM during a run: finish the step, write a checkpoint, stop so that the run can resume."""

from __future__ import annotations

import signal
import threading
from typing import Any, Optional

from supportprune.errors import SupportpruneError


class RunInterrupted(SupportpruneError):
    """SIGINT/SIGTERM: the current step finished, a checkpoint was written, the run can resume."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StopRequests:
    """SIGINT and SIGTERM ask the run to stop after the current step instead of killing it mid-write."""

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._request)
        return self

    def _request(self, number, frame) -> None:
        self.signal_name = signal.Signals(number).name

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
