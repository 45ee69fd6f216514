"""Figures made one way: a ``matplotlib.figure.Figure`` on its own Agg canvas.

No pyplot: no backend is selected, no global figure registry grows, nothing needs
closing, and library code never changes the caller's matplotlib state. Make a
figure with :func:`new_figure`, draw on its axes, and save it with
:func:`write_figure` (or :meth:`theory.runs.RunFolder.save_figure`, which writes
atomically). In a notebook, a returned figure displays itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

__all__ = ["new_figure", "write_figure"]


def new_figure(
    nrows: int = 1,
    ncols: int = 1,
    *,
    figsize: tuple[float, float],
    sharex: bool = False,
    sharey: bool = False,
    squeeze: bool = True,
) -> tuple[Any, Any]:
    """``(figure, axes)`` like ``pyplot.subplots(nrows, ncols, ...)``, without pyplot:
    ``axes`` is one Axes for a 1 x 1 grid and an array otherwise (always a
    ``nrows x ncols`` array with ``squeeze=False``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows, ncols, sharex=sharex, sharey=sharey, squeeze=squeeze)
    return figure, axes


def write_figure(figure: Any, target: str | Path | IO[bytes], *, fmt: str = "png", dpi: int = 120) -> None:
    """Write ``figure`` to a path or binary handle in format ``fmt`` (tight bounding box)."""
    figure.savefig(target, format=fmt, dpi=dpi, bbox_inches="tight")
