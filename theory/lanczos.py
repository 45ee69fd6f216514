"""Lanczos tridiagonalisation on the operator contract (Papyan 2020, Appendix C).

Recurrence ``beta_j q_{j+1} = A q_j - alpha_j q_j - beta_{j-1} q_{j-1}`` from one or
several independent random starts (run together as the columns of one block),
with full reorthogonalisation (exact, ``O(m p)`` memory) or without (``O(p)``
memory); Gauss quadrature nodes ``theta_k`` and weights ``tau_k = S_{1k}^2`` from
``T = S diag(theta) S^T``. Coefficients are float64 whatever the operator's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import torch

from .checks import check_int, check_real
from .operators import SymmetricOperator, as_operator, check_symmetric
from .progress import progress
from .recurrence import column_dots, column_norms, recurrence_step

__all__ = [
    "LanczosResult",
    "SpectralBounds",
    "bounds_from_lanczos",
    "estimate_bounds",
    "lanczos",
    "prepare_operator",
    "random_block",
]


@dataclass(frozen=True)
class LanczosResult:
    """Lanczos coefficients of ``s`` independent runs of ``m`` steps (float64).

    ``alpha[r, j] = q_j^T A q_j`` and ``beta[r, j] = |r_j|`` with ``r_j`` the residual
    after step ``j`` (so ``beta[r, :-1]`` is the off-diagonal of ``T`` and ``beta[r, -1]``
    the final residual norm). A run that found an invariant subspace after
    ``num_valid[r] < m`` steps has its remaining entries padded: Ritz values and
    residual bounds with NaN, weights with 0. ``basis`` (kept on request) holds
    ``q_1 .. q_{m+1}`` of each run as ``basis[r, j]``, so that
    ``A Q_m = Q_m T + beta_m q_{m+1} e_m^T`` with ``Q_m = basis[r, :m].T``.
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
    basis: torch.Tensor | None = field(default=None, metadata={"json": False}, repr=False)

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



def prepare_operator(op: object, check_symmetry: bool, seed: int) -> SymmetricOperator:
    op = as_operator(op)
    if check_symmetry:
        check_symmetric(op, seed=seed + 7919)
    return op


def random_block(op: SymmetricOperator, k: int, seed: int, exclude: torch.Tensor | None) -> torch.Tensor:
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
    keep_basis: bool = False,
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
    ``eps^(3/4) max|T|``: an invariant subspace was found. ``keep_basis=True``
    returns the Lanczos vectors (``O(m p)`` memory) in ``basis``.
    """
    op = as_operator(op)
    m = check_int("num_steps", num_steps, 2, op.size)
    s = check_int("num_starts", num_starts, 1)
    op = prepare_operator(op, check_symmetry, seed)
    if start is None:
        Q = random_block(op, s, seed, exclude)
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
    keep = reorthogonalize or keep_basis
    basis = torch.zeros((s, m + 1, op.size), dtype=op.dtype, device=op.device) if keep else None

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
            basis[:, j] = q.T
        if reorthogonalize:
            for r in range(s):
                for _ in range(2):
                    coef = basis[r, : j + 1] @ w[:, r]
                    w[:, r] -= basis[r, : j + 1].T @ coef
            b2 = torch.linalg.vector_norm(w, dim=0, dtype=torch.float64).cpu().numpy() ** 2
        b = np.sqrt(b2)
        if not np.all(np.isfinite(b2)):  # |w|^2 overflows for |w| > 1e154, not |w|
            b = column_norms(w)
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
        if basis is not None and j == m - 1:
            basis[:, m] = q.T

    ritz = np.full((s, m), np.nan)
    weights = np.zeros((s, m))
    resid = np.full((s, m), np.nan)
    for r in range(s):
        n = int(num_valid[r])
        theta, S = scipy.linalg.eigh_tridiagonal(alpha[r, :n], beta[r, : n - 1])
        ritz[r, :n] = theta
        weights[r, :n] = S[0] ** 2
        resid[r, :n] = np.abs(beta[r, n - 1] * S[n - 1])
    return LanczosResult(alpha, beta, ritz, weights, resid, num_valid, m, bool(reorthogonalize), int(seed), basis if keep_basis else None)


def bounds_from_lanczos(res: LanczosResult, margin: float, *, min_width: float = 1e-12) -> SpectralBounds:
    """The Normalization step from the Ritz values of any Lanczos run:
    ``[min_r (theta_min - |beta_m S_{m,min}|), max_r (theta_max + |beta_m S_{m,max}|)]``
    over the starts ``r``, the extreme Ritz values of each run moved out by their
    residual bounds (each interval ``theta_k -+ |beta_m S_{m,k}|`` holds an
    eigenvalue; interior Ritz values, whose residuals are large until they
    converge, do not widen it), then widened by ``margin`` times its width on
    each side. A width below ``min_width`` times the scale (a point spectrum) is
    replaced by ``1e-3`` of the scale, or by ``1e-3`` when the scale is zero."""
    last = res.num_valid - 1  # Ritz values ascend within a run
    runs = np.arange(res.num_valid.size)
    lo = float(np.min(res.ritz_values[:, 0] - res.residual_bounds[:, 0]))
    hi = float(np.max(res.ritz_values[runs, last] + res.residual_bounds[runs, last]))
    width = hi - lo
    scale = max(abs(lo), abs(hi))
    if width <= min_width * scale:
        width = 1e-3 * scale if scale > 0 else 1e-3
    return SpectralBounds(
        lower=lo - margin * width,
        upper=hi + margin * width,
        ritz_min=float(np.nanmin(res.ritz_values)),
        ritz_max=float(np.nanmax(res.ritz_values)),
        num_steps=res.num_steps,
        margin=float(margin),
    )


def estimate_bounds(
    op: object,
    *,
    num_steps: int = 32,
    margin: float = 0.05,
    seed: int = 0,
    exclude: torch.Tensor | None = None,
    check_symmetry: bool = True,
) -> SpectralBounds:
    """:func:`bounds_from_lanczos` of a short run without reorthogonalisation
    (``num_steps`` capped at ``p``); the densities take their bounds from their
    own runs instead, at no extra product."""
    op = as_operator(op)
    check_real("margin", margin, 0.0)
    steps = min(check_int("num_steps", num_steps, 2), op.size)
    if op.size < 2:
        raise ValueError(f"op: spectral estimates need a dimension >= 2, got {op.size}")
    res = lanczos(op, steps, reorthogonalize=False, seed=seed, exclude=exclude, check_symmetry=check_symmetry)
    return bounds_from_lanczos(res, margin)
