"""The exceptions the CLI turns into one line, and how an unexpected one is told apart from the user's own code's.

No traceback reaches a user: a ``SupportpruneError`` is shown as its message; any other exception is shown
as one line naming where it came from (the user's model code, or supportprune itself), and its full
traceback goes to a log file (and to the terminal with ``--debug``).
"""

from __future__ import annotations

import errno
import os
import sys
import sysconfig
import traceback
from pathlib import Path
from types import TracebackType


class SupportpruneError(Exception):
    """A problem with the user's input or environment, stated as what is wrong and how to fix it.

    The CLI prints ``str(error)`` on one line and exits non-zero; no traceback is shown.
    """

    exit_code = 1


class StopRequested(BaseException):
    """SIGINT or SIGTERM outside a training step: raised by the signal handler wherever the run is, so a stop is
    obeyed at once. A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on the way (a
    quantizer's, the user's code's) can swallow it or call it an error."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UserCodeError(SupportpruneError):
    """The user's own code (a model factory, a model's ``forward``) raised; the original exception is the
    ``__cause__`` and its traceback goes to the log."""


_PACKAGE_DIR = Path(__file__).resolve().parent
_LIBRARY_DIRS = tuple(
    str(Path(p).resolve()) for p in {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")} if p
)


_USER_DIRS: set[str] = set()


def register_user_code(directory: str | os.PathLike) -> None:
    """Count files under ``directory`` (or that file) as the user's code even where it is an installed package
    (the package or module a model factory was imported from)."""
    _USER_DIRS.add(os.path.realpath(directory))


def is_user_file(filename: str) -> bool:
    """Whether a source file belongs to the user: the package of their model factory, or anything that is
    neither supportprune, nor the standard library, nor an installed package."""
    if filename.startswith("<"):
        return False
    path = os.path.realpath(filename)
    if any(path == d or path.startswith(d + os.sep) for d in _USER_DIRS):
        return True
    if path.startswith(str(_PACKAGE_DIR) + os.sep):
        return False
    return not any(path.startswith(d + os.sep) for d in _LIBRARY_DIRS)


def user_frame(tb: TracebackType | None) -> traceback.FrameSummary | None:
    """The innermost frame of ``tb`` in the user's own code, if any."""
    frames = [frame for frame in traceback.extract_tb(tb) if is_user_file(frame.filename)]
    return frames[-1] if frames else None


def first_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else "")[:limit]


def describe_unexpected(error: BaseException, log_path: Path | None) -> str:
    """One line for an exception nobody anticipated: whose code raised it, what it said, where the
    traceback is, and what to do."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        # The machine's, not ours: say so, and that the run resumes (outputs are written atomically).
        target = f" writing {error.filename}" if error.filename else ""
        return (f"out of disk space{target}: free space (or pass --out on another disk) and run the same command "
                f"again; it resumes from the last checkpoint")
    where = user_frame(error.__traceback__)
    what = f"{type(error).__name__}: {first_line(error)}".rstrip(": ")
    log = f"full traceback in {log_path}" if log_path is not None else "run with --debug for the traceback"
    if where is not None:
        return (f"your code raised {what} (at {where.filename}:{where.lineno} in {where.name}); fix it or the inputs "
                f"it was given ({log})")
    return f"unexpected {what}; this is a bug in supportprune or an unsupported model: please report it with the log ({log})"


def write_traceback(error: BaseException, log_path: Path) -> Path | None:
    """Append ``error``'s full traceback (with its causes) to ``log_path``; None when that fails."""
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(f"$ {' '.join(sys.argv)}\n")
            handle.write("".join(traceback.format_exception(type(error), error, error.__traceback__)))
            handle.write("\n")
        return log_path
    except OSError:
        return None
