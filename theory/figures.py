"""One figure style for the toolkit, on ``matplotlib.figure.Figure`` objects without pyplot.

No pyplot: no backend is selected, no global figure registry grows, nothing needs
closing, and library code never changes the caller's matplotlib state. Make a
figure with :func:`new_figure` (panel size and fonts of the style), draw on its
axes, and save it with :func:`write_figure` (or
:meth:`theory.runs.RunFolder.save_figure`, which writes atomically). In a
notebook, a returned figure displays itself.

The style:

* sizes and fonts: :data:`PANEL` inches per panel, :data:`FONT` points per role;
* one colour per matrix (:func:`matrix_color`: H, G, E, class, cross, within,
  diag, class+diag, K-FAC, ...; knockout names such as ``"A - class"`` take
  their component's colour);
* spectra that span decades are drawn as log-spectra (:func:`spectrum_panel`,
  :func:`log_spectrum_curve`): ``|lambda|`` on a log axis, the density per decade
  of ``|lambda|`` on a log axis; the null space (``|lambda| <= zero_tol``) is
  reported as a share in the panel's title instead of drawn as a spike, outliers
  are markers at their eigenvalues along the top of the panel;
* legends never cover data: :func:`legend_outside` (right of one panel) and
  :func:`figure_legend` (one legend below a grid of panels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "COLORS",
    "FONT",
    "PANEL",
    "LogSpectrum",
    "SpectrumShares",
    "figure_legend",
    "legend_outside",
    "log_limits",
    "log_spectrum_curve",
    "mark_zero_floor",
    "matrix_color",
    "new_figure",
    "outlier_markers",
    "plain_log_ticks",
    "point_mass_stems",
    "set_labels",
    "spectrum_panel",
    "spectrum_shares",
    "write_figure",
]

PANEL: tuple[float, float] = (4.0, 3.0)
"""Width and height of one panel, inches."""

FONT: dict[str, float] = {"title": 9.5, "suptitle": 11.0, "label": 9.0, "tick": 8.0, "legend": 8.0, "note": 8.0}
"""Font sizes in points per role."""

COLORS: dict[str, str] = {
    "A": "0.55",
    "hessian": "black",
    "G": "tab:blue",
    "E": "tab:red",
    "class": "tab:green",
    "cross": "tab:orange",
    "within": "tab:purple",
    "diag": "tab:brown",
    "class+diag": "tab:olive",
    "kfac": "tab:pink",
    "corrected": "tab:cyan",
    "features": "tab:gray",
}
"""One colour per matrix; :func:`matrix_color` resolves aliases and knockout names."""

_ALIASES = {"h": "hessian", "hessian": "hessian", "k-fac": "kfac", "kfac": "kfac", "corrected k-fac": "corrected"}


def matrix_color(name: str) -> str:
    """The colour of matrix ``name`` (``"H"``/``"hessian"``, ``"G"``, ``"class"``, ...);
    a knockout ``"A - class"`` or ``"P⊥ A P⊥ (class)"`` takes its component's colour,
    anything unknown the colour of ``A``."""
    key = name.strip()
    if key.startswith("A - "):
        key = key[4:]
    elif key.endswith(")") and "(" in key:
        key = key[key.rindex("(") + 1 : -1]
    key = _ALIASES.get(key.lower(), key)
    return COLORS.get(key, COLORS["A"])


def new_figure(
    nrows: int = 1,
    ncols: int = 1,
    *,
    figsize: tuple[float, float] | None = None,
    sharex: bool = False,
    sharey: bool = False,
    squeeze: bool = True,
    layout: str | None = None,
) -> tuple[Any, Any]:
    """``(figure, axes)`` like ``pyplot.subplots(nrows, ncols, ...)``, without pyplot:
    ``axes`` is one Axes for a 1 x 1 grid and an array otherwise (always a
    ``nrows x ncols`` array with ``squeeze=False``). ``figsize`` defaults to
    :data:`PANEL` per panel; titles, labels and ticks get the sizes of :data:`FONT`;
    ``layout="constrained"`` makes room for :func:`figure_legend` below the panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if figsize is None:
        figsize = (PANEL[0] * ncols, PANEL[1] * nrows)
    figure = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows, ncols, sharex=sharex, sharey=sharey, squeeze=squeeze)
    for ax in figure.axes:
        ax.title.set_fontsize(FONT["title"])
        ax.xaxis.label.set_fontsize(FONT["label"])
        ax.yaxis.label.set_fontsize(FONT["label"])
        ax.tick_params(which="both", labelsize=FONT["tick"])
    return figure, axes


