"""What a run tells its user: the CLI shows it with rich, tests and other ranks stay silent."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    def message(self, text: str) -> None: ...
    def start(self, description: str, total: int) -> None: ...
    def advance(self, completed: int, **fields: float) -> None: ...
    def stop(self) -> None: ...


class SilentReporter:
    def message(self, text: str) -> None:
        pass

    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, completed: int, **fields: float) -> None:
        pass

    def stop(self) -> None:
        pass
