"""Quantitative spectral attribution by knockouts (Papyan 2020, Sec. 4 and 8;
the mathematics and the verdict rule: ``docs/attribution.md``).

For an operator ``A`` and named additive components ``B`` (the parts of a
decomposition, or any operators):

* knockouts: subtraction ``A - B`` and projection ``(I - Q_B Q_B^T) A (I - Q_B Q_B^T)``
  with ``Q_B`` an orthonormal basis of ``range(B)`` (low-rank components only), for
  each component and for combined ones (default ``class+diag``: for softmax
  models ``range(class) = range(diag)``, so the knockout of the class-mean span is
  ``class + diag``);
* a bulk edge (:func:`estimate_bulk_edge`) and the eigenvalues separated from the
  bulk: a low-rank knockout is judged against the threshold of ``A`` (it moves
  the bulk by nothing, Weyl and Cauchy interlacing), a knockout that removes a
  full-rank part against its own bulk edge (``A - within`` has its bulk at zero);
* features of ``A``, defined in order: the ``outliers`` are the separated
  eigenvalues whose eigenvectors lie mostly (``overlap_threshold``) in the
  class-mean span, the ``bump`` those of the rest lying mostly in the cross
  range after the class span is removed from it, and the ``bulk`` the rest of
  the spectrum;
* the verdict is decided by subtraction (as the paper does): a feature is
  attributable to the smallest knockout ``B`` whose subtraction makes it vanish
  while every other feature stays; projections are reported as evidence only.
  Each feature also gets continuous shares: the Rayleigh quotients
  ``sum_k u_k^T B u_k`` of its eigenvectors for every component, normalised to
  sum to one (bulk: the traces of the parts on the complement of the separated
  eigenvectors);
* the common mode (the direction of the sum of the class means, weak in a
  trained model) is reported separately: how much of it lies in the outlier
  eigenspace;
* only eigenvalues above the bulk edge are counted: a bump inside or below the
  main bulk (its side is not fixed) shows in the log-density figure, but its
  verdict reads ``absent`` (nothing above the edge);
* certificates on the computed numbers: for ``B >= 0`` of rank ``r`` (Weyl) and
  for the projection of rank ``r`` (Cauchy interlacing),
  ``lambda_{k+r}(A) <= lambda_k(K) <= lambda_k(A)``, hence
  ``n_sep(A) - r <= n_sep(K) <= n_sep(A)`` (counts at the threshold of ``A``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import textwrap
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import torch

from .checks import check_real
from .progress import progress
from .figures import (
    COLORS,
    FONT,
    LogSpectrum,
    figure_legend,
    log_limits,
    log_spectrum_curve,
    matrix_color,
    new_figure,
    outlier_markers,
    set_labels,
)
from .operators import SymmetricOperator, as_operator, check_symmetric, orthonormal_basis
from .runs import RunFolder
from .spectral import (
    DensitySettings,
    Eigenpairs,
    SpectralDensity,
    bulk_density,
    quadrature,
    spectral_densities,
    top_eigenpairs,
)
from .structure import CrossClassDecomposition, FeatureDecomposition, LowRankPart, WithinPart

__all__ = [
    "Component",
    "as_component",
    "combine_components",
    "subtraction_knockout",
    "projection_knockout",
    "BulkEdge",
    "estimate_bulk_edge",
    "Certificate",
    "KnockoutSpectrum",
    "FeatureVerdict",
    "CommonMode",
    "AttributionReport",
    "attribute",
    "attribute_decomposition",
    "KnockoutPanel",
    "knockout_caption",
    "knockout_panel",
    "knockout_limits",
    "reference_curve",
]


# --------------------------------------------------------------------------- components
@dataclass(frozen=True)
class Component:
    """A named additive part ``B`` of ``A``.

    ``basis``: orthonormal ``p x r`` basis of ``range(B)`` when ``B`` has low rank
    (enables the projection knockout and the overlaps), else None. ``positive``:
    ``B`` is positive semidefinite (the certificates apply). ``trace``: ``Tr B`` when
    known (else the bulk shares estimate it). ``parts``: the names of the
    components a combined knockout sums (empty for a single component).
    """

    name: str
    rank: int | None
    positive: bool
    operator: SymmetricOperator = field(metadata={"json": False}, repr=False)
    basis: torch.Tensor | None = field(default=None, metadata={"json": False}, repr=False)
    trace: float | None = None
    parts: tuple[str, ...] = ()


def as_component(name: str, obj: Any) -> Component:
    """A :class:`Component` from a :class:`~theory.structure.LowRankPart` (range from
    the Gram trick), a :class:`~theory.structure.WithinPart` (positive, full rank),
    a ``Component``, or any operator (not assumed positive, no range)."""
    if isinstance(obj, Component):
        return obj
    if isinstance(obj, LowRankPart):
        return Component(name, obj.rank, True, obj.as_operator(), obj.range_basis(), obj.trace)
    if isinstance(obj, WithinPart):
        return Component(name, None, True, obj.as_operator(), None, obj.trace)
    try:
        op = as_operator(obj)
    except (TypeError, ValueError) as err:
        raise TypeError(f"components[{name!r}]: expected a LowRankPart, WithinPart, Component or operator ({err})") from err
    return Component(name, None, False, op, None)


def _span_rtol(dtype: torch.dtype) -> float:
    """Relative singular-value cut of a span: ``sqrt(eps)`` of the dtype (the ranges of
    class and diag agree to round-off, which float32 resolves only to about ``1e-6``)."""
    return math.sqrt(float(torch.finfo(dtype).eps))


def combine_components(name: str, parts: Sequence[Component]) -> Component:
    """``B_1 + ... + B_m`` as one component (a combined knockout): its range is the span
    of the parts' ranges (rank-revealing SVD; low rank only when every part is), it is
    positive when every part is, and its trace is the sum of theirs."""
    if len(parts) < 2:
        raise ValueError(f"parts: a combined component needs at least two parts, got {len(parts)}")
    op = parts[0].operator
    for c in parts[1:]:
        op = op + c.operator
    basis, rank = None, None
    if all(c.basis is not None for c in parts):
        stacked = torch.cat([c.basis for c in parts], dim=1)
        basis = orthonormal_basis(stacked, rtol=_span_rtol(stacked.dtype))
        rank = int(basis.shape[1])
    traces = [c.trace for c in parts]
    trace = None if any(t is None for t in traces) else float(sum(traces))
    return Component(name, rank, all(c.positive for c in parts), op, basis, trace, tuple(c.name for c in parts))


def subtraction_knockout(A: Any, component: Any) -> SymmetricOperator:
    """``A - B`` as an operator."""
    comp = as_component("component", component)
    return as_operator(A) - comp.operator


def projection_knockout(A: Any, component: Any) -> SymmetricOperator:
    """``(I - Q Q^T) A (I - Q Q^T)`` with ``Q`` an orthonormal basis of ``range(B)``."""
    comp = as_component("component", component)
    if comp.basis is None:
        raise ValueError(f"component: {comp.name!r} has no low-rank range basis; the projection knockout needs one")
    A = as_operator(A)
    return A.project_out(comp.basis.to(dtype=A.dtype, device=A.device), orthonormalize=False)


# --------------------------------------------------------------------------- bulk edge
@dataclass(frozen=True)
class BulkEdge:
    """Upper edge of the bulk by square-root extrapolation of its upper quantiles.

    ``x_j = edge - spacing * j^(2/3)`` is fitted to the ``j``-th largest bulk
    eigenvalue for ``j = 1 .. J``; ``threshold = edge + margin * spacing``;
    ``num_separated`` eigenvalues lie above it (``saturated``: all that were
    computed did, so there may be more).
    """

    edge: float
    spacing: float
    threshold: float
    margin: float
    num_separated: int
    saturated: bool
    fit_rms: float
    fit_counts: np.ndarray
    fit_values: np.ndarray


def _bulk_quantiles(eigenvalues: np.ndarray, size: int, bulk: SpectralDensity | None, counts: np.ndarray) -> np.ndarray:
    """``x`` with ``#{lambda_i > x} = t`` for each count ``t``: the ``t``-th computed
    eigenvalue when ``t <= k``, else from the quadrature of the deflated operator
    (``#{lambda > x} = k + (p - k) sum_{nodes > x} w``), interpolated at mid-steps."""
    k = eigenvalues.size
    out = np.empty(counts.size)
    exact = counts <= k
    out[exact] = eigenvalues[counts[exact] - 1]
    if (~exact).any():
        order = np.argsort(-bulk.nodes)
        nodes, w = bulk.nodes[order], bulk.weights[order] / bulk.weights.sum()
        mid = k + (size - k) * (np.cumsum(w) - 0.5 * w)
        out[~exact] = np.interp(counts[~exact], mid, nodes)
    return out


def estimate_bulk_edge(
    eigenvalues: np.ndarray,
    size: int,
    *,
    bulk: SpectralDensity | None = None,
    margin: float = 2.0,
    fit_fraction: float = 0.05,
    min_points: int = 8,
) -> BulkEdge:
    """Bulk edge of a spectrum from its top ``k`` eigenvalues (descending) and,
    optionally, the density of the operator deflated by them.

    Estimator: a bulk with a soft (square-root) edge, ``rho(x) ~ sqrt(edge - x)``,
    as every sample-covariance-like bulk has (Marchenko-Pastur and its
    deformations), has counting function ``#{lambda > x} ~ b (edge - x)^(3/2)``, so
    its ``j``-th largest eigenvalue is ``x_j ~ edge - spacing j^(2/3)`` with
    ``spacing = b^(-2/3)``, the typical gap at the edge (about three Tracy-Widom
    scales). Given a candidate number ``n`` of separated eigenvalues, the bulk
    quantiles ``x_j = lambda_{n+j}`` for ``j = 1 .. J``, ``J = max(min_points,
    fit_fraction (p - n))`` (from the computed eigenvalues, then from the deflated
    quadrature), are fitted by least squares in ``(edge, spacing)``; the count
    above ``edge + margin * spacing`` gives the next ``n``. Starting from ``n = k``
    (every computed eigenvalue removed, which biases the edge low) the count
    decreases to the largest self-consistent ``n``. The fit uses many bulk
    eigenvalues, so a single large one cannot move it, and the margin keeps
    Tracy-Widom fluctuations of the top bulk eigenvalue (tail beyond about
    ``5.6`` scales) from counting as outliers.
    """
    vals = np.sort(np.asarray(eigenvalues, dtype=np.float64).reshape(-1))[::-1]
    k, p = vals.size, int(size)
    if k < 1 or p <= k:
        raise ValueError(f"eigenvalues: expected 1 <= k < size = {p} top eigenvalues, got k = {k}")
    if not (0 < fit_fraction < 1):
        raise ValueError(f"fit_fraction: expected a number in (0, 1), got {fit_fraction}")
    if not margin >= 0:
        raise ValueError(f"margin: expected a number >= 0, got {margin}")

    def fit(n: int):
        J = max(int(min_points), int(round(fit_fraction * (p - n))))
        J = min(J, p - n) if bulk is not None else min(J, k - n)
        if J < 3:
            raise ValueError(
                f"eigenvalues: too few bulk values to fit the edge (n = {n} separated of k = {k} computed); "
                "compute more eigenvalues or pass bulk="
            )
        j = np.arange(1, J + 1)
        x = _bulk_quantiles(vals, p, bulk, n + j)
        X = np.stack([np.ones(J), -(j ** (2.0 / 3.0))], axis=1)
        (edge, spacing), *_ = np.linalg.lstsq(X, x, rcond=None)
        spacing = max(float(spacing), 0.0)
        rms = float(np.sqrt(np.mean((X @ np.array([edge, spacing]) - x) ** 2)))
        return float(edge), spacing, rms, j, x

    n = k if bulk is not None else max(k - min_points, 0)
    seen: set[int] = set()
    while True:
        edge, spacing, rms, j, x = fit(n)
        threshold = edge + margin * spacing
        count = int(np.sum(vals > threshold))
        if count == n or count in seen:
            n = min(n, count)
            break
        seen.add(n)
        n = count if bulk is not None else min(count, max(k - min_points, 0))
    edge, spacing, rms, j, x = fit(n)
    threshold = edge + margin * spacing
    n = int(np.sum(vals > threshold))
    return BulkEdge(edge, spacing, threshold, float(margin), n, n >= k, rms, j, x)


# --------------------------------------------------------------------------- report records
@dataclass(frozen=True)
class Certificate:
    """Weyl (subtraction of ``B >= 0``) or Cauchy interlacing (projection) checked on the
    computed eigenvalues ``theta``: ``theta_k(K) <= theta_k(A)`` and, for rank ``r``,
    ``theta_{k+r}(A) <= theta_k(K)``, each up to ``tolerance`` (residuals plus
    round-off); and ``n_sep(A) - r <= n_sep(K) <= n_sep(A)``, checked only when neither
    count is saturated (``counts_checked``; a saturated count is a lower bound, so a
    failed count test would be an artefact of too few computed eigenvalues)."""

    kind: str
    rank: int | None
    upper_violation: float
    lower_violation: float | None
    tolerance: float
    count_bounds: tuple[int, int]
    holds: bool
    counts_checked: bool = True

    def describe(self) -> str:
        """``holds``, ``VIOLATED`` or, with saturated counts, the eigenvalue bounds' result
        and that the counts were not checked."""
        if self.counts_checked:
            return "holds" if self.holds else "VIOLATED"
        return ("eigenvalue bounds hold" if self.holds else "VIOLATED (eigenvalue bounds)") + "; counts not checked: lower bounds"


@dataclass(frozen=True)
class KnockoutSpectrum:
    """Spectrum summary of ``A`` (``kind="original"``) or one knockout of it.

    ``eigenvalues`` (top, descending) with ``residuals``; ``threshold``: that of ``A``,
    or for the subtraction of a full-rank part ``max(own edge threshold, zero_tol)``
    with the own ``edge`` (else None); ``num_separated`` above ``threshold``;
    ``bulk_mass``: spectral mass in ``(zero_tol, threshold]``; ``retained[f]``:
    ``|U_sep^T U_f|_F^2 / |f|``, the share of feature ``f``'s eigenvectors inside
    this operator's separated eigenspace (1: stays, 0: gone).
    """

    name: str
    kind: str
    component: str | None
    eigenvalues: np.ndarray
    residuals: np.ndarray
    threshold: float
    edge: BulkEdge | None
    num_separated: int
    saturated: bool
    bulk_mass: float
    retained: dict[str, float]
    certificate: Certificate | None
    density: SpectralDensity
    log_density: SpectralDensity
    eigenvectors: torch.Tensor = field(metadata={"json": False}, repr=False)


@dataclass(frozen=True)
class FeatureVerdict:
    """One spectral feature of ``A`` and the component it is attributable to.

    ``verdict`` is ``"attributable"`` (``component`` names the smallest knockout,
    single or combined such as ``"class+diag"``, whose subtraction removes it while
    the rest stays), ``"absent"`` (the feature is not in the spectrum) or ``"not
    attributable"`` (no subtraction, or several, remove it alone); ``evidence``
    says why, projections included. ``shares[B]``: the normalised Rayleigh share
    of component ``B`` in the feature (``sum_k u_k^T B u_k / sum_B'(...)`` over its
    eigenvectors ``u_k``; bulk: traces on the complement of the separated
    eigenvectors); ``overlap``: the mean overlap of its eigenvectors with the
    range that defines it (after earlier features' ranges are removed).
    """

    feature: str
    defined_by: str | None
    size: int
    eigenvalues: np.ndarray
    verdict: str
    component: str | None
    vanishes_under: list[str]
    stays_under: list[str]
    evidence: str
    shares: dict[str, float]
    overlap: float


@dataclass(frozen=True)
class CommonMode:
    """The common mode ``u = m / |m|``, ``m`` the weighted sum of the class means
    (three-index vectors: ``sum_c P_c v_c = - sum_i p_{i,y_i} g_{i,y_i}``, tied to the
    total gradient that stationarity drives to zero; features: the global mean).

    ``rayleigh = u^T A u``; ``shares``: normalised ``u^T B u`` per component;
    ``in_outliers = |U_out^T u|^2`` and ``in_separated = |U_sep^T u|^2`` (shares of
    ``u`` in the outlier and in the separated eigenspace); ``separated``:
    ``in_outliers >= overlap_threshold`` (the common mode is one of the outliers; a
    trained model often has only the other ``C - 1``).
    """

    norm: float
    rayleigh: float
    shares: dict[str, float]
    in_outliers: float
    in_separated: float
    separated: bool


@dataclass(frozen=True)
class AttributionReport:
    """Everything :func:`attribute` measured; ``spectra[0]`` is ``A`` itself.

    ``components``: rank (None: full) of every component and combined knockout;
    ``overlaps[i, j] = |Q_j^T u_i|^2``: share of ``A``'s ``i``-th top eigenvector in
    the range of low-rank component ``overlap_components[j]``;
    ``feature_overlaps[f][i]``: the same for the range defining feature ``f`` (earlier
    features' ranges removed); ``common_mode``: see :class:`CommonMode` (None when
    not given).
    """

    size: int
    components: dict[str, int | None]
    edge: BulkEdge
    eigenvalues: np.ndarray
    overlaps: np.ndarray
    overlap_components: list[str]
    feature_overlaps: dict[str, np.ndarray]
    spectra: list[KnockoutSpectrum]
    features: list[FeatureVerdict]
    common_mode: CommonMode | None
    settings: dict[str, Any]

    @property
    def zero_tol(self) -> float:
        """The null-space tolerance of the attribution's spectra (0 when none was set)."""
        return float(self.settings.get("zero_tol") or 0.0)

    def verdict(self, feature: str) -> FeatureVerdict:
        for f in self.features:
            if f.feature == feature:
                return f
        raise KeyError(f"feature: no feature named {feature!r} (have {[f.feature for f in self.features]})")

    def summary(self) -> str:
        """A short Markdown account: edge, counts per knockout (own threshold marked
        ``*``), certificates, verdicts with shares, the common mode."""
        e = self.edge
        lines = [
            "# Spectral attribution",
            "",
            f"Bulk edge {e.edge:.6g} (spacing {e.spacing:.3g}); eigenvalues above {e.threshold:.6g} "
            f"(edge + {e.margin:g} spacings) count as separated: {e.num_separated}"
            + (" (all computed eigenvalues; raise num_top)" if e.saturated else "") + ". "
            "Verdicts are decided by subtraction; projections are evidence. A knockout removing a full-rank "
            "part is judged against its own bulk edge (threshold marked *).",
            "",
            "| operator | threshold | separated | bulk mass | " + " | ".join(f"retained {f.feature}" for f in self.features if f.feature != "bulk") + " | certificate |",
            "|---|---|---|---|" + "---|" * sum(f.feature != "bulk" for f in self.features) + "---|",
        ]
        for s in self.spectra:
            cert = "-" if s.certificate is None else s.certificate.describe()
            ret = " | ".join(f"{s.retained.get(f.feature, float('nan')):.2f}" for f in self.features if f.feature != "bulk")
            own = "*" if s.edge is not None else ""
            lines.append(f"| {s.name} | {s.threshold:.4g}{own} | {s.num_separated}{'+' if s.saturated else ''} | {s.bulk_mass:.3f} | {ret} | {cert} |")
        names = [n for n, r in self.components.items() if "+" not in n]
        lines += ["", f"| feature | size | verdict | component | shares ({' / '.join(names)}) | evidence |", "|---|---|---|---|---|---|"]
        for f in self.features:
            shares = " / ".join(f"{f.shares.get(n, float('nan')):.2f}" for n in names)
            lines.append(f"| {f.feature} | {f.size} | {f.verdict} | {f.component or '-'} | {shares} | {f.evidence} |")
        m = self.common_mode
        if m is not None:
            lines += ["", (f"Common mode (sum of the class means): Rayleigh quotient {m.rayleigh:.4g} against the threshold "
                           f"{e.threshold:.4g}; {m.in_outliers:.2f} of it lies in the outlier eigenspace and {m.in_separated:.2f} in "
                           f"the separated one: {'one of the outliers' if m.separated else 'not among the outliers'}.")]
        return "\n".join(lines) + "\n"

    def figure(self, columns: int = 3):
        """One log-spectrum per operator, ``A`` first, then every knockout, on shared axes
        (Papyan 2020, Fig. 5 style), each panel drawn by :func:`knockout_panel`: the
        spectrum of ``A`` shaded grey, the knockout's over it in its component's colour,
        ``A``'s features as markers at their eigenvalues, the null space a share in the
        title; each title says in words what the knockout removes."""
        n = len(self.spectra)
        cols = min(columns, n)
        rows = math.ceil(n / cols)
        fig, axes = new_figure(rows, cols, sharex=True, sharey=True, squeeze=False, layout="constrained",
                               figsize=(4.2 * cols, 3.1 * rows + 0.6))
        drawn = [knockout_panel(ax, self, s) for ax, s in zip(axes.flat, self.spectra)]
        knockout_limits(axes[0, 0], drawn)
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        figure_legend(fig, axes, ncols=3)
        fig.suptitle("Knockouts of A: what each subtraction or projection removes from its spectrum",
                     fontsize=FONT["suptitle"])
        return fig

    def save(self, out: str | RunFolder, prefix: str = "attribution") -> RunFolder:
        """Write ``<prefix>.json``, ``<prefix>.md`` and ``<prefix>.png`` atomically."""
        folder = out if isinstance(out, RunFolder) else RunFolder(out)
        folder.write_json(f"{prefix}.json", self)
        folder.write_text(f"{prefix}.md", self.summary())
        folder.save_figure(f"{prefix}.png", self.figure())
        return folder


# --------------------------------------------------------------------------- knockout panels
@dataclass(frozen=True)
class KnockoutPanel:
    """What :func:`knockout_panel` drew: the log-spectra of ``A`` and of the knockout
    (:class:`theory.figures.LogSpectrum`, the knockout's last) and the largest ``|lambda|``
    of a marker."""

    curves: tuple[LogSpectrum, ...]
    largest: float


def knockout_caption(report: AttributionReport, s: KnockoutSpectrum, symbol: str = "A") -> str:
    """The first title line of a knockout panel, in words: for ``A`` how many eigenvalues
    of each feature it separates, for a knockout which of ``A``'s features vanish under it
    and which stay (``symbol`` names ``A``, e.g. ``"G"``)."""
    present = [f for f in report.features if f.size > 0]
    name = s.name.replace("A", symbol)
    if s is report.spectra[0]:
        counts = [f"{f.size} {f.feature}" for f in present if f.feature != "bulk"]
        return f"{name}: " + (" and ".join(counts) + " above the bulk" if counts else "nothing separated from the bulk")
    gone = [f.feature for f in present if s.name in f.vanishes_under]
    stay = [f.feature for f in present if s.name not in f.vanishes_under]
    head = f"{name}: " + (" and ".join(gone) + " gone" if gone else "nothing gone")
    plural = len(stay) > 1 or (stay and stay[0].endswith("s"))
    return head + (f", {' and '.join(stay)} {'remain' if plural else 'remains'}" if stay else "")


def reference_curve(ax: Any, report: AttributionReport, symbol: str = "A") -> LogSpectrum:
    """The log-spectrum of ``A`` shaded grey, the reference under every knockout panel
    (:func:`theory.figures.log_spectrum_curve`, null space ``|lambda| <= zero_tol`` not
    drawn; ``symbol`` names ``A`` in the legend)."""
    base = report.spectra[0]
    return log_spectrum_curve(ax, base.density.nodes, base.density.weights, sigma=base.log_density.sigma,
                              num_runs=base.log_density.num_repeats, zero_tol=report.zero_tol, color=COLORS["A"],
                              label=f"{symbol} (every panel)", fill=True)


def knockout_panel(ax: Any, report: AttributionReport, s: KnockoutSpectrum, symbol: str = "A") -> KnockoutPanel:
    """One panel of a knockout figure (Papyan 2020, Fig. 5 style) on log axes: the
    density per decade of ``|lambda|`` of ``A`` shaded grey and, unless ``s`` is ``A``,
    that of the knockout ``s`` over it in its component's colour
    (:func:`theory.figures.log_spectrum_curve`; the null space ``|lambda| <= zero_tol``
    is a share in the title, not drawn); ``A``'s outliers and bump as grey markers at
    their eigenvalues along the top, the eigenvalues the knockout still separates as
    coloured ticks below them (a feature that vanishes has grey markers and no ticks),
    the separation threshold dashed (``A``'s black; a full-rank knockout's own in its
    colour where it lies within the knockout's drawn spectrum, not at its null space). The
    title is :func:`knockout_caption` (wrapped at 52 characters) and the null-space share."""
    zero_tol = report.zero_tol
    base = report.spectra[0]
    color = matrix_color(s.name)
    curves = [reference_curve(ax, report, symbol)]
    if s is not base:
        curves.append(log_spectrum_curve(ax, s.density.nodes, s.density.weights, sigma=s.log_density.sigma,
                                         num_runs=s.log_density.num_repeats, zero_tol=zero_tol, color=color,
                                         label="the knockout (its component's colour)"))
    features = [f for f in report.features if f.size > 0 and f.feature != "bulk"]
    for marker, f in zip("vDsP", features):
        outlier_markers(ax, f.eigenvalues, color="0.3", marker=marker, y=0.95, annotate="none",
                        label=f"{symbol}'s {f.feature}, at their eigenvalues")
    kept = s.eigenvalues[s.eigenvalues > s.threshold]
    if s is not base:
        outlier_markers(ax, kept, color=color, marker="|", y=0.85, annotate="none",
                        label="eigenvalues the knockout still separates")
    if s.edge is None:
        ax.axvline(abs(s.threshold), color="k", ls="--", lw=0.8, label=f"separation threshold of {symbol}")
    elif curves[-1].lowest is not None and abs(s.threshold) >= curves[-1].lowest:
        ax.axvline(abs(s.threshold), color=color, ls="-.", lw=0.8, label="own separation threshold (full-rank knockout)")
    ax.set_title(f"{textwrap.fill(knockout_caption(report, s, symbol), 52)}\n{curves[-1].text}", fontsize=FONT["title"])
    set_labels(ax, "$|\\lambda|$ (eigenvalue magnitude)", "density per decade of $|\\lambda|$")
    ax.tick_params(labelbottom=True, labelleft=True)
    largest = max([float(np.abs(f.eigenvalues).max()) for f in features] + [float(np.abs(kept).max(initial=0.0))])
    return KnockoutPanel(tuple(curves), largest)


def knockout_limits(ax: Any, panels: Sequence[KnockoutPanel]) -> None:
    """Limits of (shared) knockout axes: ``|lambda|`` from a third of the lowest visible
    density to three times the largest curve or marker, the density four decades below
    the highest peak with room for the markers above it."""
    curves = [c for p in panels for c in p.curves]
    lows = [c.lowest for c in curves if c.lowest is not None]
    highs = [c.highest for c in curves if c.highest is not None] + [p.largest for p in panels if p.largest > 0]
    if lows:
        ax.set_xlim(min(lows) / 3.0, max(highs) * 3.0)
    ax.set_ylim(*log_limits(max(c.peak for c in curves), decades=4.0, headroom=1.3))


# --------------------------------------------------------------------------- the analysis
@contextlib.contextmanager
def _unresolved_quiet() -> Iterator[None]:
    """The log densities' resolution warnings silenced (each record keeps its message in
    ``log_density.resolution``): :func:`_warn_unresolved` issues one for all spectra."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="log density not resolved below", category=RuntimeWarning)
        yield


def _warn_unresolved(spectra: Sequence[KnockoutSpectrum]) -> None:
    """One RuntimeWarning for the spectra whose log density the Lanczos nodes do not resolve
    towards zero (instead of one per knockout), with the first one's message."""
    messages = [(s.name, s.log_density.resolution.warning) for s in spectra
                if s.log_density.resolution is not None and s.log_density.resolution.warning]
    if messages:
        names = ", ".join(name for name, _ in messages)
        warnings.warn(f"{len(messages)} of the {len(spectra)} spectra of the attribution ({names}): {messages[0][1]}",
                      RuntimeWarning, stacklevel=3)


def _dense_eigenpairs(op: SymmetricOperator, k: int) -> Eigenpairs:
    """The top ``k`` eigenpairs from ``eigh`` of ``op.to_dense()`` (float64, LAPACK ``evr``
    on the wanted index range only), with residuals ``|D v - lambda v|``."""
    D = op.to_dense().to(dtype=torch.float64, device="cpu").numpy()
    D = 0.5 * (D + D.T)
    p = D.shape[0]
    vals, vecs = scipy.linalg.eigh(D, subset_by_index=[p - k, p - 1], driver="evr")
    vals, vecs = vals[::-1].copy(), vecs[:, ::-1].copy()
    res = np.linalg.norm(D @ vecs - vecs * vals, axis=0)
    return Eigenpairs(
        eigenvalues=vals, eigenvectors=torch.as_tensor(vecs).to(dtype=op.dtype, device=op.device), residuals=res,
        num_iterations=0, converged=True, which="largest", block_size=p, seed=0, num_products=p,
    )


def _retained(U_sep: torch.Tensor, U_feature: torch.Tensor) -> float:
    if U_feature.shape[1] == 0:
        return float("nan")
    if U_sep.shape[1] == 0:
        return 0.0
    M = U_sep.to(torch.float64).T @ U_feature.to(device=U_sep.device, dtype=torch.float64)
    return float((M * M).sum()) / U_feature.shape[1]


def _certificate(kind: str, rank: int | None, top_a, res_a, n_a: int, top_k, res_k, n_k: int, dtype,
                 saturated: bool = False) -> Certificate:
    scale = float(np.max(np.abs(top_a))) if top_a.size else 0.0
    rel = 100.0 * float(torch.finfo(dtype).eps) * max(scale, 1e-300)
    m = min(top_a.size, top_k.size)
    tol_upper = res_a[:m] + res_k[:m] + rel
    upper = float(np.max(top_k[:m] - top_a[:m] - tol_upper, initial=-np.inf))
    lower = None
    if rank is not None:
        idx = np.arange(m)
        ok = idx + rank < top_a.size
        if ok.any():
            i = idx[ok]
            lower = float(np.max(top_a[i + rank] - top_k[i] - (res_a[i + rank] + res_k[i] + rel)))
    low_count = n_a - rank if rank is not None else 0
    counts_ok = saturated or max(low_count, 0) <= n_k <= n_a  # saturated counts are lower bounds: not tested
    holds = upper <= 0 and (lower is None or lower <= 0) and counts_ok
    return Certificate(
        kind=kind,
        rank=rank,
        upper_violation=max(upper, 0.0),
        lower_violation=None if lower is None else max(lower, 0.0),
        tolerance=float(np.max(tol_upper, initial=rel)),
        count_bounds=(max(low_count, 0), n_a),
        holds=bool(holds),
        counts_checked=not saturated,
    )


# --------------------------------------------------------------------------- features, shares, verdicts
def _residual_span(Q: torch.Tensor, taken: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of ``(I - T T^T) range(Q)`` for orthonormal ``Q`` and ``T``: the
    directions of ``range(Q)`` outside ``range(T)`` (singular values of the residual
    above ``sqrt(eps)``; they lie in ``[0, 1]``)."""
    R = Q - taken @ (taken.T @ Q)
    if R.shape[1] == 0:
        return R
    U, S, _ = torch.linalg.svd(R, full_matrices=False)
    return U[:, S > _span_rtol(Q.dtype)]


def _feature_bases(features: Mapping[str, str], bases: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The range defining each feature, in the order given: ``range(B_f)`` with the
    ranges of the earlier features' components removed (the bump: the cross range
    after the class-mean span)."""
    out: dict[str, torch.Tensor] = {}
    taken: torch.Tensor | None = None
    for f, c in features.items():
        Q = bases[c]
        out[f] = Q if taken is None else _residual_span(Q, taken)
        taken = Q if taken is None else torch.cat([taken, out[f]], dim=1)
    return out


def _quotient(op: SymmetricOperator, U: torch.Tensor) -> float:
    """``sum_k u_k^T B u_k = Tr(U^T B U)`` (float64) for the columns ``u_k`` of ``U``."""
    if U.shape[1] == 0:
        return 0.0
    BU = op.matmat(U.to(dtype=op.dtype, device=op.device)).to(dtype=torch.float64, device=U.device)
    return float((U.to(torch.float64) * BU).sum())


def _normalised(values: Mapping[str, float]) -> dict[str, float]:
    total = sum(values.values())
    return {n: (v / total if total != 0 else float("nan")) for n, v in values.items()}


def _complement_trace(comp: Component, U: torch.Tensor, seed: int, num_probes: int = 32) -> float:
    """``Tr((I - U U^T) B (I - U U^T)) = Tr B - Tr(U^T B U)`` for orthonormal ``U``, exact
    when ``Tr B`` is known, else Hutchinson's estimate from ``num_probes`` seeded
    Rademacher probes projected off ``U``."""
    if comp.trace is not None:
        return comp.trace - _quotient(comp.operator, U)
    gen = torch.Generator().manual_seed(seed)
    Z = (2.0 * torch.randint(0, 2, (comp.operator.size, num_probes), generator=gen) - 1.0).to(dtype=torch.float64, device=U.device)
    U64 = U.to(torch.float64)
    Z = Z - U64 @ (U64.T @ Z)
    return _quotient(comp.operator, Z) / num_probes


def _check_common_mode(vector: Any, size: int) -> torch.Tensor:
    m = torch.as_tensor(vector).reshape(-1).to(torch.float64)
    if m.numel() != size:
        raise ValueError(f"common_mode: expected a vector of length {size}, got {m.numel()}")
    if not float(torch.linalg.vector_norm(m)) > 0:
        raise ValueError("common_mode: the zero vector has no direction")
    return m


def _common_mode(
    m: torch.Tensor, A: SymmetricOperator, comps: Mapping[str, Component], U_out: torch.Tensor, U_sep: torch.Tensor,
    overlap_threshold: float,
) -> CommonMode:
    m = m.to(U_sep.device)
    norm = float(torch.linalg.vector_norm(m))
    u = (m / norm)[:, None]

    def share(V: torch.Tensor) -> float:
        return float(((V.to(torch.float64).T @ u) ** 2).sum()) if V.shape[1] else 0.0

    in_out = share(U_out)
    return CommonMode(
        norm=norm,
        rayleigh=_quotient(A, u),
        shares=_normalised({n: _quotient(c.operator, u) for n, c in comps.items()}),
        in_outliers=in_out,
        in_separated=share(U_sep),
        separated=bool(in_out >= overlap_threshold),
    )


def _decide(
    f: str, others: Sequence[str], subs: Mapping[str, KnockoutSpectrum], projs: Mapping[str, KnockoutSpectrum],
    knockouts: Mapping[str, Component], mass_a: float, vanish: float, stay: float,
) -> tuple[str, str | None, str]:
    """The verdict of feature ``f`` by subtraction: attributable to the smallest knockout
    ``K`` (no part of a combined ``K`` does it alone) with ``A - K`` removing ``f``
    (``retained <= vanish``; bulk: mass ratio) while every feature in ``others`` stays
    (``>= stay``); several such ``K``, or none: not attributable. Returns ``(verdict,
    component, evidence)``; projections enter the evidence only."""
    measure = "bulk mass ratio" if f == "bulk" else "retained"

    def value(s: KnockoutSpectrum, g: str) -> float:
        return s.bulk_mass / mass_a if g == "bulk" else s.retained[g]

    removes = {K: value(s, f) <= vanish for K, s in subs.items()}
    moved = {K: [g for g in others if value(s, g) < stay] for K, s in subs.items()}
    candidates = [K for K in subs if removes[K] and not moved[K]]
    minimal = [K for K in candidates if not any(p in candidates for p in knockouts[K].parts)]

    def projection(K: str) -> str:
        s = projs.get(K)
        return "" if s is None else f"; projection {s.name}: {measure} {value(s, f):.2f} (evidence)"

    if len(minimal) == 1:
        K = minimal[0]
        return "attributable", K, f"subtraction {subs[K].name}: {measure} {value(subs[K], f):.2f}, the other features stay{projection(K)}"
    if minimal:
        listed = ", ".join(f"{subs[K].name} ({measure} {value(subs[K], f):.2f})" for K in minimal)
        return "not attributable", None, f"several subtractions remove it alone: {listed}"
    notes = [f"{subs[K].name} removes it but also moves {', '.join(moved[K])}" for K in subs if removes[K]]
    if not notes:
        K = min(subs, key=lambda K: value(subs[K], f))
        notes = [f"lowest {measure} {value(subs[K], f):.2f}, under {subs[K].name}"]
    return "not attributable", None, "no subtraction removes it while the rest stays (" + "; ".join(notes) + ")"


# --------------------------------------------------------------------------- the analysis
def attribute(
    A: Any,
    components: Mapping[str, Any],
    *,
    features: Mapping[str, str] | None = None,
    combine: Mapping[str, Sequence[str]] | None = None,
    common_mode: Any = None,
    num_top: int | None = None,
    eigensolver: str = "subspace",
    eig_tol: float = 1e-4,
    num_iterations: int | None = None,
    max_iterations: int = 500,
    edge_margin: float = 2.0,
    fit_fraction: float = 0.05,
    overlap_threshold: float = 0.5,
    vanish: float = 0.25,
    stay: float = 0.75,
    zero_tol: float | None = None,
    log_eps: float = 1e-6,
    density: Mapping[str, Any] | None = None,
    seed: int = 0,
    show_progress: bool = False,
) -> AttributionReport:
    """Attribute the outliers, bump(s) and bulk of ``A`` to its ``components``
    (the rule and its reasons: ``docs/attribution.md``).

    ``features`` maps a feature name to the low-rank component whose range defines
    it, in order: a separated eigenvalue of ``A`` belongs to the first feature whose
    defining range, with the ranges of the earlier features' components removed,
    holds at least ``overlap_threshold`` of its eigenvector (default
    ``{"outliers": "class", "bump": "cross"}`` restricted to the components given:
    the outliers by the class-mean span, the bump by the cross range outside it).
    ``bulk`` is the rest of the spectrum; its mass is that in ``(zero_tol,
    threshold]`` (default ``zero_tol``: ``1e-6 |lambda_1|``).

    ``combine`` names combined knockouts, ``{name: (part, part, ...)}`` (default
    ``{"class+diag": ("class", "diag")}`` when both are given). ``common_mode``: a
    vector of length ``p`` (the sum of the class means) reported as a
    :class:`CommonMode`, or None.

    ``num_top`` eigenpairs of ``A`` (default: the rank of the first feature's component,
    ``C`` for the class outliers, plus 8, doubled while every computed eigenvalue is
    separated or the deflated density has eigenvalues above the bulk edge, up to the summed ranks of the low-rank components plus 16;
    a bump below the top ``num_top`` is fitted as bulk, so to resolve it pass ``num_top`` above
    the summed ranks of the features, e.g. ``C^2``), and ``n_sep(A) + 8`` of each low-rank knockout
    (``num_top`` of a full-rank one), come from
    :func:`theory.spectral.top_eigenpairs` (``eigensolver="subspace"``: block
    subspace iteration to relative residual ``eig_tol``, or a fixed
    ``num_iterations``) or, when the caller asks for it with
    ``eigensolver="dense"``, from ``eigh`` of the dense matrix (exact; for sizes
    up to a few thousand, where it is faster). ``density`` is a
    :class:`theory.density.DensitySettings` (used as given, its ``eps`` the log
    axis's) or a mapping of its fields ``num_steps``, ``num_repeats``, ``kappa``, ...
    (``seed`` and ``log_eps`` filled in); ``num_steps`` above the size of ``A`` is
    lowered to it (``settings["density_clamped"]`` says so). Every density uses the
    same seed and the bounds of ``A``, widened for a knockout whose spectrum leaves
    them (a projection adds zeros), so that they compare point by point.

    A feature vanishes under a knockout when ``retained <= vanish`` (bulk:
    ``bulk_mass <= vanish`` times that of ``A``) and stays when ``retained >= stay``
    (bulk: mass ratio ``>= stay``). It is attributable to ``B`` when the
    subtraction ``A - B`` makes it vanish while every other nonempty feature stays,
    and ``B`` is the only smallest such knockout (a combined knockout counts only
    when none of its parts does it alone); the projection knockouts are reported
    in the evidence, not used in the decision.
    """
    A = as_operator(A)
    if not components:
        raise ValueError("components: expected at least one named component")
    comps = {str(name): as_component(str(name), c) for name, c in components.items()}
    for name, c in comps.items():
        if c.operator.size != A.size:
            raise ValueError(f"components[{name!r}]: size {c.operator.size} differs from the size {A.size} of A")
        if c.operator.dtype != A.dtype or c.operator.device != A.device:
            raise ValueError(
                f"components[{name!r}]: dtype/device ({c.operator.dtype}, {c.operator.device}) differ from A's "
                f"({A.dtype}, {A.device})"
            )
    if combine is None:
        combine = {"class+diag": ("class", "diag")} if {"class", "diag"} <= comps.keys() else {}
    knockouts = dict(comps)
    for name, parts in combine.items():
        if name in comps:
            raise ValueError(f"combine[{name!r}]: the name of a component; name the combined knockout otherwise")
        missing = [q for q in parts if q not in comps]
        if missing or len(set(parts)) < 2:
            raise ValueError(f"combine[{name!r}]: expected at least two distinct names of components {list(comps)}, got {list(parts)}")
        knockouts[name] = combine_components(name, [comps[q] for q in parts])
    low_rank = [n for n, c in comps.items() if c.basis is not None]
    if features is None:
        features = {f: c for f, c in {"outliers": "class", "bump": "cross"}.items() if c in low_rank}
    for f, c in features.items():
        if c not in low_rank:
            raise ValueError(f"features[{f!r}]: {c!r} is not a low-rank component (have {low_rank})")
        if f == "bulk":
            raise ValueError("features: 'bulk' is reserved for the rest of the spectrum")
    if not (0 <= vanish < stay <= 1):
        raise ValueError(f"vanish, stay: expected 0 <= vanish < stay <= 1, got {vanish}, {stay}")
    check_real("overlap_threshold", overlap_threshold, 0.0, 1.0, low_open=True)
    if common_mode is not None:
        common_mode = _check_common_mode(common_mode, A.size)
    if eigensolver not in ("subspace", "dense"):
        raise ValueError(f"eigensolver: expected 'subspace' or 'dense', got {eigensolver!r}")
    p = A.size
    cap = int(min(max(sum(comps[n].rank for n in low_rank) + 16, 4), p - 2))
    extend = num_top is None
    if num_top is None:  # the first feature's rank (C outliers) and a margin; doubled below while the count saturates
        first = comps[next(iter(features.values()))].rank if features else 0
        num_top = first + 8
    num_top = int(min(max(num_top, 4), p - 2))
    if isinstance(density, DensitySettings):
        requested = density
    else:
        dens_kw = dict(density or {})
        allowed = {"num_steps", "num_repeats", "kappa", "num_points", "margin", "seed", "reorthogonalize"}
        if set(dens_kw) - allowed:
            raise ValueError(f"density: unexpected keys {sorted(set(dens_kw) - allowed)} (allowed: {sorted(allowed)})")
        requested = DensitySettings(**{"seed": seed, "eps": log_eps, **dens_kw})
    dens = requested.clamped(p)
    clamped = None if dens == requested else f"num_steps {requested.num_steps} -> {dens.num_steps} (the dimension of A)"

    def top(op: SymmetricOperator, k: int) -> Eigenpairs:
        if eigensolver == "dense":
            return _dense_eigenpairs(op, k)
        return top_eigenpairs(
            op, k, tol=eig_tol, num_iterations=num_iterations, max_iterations=max_iterations,
            seed=seed, check_symmetry=False, show_progress=show_progress,
        )

    # --- A: top eigenpairs, densities, bulk edge
    check_symmetric(A, seed=seed)
    say = (lambda text: print(f"attribution: {text}", file=sys.stderr, flush=True)) if show_progress else (lambda text: None)
    with _unresolved_quiet():
        lin_a, log_a = spectral_densities(A, dens, check_symmetry=False)
    bounds = lin_a.bounds
    while True:
        say(f"top {num_top} eigenpairs of A")
        pairs = top(A, num_top)
        deflated = bulk_density(A, pairs, settings=dens, check_symmetry=False)
        edge = estimate_bulk_edge(pairs.eigenvalues, p, bulk=deflated.bulk, margin=edge_margin, fit_fraction=fit_fraction)
        d = deflated.bulk  # eigenvalues above the threshold left in the deflated operator: the count is a lower bound
        beyond = (p - num_top) * float(d.weights[d.nodes > edge.threshold].sum() / d.weights.sum())
        if not (extend and (edge.saturated or beyond >= 0.5) and num_top < cap):
            break
        say(f"about {edge.num_separated + beyond:.0f} eigenvalues above the bulk edge, {num_top} computed: "
            f"extending to {min(2 * num_top, cap)}")
        num_top = min(2 * num_top, cap)
    if zero_tol is None:
        zero_tol = 1e-6 * float(np.max(np.abs(pairs.eigenvalues)))
    if edge.threshold < zero_tol:  # a bulk of exact zeros has its edge at round-off: nothing below zero_tol is separated
        edge = dataclasses.replace(edge, threshold=zero_tol, num_separated=int(np.sum(pairs.eigenvalues > zero_tol)))
    thr = edge.threshold

    def bulk_mass(d: SpectralDensity, threshold: float) -> float:
        return float(d.weights[(d.nodes > zero_tol) & (d.nodes <= threshold)].sum())

    U = pairs.eigenvectors
    sep = pairs.eigenvalues > thr
    bases = {n: comps[n].basis.to(dtype=torch.float64, device=U.device) for n in low_rank}
    U64 = U.to(torch.float64)
    overlaps = np.stack([((bases[n].T @ U64) ** 2).sum(dim=0).cpu().numpy() for n in low_rank], axis=1) if low_rank else np.zeros((U.shape[1], 0))

    # --- features, in order, by overlap with their defining ranges
    feat_names = list(features)
    defining = _feature_bases(features, bases)
    feature_overlaps = {f: ((defining[f].T @ U64) ** 2).sum(dim=0).cpu().numpy() for f in feat_names}
    members: dict[str, np.ndarray] = {}
    free = sep.copy()
    for f in feat_names:
        members[f] = np.flatnonzero(free & (feature_overlaps[f] >= overlap_threshold))
        free[members[f]] = False
    if free.any():
        feat_names.append("other separated")
        members["other separated"] = np.flatnonzero(free)
    sep_feats = [f for f in feat_names if members[f].size]
    Uf = {f: U[:, members[f]] for f in feat_names}

    def summarize(name, kind, comp, op, top, cert_rank, own_edge=None, lin=None, log=None) -> KnockoutSpectrum:
        vals = top.eigenvalues
        threshold = thr if own_edge is None else max(own_edge.threshold, zero_tol)
        n_sep = int(np.sum(vals > threshold))
        if lin is None:
            q = quadrature(op, dens, check_symmetry=False)  # on A's bounds, widened where the knockout's spectrum leaves them
            q = dataclasses.replace(q, bounds=dataclasses.replace(
                bounds, lower=min(bounds.lower, q.bounds.lower), upper=max(bounds.upper, q.bounds.upper)))
            with _unresolved_quiet():
                lin, log = q.linear(), q.log()
        Usep = top.eigenvectors[:, vals > threshold]
        retained = {f: _retained(Usep, Uf[f]) for f in feat_names}
        cert = None
        if cert_rank is not False:  # counts at the threshold of A, where the bounds hold
            n_k = int(np.sum(vals > thr))
            cert = _certificate(kind, cert_rank, pairs.eigenvalues, pairs.residuals, edge.num_separated, vals, top.residuals,
                                n_k, A.dtype, saturated=edge.saturated or n_k >= vals.size)
        return KnockoutSpectrum(
            name, kind, comp, vals, top.residuals, float(threshold), own_edge, n_sep, bool(n_sep >= vals.size),
            bulk_mass(lin, threshold), retained, cert, lin, log, top.eigenvectors,
        )

    spectra = [summarize("A", "original", None, A, pairs, False, lin=lin_a, log=log_a)]
    subs: dict[str, KnockoutSpectrum] = {}
    projs: dict[str, KnockoutSpectrum] = {}
    k_knock = int(min(edge.num_separated + 8, p - 2))
    for name, c in progress(list(knockouts.items()), desc="attribution knockouts", enabled=show_progress):
        say(f"knockout A - {name}" + ("" if c.basis is None else " and its projection"))
        op = subtraction_knockout(A, c)
        cert_rank = c.rank if c.positive else False  # None: B >= 0 of full rank, upper Weyl bound only
        if c.basis is None:  # removes a full-rank part: its own bulk edge
            top_k = top(op, num_top)
            own = estimate_bulk_edge(top_k.eigenvalues, p, bulk=bulk_density(op, top_k, settings=dens, check_symmetry=False).bulk,
                                     margin=edge_margin, fit_fraction=fit_fraction)
            subs[name] = summarize(f"A - {name}", "subtraction", name, op, top_k, cert_rank, own)
        else:
            subs[name] = summarize(f"A - {name}", "subtraction", name, op, top(op, k_knock), cert_rank)
        spectra.append(subs[name])
        if c.basis is not None:
            op = projection_knockout(A, c)
            projs[name] = summarize(f"P⊥ A P⊥ ({name})", "projection", name, op, top(op, k_knock), c.rank)
            spectra.append(projs[name])

    _warn_unresolved(spectra)

    # --- verdicts and shares
    mass_a = spectra[0].bulk_mass
    U_sep = U[:, sep]
    verdicts = []
    for f in feat_names + ["bulk"]:
        size = int(members[f].size) if f != "bulk" else int(p - edge.num_separated)
        vals = pairs.eigenvalues[members[f]] if f != "bulk" else np.zeros(0)
        defined_by = features.get(f) if f != "bulk" else None
        overlap = float(feature_overlaps[f][members[f]].mean()) if f in feature_overlaps and size else float("nan")
        if f != "bulk" and size == 0:
            verdicts.append(FeatureVerdict(
                f, defined_by, 0, vals, "absent", None, [], [],
                f"no eigenvalue above the threshold {thr:.4g} has at least {overlap_threshold:g} of its "
                f"eigenvector in range({defined_by})" + (" outside the earlier features' ranges" if f != feat_names[0] else "")
                + (f" among the {num_top} computed eigenpairs (range({defined_by}) has rank {comps[defined_by].rank}: "
                   "raise num_top above the ranks of the features to resolve it)" if comps[defined_by].rank + 8 > num_top else ""),
                {}, overlap,
            ))
            continue
        if f == "bulk" and mass_a <= 0:
            verdicts.append(FeatureVerdict(
                f, None, size, vals, "absent", None, [], [],
                f"the density of A has no mass between zero_tol {zero_tol:.3g} and the threshold {thr:.4g}", {}, overlap,
            ))
            continue
        if f == "bulk":
            shares = _normalised({n: _complement_trace(c, U_sep, seed) for n, c in comps.items()})
        else:
            shares = _normalised({n: _quotient(c.operator, Uf[f]) for n, c in comps.items()})

        def gone(s: KnockoutSpectrum, f: str = f) -> bool:
            return s.bulk_mass <= vanish * mass_a if f == "bulk" else s.retained[f] <= vanish

        def kept(s: KnockoutSpectrum, f: str = f) -> bool:
            return s.bulk_mass >= stay * mass_a if f == "bulk" else s.retained[f] >= stay

        others = [g for g in sep_feats if g != f] + (["bulk"] if f != "bulk" and mass_a > 0 else [])
        verdict, name, evidence = _decide(f, others, subs, projs, knockouts, mass_a, vanish, stay)
        if f in feature_overlaps:
            evidence += f"; mean overlap with its defining range {overlap:.2f}"
        verdicts.append(FeatureVerdict(
            f, defined_by, size, vals, verdict, name, [s.name for s in spectra[1:] if gone(s)],
            [s.name for s in spectra[1:] if kept(s)], evidence, shares, overlap,
        ))

    mode = None
    if common_mode is not None:
        U_out = Uf[feat_names[0]] if features else U[:, :0]
        mode = _common_mode(common_mode, A, comps, U_out, U_sep, overlap_threshold)
    settings = dict(
        num_top=num_top, eig_tol=eig_tol, edge_margin=edge_margin, fit_fraction=fit_fraction,
        overlap_threshold=overlap_threshold, vanish=vanish, stay=stay, zero_tol=zero_tol, log_eps=dens.eps,
        density=dens, density_clamped=clamped, features=dict(features), combine={n: list(v) for n, v in combine.items()}, seed=seed,
    )
    return AttributionReport(
        size=p,
        components={n: c.rank for n, c in knockouts.items()},
        edge=edge,
        eigenvalues=pairs.eigenvalues,
        overlaps=overlaps,
        overlap_components=low_rank,
        feature_overlaps=feature_overlaps,
        spectra=spectra,
        features=verdicts,
        common_mode=mode,
        settings=settings,
    )


def attribute_decomposition(decomposition: CrossClassDecomposition | FeatureDecomposition, **kwargs: Any) -> AttributionReport:
    """:func:`attribute` for ``A = decomposition.total_operator()`` and its parts:
    class / cross / diag / within for three-index vectors (outliers defined by the
    class range, the bump by the cross range outside it, the combined knockout
    ``class+diag``, the common mode ``sum_c P_c v_c``), class / within for features
    (outliers by the span of the class means, global mean included, which is the
    common mode)."""
    if isinstance(decomposition, CrossClassDecomposition):
        comps = {n: decomposition.parts[n] for n in ("class", "cross", "diag", "within")}
        means = decomposition.class_means
        mode = torch.as_tensor(decomposition.class_weights, dtype=means.dtype, device=means.device) @ means
    elif isinstance(decomposition, FeatureDecomposition):
        comps = {"class": decomposition.class_part, "within": decomposition.within_part}
        mode = decomposition.global_mean
    else:
        raise TypeError(f"decomposition: expected a CrossClassDecomposition or FeatureDecomposition, got {type(decomposition).__name__}")
    kwargs.setdefault("common_mode", mode)
    return attribute(decomposition.total_operator(), comps, **kwargs)
