"""Whether plots can be drawn: matplotlib is a dependency, but a report without plots beats no report,
as long as the report says the plots were skipped and why."""

from __future__ import annotations

import sys


def plots_unavailable() -> str | None:
    """Why no plots can be drawn (matplotlib does not import), or None when they can."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        return f"matplotlib cannot be imported ({error})"
    return None


def skipped_plots_note(reason: str) -> str:
    """The report's line for skipped plots; also printed as a warning."""
    note = f"Plots skipped: {reason}; install matplotlib (`pip install matplotlib`) and rerun to draw them."
    print(f"warning: {note}", file=sys.stderr)
    return note