def set_labels(ax: Any, xlabel: str, ylabel: str, title: str | None = None) -> None:
    """Axis labels (with units) and an optional title, in the style's fonts."""
    ax.set_xlabel(xlabel, fontsize=FONT["label"])
    ax.set_ylabel(ylabel, fontsize=FONT["label"])
    if title is not None:
        ax.set_title(title, fontsize=FONT["title"])


def _unique_handles(axes: Any) -> tuple[list[Any], list[str]]:
    handles, labels = [], []
    for ax in np.atleast_1d(axes).flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
    return handles, labels


def legend_outside(ax: Any, **kwargs: Any) -> Any:
    """The legend of ``ax`` to the right of its frame, where it covers no data."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=FONT["legend"],
                     frameon=False, **kwargs)


def figure_legend(fig: Any, axes: Any, ncols: int | None = None) -> Any:
    """One legend for all of ``axes`` (entries de-duplicated by label) below the panels
    (a figure of ``new_figure(..., layout="constrained")`` makes room for it)."""
    handles, labels = _unique_handles(axes)
    if not handles:
        return None
    return fig.legend(handles, labels, loc="outside lower center", ncols=ncols or min(len(labels), 4),
                      fontsize=FONT["legend"], frameon=False)


def plain_log_ticks(axis: Any) -> None:
    """Label the major and minor ticks of a log ``axis`` as plain numbers (``0.5``, ``2``,
    ``30``) instead of powers of ten: for axes spanning a decade or two, where the minor
    ticks carry the labels."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


def mark_zero_floor(ax: Any, floor: float, above: float) -> None:
    """Say on a log y axis that values drawn at ``floor`` are exact zeros (a log axis has
    no 0): a tick at ``floor`` labelled 0, a grey dotted line across the panel there, no
    other ticks below ``above`` (the smallest value drawn at its own height, or a tick
    under it) and a break mark ``//`` on the left spine between the two."""
    from matplotlib.ticker import FuncFormatter, Locator, LogFormatterSciNotation, LogLocator

    if not 0 < floor < above:
        raise ValueError(f"floor: expected 0 < floor < above = {above:g}, got {floor:g}")

    class Above(Locator):
        """The ticks of ``base`` at or above ``above``, and ``extra``."""

        def __init__(self, base: Any, extra: list[float]) -> None:
            self.base, self.extra = base, extra

        def set_axis(self, axis: Any) -> None:
            super().set_axis(axis)
            self.base.set_axis(axis)

        def tick_values(self, vmin: float, vmax: float) -> list[float]:
            return self.extra + [float(t) for t in self.base.tick_values(vmin, vmax) if t >= above * (1 - 1e-9)]

        def __call__(self) -> list[float]:
            return self.tick_values(*self.axis.get_view_interval())

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(Above(LogLocator(base=10.0), [floor]))
    ax.yaxis.set_minor_locator(Above(LogLocator(base=10.0, subs=np.arange(2, 10)), []))
    sci = LogFormatterSciNotation()
    sci.set_axis(ax.yaxis)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, i: "0" if math.isclose(v, floor, rel_tol=1e-6) else sci(v, i)))
    ax.axhline(floor, color="0.6", ls=":", lw=0.8, zorder=0)
    ax.annotate("//", (0.0, math.sqrt(floor * above)), xycoords=ax.get_yaxis_transform(), ha="center", va="center",
                fontsize=FONT["tick"], rotation=-30, backgroundcolor="white")


def log_limits(peak: float, decades: float = 5.0, headroom: float = 1.0) -> tuple[float, float]:
    """Limits of a log axis showing ``decades`` below ``peak`` and ``headroom`` decades
    above it (room for markers along the top)."""
    peak = peak if math.isfinite(peak) and peak > 0 else 1.0
    return peak * 10.0 ** (-decades), peak * 10.0**headroom


