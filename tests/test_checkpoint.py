"""Checkpoint files: damage is detected and named, an earlier intact checkpoint is used, a read the system
refuses is reported rather than skipped, and atomic writes reach the disk (file and directory entry)."""

import errno
import re
import os
from pathlib import Path

import pytest
import torch

from supportprune.store import atomic
from supportprune.store.checkpoint import (
    CorruptCheckpointError, UnreadableCheckpointError, load_latest, read_checkpoint, save_checkpoint,
)


def _two_checkpoints(tmp_path: Path) -> Path:
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"step": torch.tensor(1)})
    save_checkpoint(path, {"step": torch.tensor(2)})  # the first becomes last.pt.previous
    return path


def test_the_newest_checkpoint_is_read_and_the_one_before_kept(tmp_path):
    path = _two_checkpoints(tmp_path)
    state, used, problems = load_latest(path)
    assert (int(state["step"]), used, problems) == (2, path, [])
    assert int(read_checkpoint(path.with_name("last.pt.previous"))["step"]) == 1


@pytest.mark.parametrize("damage", ["flip a payload byte", "truncate", "bad magic"])
def test_damage_is_named_and_the_previous_checkpoint_used(tmp_path, damage):
    path = _two_checkpoints(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "flip a payload byte":
        data[-20] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[0:1] = b"X"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=re.escape(str(path))):
        read_checkpoint(path)
    state, used, problems = load_latest(path)
    assert int(state["step"]) == 1 and used.name == "last.pt.previous"
    assert len(problems) == 1 and str(path) in str(problems[0])
    expected = "no SPCKPT1 header" if damage == "bad magic" else "checksum mismatch"
    assert expected in str(problems[0])


def test_both_damaged_is_one_error_naming_the_file(tmp_path):
    path = _two_checkpoints(tmp_path)
    for candidate in (path, path.with_name("last.pt.previous")):
        candidate.write_bytes(candidate.read_bytes()[:-1])
    with pytest.raises(CorruptCheckpointError, match=f"{path}: corrupt or truncated .*delete {path.parent} to start over"):
        load_latest(path)


def test_an_unreadable_checkpoint_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    path = _two_checkpoints(tmp_path)
    read_bytes = Path.read_bytes

    def refuse_last(self):
        if self == path:  # as chmod 000 would for a non-root user, or a failing disk
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuse_last)
    with pytest.raises(UnreadableCheckpointError) as raised:
        load_latest(path)  # last.pt.previous is intact, yet not silently used
    message = str(raised.value)
    assert str(path) in message and "Permission denied" in message and "\n" not in message


def test_a_stray_temporary_file_is_ignored(tmp_path):
    path = _two_checkpoints(tmp_path)
    # A crash inside atomic_write leaves its temporary file beside the intact checkpoint.
    (path.parent / ".last.pt.abc123.tmp").write_bytes(path.read_bytes()[:100])
    state, used, problems = load_latest(path)
    assert (int(state["step"]), used, problems) == (2, path, [])


def test_atomic_write_syncs_the_file_and_then_its_directory(tmp_path, monkeypatch):
    opened, synced = {}, []
    real_open, real_fsync = os.open, os.fsync

    def recording_open(name, flags, *args, **kwargs):
        fd = real_open(name, flags, *args, **kwargs)
        opened[fd] = Path(name)
        return fd

    def recording_fsync(fd):
        synced.append(opened.get(fd, "file"))
        real_fsync(fd)

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    target = tmp_path / "out" / "result.json"
    atomic.atomic_write_text(target, "{}")
    # mkstemp opens the temporary file through os.open too; the directory is synced after the rename.
    assert synced[-1] == target.parent and target.read_text() == "{}"
    assert len(synced) == 2


@pytest.mark.parametrize("refused", ["open", "fsync"])
def test_atomic_write_where_a_directory_cannot_be_synced(tmp_path, monkeypatch, refused):
    real_open, real_fsync = os.open, os.fsync
    directories = set()

    def open_but_not_directories(name, flags, *args, **kwargs):
        if Path(name).is_dir():
            if refused == "open":
                raise PermissionError(errno.EACCES, "directories cannot be opened here")
            fd = real_open(name, flags, *args, **kwargs)
            directories.add(fd)
            return fd
        return real_open(name, flags, *args, **kwargs)

    def fsync_but_not_directories(fd):
        if fd in directories:
            raise OSError(errno.EINVAL, "fsync on a directory is not supported")
        real_fsync(fd)

    monkeypatch.setattr(os, "open", open_but_not_directories)
    monkeypatch.setattr(os, "fsync", fsync_but_not_directories)
    atomic.atomic_write_text(tmp_path / "a.txt", "kept")
    assert (tmp_path / "a.txt").read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left behind
