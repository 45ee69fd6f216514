"""Extreme eigenpairs of a symmetric operator, and deflation by them.

* :func:`top_eigenpairs`: thick-restart block Lanczos with full reorthogonalisation
  and Rayleigh-Ritz (Wu & Simon 2000; Stewart's Krylov-Schur for symmetric ``A``).
* :func:`deflate`: ``A - Q diag(lambda) Q^T`` for eigenpairs ``(lambda, Q)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from .checks import check_choice, check_flag, check_int, check_real
from .lanczos import prepare_operator, random_block
from .operators import SymmetricOperator, as_operator
from .progress import progress
from .recurrence import column_norms

__all__ = ["ConvergenceWarning", "Eigenpairs", "Which", "deflate", "eigenpairs_arrays", "top_eigenpairs"]

Which = Literal["largest", "smallest", "magnitude"]
F64 = torch.float64
EPS64 = float(np.finfo(np.float64).eps)


class ConvergenceWarning(RuntimeWarning):
    """:func:`top_eigenpairs` stopped before every wanted pair met its tolerance
    (the result says so too: ``converged=False``)."""


@dataclass(frozen=True)
class Eigenpairs:
    """``k`` eigenpairs ``A v_i = lambda_i v_i``, eigenvalues descending by value.

    ``residuals[i] = |A v_i - lambda_i v_i|`` (float64, ``|v_i| = 1``);
    ``num_iterations`` counts Lanczos restarts (iterations) and ``num_products`` the
    columns ``A v`` the solver computed (without the symmetry probe).
    """

    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor = field(metadata={"json": False})
    residuals: np.ndarray
    num_iterations: int
    converged: bool
    which: str
    block_size: int
    seed: int
    num_products: int


def _order_key(theta: np.ndarray, which: str) -> np.ndarray:
    """Ritz values ranked by ``which`` (the wanted ones first after a descending sort)."""
    return {"largest": theta, "smallest": -theta, "magnitude": np.abs(theta)}[which]


class _KrylovBasis:
    """An orthonormal basis ``V = [V_p, V_u]`` (float64, ``p x n``) with the images
    ``W_p = A V_p`` of its processed part and the coefficients ``H[i, j] = v_i^T A v_j``
    recorded when ``v_j`` was processed, so that ``A V_p = V H[:, :m]`` (``m`` processed
    columns). The Rayleigh-Ritz matrix is ``V_p^T A V_p``, taken from the upper triangle
    (each entry from the later of its two columns), and ``B = H[m:n, :m]`` couples the
    processed part to the unprocessed block: the Ritz pair ``(theta, V_p s)`` has
    residual ``|B s|`` in exact arithmetic."""

    def __init__(self, op: SymmetricOperator, capacity: int, start: torch.Tensor, seed: int):
        self.op, self.p = op, op.size
        self.V = torch.zeros(self.p, capacity, dtype=F64, device=op.device)
        self.W = torch.zeros_like(self.V)
        self.H = np.zeros((capacity, capacity))
        self.m = 0  # processed columns [0, m); unprocessed [m, n)
        self.n = 0
        self.num_products = 0
        self.anorm = 0.0  # running lower bound on |A|_2
        self.breakdown = float(torch.finfo(op.dtype).eps)
        self._fills = 0
        self._seed = seed
        X = start.to(F64)
        self._append_block(X, np.zeros((0, X.shape[1])), column_norms(X), None)

    # -- building ------------------------------------------------------------
    def _orthogonalize(self, r: torch.Tensor, lo: int, hi: int) -> np.ndarray:
        """``r <- (I - V V^T) r`` against ``V[:, lo:hi]`` in place; the coefficients."""
        V = self.V[:, lo:hi]
        c = V.T @ r
        r -= V @ c
        return c.cpu().numpy()

    def _fill(self) -> torch.Tensor:
        """A random unit vector orthogonal to the basis (the Krylov space became invariant)."""
        self._fills += 1
        z = random_block(self.op, 1, self._seed + 104729 * self._fills, None).to(F64)[:, 0]
        for _ in range(2):
            self._orthogonalize(z, 0, self.n)
        return z / float(column_norms(z[:, None])[0])

    def _append_block(self, R: torch.Tensor, coef: np.ndarray, before: np.ndarray, cols: slice | None) -> None:
        """Orthonormalise the columns of ``R`` (orthogonal to ``V[:, :n]`` up to round-off,
        with coefficients ``coef`` and norms ``before`` ahead of the last pass) against
        each other and append them; column ``j``'s coefficients become ``H[:, cols][:, j]``.
        A column whose norm dropped below ``0.7`` of ``before`` is orthogonalised once
        more against the whole basis (Daniel-Gragg-Kaufman-Stewart), one below
        ``eps |A|`` is replaced by a random direction (coupling 0)."""
        n0 = self.n
        for j in range(R.shape[1]):
            r = R[:, j]
            c = np.zeros(self.n)
            c[: coef.shape[0]] = coef[:, j]
            for _ in range(2 if self.n > n0 else 0):
                c[n0:] += self._orthogonalize(r, n0, self.n)
            beta, ref = float(column_norms(r[:, None])[0]), float(before[j])
            tiny = self.breakdown * self.anorm
            for _ in range(2):
                if beta >= 0.7 * ref or beta <= tiny:
                    break
                c += self._orthogonalize(r, 0, self.n)
                beta, ref = float(column_norms(r[:, None])[0]), beta
            if cols is not None:
                self.H[: self.n, cols.start + j] = c
            if self.n == self.p:
                continue  # the basis spans the whole space: r is round-off
            if beta > tiny and beta > 0:
                self.V[:, self.n] = r / beta
                if cols is not None:
                    self.H[self.n, cols.start + j] = beta
            else:
                self.V[:, self.n] = self._fill()
            self.n += 1

    def expand(self) -> None:
        """Process the unprocessed block: ``W = A V_u``, two block Gram-Schmidt passes
        against the basis, the residuals appended as the next unprocessed block."""
        cols = slice(self.m, self.n)
        X = self.V[:, cols]
        AX = self.op.matmat(X.to(self.op.dtype)).to(F64)
        self.num_products += X.shape[1]
        norms = column_norms(AX)  # no overflow of the squares for |A| up to the float64 range
        if not bool(np.isfinite(norms).all()):
            raise FloatingPointError(
                f"the operator's product returned NaN or Inf after {self.num_products} product columns"
            )
        self.anorm = max(self.anorm, float(norms.max()))
        self.W[:, cols] = AX
        R = AX.clone()
        coef = self._orthogonalize(R, 0, self.n)
        before = column_norms(R)
        coef += self._orthogonalize(R, 0, self.n)
        self.m = self.n
        self._append_block(R, coef, before, cols)

    # -- Rayleigh-Ritz ---------------------------------------------------------
    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values (ascending), vectors ``S`` (``m x m``) of ``V_p^T A V_p`` and
        the residual estimates ``|B s_i|``."""
        m = self.m
        upper = np.triu(self.H[:m, :m])
        theta, S = np.linalg.eigh(upper + np.triu(upper, 1).T)
        self.anorm = max(self.anorm, float(np.abs(theta).max()))
        B = self.H[m : self.n, :m] @ S
        scale = float(np.abs(B).max()) if B.size else 0.0
        est = scale * np.linalg.norm(B / scale, axis=0) if scale > 0 else np.zeros(m)  # scaled: no overflow of squares
        return theta, S, est

    def ritz_pairs(self, theta: np.ndarray, S: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Ritz vectors ``Y = V_p S`` and their images ``A Y = W_p S`` (float64, p x len(theta))."""
        St = torch.as_tensor(S, device=self.V.device)
        return self.V[:, : self.m] @ St, self.W[:, : self.m] @ St

    def true_residuals(self, theta: np.ndarray, S: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Ritz vectors and ``|A y_i - theta_i y_i|`` from the stored images."""
        Y, AY = self.ritz_pairs(theta, S)
        R = AY - Y * torch.as_tensor(theta, device=Y.device)
        return Y, column_norms(R)

    def restart(self, theta: np.ndarray, S: np.ndarray) -> None:
        """Thick restart: keep the Ritz pairs ``(theta, V_p S)`` (processed, ``H`` diagonal)
        followed by the unprocessed block, coupled to them by ``B S``."""
        kk, m, u = len(theta), self.m, self.n - self.m
        Y, AY = self.ritz_pairs(theta, S)
        coupling = self.H[m : self.n, :m] @ S
        unprocessed = self.V[:, m : self.n].clone()
        self.V[:, :kk], self.W[:, :kk] = Y, AY
        self.V[:, kk : kk + u] = unprocessed
        self.H[:] = 0.0
        self.H[:kk, :kk] = np.diag(theta)
        self.H[kk : kk + u, :kk] = coupling
        self.m, self.n = kk, kk + u


def top_eigenpairs(
    op: object,
    k: int,
    *,
    which: Which = "largest",
    tol: float = 1e-6,
    num_iterations: int | None = None,
    max_iterations: int = 1000,
    block_size: int = 1,
    basis_size: int | None = None,
    seed: int = 0,
    check_symmetry: bool = True,
    show_progress: bool = False,
) -> Eigenpairs:
    """``k`` extreme eigenpairs (``which``: largest, smallest or largest in magnitude)
    by thick-restart block Lanczos.

    The basis ``V`` (float64, orthonormal by Gram-Schmidt twice, whatever the
    operator's dtype) grows by blocks of ``block_size`` columns ``A V_u`` to
    ``basis_size`` columns (default ``max(2k, 20) + 2 block_size``, at most ``p``);
    Rayleigh-Ritz on ``V^T A V`` (float64) then keeps the ``k`` wanted Ritz pairs,
    converged ones included (soft locking: they stay in the basis, so later
    vectors are orthogonal to them), and the next ``(basis_size - 2 block_size - k) / 2``,
    and the basis grows again from them (one iteration per restart). A Krylov
    space needs no shift: the Ritz values at both ends converge first. A block of
    at least the multiplicity of a repeated wanted eigenvalue finds every copy at
    once (one start vector finds the others only through round-off). Memory: two
    float64 ``p x basis_size`` arrays (the basis and its images).

    Converged means: every wanted pair has Lanczos residual estimate
    ``|B s_i| <= max(tol |theta_i|, eps_64 |A|)`` (round-off of the float64 basis)
    and true residual ``|A v_i - theta_i v_i| <= max(tol |theta_i|, 10 eps |A|)``
    (from the stored images ``A V``; ``eps`` of the operator's dtype, the round-off
    of its products, which a float32 operator may reach for ``theta_i << |A|``). Stops
    after ``num_iterations`` restarts if given, else once converged, or after
    ``max_iterations`` restarts with a :class:`ConvergenceWarning`.

    Small residuals certify eigenpairs, not that they are the top ``k``: a wanted
    eigenvalue that the Krylov space has not yet found can be passed over when ``tol``
    is loose against its gap to the next one (measured: ``tol=1e-3`` returned the
    11th eigenvalue for the 10th at a gap of 0.7%). Keep ``tol`` at the default
    1e-6, or use ``block_size >= 2``, for clustered spectra.
    """
    op = as_operator(op)
    p = op.size
    k = check_int("k", k, 1, p)
    check_choice("which", which, ("largest", "smallest", "magnitude"))
    tol = check_real("tol", tol, 0.0, low_open=True)
    if num_iterations is not None:
        check_int("num_iterations", num_iterations, 1)
    check_int("max_iterations", max_iterations, 1)
    b = check_int("block_size", block_size, 1, p)
    if basis_size is None:
        n_max = min(p, max(2 * k, 20) + 2 * b)
    else:
        n_max = min(p, check_int("basis_size", basis_size, min(p, k + 2 * b), what="(k + 2 block_size)"))
    seed = check_int("seed", seed)
    check_flag("check_symmetry", check_symmetry)
    check_flag("show_progress", show_progress)
    op = prepare_operator(op, check_symmetry, seed)

    eps = float(torch.finfo(op.dtype).eps)
    early = num_iterations is None
    limit = max_iterations if early else num_iterations
    basis = _KrylovBasis(op, n_max, random_block(op, b, seed, None), seed)
    keep = k + (n_max - 2 * b - k) // 2  # Ritz pairs kept at a restart

    def ranked(theta: np.ndarray) -> np.ndarray:
        return np.argsort(-_order_key(theta, which), kind="stable")

    def criterion(theta: np.ndarray, sel: np.ndarray, floor: float) -> np.ndarray:
        return np.maximum(tol * np.abs(theta[sel]), floor * basis.anorm)

    it = 0
    for it in progress(range(1, limit + 1), total=limit, desc="lanczos", enabled=show_progress):
        done = False
        while not done:
            basis.expand()
            exhausted = basis.n == basis.m  # V spans an invariant subspace: Rayleigh-Ritz is exact
            full = exhausted or (n_max < p and 2 * basis.n - basis.m > n_max)
            if basis.m >= k:
                theta, S, est = basis.ritz()
                sel = ranked(theta)[:k]
                if early and bool(np.all(est[sel] <= criterion(theta, sel, EPS64))):
                    _, res = basis.true_residuals(theta[sel], S[:, sel])
                    done = bool(np.all(res <= criterion(theta, sel, 10 * eps)))
            done = done or exhausted
            if full:
                break
        if done or it == limit:
            break
        top = ranked(theta)[:keep]
        basis.restart(theta[top], S[:, top])

    Y, res = basis.true_residuals(theta[sel], S[:, sel])
    converged = bool(np.all(est[sel] <= criterion(theta, sel, EPS64)) and np.all(res <= criterion(theta, sel, 10 * eps)))
    if early and not converged:
        rel = res / np.maximum(np.abs(theta[sel]), np.finfo(float).tiny)
        warnings.warn(
            f"top_eigenpairs: not converged after {it} restarts and {basis.num_products} products "
            f"(largest relative residual {float(rel.max()):.2e}, tol={tol:.1e}); raise max_iterations, "
            "basis_size or block_size",
            ConvergenceWarning,
            stacklevel=2,
        )
    values = theta[sel]
    order = np.argsort(-values, kind="stable")
    vectors = Y[:, torch.as_tensor(order, device=Y.device)]
    return Eigenpairs(
        eigenvalues=values[order],
        eigenvectors=vectors.to(op.dtype),
        residuals=res[order],
        num_iterations=it,
        converged=converged,
        which=which,
        block_size=b,
        seed=seed,
        num_products=basis.num_products,
    )


# ------------------------------------------------------------------------- deflation
def eigenpairs_arrays(pairs: Eigenpairs | tuple[object, object]) -> tuple[np.ndarray, torch.Tensor]:
    if isinstance(pairs, Eigenpairs):
        return pairs.eigenvalues, pairs.eigenvectors
    values, vectors = pairs
    return np.asarray(values, dtype=np.float64).reshape(-1), torch.as_tensor(vectors)


def deflate(op: object, pairs: Eigenpairs | tuple[object, object]) -> SymmetricOperator:
    """The deflated operator ``A - sum_j lambda_j q_j q_j^T`` (``pairs`` from
    :func:`top_eigenpairs` or a ``(values, vectors)`` tuple with ``vectors`` p x k)."""
    op = as_operator(op)
    values, vectors = eigenpairs_arrays(pairs)
    return op.low_rank_update(vectors, -values)
