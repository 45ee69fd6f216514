"""Matrix-free spectral numerics on the operator contract (Papyan 2020, Appendix C).

Every routine touches the operator only through ``matmat``; vectors live in the
operator's dtype and device, while Lanczos coefficients, tridiagonal
eigenproblems and Rayleigh-Ritz Gram matrices are float64 on the CPU.

* :func:`lanczos`: Lanczos tridiagonalisation ``Q^T A Q = T`` from one or several
  independent random starts (run together as the columns of one block), with full
  reorthogonalisation (exact, ``O(m p)`` memory) or without (``O(p)`` memory);
  Gauss quadrature nodes ``theta_k`` and weights ``tau_k = S_{1k}^2`` from
  ``T = S diag(theta) S^T``.
* :func:`estimate_bounds`: the spectral interval ``[theta_min - r_min, theta_max + r_max]``
  widened by a margin, with ``r = |beta_m S_{m,k}|`` the Ritz residual bounds.
* :func:`spectral_density` / :func:`log_spectral_density`: the Gaussian-smoothed
  spectral density ``phi(x) = (1/n) sum_runs sum_k tau_k N(x; theta_k, sigma^2)``.
* :func:`top_eigenpairs`: block subspace iteration with Rayleigh-Ritz.
* :func:`deflate` and :func:`bulk_density`: remove outliers ``A - Q diag(lambda) Q^T``
  and estimate the density of the rest, outliers kept as point masses ``1/p``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.linalg
import torch

from .operators import ProjectedOperator, SymmetricOperator, as_operator, check_symmetric
from .progress import progress
from .recurrence import column_dots, recurrence_step

__all__ = [
    "LanczosResult",
    "SpectralBounds",
    "SpectralDensity",
    "Eigenpairs",
    "DeflatedDensity",
    "lanczos",
    "estimate_bounds",
    "spectral_density",
    "log_spectral_density",
    "spectral_densities",
    "top_eigenpairs",
    "deflate",
    "bulk_density",
    "bulk_densities",
    "kernel_width",
    "gaussian_smooth",
]

Which = Literal["largest", "smallest", "magnitude"]


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class LanczosResult:
    """Lanczos coefficients of ``s`` independent runs of ``m`` steps (float64).

    ``alpha[r, j] = q_j^T A q_j`` and ``beta[r, j] = |r_j|`` with ``r_j`` the residual
    after step ``j`` (so ``beta[r, :-1]`` is the off-diagonal of ``T`` and ``beta[r, -1]``
    the final residual norm). A run that found an invariant subspace after
    ``num_valid[r] < m`` steps has its remaining entries padded: Ritz values and
    residual bounds with NaN, weights with 0.
    """

    alpha: np.ndarray
    beta: np.ndarray
    ritz_values: np.ndarray
    weights: np.ndarray
    residual_bounds: np.ndarray
    num_valid: np.ndarray
    num_steps: int
    reorthogonalize: bool
    seed: int

    def tridiagonal(self, run: int = 0) -> np.ndarray:
        """The dense ``n x n`` tridiagonal ``T`` of run ``run`` (``n = num_valid[run]``)."""
        n = int(self.num_valid[run])
        off = self.beta[run, : n - 1]
        return np.diag(self.alpha[run, :n]) + np.diag(off, 1) + np.diag(off, -1)

    def nodes_and_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """All valid quadrature nodes and weights, flattened; weights sum to ``s``."""
        mask = ~np.isnan(self.ritz_values)
        return self.ritz_values[mask], self.weights[mask]


@dataclass(frozen=True)
class SpectralBounds:
    """An interval ``[lower, upper]`` holding the spectrum, and how it was estimated."""

    lower: float
    upper: float
    ritz_min: float
    ritz_max: float
    num_steps: int
    margin: float

    @property
    def center(self) -> float:
        return 0.5 * (self.upper + self.lower)

    @property
    def half_width(self) -> float:
        return 0.5 * (self.upper - self.lower)


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
class Eigenpairs:
    """``k`` eigenpairs ``A v_i = lambda_i v_i``, eigenvalues descending by value.

    ``residuals[i] = |A v_i - lambda_i v_i|`` (float64, ``|v_i| = 1``).
    """

    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor = field(metadata={"json": False})
    residuals: np.ndarray
    num_iterations: int
    converged: bool
    which: str
    block_size: int
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


# ------------------------------------------------------------------------ validation
def _check_int(name: str, value: int, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}: expected an integer {bound}, got {value}")
    return int(value)


def _check_kappa(kappa: float) -> float:
    if not (np.isfinite(kappa) and kappa > 1.0):
        raise ValueError(f"kappa: expected a number > 1 (larger is a narrower kernel), got {kappa}")
    return float(kappa)


def _prepare(op: object, check_symmetry: bool, seed: int) -> SymmetricOperator:
    op = as_operator(op)
    if check_symmetry:
        check_symmetric(op, seed=seed + 7919)
    return op


def _random_block(op: SymmetricOperator, k: int, seed: int, exclude: torch.Tensor | None) -> torch.Tensor:
    """``k`` standard normal columns drawn on the CPU in float64 from ``seed`` (so the
    same seed gives the same start on every device), projected orthogonal to the
    orthonormal columns of ``exclude`` when given."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    X = torch.randn(op.size, k, generator=gen, dtype=torch.float64)
    if exclude is not None:
        E = exclude.to(dtype=torch.float64, device="cpu")
        X -= E @ (E.T @ X)
        X -= E @ (E.T @ X)
    return X.to(dtype=op.dtype, device=op.device)


