"""Multinomial logistic regression (MLR) fitted by a Numba Newton-CG solver.

Objective (mean cross-entropy plus an optional ridge on ``W``, never on ``b``):

    f(W, b) = (1/N) sum_i [logsumexp(W x_i + b) - (W x_i + b)_{y_i}] + (penalty/2) ||W||_F^2,

``W`` is ``C x D``; the intercept ``b`` (length ``C``) is fitted only with
``fit_intercept=True`` and is zero otherwise (the model of docs/math.md#the-mlr-theorem has
none). This is scikit-learn's ``LogisticRegression(C=1/(N * penalty),
fit_intercept=...)`` objective divided by ``N C_sklearn``; ``penalty=0`` is its
``C=inf``. Without a penalty the minimiser is defined up to ``W + 1 v^T`` (softmax
is shift invariant) and does not exist on separable data (``||W|| -> inf``):
use a penalty > 0 when the data may be separable.

Why Newton-CG and not L-BFGS: the Hessian of ``f`` is exactly the empirical
Fisher ``(1/N) sum_i (x_i x_i^T) (x) A(p_i)`` plus ``penalty I``, and one
Hessian-vector product costs one fused pass over the data, the same as a
gradient. Newton-CG then converges quadratically to gradient norms of 1e-10
and below in a handful of outer steps, where L-BFGS slows down; the spectra
measured at the solution need that accuracy. Inexact Newton: CG stops at a
relative residual ``min(0.5, sqrt(|g|))`` (superlinear convergence), steps
are globalised by Armijo backtracking.

:func:`fit_mlr` runs the whole loop compiled (serial kernels) for small problems
and drives the parallel kernels from Python for large ones; :func:`fit_mlr_many`
solves many small problems of one shape on several threads, each problem
compiled end to end. All
paths give bitwise identical results for the same problem, whatever the number
of threads (fixed chunking, see :mod:`simulate.kernels`).
"""

from __future__ import annotations

import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from theory.checks import check_int, check_num_classes

from . import kernels
from .dataset import check_features, check_labels

__all__ = [
    "MLRFit",
    "MLRFitMany",
    "fit_mlr",
    "fit_mlr_many",
    "mlr_loss_grad",
    "mlr_probabilities",
]

_STATUS = ("converged", "max_iter", "line_search_failed")
_ARMIJO = 1e-4
_MAX_HALVINGS = 40
_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class MLRFit:
    """Result of :func:`fit_mlr`: ``W`` (C x D), ``b`` (C; zeros without intercept), the objective
    ``loss`` (including the penalty), the Euclidean ``grad_norm`` of its gradient in ``(W, b)``,
    Newton ``iterations``, total ``cg_iterations``, ``converged`` (``grad_norm <= tol``),
    ``status`` and the ``settings`` used."""

    W: np.ndarray
    b: np.ndarray
    loss: float
    grad_norm: float
    iterations: int
    cg_iterations: int
    converged: bool
    status: str
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MLRFitMany:
    """Result of :func:`fit_mlr_many` for ``B`` problems: ``W`` (B x C x D), ``b`` (B x C) and
    per-problem ``loss``, ``grad_norm``, ``iterations``, ``cg_iterations``, ``converged`` (B,)."""

    W: np.ndarray
    b: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    iterations: np.ndarray
    cg_iterations: np.ndarray
    converged: np.ndarray
    status: tuple
    settings: dict = field(default_factory=dict)


# -- Newton-CG ---------------------------------------------------------------
# ``_newton_cg`` is written once and runs two ways: compiled by Numba with the serial
# kernels bound to the globals ``_loss_grad`` and ``_curvature`` (small problems, and
# ``fit_mlr_many``), and as plain Python with the parallel kernels
# bound to those names (``_newton_cg_parallel``, large problems; the interpreter then
# costs microseconds per data pass). Every arithmetic step outside the kernels goes
# through the small compiled helpers below, so both ways give the same bits. The
# parallel kernels are never called from compiled code: a cached jitted function that
# calls a parallel one can crash when reloaded from the cache (numba issue #8578), and
# passing kernels as arguments defeats the cache.

