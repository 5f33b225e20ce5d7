"""Per-example supports for I-alternation, bit-packed and indexed by example.

One row per training example holds the supports of every site, one bit per unit (``numpy.packbits``):
resnet18 on 32×32 inputs needs 47,104 bits (5.9 KB) per example at element granularity. The array
lives in a ``.npy`` file (written atomically, so a resumed run finds the supports it trained with) and
is read either into memory or memory-mapped from disk. The memory needed is computed before anything
is stored; above the budget the store refuses, or maps the file, as the caller asks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from supportprune.store.atomic import atomic_write
from supportprune.errors import SupportpruneError

Storage = Literal["auto", "memory", "disk"]


class MaskBudgetError(SupportpruneError):
    """The instance supports do not fit the memory budget."""


def required_bytes(unit_shapes: dict[str, tuple[int, ...]], examples: int) -> int:
    """Bytes of the bit-packed supports of ``examples`` examples."""
    return examples * row_bytes(unit_shapes)


def row_bytes(unit_shapes: dict[str, tuple[int, ...]]) -> int:
    return math.ceil(sum(math.prod(shape) for shape in unit_shapes.values()) / 8)


def _format_bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def choose_storage(unit_shapes: dict[str, tuple[int, ...]], examples: int, storage: Storage, budget_bytes: int) -> str:
    """``memory`` or ``disk`` for this many supports; ``MaskBudgetError`` when ``memory`` is asked
    for and they exceed the budget."""
    needed = required_bytes(unit_shapes, examples)
    if storage == "disk" or (storage == "auto" and needed > budget_bytes):
        return "disk"
    if needed > budget_bytes:
        raise MaskBudgetError(
            f"instance supports need {_format_bytes(needed)} ({examples:,} examples × {row_bytes(unit_shapes):,} bytes), "
            f"above train.mask_memory_mb = {budget_bytes // 2**20}; raise it, set train.mask_storage: disk "
            "(memory-mapped file), use channel granularity, or --alternation batch"
        )
    return "memory"


@dataclass(frozen=True)
class _Slot:
    name: str
    shape: tuple[int, ...]
    start: int  # first bit of this site in a row
    units: int


class InstanceMaskStore:
    """Supports by example index: ``write(indices, masks)`` during an estimation pass, ``read(indices)``
    for every training batch (any order, any subset: the rows are looked up by index)."""

    def __init__(self, unit_shapes: dict[str, tuple[int, ...]], rows: np.ndarray) -> None:
        self.slots: list[_Slot] = []
        start = 0
        for name, shape in unit_shapes.items():
            units = math.prod(shape)
            self.slots.append(_Slot(name, tuple(shape), start, units))
            start += units
        self.units = start
        if rows.ndim != 2 or rows.shape[1] != math.ceil(self.units / 8) or rows.dtype != np.uint8:
            raise SupportpruneError(
                f"stored supports have shape {rows.shape} ({rows.dtype}), expected (examples, {math.ceil(self.units / 8)}) uint8; "
                "the run's model or granularity changed: run with --restart"
            )
        self.rows = rows

    @classmethod
    def empty(cls, unit_shapes: dict[str, tuple[int, ...]], examples: int, path: Path | None = None) -> "InstanceMaskStore":
        """Zeros for ``examples`` examples, in memory or (``path``) in a memory-mapped file."""
        shape = (examples, row_bytes(unit_shapes))
        if path is None:
            return cls(unit_shapes, np.zeros(shape, dtype=np.uint8))
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(unit_shapes, np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape))

    @classmethod
    def open(cls, unit_shapes: dict[str, tuple[int, ...]], path: Path, storage: str) -> "InstanceMaskStore":
        """A store saved by ``save``: read into memory, or memory-mapped (``disk``)."""
        try:
            rows = np.load(path, mmap_mode="r" if storage == "disk" else None, allow_pickle=False)
            if not isinstance(rows, np.ndarray):  # an .npz archive: not what save writes
                raise ValueError(f"a {type(rows).__name__}, not one .npy array")
        except (OSError, ValueError, EOFError) as error:
            raise SupportpruneError(f"cannot read stored supports {path}: {error}; delete it or run with --restart") from None
        return cls(unit_shapes, rows)

    @property
    def examples(self) -> int:
        return self.rows.shape[0]

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes)

    def write(self, indices: Tensor, supports: dict[str, Tensor]) -> None:
        """Store the supports of the examples ``indices`` (supports[name]: boolean (len(indices), *shape))."""
        flat = [supports[slot.name].reshape(len(indices), slot.units) for slot in self.slots]
        bits = torch.cat(flat, dim=1).cpu().numpy()
        self.rows[indices.cpu().numpy()] = np.packbits(bits, axis=1)

    def read(self, indices: Tensor, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """The supports of the examples ``indices``, as boolean (len(indices), *shape) per site."""
        packed = self.rows[indices.cpu().numpy()]
        bits = torch.from_numpy(np.unpackbits(packed, axis=1, count=self.units)).to(device, non_blocking=True)
        return {slot.name: bits[:, slot.start:slot.start + slot.units].view((len(indices),) + slot.shape).bool()
                for slot in self.slots}

    def support_counts(self, chunk: int = 4096) -> dict[str, Tensor]:
        """Per site and unit, over all examples, how many had support (for MaskT's majority)."""
        totals = torch.zeros(self.units, dtype=torch.long)
        for start in range(0, self.examples, chunk):
            bits = np.unpackbits(self.rows[start:start + chunk], axis=1, count=self.units)
            totals += torch.from_numpy(bits.sum(axis=0, dtype=np.int64))
        return {slot.name: totals[slot.start:slot.start + slot.units].view(slot.shape) for slot in self.slots}

    def save(self, path: Path) -> None:
        """Write the rows to ``path`` atomically (a temporary file, then a rename)."""
        atomic_write(path, lambda handle: np.save(handle, np.ascontiguousarray(self.rows), allow_pickle=False))