# --------------------------------------------------------------------------- Lanczos
def lanczos(
    op: object,
    num_steps: int,
    *,
    num_starts: int = 1,
    reorthogonalize: bool = True,
    seed: int = 0,
    start: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    check_symmetry: bool = True,
    show_progress: bool = False,
) -> LanczosResult:
    """Run ``num_steps`` Lanczos steps from ``num_starts`` starts at once.

    Recurrence per start: ``beta_j q_{j+1} = A q_j - alpha_j q_j - beta_{j-1} q_{j-1}``,
    ``alpha_j = q_j^T A q_j``. With ``reorthogonalize=True`` every residual is
    orthogonalised twice against all previous ``q`` (classical Gram-Schmidt twice);
    otherwise only the three-term recurrence is kept (ghost copies of converged
    eigenvalues appear: harmless for densities, wrong for counting).

    ``start`` (``p`` or ``p x num_starts``) replaces the random starts; ``exclude``
    (``p x r``, orthonormal) makes random starts orthogonal to its columns.
    A run stops early (``num_valid < num_steps``) when ``beta_j`` falls below
    ``eps^(3/4) max|T|``: an invariant subspace was found.
    """
    op = as_operator(op)
    m = _check_int("num_steps", num_steps, 2, op.size)
    s = _check_int("num_starts", num_starts, 1)
    op = _prepare(op, check_symmetry, seed)
    if start is None:
        Q = _random_block(op, s, seed, exclude)
    else:
        Q = torch.as_tensor(start).to(dtype=op.dtype, device=op.device)
        Q = Q[:, None] if Q.ndim == 1 else Q
        if Q.shape != (op.size, s):
            raise ValueError(f"start: expected shape ({op.size}, {s}), got {tuple(Q.shape)}")
    norms = torch.linalg.vector_norm(Q, dim=0)
    if not bool(torch.all(norms > 0)):
        raise ValueError("start: every start vector must be nonzero")
    q = (Q / norms).contiguous()
    q_prev = torch.zeros_like(q)
    basis = torch.empty((s, m, op.size), dtype=op.dtype, device=op.device) if reorthogonalize else None

    alpha = np.zeros((s, m))
    beta = np.zeros((s, m))
    num_valid = np.full(s, m, dtype=np.int64)
    active = np.ones(s, dtype=bool)
    beta_prev = np.zeros(s)
    tol = torch.finfo(op.dtype).eps ** 0.75
    anorm = 0.0
    steps = progress(range(m), total=m, desc="lanczos", enabled=show_progress)
    for j in steps:
        w = op.matmat(q)
        a = column_dots(q, w)
        b2 = recurrence_step(w, q, q_prev, a, beta_prev)
        if basis is not None:
            for r in range(s):
                basis[r, j] = q[:, r]
                for _ in range(2):
                    coef = basis[r, : j + 1] @ w[:, r]
                    w[:, r] -= basis[r, : j + 1].T @ coef
            b2 = torch.linalg.vector_norm(w, dim=0, dtype=torch.float64).cpu().numpy() ** 2
        b = np.sqrt(b2)
        bad = active & ~(np.isfinite(a) & np.isfinite(b))
        if bad.any():
            raise FloatingPointError(
                f"the operator's product returned NaN or Inf at Lanczos step {j + 1} "
                f"(start {int(np.flatnonzero(bad)[0])})"
            )
        alpha[:, j] = np.where(active, a, 0.0)
        beta[:, j] = np.where(active, b, 0.0)
        anorm = max(anorm, float(np.max(np.abs(alpha[:, j]) + beta[:, j])))
        stopped = active & (b <= tol * anorm)
        num_valid[stopped] = j + 1
        active &= ~stopped
        if not active.any():
            break
        scale = np.where(active, 1.0 / np.maximum(b, np.finfo(float).tiny), 0.0)
        q_prev, q = q, w.mul_(torch.as_tensor(scale, dtype=op.dtype, device=op.device)[None, :])
        beta_prev = np.where(active, b, 0.0)

    ritz = np.full((s, m), np.nan)
    weights = np.zeros((s, m))
    resid = np.full((s, m), np.nan)
    for r in range(s):
        n = int(num_valid[r])
        theta, S = scipy.linalg.eigh_tridiagonal(alpha[r, :n], beta[r, : n - 1])
        ritz[r, :n] = theta
        weights[r, :n] = S[0] ** 2
        resid[r, :n] = np.abs(beta[r, n - 1] * S[n - 1])
    return LanczosResult(alpha, beta, ritz, weights, resid, num_valid, m, bool(reorthogonalize), int(seed))