_loss_grad = kernels.loss_grad_ser
_curvature = kernels.curvature_product_ser


@numba.njit(cache=True)
def _dot(A, a, B, bb):
    """``<A, B> + <a, bb>``: the Euclidean inner product of ``(W, b)`` pairs."""
    A1, B1, a1, b1 = A.reshape(-1), B.reshape(-1), a.reshape(-1), bb.reshape(-1)
    s = 0.0
    for m in range(A1.size):
        s += A1[m] * B1[m]
    for m in range(a1.size):
        s += a1[m] * b1[m]
    return s


@numba.njit(cache=True)
def _combine(alpha, A, a, beta, B, bb, out, outb):
    """``(out, outb) = alpha (A, a) + beta (B, bb)`` elementwise (``out`` may alias ``B``)."""
    A1, B1, o1 = A.reshape(-1), B.reshape(-1), out.reshape(-1)
    a1, b1, ob1 = a.reshape(-1), bb.reshape(-1), outb.reshape(-1)
    for m in range(A1.size):
        o1[m] = alpha * A1[m] + beta * B1[m]
    for m in range(a1.size):
        ob1[m] = alpha * a1[m] + beta * b1[m]


@numba.njit(cache=True)
def _add_ridge(W, G, gb, penalty, fit_intercept):
    """``G += penalty W``; zero ``gb`` without intercept; returns ``(|W|^2, |(G, gb)|^2)``."""
    if not fit_intercept:
        gb[:] = 0.0
    ww = _dot(W, gb[:0], W, gb[:0])
    G1, W1 = G.reshape(-1), W.reshape(-1)
    for m in range(G1.size):
        G1[m] += penalty * W1[m]
    return ww, _dot(G, gb, G, gb)


@numba.njit(cache=True)
def _curvature_scale(X, penalty, fit_intercept):
    """An upper bound on the Hessian's norm, ``penalty + mean_i(|x_i|^2 + [intercept]) / 2``
    (``||A(p)|| <= 1/2``), the scale below which a curvature counts as zero."""
    N = X.shape[0]
    s = 0.0
    for i in range(N):
        for d in range(X.shape[1]):
            s += X[i, d] * X[i, d]
    return penalty + 0.5 * (s / N + (1.0 if fit_intercept else 0.0))


