"""The class / cross-class structure of a trained classifier's G and Hessian
(Papyan 2020, Sec. 6 and Fig. 5; arXiv 1901.08244, Figs. 3-4).

* **Attribution of G** (:func:`attribute_gradients`): ``G = class + cross + within +
  diag`` (:func:`deepnet.structure.decompose_gradients`) fed to
  :func:`theory.attribution.attribute_decomposition` (top eigenpairs of ``G``,
  knockouts, verdicts and shares), plus the deflated quadrature of ``G``
  (its top eigenvectors projected out) for the figure.
* **The Hessian** (:func:`hessian_structure`): ``H = G + E``; for the top ``C``
  eigenvectors ``u_k`` of ``H``: ``|U_G^T u_k|^2`` (share in the top-``k`` eigenspace
  of ``G``) and ``|Q^T u_k|^2`` (share in the class-mean span ``Q = range(class)``);
  the principal angles between ``span{g_c}`` (the class means, "averaging instead of
  eigenanalysis") and the top-``C`` eigenspace of ``H``, with the cost of each.
* **The hierarchy** (:func:`eigenvalue_hierarchy`): for PSD parts Weyl's inequality
  gives ``lambda_c(G) >= lambda_c(class + cross) >= lambda_c(class)`` for every ``c``
  (``G - (class + cross) = within + diag >= 0`` and ``cross >= 0``); checked on the
  computed eigenvalues (those of ``G`` up to their residuals).

The eigenvalues of the mean parts come from their Gram matrices (``C x C`` for the
class part, ``C^2 x C^2`` for class + cross + diag), never from a ``P x P`` matrix.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from theory.attribution import (
    AttributionReport,
    KnockoutPanel,
    attribute_decomposition,
    knockout_limits,
    knockout_panel,
    reference_curve,
)
from theory.checks import check_int
from theory.density import DensitySettings, Quadrature, bulk_quadrature
from theory.eigenpairs import Eigenpairs, top_eigenpairs
from theory.figures import FONT, figure_legend, log_spectrum_curve, new_figure, outlier_markers, set_labels
from theory.operators import CountedOperator, SymmetricOperator
from theory.structure import CrossClassDecomposition, LowRankPart

from .spectrum import announce_products, expected_products

__all__ = [
    "GradientAttribution",
    "HessianStructure",
    "Hierarchy",
    "attribute_gradients",
    "attribution_figure",
    "combined_part",
    "eigenvalue_hierarchy",
    "gram_eigenvalues",
    "hessian_figure",
    "hessian_structure",
    "principal_cosines",
    "subspace_overlaps",
    "top_pairs",
]

KNOCKOUTS = ("class", "cross", "within", "diag", "class+diag")


# ----------------------------------------------------------------------------- the hierarchy
def combined_part(decomposition: CrossClassDecomposition, names: tuple[str, ...]) -> LowRankPart:
    """The sum of low-rank parts ``names`` as one :class:`LowRankPart` (stacked factors
    ``F = [L_1; L_2; ...] X`` over the cell means ``X``), its eigenvalues from the
    ``r x r`` Gram matrix ``F F^T``."""
    parts = [decomposition.parts[n] for n in names]
    X = parts[0].vectors
    Xd = X.to(torch.float64)
    gram = (Xd @ Xd.T).cpu().numpy()
    L = np.vstack([p.coefficients for p in parts])
    return LowRankPart.from_coefficients("+".join(names), X, L, gram, sum(p.trace for p in parts))


def gram_eigenvalues(decomposition: CrossClassDecomposition) -> dict[str, np.ndarray]:
    """The nonzero eigenvalues (above each part's rank tolerance) of the class part
    (``C x C`` Gram), class + cross and the means part (class + cross + diag, ``C^2 x C^2``)."""
    parts = {"class": decomposition.class_part, "class+cross": combined_part(decomposition, ("class", "cross")),
             "means": decomposition.means_part}
    return {n: p.eigenvalues[: p.rank].copy() for n, p in parts.items()}


@dataclass(frozen=True)
class Hierarchy:
    """``lambda_c(G) >= lambda_c(class + cross) >= lambda_c(class)``, ``c = 1..k``.

    ``g``: computed top eigenvalues of ``G`` with their ``g_residuals`` (a Ritz value is
    within its residual of an eigenvalue); ``class_cross``, ``class_only``: from the
    Gram matrices (exact up to round-off). ``violation``: the largest amount by which
    an inequality fails beyond its tolerance (``<= 0``: holds); ``holds``.
    """

    g: np.ndarray
    g_residuals: np.ndarray
    class_cross: np.ndarray
    class_only: np.ndarray
    violation: float
    holds: bool


def eigenvalue_hierarchy(decomposition: CrossClassDecomposition, g_values: np.ndarray, g_residuals: np.ndarray) -> Hierarchy:
    """Check the Weyl hierarchy (module docstring) on the first ``k = len(g_values)``
    eigenvalues (missing ranks count as zero). Tolerance: the residual of each Ritz
    value of ``G`` plus ``1e-8`` relative."""
    g = np.sort(np.asarray(g_values, dtype=np.float64))[::-1]
    order = np.argsort(np.asarray(g_values, dtype=np.float64))[::-1]
    res = np.asarray(g_residuals, dtype=np.float64)[order]
    k = g.size

    def top(values: np.ndarray) -> np.ndarray:
        out = np.zeros(k)
        m = min(k, values.size)
        out[:m] = np.maximum(values[:m], 0.0)
        return out

    cc = top(combined_part(decomposition, ("class", "cross")).eigenvalues)
    cl = top(decomposition.class_part.eigenvalues)
    rel = 1e-8 * max(float(g[0]) if k else 0.0, float(cc[0]) if k else 0.0)
    violation = float(max(np.max(cc - g - res - rel, initial=-np.inf), np.max(cl - cc - rel, initial=-np.inf)))
    return Hierarchy(g, res, cc, cl, violation, bool(violation <= 0))


# ----------------------------------------------------------------------------- attribution of G
def _counted(decomposition: CrossClassDecomposition) -> tuple[CrossClassDecomposition, CountedOperator]:
    """The same decomposition with its total operator (``G``) counting its products."""
    within = decomposition.within_part
    if within.access.total is None:
        raise ValueError("decomposition: expected one built with total= (the matrix-free G of deepnet.structure)")
    counted = CountedOperator(within.access.total)
    access = dataclasses.replace(within.access, total=counted)
    return dataclasses.replace(decomposition, within_part=dataclasses.replace(within, access=access)), counted


@dataclass(frozen=True)
class GradientAttribution:
    """The attribution of ``G`` of one parameter set (``name``: whole network or a layer).

    ``report``: the :class:`theory.attribution.AttributionReport`; ``traces``: ``tr`` of
    ``G`` and of every part (``tr G`` exactly from the per-example squared norms);
    ``gram_eigenvalues``: the nonzero eigenvalues of the class (``C x C`` Gram), the
    means (class + cross + diag, ``C^2 x C^2``) and the class + cross parts;
    ``deflated``: the Lanczos quadrature of ``G`` with its top eigenvectors projected out;
    ``hierarchy``; ``products`` and ``seconds`` of the ``G`` products.
    """

    name: str
    size: int
    report: AttributionReport
    traces: dict[str, float]
    gram_eigenvalues: dict[str, np.ndarray]
    deflated: Quadrature
    hierarchy: Hierarchy
    products: int
    seconds: float


def top_pairs(report: AttributionReport) -> Eigenpairs:
    """The top eigenpairs of ``A`` that an attribution report computed (``spectra[0]``)."""
    base = report.spectra[0]
    k = base.eigenvalues.size
    return Eigenpairs(eigenvalues=base.eigenvalues, eigenvectors=base.eigenvectors, residuals=base.residuals,
                      num_iterations=0, converged=True, which="largest", block_size=k, seed=report.settings["seed"],
                      num_products=0)


def attribute_gradients(
    decomposition: CrossClassDecomposition,
    name: str = "network",
    *,
    num_top: int | None = None,
    density: DensitySettings | None = None,
    eig_tol: float = 1e-3,
    max_iterations: int = 100,
    seed: int = 0,
    show_progress: bool = False,
) -> GradientAttribution:
    """Attribute the spectrum of ``G = decomposition.total_operator()`` to its parts.

    ``num_top`` top eigenpairs of ``G`` (default ``C^2``) by
    :func:`theory.eigenpairs.top_eigenpairs` to relative residual ``eig_tol`` (at most ``max_iterations``); ``density``: the
    Lanczos settings of every density (default :class:`DensitySettings` with ``seed``).
    """
    C = decomposition.num_classes
    k = C * C if num_top is None else check_int("num_top", num_top, 1)
    density = DensitySettings(seed=seed) if density is None else density
    dec, counted = _counted(decomposition)
    if show_progress:  # before the long part: A and each knockout (subtraction, and projection of a low-rank part)
        spectra = 2 + 2 * len(decomposition.parts)
        announce_products(counted.base, spectra * expected_products(k, density.clamped(dec.dim)), f"attribution of G ({name})", seed,
                          width=density.clamped(dec.dim).num_repeats)
    start = time.perf_counter()
    report = attribute_decomposition(
        dec, num_top=k, eig_tol=eig_tol, max_iterations=max_iterations, density=density.clamped(dec.dim),
        seed=seed, show_progress=show_progress,
    )
    top = top_pairs(report)
    _, _, q = bulk_quadrature(counted, top, density.clamped(dec.dim - k), check_symmetry=False, show_progress=show_progress)
    traces = {"G": decomposition.total_trace, **{n: p.trace for n, p in decomposition.parts.items()}}
    hierarchy = eigenvalue_hierarchy(decomposition, top.eigenvalues[:C], top.residuals[:C])
    return GradientAttribution(
        name, dec.dim, report, traces, gram_eigenvalues(decomposition), q, hierarchy, counted.columns, time.perf_counter() - start,
    )


# ----------------------------------------------------------------------------- the Hessian
def subspace_overlaps(U: torch.Tensor, Q: torch.Tensor) -> np.ndarray:
    """``|Q^T u_k|^2`` for every column ``u_k`` of ``U`` (P x k, unit columns) and an
    orthonormal ``Q`` (P x r): the share of ``u_k`` inside ``range(Q)``, in [0, 1]."""
    return ((Q.to(torch.float64).T @ U.to(torch.float64)) ** 2).sum(dim=0).cpu().numpy()


def principal_cosines(A: torch.Tensor, B: torch.Tensor) -> np.ndarray:
    """Cosines of the principal angles between ``range(A)`` and ``range(B)`` (any
    full-rank columns): the singular values of ``Q_A^T Q_B``, descending."""
    qa = torch.linalg.qr(A.to(torch.float64))[0]
    qb = torch.linalg.qr(B.to(torch.float64))[0]
    return np.clip(torch.linalg.svdvals(qa.T @ qb).cpu().numpy(), 0.0, 1.0)


@dataclass(frozen=True)
class HessianStructure:
    """Which outliers of ``H = G + E`` come from ``G`` (module docstring).

    ``h``/``h_residuals``, ``g``/``g_residuals``: top eigenvalues of ``H`` (``k``) and
    of ``G``; ``overlap_g[j] = |U_G^T u_j|^2`` and ``overlap_class[j] = |Q^T u_j|^2`` for
    the ``j``-th top eigenvector of ``H``; ``gram_eigenvalues``: class (``C x C``),
    class + cross and means (``C^2 x C^2``) Gram eigenvalues; ``hierarchy``;
    ``class_mean_cosines``: cosines of the principal angles between ``span{g_c}``
    (``C`` class means) and the top-``C`` eigenspace of ``H`` (``class_mean_angles`` in
    degrees); cost: ``h_products`` columns of ``H`` in ``h_seconds`` for its
    eigenvectors against ``means_seconds`` for the class means (the gradient-sums
    pass, ``means_backward_passes`` backward passes per example).
    """

    h: np.ndarray
    h_residuals: np.ndarray
    h_converged: bool
    g: np.ndarray
    g_residuals: np.ndarray
    overlap_g: np.ndarray
    overlap_class: np.ndarray
    gram_eigenvalues: dict[str, np.ndarray]
    hierarchy: Hierarchy
    class_mean_cosines: np.ndarray
    class_mean_angles: np.ndarray
    h_products: int
    h_seconds: float
    means_seconds: float
    means_backward_passes: int


def hessian_structure(
    decomposition: CrossClassDecomposition,
    hessian: SymmetricOperator,
    g_pairs: Eigenpairs | None = None,
    *,
    num_top: int | None = None,
    means_seconds: float = float("nan"),
    means_backward_passes: int = 0,
    tol: float = 1e-3,
    max_iterations: int = 100,
    seed: int = 0,
    show_progress: bool = False,
) -> HessianStructure:
    """Compare the top ``num_top`` (default ``C``) eigenvectors of ``hessian`` with the top
    eigenspace of ``G`` (``g_pairs``, computed here when None: ``num_top`` of them) and
    with the class-mean span of ``decomposition``."""
    C = decomposition.num_classes
    k = C if num_top is None else check_int("num_top", num_top, 1, hessian.size - 1)
    if hessian.size != decomposition.dim:
        raise ValueError(f"hessian: size {hessian.size} differs from the decomposition's {decomposition.dim}")
    counted = CountedOperator(hessian)
    h = top_eigenpairs(counted, k, tol=tol, max_iterations=max_iterations, seed=seed, check_symmetry=False,
                       show_progress=show_progress)
    if g_pairs is None:
        g_pairs = top_eigenpairs(decomposition.total_operator(), k, tol=tol, max_iterations=max_iterations, seed=seed,
                                 check_symmetry=False, show_progress=show_progress)
    class_basis = decomposition.class_part.range_basis()
    U_h = h.eigenvectors.to(torch.float64)
    cosines = principal_cosines(decomposition.class_means.T, U_h[:, :C])
    return HessianStructure(
        h=h.eigenvalues, h_residuals=h.residuals, h_converged=h.converged,
        g=g_pairs.eigenvalues, g_residuals=g_pairs.residuals,
        overlap_g=subspace_overlaps(U_h, g_pairs.eigenvectors[:, :k]),
        overlap_class=subspace_overlaps(U_h, class_basis),
        gram_eigenvalues=gram_eigenvalues(decomposition),
        hierarchy=eigenvalue_hierarchy(decomposition, g_pairs.eigenvalues[:C], g_pairs.residuals[:C]),
        class_mean_cosines=cosines,
        class_mean_angles=np.degrees(np.arccos(cosines)),
        h_products=counted.columns, h_seconds=counted.seconds,
        means_seconds=float(means_seconds), means_backward_passes=int(means_backward_passes),
    )


# ----------------------------------------------------------------------------- figures
def attribution_figure(result: GradientAttribution, title: str = "") -> Any:
    """Papyan 2020, Fig. 5 style, on shared log axes (density per decade of ``|lambda|``,
    the null space a share in each title): ``G`` with its outliers and bump as markers at
    their eigenvalues, ``G``'s bulk with its top eigenvectors projected out (weight
    ``(P-k)/P``), then one panel per subtraction knockout (class, cross, within, diag,
    class+diag) over ``G`` shaded grey, each drawn by
    :func:`theory.attribution.knockout_panel` with a title saying what vanished."""
    report = result.report
    base = report.spectra[0]
    subs = {s.component: s for s in report.spectra if s.kind == "subtraction"}
    knockouts = [subs[n] for n in KNOCKOUTS if n in subs]
    rows = math.ceil((len(knockouts) + 2) / 3)
    fig, axes = new_figure(rows, 3, sharex=True, sharey=True, squeeze=False, layout="constrained",
                           figsize=(12.6, 3.1 * rows + 0.8))
    flat = list(axes.flat)
    drawn = [knockout_panel(flat[0], report, base, symbol="G"), _deflated_panel(flat[1], result)]
    drawn += [knockout_panel(ax, report, s, symbol="G") for ax, s in zip(flat[2:], knockouts)]
    knockout_limits(flat[0], drawn)
    for ax in flat[len(drawn):]:
        ax.set_visible(False)
    figure_legend(fig, axes, ncols=3)
    fig.suptitle(title or f"Attribution of G ({result.name}, P = {result.size:,})", fontsize=FONT["suptitle"])
    return fig


def _deflated_panel(ax: Any, result: GradientAttribution) -> KnockoutPanel:
    """``G`` shaded grey and, over it, the quadrature of ``(I - QQ^T) G (I - QQ^T)`` on
    the complement of ``G``'s top ``k`` eigenvectors ``Q`` (weight ``(P-k)/P``), the
    removed eigenvalues as ticks along the top."""
    report = result.report
    base = report.spectra[0]
    zero_tol = report.zero_tol
    q, k = result.deflated, base.eigenvalues.size
    curves = (
        reference_curve(ax, report, "G"),
        log_spectrum_curve(ax, q.nodes, q.weights, sigma=base.log_density.sigma, num_runs=q.settings.num_repeats,
                           weight=(result.size - k) / result.size, zero_tol=zero_tol, point_mass=q.point_mass, color="black",
                           label="G's bulk, top eigenvectors projected out"),
    )
    top = base.eigenvalues[np.abs(base.eigenvalues) > zero_tol]
    outlier_markers(ax, top, color="black", marker="|", y=0.85, annotate="none", label="top eigenvalues of G (projected out)")
    ax.set_title(f"G deflated: its top {k} eigenvectors projected out\n{curves[-1].text}", fontsize=FONT["title"])
    set_labels(ax, "$|\\lambda|$ (eigenvalue magnitude)", "density per decade of $|\\lambda|$")
    ax.tick_params(labelbottom=True, labelleft=True)
    return KnockoutPanel(curves, float(np.abs(top).max(initial=0.0)))


def hessian_figure(hs: HessianStructure, title: str = "") -> Any:
    """Two panels: the top eigenvalues of ``H`` and ``G`` next to the Gram eigenvalues of
    the class, class + cross and means parts (log scale, by index); the overlaps of
    ``H``'s top eigenvectors with ``G``'s top eigenspace and with the class-mean span,
    and the principal cosines between ``span{g_c}`` and ``H``'s top-``C`` eigenspace."""
    fig, axes = new_figure(1, 2, figsize=(12, 5.0), layout="constrained")
    ax = axes[0]
    series = [("G", hs.g, "tab:blue", "s"), ("class + cross + diag (Gram)", hs.gram_eigenvalues["means"], "tab:gray", "D"),
              ("class + cross (Gram)", hs.gram_eigenvalues["class+cross"], "tab:orange", "x"),
              ("class (Gram)", hs.gram_eigenvalues["class"], "tab:red", "^"), ("H", hs.h, "k", "o")]
    open_markers = ("H", "class + cross + diag (Gram)")  # open: visible where they coincide with G or class + cross
    for label, vals, colour, marker in series:
        vals = np.asarray(vals)
        vals = vals[vals > 0]
        ax.semilogy(np.arange(1, vals.size + 1), vals, ls="none", marker=marker, color=colour, ms=7 if label in open_markers else 5,
                    mfc="none" if label in open_markers else colour, label=label)
    ax.set_xlabel("index $c$")
    ax.set_ylabel("eigenvalue $\\lambda_c$ (log scale)")
    ax.set_title("hierarchy " + ("holds" if hs.hierarchy.holds else "VIOLATED")
                 + ": $\\lambda_c(G) \\geq \\lambda_c(class+cross) \\geq \\lambda_c(class)$", fontsize=FONT["title"])
    ax = axes[1]
    idx = np.arange(1, hs.h.size + 1)
    ax.bar(idx - 0.2, hs.overlap_g, width=0.4, color="tab:blue", label="$|U_G^T u_j|^2$ (top eigenspace of G)")
    ax.bar(idx + 0.2, hs.overlap_class, width=0.4, color="tab:red", label="$|Q^T u_j|^2$ (class-mean span)")
    ax.plot(np.arange(1, hs.class_mean_cosines.size + 1), hs.class_mean_cosines, "k.-",
            label="cos principal angles: span{$g_c$} vs top-C of H")
    ax.set_xlabel("index $j$ of the top eigenvectors $u_j$ of H")
    ax.set_ylabel("overlap / cosine")
    ax.set_ylim(0, 1.05)
    figure_legend(fig, axes, ncols=3)  # below the panels: over the bars it hid them
    fig.suptitle(title or "Hessian = G + E: outliers of H against G and the class means", fontsize=FONT["suptitle"])
    return fig
