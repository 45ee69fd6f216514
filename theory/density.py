"""Spectral densities by stochastic Lanczos quadrature (Papyan 2020, Appendix C).

* :func:`spectral_density` / :func:`log_spectral_density`: the Gaussian-smoothed
  spectral density ``phi(x) = (1/n) sum_runs sum_k tau_k N(x; theta_k, sigma^2)``.
* :func:`bulk_density`: outliers removed as point masses ``1/p``, the density of
  ``(I - QQ^T) A (I - QQ^T)`` on the complement of their eigenvectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .checks import check_int, check_real
from .eigenpairs import Eigenpairs, eigenpairs_arrays
from .lanczos import SpectralBounds, estimate_bounds, lanczos, prepare_operator
from .operators import ProjectedOperator, SymmetricOperator, as_operator

__all__ = [
    "DeflatedDensity",
    "SpectralDensity",
    "bulk_densities",
    "bulk_density",
    "gaussian_smooth",
    "kernel_width",
    "log_spectral_density",
    "spectral_densities",
    "spectral_density",
]


@dataclass(frozen=True)
class SpectralDensity:
    """A smoothed spectral density on a grid; ``trapz(density, grid) = 1``.

    With ``scale == "linear"`` the grid is in units of eigenvalues ``lambda``; with
    ``scale == "log"`` it is ``log10(|lambda| + eps)``. ``nodes`` and ``weights`` are the
    quadrature nodes (same units as the grid) and weights (summing to one) that
    the density smooths with a Gaussian kernel of standard deviation ``sigma``.
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