@numba.njit(cache=True)
def _newton_cg(X, labels, W, b, penalty, fit_intercept, tol, max_iter, max_cg):
    """Minimise ``f`` from ``(W, b)``; returns ``(f, |g|, iterations, cg_iterations, status, W, b)``
    (status 0 converged, 1 max_iter, 2 line search failed)."""
    N = X.shape[0]
    C, D = W.shape
    P, Pt = np.empty((N, C)), np.empty((N, C))
    G, Gt, Wt = np.empty((C, D)), np.empty((C, D)), np.empty((C, D))
    gb, gbt, bt = np.empty(C), np.empty(C), np.empty(C)
    dW, rW = np.empty((C, D)), np.empty((C, D))
    db, rb = np.empty(C), np.empty(C)
    # CG direction and its product, shaped (1, C, D) and (1, C) for the curvature kernel
    zV, hV = np.empty((1, C, D)), np.empty((1, C, D))
    zvb, hvb = np.empty((1, C)), np.empty((1, C))
    zW, hW, zb, hb = zV[0], hV[0], zvb[0], hvb[0]
    if not fit_intercept:
        b[:] = 0.0
    hscale = _curvature_scale(X, penalty, fit_intercept)
    loss = _loss_grad(X, labels, W, b, P, G, gb)
    ww, gg = _add_ridge(W, G, gb, penalty, fit_intercept)
    f = loss + 0.5 * penalty * ww
    gnorm = np.sqrt(gg)
    iterations = 0
    cg_total = 0
    status = 1
    while True:
        if gnorm <= tol:
            status = 0
            break
        if iterations >= max_iter:
            status = 1
            break
        # inexact Newton direction: CG on H d = -g from d = 0
        _combine(0.0, G, gb, 0.0, G, gb, dW, db)
        _combine(-1.0, G, gb, 0.0, G, gb, rW, rb)
        _combine(1.0, rW, rb, 0.0, rW, rb, zW, zb)
        rr = gg
        cg_tol = min(0.5, np.sqrt(gnorm)) * gnorm
        for _ in range(max_cg):
            cg_total += 1
            _curvature(X, P, zV, zvb, hV, hvb)
            _add_ridge(zW, hW, hb, penalty, fit_intercept)
            curv = _dot(zW, zb, hW, hb)
            if curv <= 1e-14 * hscale * _dot(zW, zb, zW, zb):
                if cg_total == 1 or _dot(dW, db, dW, db) == 0.0:  # no curvature at all: gradient step
                    _combine(1.0, rW, rb, 0.0, rW, rb, dW, db)
                break
            a = rr / curv
            _combine(a, zW, zb, 1.0, dW, db, dW, db)
            _combine(-a, hW, hb, 1.0, rW, rb, rW, rb)
            rr_new = _dot(rW, rb, rW, rb)
            if np.sqrt(rr_new) <= cg_tol:
                break
            _combine(1.0, rW, rb, rr_new / rr, zW, zb, zW, zb)
            rr = rr_new
        slope = _dot(G, gb, dW, db)
        if slope >= 0.0:  # not a descent direction (round-off near the optimum): steepest descent
            _combine(-1.0, G, gb, 0.0, G, gb, dW, db)
            slope = -gg
        # Armijo backtracking; a step that changes f only at round-off level is taken
        # when it reduces the gradient norm (the Newton step at the optimum).
        step = 1.0
        accepted = False
        for _ in range(_MAX_HALVINGS):
            _combine(1.0, W, b, step, dW, db, Wt, bt)
            loss_t = _loss_grad(X, labels, Wt, bt, Pt, Gt, gbt)
            ww_t, gg_t = _add_ridge(Wt, Gt, gbt, penalty, fit_intercept)
            f_t = loss_t + 0.5 * penalty * ww_t
            if f_t <= f + _ARMIJO * step * slope or (f_t - f <= 8.0 * _EPS * abs(f) and gg_t < gg):
                accepted = True
                break
            step *= 0.5
        iterations += 1
        if not accepted:
            status = 2
            break
        W, Wt = Wt, W
        b, bt = bt, b
        P, Pt = Pt, P
        G, Gt = Gt, G
        gb, gbt = gbt, gb
        f, gg = f_t, gg_t
        gnorm = np.sqrt(gg)
    return f, gnorm, iterations, cg_total, status, W, b


_newton_cg_parallel = types.FunctionType(
    _newton_cg.py_func.__code__,
    {**_newton_cg.py_func.__globals__, "_loss_grad": kernels.loss_grad_par, "_curvature": kernels.curvature_product_par},
    "_newton_cg_parallel",
)


@numba.njit(cache=True, nogil=True)
def _newton_cg_block(Xs, labels, W, b, penalty, fit_intercept, tol, max_iter, max_cg, start, stop, out_f, out_g, out_it, out_cg, out_status):
    """Problems ``start .. stop-1`` one after the other, without the GIL (one block per thread)."""
    for m in range(start, stop):
        f, g, it, cg, st, Wm, bm = _newton_cg(
            Xs[m], labels[m], W[m].copy(), b[m].copy(), penalty, fit_intercept, tol, max_iter, max_cg
        )
        W[m] = Wm
        b[m] = bm
        out_f[m] = f
        out_g[m] = g
        out_it[m] = it
        out_cg[m] = cg
        out_status[m] = st


# -- public API --------------------------------------------------------------


def _check_settings(penalty: Any, tol: Any, max_iter: Any, max_cg: Any) -> tuple[float, float, int, int]:
    penalty_f = float(penalty)
    if not np.isfinite(penalty_f) or penalty_f < 0:
        raise ValueError(f"penalty: expected a finite number >= 0, got {penalty!r}")
    tol_f = float(tol)
    if not np.isfinite(tol_f) or tol_f <= 0:
        raise ValueError(f"tol: expected a finite number > 0, got {tol!r}")
    max_iter_i = check_int("max_iter", max_iter, 1)
    max_cg_i = check_int("max_cg", max_cg, 1)
    return penalty_f, tol_f, max_iter_i, max_cg_i


