"""Checkpoints: written atomically, checked by SHA-256, with the previous one kept as a fallback."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from supportprune.atomic import atomic_write_bytes
from supportprune.errors import SupportpruneError

_MAGIC = b"SPCKPT1\n"


class CorruptCheckpointError(SupportpruneError):
    pass


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise ``state`` with a checksum; the file at ``path`` is replaced atomically and the one it
    replaces is kept as ``<name>.previous``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    path = Path(path)
    if path.exists():
        path.replace(path.with_suffix(path.suffix + ".previous"))
    atomic_write_bytes(path, _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` starts like a file written by ``save_checkpoint``."""
    with open(path, "rb") as handle:
        return handle.read(len(_MAGIC)) == _MAGIC


def read_checkpoint(path: Path) -> dict[str, Any]:
    data = Path(path).read_bytes()
    header_end = len(_MAGIC) + 65
    if not data.startswith(_MAGIC) or len(data) < header_end:
        raise CorruptCheckpointError(f"{path} is not a supportprune checkpoint")
    digest, payload = data[len(_MAGIC):header_end - 1].decode(), data[header_end:]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CorruptCheckpointError(f"{path} is corrupt or truncated (checksum mismatch)")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as error:
        raise CorruptCheckpointError(f"{path} cannot be read: {str(error).splitlines()[0][:200]}") from None


def load_latest(path: Path) -> tuple[dict[str, Any], Path, list[str]] | None:
    """The newest readable checkpoint among ``path`` and its ``.previous``; also the problems met."""
    problems = []
    for candidate in (Path(path), Path(path).with_suffix(Path(path).suffix + ".previous")):
        if not candidate.exists():
            continue
        try:
            return read_checkpoint(candidate), candidate, problems
        except CorruptCheckpointError as error:
            problems.append(str(error))
    if problems:
        raise CorruptCheckpointError(f"{problems[0]}; no readable earlier checkpoint: delete {Path(path).parent} to start over")
    return None