# ----------------------------------------------------------------------------- log-spectra


@dataclass(frozen=True)
class LogSpectrum:
    """What one log-spectrum panel shows, as numbers.

    ``null_share``: share of the spectrum at ``|lambda| <= zero_tol`` (reported, not
    drawn); ``negative_share``: share at ``lambda < -zero_tol`` (drawn dashed at
    ``|lambda|``); ``peak``: the largest density drawn (per decade); ``lowest`` /
    ``highest``: the range of ``|lambda|`` where a curve is above :data:`VISIBLE` times its
    peak, or where markers are (None when nothing is drawn);
    ``unresolved_below``: ``|lambda|`` below which the Lanczos nodes resolve nothing
    (None when resolved); ``text``: the summary line the panel's title carries.
    """

    null_share: float
    negative_share: float
    zero_tol: float
    peak: float
    lowest: float | None
    highest: float | None
    unresolved_below: float | None
    text: str


VISIBLE = 1e-4
"""A curve's density below this fraction of its peak does not widen the axes."""

MAX_WIDTH = 0.25
"""Widest drawing kernel of a log-spectrum, decades."""


def _run_spacing(y: np.ndarray, num_runs: int) -> np.ndarray:
    """Distance of each point of ``y`` to its ``num_runs``-th nearest other point."""
    order = np.argsort(y)
    ys = y[order]
    n = ys.size
    r = max(1, min(int(num_runs), n - 1))
    offsets = np.arange(-r, r + 1)
    offsets = offsets[offsets != 0]
    idx = np.arange(n)[:, None] + offsets[None, :]
    dist = np.where((idx >= 0) & (idx < n), np.abs(ys[np.clip(idx, 0, n - 1)] - ys[:, None]), np.inf)
    out = np.empty(n)
    out[order] = np.sort(dist, axis=1)[:, r - 1]
    return out


