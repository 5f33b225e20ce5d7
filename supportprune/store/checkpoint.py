"""Checkpoints: written atomically, checked by SHA-256, with the previous one kept as a fallback.

Every load here is ``torch.load(weights_only=True)``: tensors and plain containers only. A pickle may
name any importable callable and unpickling calls it, so a file that needs more is refused, never run.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from supportprune.store.atomic import atomic_write_bytes
from supportprune.errors import SupportpruneError

_MAGIC = b"SPCKPT1\n"
_HEADER = len(_MAGIC) + 65  # magic, SHA-256 hex digest, newline

# torch's weights-only refusal wraps the reason in boilerplate, numbered options among it, one of which is
# loading with weights_only=False: never quoted. The reason is the line naming what was refused, less its advice.
_BOILERPLATE = re.compile(r"^(Weights only load failed|Please file an issue|Check the documentation|In PyTorch 2\.6|"
                          r"\(\d+\)|\[\d+\]|\d+\.\s)")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_REASON = re.compile(r"^Weights\w+ error:(.*)")  # torch's line stating what the weights-only reader refused


def refusal_reason(message: str) -> str:
    """What torch's weights-only refusal ``message`` objects to, without its advice (never weights_only=False)."""
    lines = [_ANSI_ESCAPE.sub("", line).strip() for line in message.splitlines()]
    reason = next((found.group(1).strip() for found in map(_REASON.search, lines) if found),
                  next((line for line in lines if line and not _BOILERPLATE.match(line)), ""))
    reason = re.split(r"\s(?:Please use|To allowlist|If you trust)", reason)[0].strip()
    return reason[:200] if reason and "weights_only" not in reason else "unsupported content"


class CheckpointError(SupportpruneError):
    """What is wrong with the file at ``path`` (``detail``); the message names the file."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"checkpoint {path}: {detail}")
        self.path, self.detail = path, detail


class CorruptCheckpointError(CheckpointError):
    """Damaged (bad magic, checksum mismatch, unparsable) or not plain data: falling back to the
    previous checkpoint is right."""


class UnreadableCheckpointError(CheckpointError):
    """The operating system refused the read (permissions, I/O error): a fallback would hide it."""


def load_plain(source: Any, path: Path, advice: str) -> Any:
    """``torch.load`` of tensors and plain data only; anything else ends in ``CorruptCheckpointError``
    for ``path``, its detail ending with ``advice`` (what the user can do)."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on the way to refusing
            warnings.simplefilter("ignore")
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        if lines and lines[0].startswith("Weights only load failed"):
            reason = refusal_reason(str(error))
            raise CorruptCheckpointError(path, f"holds objects other than tensors and plain data ({reason}); refused to "
                                               f"unpickle it, as that could run code; {advice}") from None
        raise CorruptCheckpointError(path, f"unparsable ({lines[0][:200] if lines else 'unpickling failed'}); {advice}") from None
    except Exception as error:  # torch raises several types for truncated or foreign files
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise CorruptCheckpointError(path, f"unparsable ({first}); {advice}") from None


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise ``state`` with a checksum; the file at ``path`` is replaced atomically and the one it
    replaces is kept as ``<name>.previous``. ``state`` must be tensors and plain data (it is read back
    with ``weights_only=True``)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    path = Path(path)
    if path.exists():
        _keep_as_previous(path)
    atomic_write_bytes(path, _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def _keep_as_previous(path: Path) -> None:
    """Make ``<name>.previous`` a copy of ``path`` while ``path`` stays in place: a kill at any moment
    leaves at least one intact checkpoint under ``path``'s name (moving it aside would leave none
    until the new file lands). A hard link costs nothing; where links are not allowed, a copy."""
    previous = path.with_suffix(path.suffix + ".previous")
    link = path.with_name(f".{path.name}.previous.link.tmp")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
        os.replace(link, previous)
    except OSError:
        link.unlink(missing_ok=True)
        atomic_write_bytes(previous, path.read_bytes())


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` starts like a file written by ``save_checkpoint``."""
    with open(path, "rb") as handle:
        return handle.read(len(_MAGIC)) == _MAGIC


def read_checkpoint(path: Path, advice: str = "not written by this supportprune; delete it") -> dict[str, Any]:
    """The state saved by ``save_checkpoint``: ``CorruptCheckpointError`` when the file is damaged or
    holds more than plain data (its message ends with ``advice``), ``UnreadableCheckpointError`` when
    the system refuses the read."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UnreadableCheckpointError(path, f"cannot be read ({error.strerror or error}); fix its permissions or the "
                                              "disk, or move the file away to start from the one before") from None
    if not data.startswith(_MAGIC) or len(data) < _HEADER:
        raise CorruptCheckpointError(path, "not a supportprune checkpoint (no SPCKPT1 header)")
    digest, payload = data[len(_MAGIC):_HEADER - 1].decode(errors="replace"), data[_HEADER:]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CorruptCheckpointError(path, "corrupt or truncated (checksum mismatch)")
    loaded = load_plain(io.BytesIO(payload), path, advice)
    if not isinstance(loaded, dict):
        raise CorruptCheckpointError(path, f"holds a {type(loaded).__name__}, not a supportprune checkpoint")
    return loaded


def load_latest(path: Path) -> tuple[dict[str, Any], Path, list[CorruptCheckpointError]] | None:
    """The newest intact checkpoint among ``path`` and its ``.previous``; also the damage met on the way.
    A file the system cannot read stops here (``UnreadableCheckpointError``) instead of being skipped."""
    problems = []
    for candidate in (Path(path), Path(path).with_suffix(Path(path).suffix + ".previous")):
        if not candidate.exists():
            continue
        try:
            return read_checkpoint(candidate), candidate, problems
        except CorruptCheckpointError as error:
            problems.append(error)
    if problems:
        first = problems[0]
        raise CorruptCheckpointError(first.path, f"{first.detail}; no intact earlier checkpoint: delete {Path(path).parent} to start over")
    return None