def _check_weights(W: Any, num_classes: int, dim: int, name: str = "W") -> np.ndarray:
    W = np.asarray(W, dtype=np.float64)
    if W.shape != (num_classes, dim):
        raise ValueError(f"{name}: expected shape ({num_classes}, {dim}) (num_classes x D), got {W.shape}")
    if not np.isfinite(W).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return np.array(W, dtype=np.float64, order="C")


def _check_bias(b: Any, num_classes: int, name: str = "b") -> np.ndarray:
    if b is None:
        return np.zeros(num_classes)
    b = np.asarray(b, dtype=np.float64)
    if b.shape != (num_classes,):
        raise ValueError(f"{name}: expected shape ({num_classes},), got {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return np.array(b, dtype=np.float64, order="C")


def _run_newton_cg(X, y, W, b, penalty, fit_intercept, tol, max_iter, max_cg):
    """Compiled with serial kernels for small problems; Python-driven parallel kernels for
    large ones (same bits either way, see above)."""
    solve = _newton_cg_parallel if kernels.use_parallel(X.shape[0], X.shape[1] * W.shape[0]) else _newton_cg
    return solve(X, y, W, b, penalty, fit_intercept, tol, max_iter, max_cg)


def fit_mlr(
    X: Any,
    labels: Any,
    num_classes: int,
    *,
    penalty: float = 0.0,
    fit_intercept: bool = False,
    tol: float = 1e-8,
    max_iter: int = 100,
    max_cg: int = 250,
    W0: Any = None,
    b0: Any = None,
) -> MLRFit:
    """Fit MLR by Newton-CG: minimise ``f(W, b)`` (module docstring) from ``W0`` (default zeros).

    Stops when the Euclidean norm of the gradient in ``(W, b)`` is ``<= tol`` (converged),
    after ``max_iter`` Newton steps, or when the line search fails (round-off floor).
    ``X``: N x D, ``labels``: N ints in ``0..num_classes-1``.
    """
    C = check_num_classes(num_classes)
    X = check_features(X)
    y = check_labels(labels, X.shape[0], C)
    penalty, tol, max_iter, max_cg = _check_settings(penalty, tol, max_iter, max_cg)
    W = np.zeros((C, X.shape[1])) if W0 is None else _check_weights(W0, C, X.shape[1], "W0")
    b = _check_bias(b0, C, "b0")
    f, gnorm, it, cg, status, W, b = _run_newton_cg(X, y, W, b, penalty, bool(fit_intercept), tol, max_iter, max_cg)
    settings = {
        "penalty": penalty,
        "fit_intercept": bool(fit_intercept),
        "tol": tol,
        "max_iter": max_iter,
        "max_cg": max_cg,
        "num_samples": X.shape[0],
        "dim": X.shape[1],
        "num_classes": C,
    }
    return MLRFit(W, b, float(f), float(gnorm), int(it), int(cg), status == 0, _STATUS[status], settings)


def fit_mlr_many(
    X: Any,
    labels: Any,
    num_classes: int,
    *,
    penalty: float = 0.0,
    fit_intercept: bool = False,
    tol: float = 1e-8,
    max_iter: int = 100,
    max_cg: int = 250,
) -> MLRFitMany:
    """Fit ``B`` independent MLR problems of one shape in parallel.

    ``X``: B x N x D, ``labels``: B x N. The compiled solver runs on blocks of problems
    in ``numba.get_num_threads()`` threads without the GIL (no parallel region to
    compile, nothing nested). Problem ``m`` gives bitwise the same result as
    ``fit_mlr(X[m], labels[m], ...)``. Where Numba pays most: each problem is too small
    to parallelise over its samples, and the solver loop runs without the interpreter.
    """
    C = check_num_classes(num_classes)
    Xs = np.ascontiguousarray(np.asarray(X, dtype=np.float64))
    if Xs.ndim != 3 or min(Xs.shape) < 1:
        raise ValueError(f"X: expected a non-empty 3-D array (B x N x D), got shape {Xs.shape}")
    if not np.isfinite(Xs).all():
        raise ValueError("X: contains NaN or Inf")
    B, N, D = Xs.shape
    y = np.asarray(labels)
    if y.shape != (B, N):
        raise ValueError(f"labels: expected shape ({B}, {N}) (B x N), got {y.shape}")
    y = check_labels(y.reshape(-1), B * N, C).reshape(B, N)
    penalty, tol, max_iter, max_cg = _check_settings(penalty, tol, max_iter, max_cg)
    W = np.zeros((B, C, D))
    b = np.zeros((B, C))
    out_f, out_g = np.empty(B), np.empty(B)
    out_it, out_cg, out_status = (np.empty(B, dtype=np.int64) for _ in range(3))
    threads = min(numba.get_num_threads(), B)
    bounds = np.linspace(0, B, min(B, 4 * threads) + 1).astype(np.int64)  # blocks, for load balance

    def solve(block: int) -> None:
        _newton_cg_block(
            Xs, y, W, b, penalty, bool(fit_intercept), tol, max_iter, max_cg, bounds[block], bounds[block + 1],
            out_f, out_g, out_it, out_cg, out_status,
        )

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(solve, range(len(bounds) - 1)))  # list() re-raises a worker's exception
    settings = {
        "penalty": penalty,
        "fit_intercept": bool(fit_intercept),
        "tol": tol,
        "max_iter": max_iter,
        "max_cg": max_cg,
        "num_problems": B,
        "num_samples": N,
        "dim": D,
        "num_classes": C,
    }
    return MLRFitMany(
        W, b, out_f, out_g, out_it, out_cg, out_status == 0, tuple(_STATUS[s] for s in out_status), settings
    )