def estimate_bounds(
    op: object,
    *,
    num_steps: int = 32,
    margin: float = 0.05,
    seed: int = 0,
    exclude: torch.Tensor | None = None,
    check_symmetry: bool = True,
) -> SpectralBounds:
    """The Normalization step: ``[theta_1 - |beta_m S_{m,1}|, theta_m + |beta_m S_{m,m}|]``
    from a short run without reorthogonalisation, widened by ``margin`` times its
    width on each side (``num_steps`` is capped at ``p``)."""
    op = as_operator(op)
    if not (np.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin: expected a number >= 0, got {margin}")
    steps = min(_check_int("num_steps", num_steps, 2), op.size)
    if op.size < 2:
        raise ValueError(f"op: spectral estimates need a dimension >= 2, got {op.size}")
    res = lanczos(op, steps, reorthogonalize=False, seed=seed, exclude=exclude, check_symmetry=check_symmetry)
    lo = float(np.nanmin(res.ritz_values - res.residual_bounds))
    hi = float(np.nanmax(res.ritz_values + res.residual_bounds))
    width = hi - lo
    if width <= 1e-12 * max(abs(lo), abs(hi)):
        width = max(abs(lo), abs(hi), 1e-30) * 1e-3
    return SpectralBounds(
        lower=lo - margin * width,
        upper=hi + margin * width,
        ritz_min=float(np.nanmin(res.ritz_values)),
        ritz_max=float(np.nanmax(res.ritz_values)),
        num_steps=steps,
        margin=float(margin),
    )


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
    m = _check_int("num_steps", num_steps, 2, op.size)
    _check_int("num_repeats", num_repeats, 1)
    _check_int("num_points", num_points, 2)
    _check_kappa(kappa)
    op = _prepare(op, check_symmetry, seed)
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


def _check_eps(eps: float) -> None:
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps: expected a number > 0, got {eps}")


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
    _check_eps(eps)
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
    _check_eps(eps)
    _, bounds, nodes, weights = _density_runs(
        op, num_steps, num_repeats, kappa, num_points, margin, seed, bounds,
        reorthogonalize, exclude, check_symmetry, show_progress,
    )
    settings = (num_steps, num_repeats, kappa, num_points, reorthogonalize, seed)
    return (
        _linear_density(bounds, nodes, weights, *settings),
        _log_density(bounds, nodes, weights, eps, *settings),
    )


# ----------------------------------------------------------------- subspace iteration
def top_eigenpairs(
    op: object,
    k: int,
    *,
    which: Which = "largest",
    num_iterations: int | None = None,
    tol: float = 1e-6,
    max_iterations: int = 1000,
    oversample: int | None = None,
    seed: int = 0,
    check_symmetry: bool = True,
    show_progress: bool = False,
) -> Eigenpairs:
    """``k`` extreme eigenpairs by block subspace iteration with Rayleigh-Ritz.

    Iterates ``X <- qr(B X)`` on a block of ``b = k + oversample`` columns (default
    oversample ``max(k, 8)``), with ``B = A - s I`` for ``which="largest"``,
    ``B = s I - A`` for ``"smallest"`` (``s`` a Lanczos bound making ``B`` positive
    semidefinite when needed) and ``B = A`` for ``"magnitude"``; each iteration
    takes the Rayleigh-Ritz pairs of ``H = X^T A X`` (float64). Stops after
    ``num_iterations`` if given, else when every wanted residual
    ``|A v_i - theta_i v_i| <= max(tol |theta_i|, 100 eps max_j |theta_j|)`` (``eps`` of
    the operator's dtype; ``tol`` is raised to ``100 eps``) or after
    ``max_iterations`` with a warning.
    """
    op = as_operator(op)
    k = _check_int("k", k, 1, op.size)
    if which not in ("largest", "smallest", "magnitude"):
        raise ValueError(f"which: expected 'largest', 'smallest' or 'magnitude', got {which!r}")
    if num_iterations is not None:
        _check_int("num_iterations", num_iterations, 1)
    _check_int("max_iterations", max_iterations, 1)
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol: expected a number > 0, got {tol}")
    extra = max(k, 8) if oversample is None else _check_int("oversample", oversample, 0)
    b = min(op.size, k + extra)
    op = _prepare(op, check_symmetry, seed)

    sign, shift = 1.0, 0.0
    if which != "magnitude" and op.size > 2:
        bnd = estimate_bounds(op, margin=0.0, seed=seed + 1, check_symmetry=False)
        if which == "largest" and bnd.lower < 0:
            shift = bnd.lower
        elif which == "smallest":
            sign, shift = -1.0, max(bnd.upper, 0.0)
    tol = max(tol, 100 * torch.finfo(op.dtype).eps)
    limit = num_iterations if num_iterations is not None else max_iterations

    X, _ = torch.linalg.qr(_random_block(op, b, seed, None))
    # Buffers reused across iterations: Ritz vectors, their images, the residual block.
    ritz, image, R = torch.empty_like(X), torch.empty_like(X), X.new_empty(op.size, k)
    R_qr = X.new_empty(b, b)
    converged = False
    it = 0
    for it in progress(range(1, limit + 1), total=limit, desc="subspace", enabled=show_progress):
        AX = op.matmat(X)
        H = X.double().T @ AX.double()  # no copies for float64 blocks
        theta, S = torch.linalg.eigh(0.5 * (H + H.T).cpu())
        key = {"largest": theta, "smallest": -theta, "magnitude": theta.abs()}[which]
        order = torch.argsort(key, descending=True)
        theta, S = theta[order], S[:, order].to(dtype=op.dtype, device=op.device)
        torch.mm(X, S, out=ritz)
        torch.mm(AX, S, out=image)
        del AX
        torch.mul(ritz[:, :k], theta[:k].to(dtype=op.dtype, device=op.device), out=R).sub_(image[:, :k])
        residuals = torch.linalg.vector_norm(R, dim=0, dtype=torch.float64).cpu()
        if not bool(torch.isfinite(theta).all()) or not bool(torch.isfinite(residuals).all()):
            raise FloatingPointError(f"the operator's product returned NaN or Inf at subspace iteration {it}")
        scale = float(theta.abs().max()) or 1.0
        floor = 100 * torch.finfo(op.dtype).eps * scale
        converged = bool((residuals <= torch.clamp(tol * theta[:k].abs(), min=floor)).all())
        if it == limit or (num_iterations is None and converged):
            break
        if shift != 0.0:
            image.sub_(ritz, alpha=shift)
        if sign < 0:
            image.neg_()
        torch.linalg.qr(image, out=(X, R_qr))
    if num_iterations is None and not converged:
        warnings.warn(
            f"top_eigenpairs: not converged after {it} iterations (largest relative residual "
            f"{float((residuals / theta[:k].abs()).max()):.2e}, tol={tol:.1e}); raise max_iterations or oversample",
            RuntimeWarning,
            stacklevel=2,
        )
    values = theta[:k].numpy()
    order = np.argsort(-values, kind="stable")
    return Eigenpairs(
        eigenvalues=values[order],
        eigenvectors=ritz[:, torch.as_tensor(order, device=ritz.device)],
        residuals=residuals.numpy()[order],
        num_iterations=it,
        converged=converged,
        which=which,
        block_size=b,
        seed=int(seed),
    )


# ------------------------------------------------------------------------- deflation
def _pairs(pairs: Eigenpairs | tuple[object, object]) -> tuple[np.ndarray, torch.Tensor]:
    if isinstance(pairs, Eigenpairs):
        return pairs.eigenvalues, pairs.eigenvectors
    values, vectors = pairs
    return np.asarray(values, dtype=np.float64).reshape(-1), torch.as_tensor(vectors)


def deflate(op: object, pairs: Eigenpairs | tuple[object, object]) -> SymmetricOperator:
    """The deflated operator ``A - sum_j lambda_j q_j q_j^T`` (``pairs`` from
    :func:`top_eigenpairs` or a ``(values, vectors)`` tuple with ``vectors`` p x k)."""
    op = as_operator(op)
    values, vectors = _pairs(pairs)
    return op.low_rank_update(vectors, -values)


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
    values, vectors = _pairs(pairs)
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
    values, vectors = _pairs(pairs)
    projected = ProjectedOperator(op, vectors)
    linear, log = spectral_densities(projected, exclude=projected.Q, **density_kwargs)
    return _deflated(op, values, linear), _deflated(op, values, log)