def _smooth(nodes: np.ndarray, weights: np.ndarray, sigma: float, lo: float, hi: float, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """The smoothed density on a grid covering ``[lo, hi]`` and every node by
    ``5 sigma``, so that the grid holds the whole mass."""
    lo = min(lo, float(nodes.min()) - 5 * sigma)
    hi = max(hi, float(nodes.max()) + 5 * sigma)
    grid = np.linspace(lo, hi, num_points)
    return grid, gaussian_smooth(nodes, weights, sigma, grid)


def _density_runs(
    op: object,
    num_steps: int,
    num_repeats: int,
    kappa: float,
    num_points: int,
    margin: float,
    seed: int,
    bounds: SpectralBounds | None,
    reorthogonalize: bool,
    exclude: torch.Tensor | None,
    check_symmetry: bool,
    show_progress: bool,
) -> tuple[SymmetricOperator, SpectralBounds, np.ndarray, np.ndarray]:
    """Shared front half of the density estimators: validate, bound, run Lanczos;
    returns the nodes and weights (summing to one)."""
    op = as_operator(op)
    m = check_int("num_steps", num_steps, 2, op.size)
    check_int("num_repeats", num_repeats, 1)
    check_int("num_points", num_points, 2)
    check_real("kappa", kappa, 1.0, low_open=True, what="(larger is a narrower kernel)")
    op = prepare_operator(op, check_symmetry, seed)
    if bounds is None:
        bounds = estimate_bounds(op, margin=margin, seed=seed + 1, exclude=exclude, check_symmetry=False)
    elif not bounds.upper > bounds.lower:
        raise ValueError(f"bounds: expected lower < upper, got [{bounds.lower}, {bounds.upper}]")
    res = lanczos(
        op, m, num_starts=num_repeats, reorthogonalize=reorthogonalize, seed=seed,
        exclude=exclude, check_symmetry=False, show_progress=show_progress,
    )
    nodes, weights = res.nodes_and_weights()
    return op, bounds, nodes, weights / num_repeats


def _linear_density(
    bounds: SpectralBounds, nodes: np.ndarray, weights: np.ndarray, num_steps: int, num_repeats: int,
    kappa: float, num_points: int, reorthogonalize: bool, seed: int,
) -> SpectralDensity:
    """The density in ``lambda`` from quadrature nodes and weights (see :func:`spectral_density`)."""
    sigma = kernel_width(num_steps, kappa, bounds.half_width)
    grid, density = _smooth(nodes, weights, sigma, bounds.lower, bounds.upper, num_points)
    return SpectralDensity(
        grid, density, nodes, weights, sigma, bounds, "linear", None,
        num_steps, num_repeats, float(kappa), bool(reorthogonalize), int(seed),
    )


def _log_density(
    bounds: SpectralBounds, nodes: np.ndarray, weights: np.ndarray, eps: float, num_steps: int,
    num_repeats: int, kappa: float, num_points: int, reorthogonalize: bool, seed: int,
) -> SpectralDensity:
    """The density in ``log10(|lambda| + eps)`` from the same nodes (see :func:`log_spectral_density`)."""
    top = max(abs(bounds.lower), abs(bounds.upper))
    bottom = 0.0 if bounds.lower <= 0.0 <= bounds.upper else min(abs(bounds.lower), abs(bounds.upper))
    y_lo, y_hi = math.log10(bottom + eps), math.log10(top + eps)
    sigma = kernel_width(num_steps, kappa, 0.5 * (y_hi - y_lo))
    y_nodes = np.log10(np.abs(nodes) + eps)
    grid, density = _smooth(y_nodes, weights, sigma, y_lo, y_hi, num_points)
    return SpectralDensity(
        grid, density, y_nodes, weights, sigma, bounds, "log", float(eps),
        num_steps, num_repeats, float(kappa), bool(reorthogonalize), int(seed),
    )


def spectral_density(
    op: object,
    *,
    num_steps: int = 128,
    num_repeats: int = 10,
    kappa: float = 3.0,
    num_points: int = 1024,
    margin: float = 0.05,
    seed: int = 0,
    bounds: SpectralBounds | None = None,
    reorthogonalize: bool = False,
    exclude: torch.Tensor | None = None,
    check_symmetry: bool = True,
    show_progress: bool = False,
) -> SpectralDensity:
    """LanczosApproxSpec: ``phi(x) = (1/n) sum_runs sum_k tau_k N(x; theta_k, sigma^2)``.

    ``n = num_repeats`` Lanczos runs of ``m = num_steps`` steps (without
    reorthogonalisation by default) give nodes ``theta_k`` and weights ``tau_k``;
    the kernel width is ``sigma = h (2/(m-1)) / sqrt(8 ln kappa)`` with ``h`` the half
    width of ``bounds`` (estimated by :func:`estimate_bounds` when not given).
    ``kappa`` defaults to 3 (the papers use 1.25 to 3; larger is sharper). The
    grid spans the bounds and every node by ``5 sigma``, so the density integrates
    to one.
    """
    _, bounds, nodes, weights = _density_runs(
        op, num_steps, num_repeats, kappa, num_points, margin, seed, bounds,
        reorthogonalize, exclude, check_symmetry, show_progress,
    )
    return _linear_density(bounds, nodes, weights, num_steps, num_repeats, kappa, num_points, reorthogonalize, seed)


def log_spectral_density(
    op: object,
    *,
    eps: float = 1e-6,
    num_steps: int = 128,
    num_repeats: int = 10,
    kappa: float = 3.0,
    num_points: int = 1024,
    margin: float = 0.05,
    seed: int = 0,
    bounds: SpectralBounds | None = None,
    reorthogonalize: bool = False,
    exclude: torch.Tensor | None = None,
    check_symmetry: bool = True,
    show_progress: bool = False,
) -> SpectralDensity:
    """The density of ``y = log10(|lambda| + eps)`` from the same Lanczos quadrature.

    Nodes are mapped to ``y_k = log10(|theta_k| + eps)`` and smoothed in ``y`` with the
    kernel width of :func:`spectral_density` computed for the ``y`` interval
    ``[log10(eps) or log10(min|bound| + eps), log10(max|bound| + eps)]``; the result
    is a density in ``y`` (it integrates to one over ``y``; a density in ``lambda``
    would carry the Jacobian ``dy/dlambda = 1 / ((|lambda| + eps) ln 10)``).
    """
    check_real("eps", eps, 0.0, low_open=True)
    _, bounds, nodes, weights = _density_runs(
        op, num_steps, num_repeats, kappa, num_points, margin, seed, bounds,
        reorthogonalize, exclude, check_symmetry, show_progress,
    )
    return _log_density(bounds, nodes, weights, eps, num_steps, num_repeats, kappa, num_points, reorthogonalize, seed)


def spectral_densities(
    op: object,
    *,
    eps: float = 1e-6,
    num_steps: int = 128,
    num_repeats: int = 10,
    kappa: float = 3.0,
    num_points: int = 1024,
    margin: float = 0.05,
    seed: int = 0,
    bounds: SpectralBounds | None = None,
    reorthogonalize: bool = False,
    exclude: torch.Tensor | None = None,
    check_symmetry: bool = True,
    show_progress: bool = False,
) -> tuple[SpectralDensity, SpectralDensity]:
    """``(spectral_density(op, ...), log_spectral_density(op, eps=eps, ...))`` from one
    set of Lanczos runs: the same numbers as the two calls, at half the products."""
    check_real("eps", eps, 0.0, low_open=True)
    _, bounds, nodes, weights = _density_runs(
        op, num_steps, num_repeats, kappa, num_points, margin, seed, bounds,
        reorthogonalize, exclude, check_symmetry, show_progress,
    )
    settings = (num_steps, num_repeats, kappa, num_points, reorthogonalize, seed)
    return (
        _linear_density(bounds, nodes, weights, *settings),
        _log_density(bounds, nodes, weights, eps, *settings),
    )


def _deflated(op: SymmetricOperator, values: np.ndarray, bulk: SpectralDensity) -> DeflatedDensity:
    return DeflatedDensity(
        outliers=np.sort(values)[::-1].copy(),
        outlier_weight=1.0 / op.size,
        bulk_weight=(op.size - values.size) / op.size,
        bulk=bulk,
    )


def bulk_density(
    op: object,
    pairs: Eigenpairs | tuple[object, object],
    *,
    log: bool = False,
    **density_kwargs: object,
) -> DeflatedDensity:
    """Outliers as point masses of weight ``1/p``, plus the density (linear, or
    log with ``log=True``) of ``(I - QQ^T) A (I - QQ^T)`` on the complement of
    ``Q = span(eigenvectors)``, from Lanczos starts drawn in that complement."""
    op = as_operator(op)
    values, vectors = eigenpairs_arrays(pairs)
    projected = ProjectedOperator(op, vectors)
    estimator = log_spectral_density if log else spectral_density
    return _deflated(op, values, estimator(projected, exclude=projected.Q, **density_kwargs))


def bulk_densities(
    op: object,
    pairs: Eigenpairs | tuple[object, object],
    **density_kwargs: object,
) -> tuple[DeflatedDensity, DeflatedDensity]:
    """``(bulk_density(op, pairs, ...), bulk_density(op, pairs, log=True, ...))`` from one
    set of Lanczos runs (:func:`spectral_densities`; ``eps`` goes to the log density)."""
    op = as_operator(op)
    values, vectors = eigenpairs_arrays(pairs)
    projected = ProjectedOperator(op, vectors)
    linear, log = spectral_densities(projected, exclude=projected.Q, **density_kwargs)
    return _deflated(op, values, linear), _deflated(op, values, log)
