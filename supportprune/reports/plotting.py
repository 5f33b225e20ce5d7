"""Whether plots can be drawn: matplotlib is a dependency, but a report without plots beats no report,
as long as the report says the plots were skipped and why."""

from __future__ import annotations

import io
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


def pyplot():
    """matplotlib's pyplot on the Agg backend: figures go to files, never to a display (imported when drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(figure)
    return buffer.getvalue()
