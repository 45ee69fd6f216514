"""Extreme eigenpairs of a symmetric operator, and deflation by them.

* :func:`top_eigenpairs`: block subspace iteration with Rayleigh-Ritz.
* :func:`deflate`: ``A - Q diag(lambda) Q^T`` for eigenpairs ``(lambda, Q)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from .checks import check_choice, check_int, check_real
from .lanczos import estimate_bounds, prepare_operator, random_block
from .operators import SymmetricOperator, as_operator
from .progress import progress
from .recurrence import column_norms

__all__ = ["Eigenpairs", "Which", "deflate", "eigenpairs_arrays", "top_eigenpairs"]

Which = Literal["largest", "smallest", "magnitude"]


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
    k = check_int("k", k, 1, op.size)
    check_choice("which", which, ("largest", "smallest", "magnitude"))
    if num_iterations is not None:
        check_int("num_iterations", num_iterations, 1)
    check_int("max_iterations", max_iterations, 1)
    check_real("tol", tol, 0.0, low_open=True)
    extra = max(k, 8) if oversample is None else check_int("oversample", oversample, 0)
    b = min(op.size, k + extra)
    op = prepare_operator(op, check_symmetry, seed)

    sign, shift = 1.0, 0.0
    if which != "magnitude" and op.size > 2:
        bnd = estimate_bounds(op, margin=0.0, seed=seed + 1, check_symmetry=False)
        if which == "largest" and bnd.lower < 0:
            shift = bnd.lower
        elif which == "smallest":
            sign, shift = -1.0, max(bnd.upper, 0.0)
    tol = max(tol, 100 * torch.finfo(op.dtype).eps)
    limit = num_iterations if num_iterations is not None else max_iterations

    X, _ = torch.linalg.qr(random_block(op, b, seed, None))
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
        residuals = torch.from_numpy(column_norms(R))
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