def mlr_loss_grad(
    X: Any, labels: Any, W: Any, b: Any = None, *, penalty: float = 0.0
) -> tuple[float, np.ndarray, np.ndarray]:
    """``(f, grad_W, grad_b)`` of the objective ``f`` (module docstring) at ``(W, b)`` (``b=None``: zero)."""
    W = np.asarray(W)
    if W.ndim != 2:
        raise ValueError(f"W: expected a 2-D array (num_classes x D), got shape {W.shape}")
    C = check_num_classes(W.shape[0])
    X = check_features(X)
    W = _check_weights(W, C, X.shape[1])
    b = _check_bias(b, C)
    y = check_labels(labels, X.shape[0], C)
    penalty = _check_settings(penalty, 1.0, 1, 1)[0]
    P, G, gb = np.empty((X.shape[0], C)), np.empty_like(W), np.empty(C)
    loss_grad = kernels.loss_grad_par if kernels.use_parallel(X.shape[0], X.shape[1] * C) else kernels.loss_grad_ser
    loss = loss_grad(X, y, W, b, P, G, gb)
    ww, _ = _add_ridge(W, G, gb, penalty, True)
    return float(loss + 0.5 * penalty * ww), G, gb


def mlr_probabilities(X: Any, W: Any, b: Any = None) -> np.ndarray:
    """``P[i] = softmax(W x_i + b)`` (N x C) for ``X`` (N x D), ``W`` (C x D), ``b`` (C or ``None``).

    A by-product of the loss kernel, so that the probabilities at a fitted ``W`` are
    bitwise those the solver used.
    """
    W = np.asarray(W)
    if W.ndim != 2:
        raise ValueError(f"W: expected a 2-D array (num_classes x D), got shape {W.shape}")
    C = check_num_classes(W.shape[0])
    X = check_features(X)
    W = _check_weights(W, C, X.shape[1])
    loss_grad = kernels.loss_grad_par if kernels.use_parallel(X.shape[0], X.shape[1] * C) else kernels.loss_grad_ser
    P = np.empty((X.shape[0], C))
    loss_grad(X, np.zeros(X.shape[0], dtype=np.int64), W, _check_bias(b, C), P, np.empty_like(W), np.empty(C))
    return P
