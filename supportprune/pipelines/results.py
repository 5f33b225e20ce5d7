"""What a run measured, as values: ``CompressMetrics`` (a compress run's numbers, which ``experiment`` and the
criteria comparison use), and result.json, written from them and read back only to reuse a finished run."""

from __future__ import annotations

import json
import time
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Optional

from supportprune.errors import SupportpruneError
from supportprune.run.context import RunContext
from supportprune.store.atomic import atomic_write_text
from supportprune.store.layout import RunLayout


@dataclass(frozen=True)
class CompressMetrics:
    """A compress run's numbers: the Dense model's top-1 and size, every alternation point (what it kept), every
    epoch's record and the model spec (what rebuilds the models)."""

    baseline_top1: Optional[float]
    alternations: list[dict[str, Any]]
    baseline_macs: int
    baseline_params: int
    spec: dict[str, Any]
    metrics: list[dict[str, Any]]
    seconds: float
    criterion: Optional[str] = None  # sparse.criterion (absent from runs made before it was recorded)

    @classmethod
    def of(cls, context: RunContext) -> "CompressMetrics":
        state = context.state
        return cls(state.baseline_top1, state.alternations, context.baseline_macs, context.baseline_params,
                   asdict(context.spec), state.metrics, time.perf_counter() - context.started,
                   context.recipe.sparse.criterion)

    def last_record(self, phase: str) -> Optional[dict[str, Any]]:
        """The last epoch's record of ``phase`` (``sparse``, ``redense``), None when the phase ran no epoch."""
        records = [m for m in self.metrics if m["phase"] == phase]
        return records[-1] if records else None

    @property
    def kept_macs(self) -> float:
        """The MACs the Sparse step kept, as a fraction of the Dense model's."""
        return self.alternations[-1]["macs"] / self.baseline_macs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_FIELDS = {f.name: f for f in fields(CompressMetrics)}


def write_result(layout: RunLayout, result: CompressMetrics | dict[str, Any]) -> None:
    """result.json of a run: a compress run's metrics, or a train run's closing evaluation."""
    data = result.to_dict() if isinstance(result, CompressMetrics) else result
    atomic_write_text(layout.result, json.dumps(data, indent=1))


def read_result(layout: RunLayout) -> dict[str, Any]:
    """A finished run's result.json, as written (a train run's, say)."""
    try:
        return json.loads(layout.result.read_text())
    except (OSError, ValueError) as error:
        raise SupportpruneError(f"{layout.result}: cannot read the finished run's result ({error}); delete "
                                f"{layout.root} to make the run again") from None


def read_compress_metrics(layout: RunLayout) -> CompressMetrics:
    """The metrics of a finished compress run, read back to reuse it (keys added later take their default)."""
    raw = read_result(layout)
    missing = [name for name, f in _FIELDS.items() if name not in raw and f.default is MISSING]
    if missing:
        raise SupportpruneError(f"{layout.result} lacks {', '.join(missing)}: not a compress run's result; delete "
                                f"{layout.root} to make the run again")
    return CompressMetrics(**{name: raw[name] for name in _FIELDS if name in raw})
