"""Spectral densities by stochastic Lanczos quadrature (Papyan 2020, Appendix C).

* :class:`DensitySettings`: steps, repeats, kappa, grid points, margin, eps, seed.
* :func:`quadrature`: ``num_repeats`` Lanczos runs of ``num_steps`` products each;
  their Gauss nodes ``theta_k`` and weights ``tau_k``, and the spectral bounds taken
  from the same runs (Lanczos is shift- and scale-invariant, so the run on ``A``
  gives the Ritz values of the normalised ``(A - cI)/d`` as ``(theta - c)/d``: no
  separate bounds run is needed).
* :meth:`Quadrature.linear` / :meth:`Quadrature.log`: the Gaussian-smoothed density
  ``phi(x) = (1/n) sum_runs sum_k tau_k N(x; theta_k, sigma^2)`` in ``lambda`` or in
  ``log10(|lambda| + eps)``, any kappa or grid, without new products.
* :func:`spectral_density`, :func:`log_spectral_density`, :func:`spectral_densities`:
  thin wrappers; :func:`bulk_density` / :func:`bulk_densities`: outliers removed as
  point masses ``1/p``, the density of ``(I - QQ^T) A (I - QQ^T)`` on the complement.

A spectrum of zero width (every run breaks down after one step: ``A q = alpha q``
for every random start, as for ``alpha I`` or the zero operator) is a point mass:
:attr:`Quadrature.point_mass` names its value and the densities put a kernel of
finite width there. A density is never returned with a non-finite value.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .checks import ArgumentError, check_flag, check_int, check_real
from .eigenpairs import Eigenpairs, eigenpairs_arrays
from .lanczos import SpectralBounds, bounds_from_lanczos, lanczos, prepare_operator
from .operators import ProjectedOperator, SymmetricOperator, as_operator

__all__ = [
    "DeflatedDensity",
    "DensitySettings",
    "Quadrature",
    "Resolution",
    "SpectralDensity",
    "bulk_densities",
    "bulk_density",
    "bulk_quadrature",
    "density_settings",
    "gaussian_smooth",
    "kernel_width",
    "log_spectral_density",
    "quadrature",
    "spectral_densities",
    "spectral_density",
]

# A log density is flagged as unresolved when the axis reaches more than this many
# decades below the smallest |node| while the nodes next to zero carry more than
# this share of the mass.
UNRESOLVED_DECADES = 1.0
UNRESOLVED_MASS = 0.1


@dataclass(frozen=True)
class DensitySettings:
    """Settings of a stochastic Lanczos quadrature density.

    ``num_repeats`` Lanczos runs of ``num_steps`` steps (``reorthogonalize``: full
    reorthogonalisation), started from ``seed``; the Gaussian kernel width is
    ``sigma = h (2/(m-1)) / sqrt(8 ln kappa)`` (larger ``kappa`` is sharper; the
    papers use 1.25 to 3); ``num_points`` grid points; bounds widened by
    ``margin`` of their width on each side; the log axis is ``log10(|lambda| + eps)``.
    """

    num_steps: int = 128
    num_repeats: int = 10
    kappa: float = 3.0
    num_points: int = 1024
    margin: float = 0.05
    eps: float = 1e-6
    seed: int = 0
    reorthogonalize: bool = False

    def __post_init__(self) -> None:
        checked = {
            "num_steps": check_int("num_steps", self.num_steps, 2),
            "num_repeats": check_int("num_repeats", self.num_repeats, 1),
            "kappa": check_real("kappa", self.kappa, 1.0, low_open=True, what="(larger is a narrower kernel)"),
            "num_points": check_int("num_points", self.num_points, 2),
            "margin": check_real("margin", self.margin, 0.0),
            "eps": check_real("eps", self.eps, 0.0, low_open=True),
            "seed": check_int("seed", self.seed, 0, 2**63 - 1),
            "reorthogonalize": check_flag("reorthogonalize", self.reorthogonalize),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def clamped(self, size: int) -> DensitySettings:
        """These settings fitted to an operator of dimension ``size``: ``num_steps``
        lowered to ``size`` (a Krylov space has at most that dimension)."""
        size = check_int("size", size, 2, what="(a density needs a dimension >= 2)")
        return self if self.num_steps <= size else dataclasses.replace(self, num_steps=size)


def density_settings(settings: DensitySettings | None = None, **changes: Any) -> DensitySettings:
    """``settings`` (default :class:`DensitySettings`) with the named fields replaced
    (the keywords of the density functions before settings existed)."""
    base = DensitySettings() if settings is None else settings
    if not isinstance(base, DensitySettings):
        raise ArgumentError(f"settings: expected a DensitySettings, got {type(base).__name__}")
    names = {f.name for f in dataclasses.fields(DensitySettings)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ArgumentError(f"unexpected density settings {unknown} (allowed: {sorted(names)})")
    return dataclasses.replace(base, **changes) if changes else base


@dataclass(frozen=True)
class Resolution:
    """How far the quadrature nodes resolve a log axis towards zero.

    ``floor``: the smallest ``|theta|`` of a run (median over runs); below it the
    nodes see nothing. ``mass_below``: an upper bound on the mass at ``|lambda| <
    floor``, the weight of the nodes next to zero (Chebyshev-Markov-Stieltjes: the
    mass strictly between two consecutive Gauss nodes is at most their two
    weights), mean over runs. ``decades``: how far the log axis reaches below
    ``log10(floor + eps)``. ``warning`` is set when ``decades > 1`` and
    ``mass_below > 0.1``: that part of the axis is not resolved.
    """

    floor: float
    mass_below: float
    decades: float
    warning: str | None


@dataclass(frozen=True)
class SpectralDensity:
    """A smoothed spectral density on a grid; ``trapz(density, grid) = 1``.

    With ``scale == "linear"`` the grid is in units of eigenvalues ``lambda``; with
    ``scale == "log"`` it is ``log10(|lambda| + eps)``. ``nodes`` and ``weights`` are the
    quadrature nodes (same units as the grid) and weights (summing to one) that
    the density smooths with a Gaussian kernel of standard deviation ``sigma``.
    ``point_mass`` is the value of a spectrum of zero width (else None); the
    density then shows it as one kernel. ``resolution`` (log densities) says how
    far the nodes resolve the axis towards zero.
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    bounds: SpectralBounds
    scale: str
    eps: float | None
    num_steps: int
    num_repeats: int
    kappa: float
    reorthogonalize: bool
    seed: int
    point_mass: float | None = None
    resolution: Resolution | None = None