def merge_coincident(nodes: np.ndarray, weights: np.ndarray, rtol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``nodes`` with those that agree to ``rtol`` (relative) merged into one, their
    ``weights`` summed: one eigenvalue that several Lanczos runs (or one run's ghost
    copies) converged to, which would otherwise count as that many neighbours in
    :func:`_log_density`'s kernel widths (a comb where the runs exhaust a small bulk)."""
    order = np.argsort(nodes)
    nodes, weights = np.asarray(nodes, dtype=np.float64)[order], np.asarray(weights, dtype=np.float64)[order]
    if nodes.size < 2:
        return nodes, weights
    starts = np.flatnonzero(np.r_[True, np.diff(nodes) > rtol * np.maximum(np.abs(nodes[1:]), np.abs(nodes[:-1]))])
    return nodes[starts], np.add.reduceat(weights, starts)


def _log_density(values: np.ndarray, weights: np.ndarray, sigma: float, num_runs: int, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """``(y, sum_k w_k N(y; log10 |theta_k|, h_k^2))`` on a grid ``y = log10 |lambda|`` covering
    every kernel to four widths, with ``h_k = max(sigma, min(d_k, MAX_WIDTH))``, ``d_k`` the
    distance of node ``k`` to its ``num_runs``-th nearest node: one run's Gauss nodes
    resolve the measure only to their spacing, and ``num_runs`` pooled runs put about
    that many nodes within it, so no kernel is narrower than the nodes can support (no
    comb where they are sparse); no kernel is wider than :data:`MAX_WIDTH` decades
    either (an isolated node stays where it is)."""
    y = np.log10(values)
    spacing = _run_spacing(y, num_runs) if y.size > 1 else np.zeros(y.size)
    h = np.maximum(sigma, np.minimum(spacing, MAX_WIDTH))
    grid = np.linspace(float((y - 4 * h).min()), float((y + 4 * h).max()), num_points)
    z = (grid[:, None] - y[None, :]) / h[None, :]
    return grid, (np.exp(-0.5 * z * z) / (h * math.sqrt(2.0 * math.pi))[None, :]) @ weights


def _shares(near: str, zero_tol: float, null: float, negative: float) -> str:
    """The summary line of a log-spectrum: its share at zero and below zero."""
    text = f"{near} ($|\\lambda| \\leq$ {zero_tol:.1g}) {null:.1%}"
    return text + (f", $\\lambda<0$ {negative:.1%}" if negative > 0 else "")


def log_spectrum_curve(
    ax: Any,
    nodes: np.ndarray,
    weights: np.ndarray,
    *,
    sigma: float,
    num_runs: int = 1,
    weight: float = 1.0,
    zero_tol: float,
    point_mass: float | None = None,
    color: str = "black",
    label: str | None = None,
    fill: bool = False,
    lw: float = 1.4,
    ls: str = "-",
    num_points: int = 512,
) -> LogSpectrum:
    """Draw ``weight`` times the quadrature measure ``sum_k w_k delta(theta_k)`` as a
    density per decade of ``|lambda|`` on log axes: nodes ``theta > zero_tol`` in line
    style ``ls`` (solid; filled with ``fill``), ``theta < -zero_tol`` dashed at
    ``|theta|``; the nodes at ``|theta| <= zero_tol`` (the null space, unresolved from zero) are not drawn, their
    share is returned. ``sigma``: kernel width in decades (the density's own);
    ``num_runs``: Lanczos runs pooled in ``nodes``; ``point_mass``: the value of a
    zero-width spectrum (drawn as a vertical line unless it is zero). Nodes that agree to
    1e-6 are one eigenvalue (:func:`merge_coincident`)."""
    nodes = np.asarray(nodes, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64) * weight
    ax.set_xscale("log")
    ax.set_yscale("log")
    null = np.abs(nodes) <= zero_tol
    null_share, negative_share = float(weights[null].sum()), float(weights[nodes < -zero_tol].sum())
    peak, lo, hi = 0.0, None, None
    if point_mass is not None:
        share = float(weights.sum())
        if abs(point_mass) <= zero_tol:
            null_share, negative_share = share, 0.0
        else:
            ax.axvline(abs(point_mass), color=color, lw=2.0, ls="-" if point_mass > 0 else "--",
                       label=f"{label}: point mass {share:.3g}" if label else None)
            negative_share = share if point_mass < 0 else 0.0
            lo = hi = abs(point_mass)
    else:
        for sign, style in ((1.0, ls), (-1.0, "--")):
            keep = sign * nodes > zero_tol
            if not keep.any():
                continue
            v, w = merge_coincident(np.abs(nodes[keep]), weights[keep])
            grid, dens = _log_density(v, w, sigma, num_runs, num_points)
            x = 10.0**grid
            name = None if label is None else (label if sign > 0 else f"{label}, $\\lambda < 0$ (at $|\\lambda|$)")
            if fill and sign > 0:
                ax.fill_between(x, dens, 1e-300, color=color, alpha=0.35, lw=0, label=name)
            else:
                ax.plot(x, dens, color=color, lw=lw, ls=style, label=name)
            peak = max(peak, float(dens.max()))
            seen = x[dens >= VISIBLE * dens.max()]
            lo = float(seen[0]) if lo is None else min(lo, float(seen[0]))
            hi = float(seen[-1]) if hi is None else max(hi, float(seen[-1]))
    return LogSpectrum(null_share, negative_share, float(zero_tol), peak, lo, hi, None,
                       _shares("null space", zero_tol, null_share, negative_share))


def outlier_markers(
    ax: Any, values: np.ndarray, *, color: str, label: str | None = None, zero_tol: float = 0.0, y: float = 0.93,
    annotate: str = "largest", marker: str = "v",
) -> Any:
    """Markers at ``|lambda_i|`` (x, data units) along the top of a panel (y in axes
    units), filled for ``lambda > 0``, open for ``lambda < 0``; values at ``|lambda| <=
    zero_tol`` are left out (they belong to the null space); ``annotate``: label the
    ``"largest"`` with its value, ``"all"`` of them, or ``"none"``. Returns the filled
    markers' line (None when nothing is drawn)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.abs(values) > zero_tol]
    if not values.size:
        return None
    transform = ax.get_xaxis_transform()
    pos, neg = values[values > 0], values[values < 0]
    line = ax.plot(pos, np.full(pos.size, y), ls="none", marker=marker, color=color, ms=6, transform=transform,
                   label=label, clip_on=False)[0]
    if neg.size:
        ax.plot(-neg, np.full(neg.size, y), ls="none", marker=marker, mfc="none", color=color, ms=6,
                transform=transform, label=None if label is None else f"{label}, $\\lambda<0$", clip_on=False)
    order = np.argsort(-np.abs(values))
    shown = {"largest": order[:1], "all": order, "none": order[:0]}[annotate]
    for i in shown:
        text = f"$\\lambda_1$ = {values[i]:.3g}" if annotate == "largest" else f"{values[i]:.3g}"
        # the largest is the rightmost marker: its label ends under it, inside the panel
        offset, ha, va = ((4, -11), "right", "top") if annotate == "largest" else ((6, 0), "left", "center")
        ax.annotate(text, (abs(values[i]), y), xycoords=transform, xytext=offset, textcoords="offset points",
                    ha=ha, va=va, fontsize=FONT["note"], color=color)
    return line


def point_mass_stems(ax: Any, values: np.ndarray, weight: float, *, color: str, label: str | None = None,
                     ylabel: str = "weight of each outlier (share of eigenvalues)") -> Any:
    """Point masses of ``weight`` each at ``values`` as stems of height ``weight`` on a
    twin y axis (right, labelled ``ylabel``, the limits and scale of ``ax``'s): a point
    mass has no density, so its height is read on an axis of its own; each stem is
    labelled with its value. Returns the twin axes."""
    values = np.asarray(values, dtype=np.float64)
    twin = ax.twinx()
    twin.set_yscale(ax.get_yscale())
    twin.set_ylim(ax.get_ylim())
    twin.vlines(values, ax.get_ylim()[0], weight, color=color, lw=1.5)
    twin.plot(values, np.full(values.size, weight), ls="none", marker="o", color=color, ms=5, label=label)
    for v in values:
        twin.annotate(f"{v:.3g}", (v, weight), xytext=(0, 5), textcoords="offset points", ha="center", va="bottom",
                      fontsize=FONT["note"], color=color)
    twin.set_ylabel(ylabel, fontsize=FONT["label"])
    twin.tick_params(which="both", labelsize=FONT["tick"])
    return twin


def spectrum_panel(
    ax: Any,
    spectrum: Any,
    *,
    label: str | None = None,
    color: str | None = None,
    zero_tol: float | None = None,
    zero_rtol: float = 1e-5,
    title: bool = True,
) -> LogSpectrum:
    """Draw a :class:`theory.spectrum.Spectrum` as a log-spectrum on ``ax``.

    The deflated bulk, ``bulk_weight`` times its quadrature measure, as a density per
    decade of ``|lambda|`` (:func:`log_spectrum_curve`); the outliers as markers at
    their eigenvalues (:func:`outlier_markers`, point masses ``1/p`` each); the null
    space, every node and outlier with ``|lambda| <= zero_tol`` (default ``max(eps,
    zero_rtol * max|lambda|)``: below any resolution a Lanczos run of a few hundred
    steps reaches, about ``width / steps^2``), reported as a share in the title (with
    ``title``), not drawn; where the nodes do not resolve the axis towards zero
    (``log_density.resolution`` warns), ``zero_tol`` is at least twice the resolved
    floor and the share reads "null space or unresolved" (the nodes next to zero carry
    the null space's mass at the floor, not at zero); a zero-width bulk
    (``point_mass``) as a line or, at zero, as null space."""
    name = spectrum.name or "A"
    label = label or name
    color = color or matrix_color(name)
    shares = spectrum_shares(spectrum, zero_tol=zero_tol, zero_rtol=zero_rtol)
    zero_tol = shares.zero_tol
    log = spectrum.log_density
    shown = log_spectrum_curve(
        ax, spectrum.density.nodes, spectrum.density.weights, sigma=log.sigma, num_runs=log.num_repeats,
        weight=spectrum.bulk_weight, zero_tol=zero_tol, point_mass=spectrum.point_mass, color=color, label=f"{label} bulk",
    )
    outliers = np.asarray(spectrum.outliers, dtype=np.float64)
    outlier_markers(ax, outliers, color=color, zero_tol=zero_tol, label=f"{label}: top {outliers.size} ($1/p$ each)")
    near = "null space" if shares.unresolved_below is None else "null space or unresolved"
    text = _shares(near, zero_tol, shares.null_share, shares.negative_share)
    if spectrum.point_mass is not None and abs(spectrum.point_mass) > zero_tol:
        text += f", bulk a point mass at {spectrum.point_mass:.3g}"
    values = np.abs(outliers[np.abs(outliers) > zero_tol])
    lows = [v for v in (shown.lowest, float(values.min()) if values.size else None) if v is not None]
    highs = [v for v in (shown.highest, float(values.max()) if values.size else None) if v is not None]
    if not lows:
        ax.text(0.5, 0.5, f"the whole spectrum lies at $|\\lambda| \\leq$ {zero_tol:.1g}", transform=ax.transAxes,
                ha="center", va="center", fontsize=FONT["note"], color=color)
    if title:
        ax.set_title(f"{label}\n{text}", fontsize=FONT["title"])
    return LogSpectrum(shares.null_share, shares.negative_share, zero_tol, shown.peak, min(lows) if lows else None,
                       max(highs) if highs else None, shares.unresolved_below, text)


@dataclass(frozen=True)
class SpectrumShares:
    """Where the spectrum of a :class:`theory.spectrum.Spectrum` lies, in shares of ``p``.

    ``null_share``: at ``|lambda| <= zero_tol`` (bulk nodes times ``bulk_weight`` plus
    ``1/p`` per outlier there); ``negative_share``: at ``lambda < -zero_tol``;
    ``bulk_range``: the ``quantiles`` of the bulk's measure outside the null space
    (the bulk itself, not the estimator's bounds; None when all of it is null);
    ``unresolved_below``: the Lanczos nodes' floor when they do not resolve the axis
    towards zero (then ``zero_tol >= 2 floor``), else None.
    """

    zero_tol: float
    null_share: float
    negative_share: float
    bulk_range: tuple[float, float] | None
    unresolved_below: float | None


def spectrum_shares(
    spectrum: Any, *, zero_tol: float | None = None, zero_rtol: float = 1e-5, quantiles: tuple[float, float] = (0.01, 0.99),
) -> SpectrumShares:
    """The shares a log-spectrum panel reports (:func:`spectrum_panel`, whose docstring
    gives the default ``zero_tol``), without drawing."""
    lin, log = spectrum.density, spectrum.log_density
    outliers = np.asarray(spectrum.outliers, dtype=np.float64)
    scale = max(float(np.max(np.abs(outliers), initial=0.0)), abs(lin.bounds.lower), abs(lin.bounds.upper))
    res = log.resolution
    unresolved = res is not None and res.warning is not None and spectrum.point_mass is None
    if zero_tol is None:
        zero_tol = max(float(log.eps or 0.0), zero_rtol * scale, 2.0 * res.floor if unresolved else 0.0)
    if spectrum.point_mass is not None:
        nodes, weights = np.array([float(spectrum.point_mass)]), np.array([1.0])
    else:
        nodes, weights = np.asarray(lin.nodes, dtype=np.float64), np.asarray(lin.weights, dtype=np.float64)
    weights = weights / weights.sum() * spectrum.bulk_weight
    null = np.abs(nodes) <= zero_tol
    null_share = float(weights[null].sum()) + float(np.sum(np.abs(outliers) <= zero_tol)) * spectrum.outlier_weight
    negative = float(weights[nodes < -zero_tol].sum()) + float(np.sum(outliers < -zero_tol)) * spectrum.outlier_weight
    bulk_range = None
    if (~null).any():
        order = np.argsort(nodes[~null])
        v, w = nodes[~null][order], weights[~null][order]
        cdf = (np.cumsum(w) - 0.5 * w) / w.sum()
        bulk_range = (float(np.interp(quantiles[0], cdf, v)), float(np.interp(quantiles[1], cdf, v)))
    return SpectrumShares(float(zero_tol), null_share, negative, bulk_range, float(res.floor) if unresolved else None)


def write_figure(figure: Any, target: str | Path | IO[bytes], *, fmt: str = "png", dpi: int = 120) -> None:
    """Write ``figure`` to a path or binary handle in format ``fmt`` (tight bounding box)."""
    figure.savefig(target, format=fmt, dpi=dpi, bbox_inches="tight")
