"""Setting an earlier run aside: `--restart` (and `experiment`, for a run made under other settings) starts in an
empty directory without deleting anything."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional

from supportprune.errors import SupportpruneError

_TAKEN = (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR)


def move_aside(root: Path) -> Optional[Path]:
    """Rename the directory ``root`` to the first free ``root.1``, ``root.2``, ...; return where it went, or None
    when there is nothing to keep (no directory, or an empty one).

    One rename of the whole directory: atomic, so a kill leaves either the old run in ``root`` or in its new
    name, never half of it. A name that appears between the check and the rename is skipped, not overwritten
    (rename refuses a non-empty directory or a file; an empty directory holds nothing to lose)."""
    root = Path(os.path.abspath(root))
    if not root.is_dir() or not any(root.iterdir()):
        return None
    for number in range(1, 1_000_000):
        target = root.with_name(f"{root.name}.{number}")
        if os.path.lexists(target):
            continue
        try:
            os.rename(root, target)
            return target
        except OSError as error:
            if error.errno in _TAKEN:
                continue
            raise SupportpruneError(f"cannot move the earlier run {root} aside to {target}: {error.strerror}; "
                                    "move or delete it yourself") from None
    raise SupportpruneError(f"no free name to move {root} aside to; delete some of {root.name}.N")


def move_run_aside(root: Path, marker: str = "run.json") -> Optional[Path]:
    """``--restart``: ``move_aside`` for a directory this tool made (it holds ``marker``); never the working
    directory (or one it lies in), never a directory of other files: those are refused, and left as they are."""
    root = Path(os.path.abspath(root))
    if not root.is_dir() or not any(root.iterdir()):
        return None
    here = Path(os.getcwd())
    if here == root or root in here.parents:
        raise SupportpruneError(f"--restart would move {root} aside, the directory you are working in; run from "
                                "outside it, or choose another --out")
    if not (root / marker).is_file():
        raise SupportpruneError(f"--restart: {root} holds files but no supportprune run (no {marker}), so it is left "
                                "as it is; choose an empty or new --out")
    return move_aside(root)