@dataclass(frozen=True)
class DeflatedDensity:
    """Spectrum split as ``(1/p) sum_i delta(lambda_i) + ((p-k)/p) phi_bulk``.

    ``outliers`` are the ``k`` removed eigenvalues (point masses of weight
    ``outlier_weight = 1/p`` each); ``bulk`` is the density of ``A`` restricted to
    the orthogonal complement of their eigenvectors (integrating to one on its
    own; multiply by ``bulk_weight = (p-k)/p`` for the share of the whole).
    """

    outliers: np.ndarray
    outlier_weight: float
    bulk_weight: float
    bulk: SpectralDensity


def kernel_width(num_steps: int, kappa: float, half_width: float) -> float:
    """Gaussian kernel width ``sigma = h (2 / (m - 1)) / sqrt(8 ln kappa)`` for a spectrum
    rescaled to ``[-1, 1]`` by the half-width ``h`` (Papyan 2020, LanczosApproxSpec)."""
    return half_width * (2.0 / (num_steps - 1)) / math.sqrt(8.0 * math.log(kappa))


def gaussian_smooth(points: np.ndarray, weights: np.ndarray | None, sigma: float, grid: np.ndarray) -> np.ndarray:
    """``phi(x) = sum_k w_k N(x; points_k, sigma^2)`` on ``grid`` (``w_k = 1/n`` when
    ``weights`` is None): a smoothed histogram of exact eigenvalues, or a density
    from quadrature nodes."""
    points = np.asarray(points, dtype=np.float64).reshape(-1)
    weights = np.full(points.size, 1.0 / points.size) if weights is None else np.asarray(weights, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    density = np.zeros(grid.size)
    for chunk in range(0, points.size, 4096):
        z = (grid[:, None] - points[None, chunk : chunk + 4096]) / sigma
        density += np.exp(-0.5 * z * z) @ weights[chunk : chunk + 4096]
    return density / (sigma * math.sqrt(2.0 * math.pi))


def _positive_width(lo: float, hi: float) -> tuple[float, float]:
    """``[lo, hi]``, or, when it has (nearly) zero width, ``1e-3`` of its scale around
    its centre (``1e-3`` when the scale is zero)."""
    scale = max(abs(lo), abs(hi))
    if hi - lo > 1e-12 * scale:
        return lo, hi
    half = 0.5e-3 * scale if scale > 0 else 0.5e-3
    centre = 0.5 * (lo + hi)
    return centre - half, centre + half


@dataclass(frozen=True)
class Quadrature:
    """Gauss quadrature of the spectral measure from ``settings.num_repeats`` Lanczos runs.

    ``nodes[i]`` (Ritz values, float64) and ``weights[i]`` (``tau = S_{1k}^2`` divided
    by the number of runs, so all weights sum to one) of every run, ``runs[i]`` the
    run of node ``i``; ``bounds`` from the Ritz values and residual bounds of these
    runs (:func:`theory.lanczos.bounds_from_lanczos`) unless given by the caller;
    ``num_products``: product columns used (``num_repeats`` per Lanczos step, plus 2
    for the symmetry probe); ``point_mass``: the value of a zero-width spectrum
    (every run broke down after its first step), else None.
    """

    nodes: np.ndarray
    weights: np.ndarray
    runs: np.ndarray
    bounds: SpectralBounds
    settings: DensitySettings
    num_products: int
    point_mass: float | None

    def _density(
        self, scale: str, nodes: np.ndarray, lo: float, hi: float, eps: float | None, kappa: float | None,
        num_points: int | None, resolution: Resolution | None = None,
    ) -> SpectralDensity:
        s = density_settings(
            self.settings,
            **({} if kappa is None else {"kappa": kappa}),
            **({} if num_points is None else {"num_points": num_points}),
            **({} if eps is None else {"eps": eps}),
        )
        lo, hi = _positive_width(lo, hi)
        sigma = kernel_width(s.num_steps, s.kappa, 0.5 * (hi - lo))
        grid = np.linspace(min(lo, float(nodes.min()) - 5 * sigma), max(hi, float(nodes.max()) + 5 * sigma), s.num_points)
        density = gaussian_smooth(nodes, self.weights, sigma, grid)
        if not (np.isfinite(density).all() and np.isfinite(grid).all()):
            raise FloatingPointError(
                f"the {scale} density is not finite (sigma = {sigma:.3g}, bounds [{lo:.6g}, {hi:.6g}])"
            )
        return SpectralDensity(
            grid, density, nodes, self.weights, sigma, self.bounds, scale, eps if scale == "log" else None,
            s.num_steps, s.num_repeats, s.kappa, s.reorthogonalize, s.seed, self.point_mass, resolution,
        )

    def linear(self, kappa: float | None = None, num_points: int | None = None) -> SpectralDensity:
        """LanczosApproxSpec: ``phi(x) = (1/n) sum_runs sum_k tau_k N(x; theta_k, sigma^2)``
        with ``sigma = kernel_width(m, kappa, h)``, ``h`` the half width of the bounds;
        the grid spans the bounds and every node by ``5 sigma`` (so it integrates to one)."""
        return self._density("linear", self.nodes, self.bounds.lower, self.bounds.upper, None, kappa, num_points)

    def log(self, eps: float | None = None, kappa: float | None = None, num_points: int | None = None) -> SpectralDensity:
        """The density of ``y = log10(|lambda| + eps)`` (``eps`` default from the settings).

        Nodes are mapped to ``y_k = log10(|theta_k| + eps)`` and smoothed in ``y`` with
        the kernel width for the ``y`` interval ``[log10(eps) or log10(min|bound| + eps),
        log10(max|bound| + eps)]``; it integrates to one over ``y`` (a density in ``lambda``
        would carry the Jacobian ``1 / ((|lambda| + eps) ln 10)``). When the nodes
        do not resolve the axis towards zero (:class:`Resolution`), a
        ``RuntimeWarning`` says so and ``resolution.warning`` keeps the message.
        """
        eps = self.settings.eps if eps is None else check_real("eps", eps, 0.0, low_open=True)
        b = self.bounds
        top = max(abs(b.lower), abs(b.upper))
        bottom = 0.0 if b.lower <= 0.0 <= b.upper else min(abs(b.lower), abs(b.upper))
        y_lo, y_hi = math.log10(bottom + eps), math.log10(top + eps)
        resolution = self._resolution(eps, y_lo)
        if resolution.warning:
            warnings.warn(resolution.warning, RuntimeWarning, stacklevel=3)
        y_nodes = np.log10(np.abs(self.nodes) + eps)
        return self._density("log", y_nodes, y_lo, y_hi, eps, kappa, num_points, resolution)

    def _resolution(self, eps: float, y_lo: float) -> Resolution:
        floors, masses = [], []
        for r in np.unique(self.runs):
            theta, w = self.nodes[self.runs == r], self.weights[self.runs == r] * self.settings.num_repeats
            order = np.argsort(theta)
            theta, w = theta[order], w[order]
            i = int(np.searchsorted(theta, 0.0))  # theta[i-1] < 0 <= theta[i]
            beside = [j for j in (i - 1, i) if 0 <= j < theta.size]
            floors.append(float(np.min(np.abs(theta[beside]))))
            masses.append(float(w[beside].sum()))
        floor, mass = float(np.median(floors)), float(np.mean(masses))
        decades = math.log10(floor + eps) - y_lo
        warning = None
        if self.point_mass is None and decades > UNRESOLVED_DECADES and mass > UNRESOLVED_MASS:
            s = self.settings
            warning = (
                f"log density not resolved below |lambda| = {floor:.3g}: the Lanczos nodes reach down only to "
                f"log10(|lambda| + eps) = {math.log10(floor + eps):.2f}, while the axis goes {decades:.1f} decades "
                f"lower (to {y_lo:.2f}); up to {mass:.0%} of the mass (the weight of the nodes next to zero) may lie "
                f"below, where the density shows none. Raise num_steps (now {s.num_steps}; the smallest resolved "
                f"|lambda| falls about like 1/num_steps^2 of the spectral width, more repeats do not lower it), "
                f"deflate the largest eigenvalues that set the width, or read the log density only above "
                f"{math.log10(floor + eps):.2f} (eps = {eps:g})"
            )
        return Resolution(floor, mass, decades, warning)


def quadrature(
    op: object,
    settings: DensitySettings | None = None,
    *,
    exclude: torch.Tensor | None = None,
    bounds: SpectralBounds | None = None,
    check_symmetry: bool = True,
    show_progress: bool = False,
) -> Quadrature:
    """``settings.num_repeats`` Lanczos runs of ``settings.num_steps`` steps on ``op``
    (random starts from ``settings.seed``, orthogonal to the orthonormal columns of
    ``exclude`` when given), costing ``num_steps`` products per start; the bounds
    come from the same runs unless ``bounds`` is given. Raises ``FloatingPointError``
    when a product is not finite."""
    settings = density_settings(settings)
    op = as_operator(op)
    if op.size < 2:
        raise ArgumentError(f"op: a spectral density needs a dimension >= 2, got {op.size}")
    check_int("num_steps", settings.num_steps, 2, op.size, what="(the operator's dimension)")
    if bounds is not None and not isinstance(bounds, SpectralBounds):
        raise ArgumentError(f"bounds: expected a theory.lanczos.SpectralBounds, got {type(bounds).__name__}")
    if bounds is not None and not bounds.upper > bounds.lower:
        raise ArgumentError(f"bounds: expected lower < upper, got [{bounds.lower}, {bounds.upper}]")
    check_symmetry = check_flag("check_symmetry", check_symmetry)
    op = prepare_operator(op, check_symmetry, settings.seed)
    res = lanczos(
        op, settings.num_steps, num_starts=settings.num_repeats, reorthogonalize=settings.reorthogonalize,
        seed=settings.seed, exclude=exclude, check_symmetry=False, show_progress=show_progress,
    )
    mask = ~np.isnan(res.ritz_values)
    nodes, weights = res.ritz_values[mask], res.weights[mask] / settings.num_repeats
    runs = np.broadcast_to(np.arange(settings.num_repeats)[:, None], mask.shape)[mask]
    point_mass = float(nodes @ weights) if bool(np.all(res.num_valid == 1)) else None
    if bounds is None:  # a point mass gets a width of 1e-3 of its value, far above the nodes' round-off
        bounds = bounds_from_lanczos(res, settings.margin, min_width=1e-12 if point_mass is None else 1e-3)
    elif nodes.size and (nodes.min() < bounds.lower - (slack := 1e-10 * max(abs(bounds.lower), abs(bounds.upper)))
                         or nodes.max() > bounds.upper + slack):  # Ritz values lie in the spectrum
        raise ArgumentError(
            f"bounds: [{bounds.lower:.6g}, {bounds.upper:.6g}] do not contain the spectrum (Ritz values reach "
            f"[{nodes.min():.6g}, {nodes.max():.6g}]); widen them or leave bounds=None to estimate them"
        )
    return Quadrature(
        nodes=nodes,
        weights=weights,
        runs=runs,
        bounds=bounds,
        settings=settings,
        num_products=settings.num_repeats * int(res.num_valid.max()) + (2 if check_symmetry else 0),
        point_mass=point_mass,
    )


def spectral_density(
    op: object,
    settings: DensitySettings | None = None,
    *,
    bounds: SpectralBounds | None = None,
    exclude: torch.Tensor | None = None,
    check_symmetry: bool = True,
    show_progress: bool = False,
    **changes: Any,
) -> SpectralDensity:
    """:meth:`Quadrature.linear` of :func:`quadrature`; ``changes`` (``num_steps=...``,
    ``kappa=...``, any :class:`DensitySettings` field) replace fields of ``settings``."""
    q = quadrature(op, density_settings(settings, **changes), exclude=exclude, bounds=bounds,
                   check_symmetry=check_symmetry, show_progress=show_progress)
    return q.linear()


def log_spectral_density(
    op: object,
    settings: DensitySettings | None = None,
    *,
    bounds: SpectralBounds | None = None,
    exclude: torch.Tensor | None = None,
    check_symmetry: bool = True,
    show_progress: bool = False,
    **changes: Any,
) -> SpectralDensity:
    """:meth:`Quadrature.log` of :func:`quadrature` (the density of ``log10(|lambda| + eps)``);
    ``changes`` replace fields of ``settings``."""
    q = quadrature(op, density_settings(settings, **changes), exclude=exclude, bounds=bounds,
                   check_symmetry=check_symmetry, show_progress=show_progress)
    return q.log()


def spectral_densities(
    op: object,
    settings: DensitySettings | None = None,
    *,
    bounds: SpectralBounds | None = None,
    exclude: torch.Tensor | None = None,
    check_symmetry: bool = True,
    show_progress: bool = False,
    **changes: Any,
) -> tuple[SpectralDensity, SpectralDensity]:
    """``(spectral_density(op, ...), log_spectral_density(op, ...))`` from one
    :func:`quadrature`: the same numbers as the two calls, at half the products."""
    q = quadrature(op, density_settings(settings, **changes), exclude=exclude, bounds=bounds,
                   check_symmetry=check_symmetry, show_progress=show_progress)
    return q.linear(), q.log()


def _deflated(op: SymmetricOperator, values: np.ndarray, bulk: SpectralDensity) -> DeflatedDensity:
    return DeflatedDensity(
        outliers=np.sort(values)[::-1].copy(),
        outlier_weight=1.0 / op.size,
        bulk_weight=(op.size - values.size) / op.size,
        bulk=bulk,
    )


def bulk_quadrature(
    op: object,
    pairs: Eigenpairs | tuple[object, object],
    settings: DensitySettings | None = None,
    **options: Any,
) -> tuple[SymmetricOperator, np.ndarray, Quadrature]:
    """The quadrature of ``(I - QQ^T) A (I - QQ^T)`` from starts in the complement of
    ``Q = span(eigenvectors)``; returns ``(A, outlier values, quadrature)``
    (``options``: those of :func:`quadrature`)."""
    op = as_operator(op)
    values, vectors = eigenpairs_arrays(pairs)
    projected = ProjectedOperator(op, vectors)
    return op, values, quadrature(projected, settings, exclude=projected.Q, **options)


def _split(kwargs: dict[str, Any]) -> tuple[DensitySettings, dict[str, Any]]:
    options = {k: kwargs.pop(k) for k in ("bounds", "check_symmetry", "show_progress") if k in kwargs}
    return density_settings(kwargs.pop("settings", None), **kwargs), options


def bulk_density(
    op: object,
    pairs: Eigenpairs | tuple[object, object],
    *,
    log: bool = False,
    **density_kwargs: Any,
) -> DeflatedDensity:
    """Outliers as point masses of weight ``1/p``, plus the density (linear, or
    log with ``log=True``) of ``(I - QQ^T) A (I - QQ^T)`` on the complement of
    ``Q = span(eigenvectors)``, from Lanczos starts drawn in that complement
    (``density_kwargs``: ``settings=``, fields of :class:`DensitySettings`, and the
    options of :func:`quadrature`)."""
    settings, options = _split(dict(density_kwargs))
    op, values, q = bulk_quadrature(op, pairs, settings, **options)
    return _deflated(op, values, q.log() if log else q.linear())


def bulk_densities(
    op: object,
    pairs: Eigenpairs | tuple[object, object],
    **density_kwargs: Any,
) -> tuple[DeflatedDensity, DeflatedDensity]:
    """``(bulk_density(op, pairs, ...), bulk_density(op, pairs, log=True, ...))`` from one
    set of Lanczos runs."""
    settings, options = _split(dict(density_kwargs))
    op, values, q = bulk_quadrature(op, pairs, settings, **options)
    return _deflated(op, values, q.linear()), _deflated(op, values, q.log())
