"""Closed forms for multinomial logistic regression (MLR) on the canonical Gaussian
model (Papyan, JMLR 2020, Section 8): Lemma 8.1 (expected Fisher), Theorem 8.1
(its eigenvalues), the Bayes error of the model, and the maps
outlier-to-bulk ratio -> SNR -> predicted error.

Model: ``C`` balanced classes, ``x = t e_c + z`` for class ``c`` with
``z ~ N(0, I_D)``, ``D >= C``, signal-to-noise ratio ``s = t^2``; logits ``f = W x``
with ``W`` of shape ``(C, D)``. Symmetric probabilities: every example of class
``c`` gets probability ``1 - alpha`` on ``c`` and ``beta = alpha / (C - 1)`` on each
other class, ``p_c = beta 1 + (1 - alpha - beta) e_c``, with ``0 < alpha <= 1 - 1/C``.

Parameter ordering (used by every matrix and operator here): ``vec(W)`` stacks the
columns of ``W``, i.e. ``D`` blocks of size ``C``; ``W[c, d]`` sits at index
``d * C + c`` (numpy: ``W.T.reshape(-1)`` or ``W.reshape(-1, order="F")``). Then
``df/dvec(W) = x^T (x) I_C`` and the Fisher of one example is ``(x x^T) (x) A(p)``,
``A(p) = diag(p) - p p^T``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.integrate
import scipy.optimize
import scipy.special
import torch

from theory.checks import check_dim, check_num_classes, check_real
from theory.operators import SymmetricOperator

__all__ = [
    "symmetric_probabilities",
    "logit_hessian",
    "expected_fisher",
    "ExpectedFisherOperator",
    "expected_fisher_operator",
    "bulk_factor",
    "eigenvalue_groups",
    "TheoremEigenvalues",
    "theorem_eigenvalues",
    "outlier_to_bulk_ratio",
    "mini_bulk_to_bulk_ratio",
    "snr_from_ratio",
    "bayes_error",
    "snr_from_bayes_error",
    "predicted_error_from_ratio",
]

RatioKind = Literal["outlier", "mini_bulk"]


# -- input checks -------------------------------------------------------------------

def _check_sizes(num_classes: Any, dim: Any) -> tuple[int, int]:
    C = check_num_classes(num_classes)
    return C, check_dim(dim, C)


def _check_snr(snr: Any) -> float:
    return check_real("snr", snr, 0.0, what="(s = t^2)")


def _check_alpha(alpha: Any, C: int) -> float:
    """The misclassified mass ``a`` in ``(0, 1 - 1/C]`` (round-off above the bound clipped)."""
    top = 1.0 - 1.0 / C
    a = check_real("alpha", alpha, 0.0, top * (1 + 1e-12), low_open=True, what=f"(at most 1 - 1/C for num_classes = {C})")
    return min(a, top)


def _as_real_array(x: Any, name: str, expected: str, lower: float, closed: bool = True) -> np.ndarray:
    """``x`` as a float64 array; every entry must be a number ``>= lower`` (``> lower``
    when ``closed`` is false), ``+inf`` allowed, no NaN."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {expected}, got {x!r}") from None
    bad = np.isnan(arr) | (arr < lower if closed else arr <= lower)
    if np.any(bad):
        raise ValueError(f"{name}: expected {expected}, got {arr[bad].ravel()[0]!r}")
    return arr


def _returned(arr: np.ndarray, like: np.ndarray) -> float | np.ndarray:
    """A Python float for 0-d input, the array otherwise."""
    return float(arr) if like.ndim == 0 else arr


# -- Lemma 8.1 ----------------------------------------------------------------------

def symmetric_probabilities(num_classes: int, alpha: float) -> np.ndarray:
    """The ``(C, C)`` matrix whose row ``c`` is ``p_c``: ``1 - alpha`` on the diagonal,
    ``alpha / (C - 1)`` elsewhere."""
    C = check_num_classes(num_classes)
    alpha = _check_alpha(alpha, C)
    P = np.full((C, C), alpha / (C - 1))
    np.fill_diagonal(P, 1.0 - alpha)
    return P


def logit_hessian(p: np.ndarray) -> np.ndarray:
    """``A(p) = diag(p) - p p^T`` (Hessian of the cross-entropy in the logits);
    ``p`` of shape ``(..., C)`` gives ``(..., C, C)``."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim < 1:
        raise ValueError(f"p: expected probability vectors of shape (..., C), got shape {p.shape}")
    total = p.sum(axis=-1)
    if not (np.all(p >= 0) and np.allclose(total, 1.0, rtol=0, atol=1e-8)):
        raise ValueError(f"p: expected probabilities (>= 0, summing to 1 over the last axis), got sums in "
                         f"[{np.min(total):.6g}, {np.max(total):.6g}] and smallest entry {np.min(p):.6g}")
    return p[..., :, None] * np.eye(p.shape[-1]) - p[..., :, None] * p[..., None, :]


def expected_fisher(num_classes: int, dim: int, snr: float, alpha: float, *, max_size: int = 10_000) -> np.ndarray:
    """Lemma 8.1 as a dense float64 matrix of shape ``(C D, C D)``:

    ``E[G] = (s/C) blkdiag(U^1, ..., U^C, 0, ..., 0) + I_D (x) U_bar``,
    ``U^c = A(p_c)``, ``U_bar = Ave_c U^c``, in the ``vec(W)`` ordering of the module
    (``D`` blocks of size ``C``; block ``d = c < C`` carries ``U^c``). It is
    ``Ave_c E[(x x^T) (x) A(p_c)]`` with ``E[x x^T] = s e_c e_c^T + I_D`` for class ``c``.
    A reference for small sizes: use :func:`expected_fisher_operator` beyond
    ``max_size``.
    """
    C, D = _check_sizes(num_classes, dim)
    s = _check_snr(snr)
    P = symmetric_probabilities(C, alpha)
    if C * D > max_size:
        raise ValueError(
            f"max_size: the dense matrix would have size C * D = {C * D} > max_size={max_size}; "
            "use expected_fisher_operator or pass a larger max_size"
        )
    U = logit_hessian(P)  # (C, C, C): U[c] = A(p_c)
    G = np.kron(np.eye(D), U.mean(axis=0))
    for c in range(C):
        G[c * C:(c + 1) * C, c * C:(c + 1) * C] += (s / C) * U[c]
    return G


class ExpectedFisherOperator(SymmetricOperator):
    """Lemma 8.1 matrix-free, for any size ``p = C D`` (``vec(W)`` in ``D`` blocks of ``C``).

    With ``V`` viewed as ``(D, C, k)``: block ``d`` maps to
    ``[d < C] (s/C) U^d V_d + U_bar V_d``, where ``U^c v = p_c * v - p_c (p_c . v)``
    and ``U_bar = beta b (I_C - 1 1^T / C)`` (the average of the ``U^c`` under
    symmetric probabilities, ``b = 2 - alpha C/(C-1)``). Cost ``O((C^2 + C D) k)``.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        snr: float,
        alpha: float,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ):
        C, D = _check_sizes(num_classes, dim)
        s = _check_snr(snr)
        a = _check_alpha(alpha, C)
        super().__init__(C * D, dtype, device)
        self.num_classes, self.dim, self.snr, self.alpha = C, D, s, a
        P = symmetric_probabilities(C, a)
        self._probs = torch.as_tensor(P, dtype=self.dtype, device=self.device)[:, :, None]  # (C, C, 1)
        self._bulk = float(eigenvalue_groups(C, D, s, a)[2][0])  # beta b

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        C, D, k = self.num_classes, self.dim, V.shape[1]
        V3 = V.reshape(D, C, k)
        out = (V3 - V3.mean(dim=1, keepdim=True)).mul_(self._bulk)  # I_D (x) U_bar, one full-size temporary
        P, Vc = self._probs, V3[:C]
        out[:C] += (self.snr / C) * (P * Vc - P * (P * Vc).sum(dim=1, keepdim=True))
        return out.reshape(C * D, k)


def expected_fisher_operator(
    num_classes: int,
    dim: int,
    snr: float,
    alpha: float,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> ExpectedFisherOperator:
    """Lemma 8.1 on the operator contract (see :class:`ExpectedFisherOperator`)."""
    return ExpectedFisherOperator(num_classes, dim, snr, alpha, dtype=dtype, device=device)


# -- Theorem 8.1 --------------------------------------------------------------------

def bulk_factor(num_classes: int, alpha: Any) -> Any:
    """``b = 2 - alpha C/(C-1)``: Theorem 8.1's bulk is ``beta b`` (``beta = alpha/(C-1)``).
    Plain arithmetic, so ``alpha`` may be an array or a sympy symbol."""
    return 2 - alpha * num_classes / (num_classes - 1)


def eigenvalue_groups(num_classes: int, dim: int, snr: Any, alpha: Any) -> tuple[tuple[Any, int], ...]:
    """Theorem 8.1 as ``((value, multiplicity), ...)`` for the outliers, mini-bulk,
    bulk and zero, with ``beta = alpha/(C-1)`` and ``b = 2 - alpha C/(C-1)``:

    ``beta (s (1 - alpha) + b)`` (x C), ``beta (s/C + b)`` (x C(C-2)),
    ``beta b`` (x (D-C)(C-1)), ``0`` (x D).

    Plain arithmetic without input checks, so that ``snr`` and ``alpha`` may be
    sympy symbols (:mod:`theory.symbolic` checks this very formula); use
    :func:`theorem_eigenvalues` for numbers.
    """
    C, D = num_classes, dim
    beta = alpha / (C - 1)
    b = bulk_factor(C, alpha)
    return (
        (beta * (snr * (1 - alpha) + b), C),
        (beta * (snr / C + b), C * (C - 2)),
        (beta * b, (D - C) * (C - 1)),
        (0 * beta, D),
    )


@dataclass(frozen=True)
class TheoremEigenvalues:
    """The spectrum of Lemma 8.1's expected Fisher (Theorem 8.1) in four groups.

    Values may coincide (``s = 0``; ``alpha = 1 - 1/C`` merges outliers and mini-bulk);
    a group of multiplicity zero (bulk when ``D = C``, mini-bulk when ``C = 2``) still
    reports its formula value, so that the ratios are always defined.
    """

    num_classes: int
    dim: int
    snr: float
    alpha: float
    outlier: float
    outlier_multiplicity: int
    mini_bulk: float
    mini_bulk_multiplicity: int
    bulk: float
    bulk_multiplicity: int
    zero: float
    zero_multiplicity: int
    outlier_to_bulk: float
    mini_bulk_to_bulk: float

    def eigenvalues(self, descending: bool = False) -> np.ndarray:
        """All ``C D`` eigenvalues with multiplicity, ascending (as ``numpy.linalg.eigh``)
        or descending."""
        values = np.repeat(
            [self.zero, self.bulk, self.mini_bulk, self.outlier],
            [self.zero_multiplicity, self.bulk_multiplicity, self.mini_bulk_multiplicity, self.outlier_multiplicity],
        )
        values = np.sort(values)
        return values[::-1].copy() if descending else values


def theorem_eigenvalues(num_classes: int, dim: int, snr: float, alpha: float) -> TheoremEigenvalues:
    """Theorem 8.1: eigenvalues and multiplicities of :func:`expected_fisher` (see
    :func:`eigenvalue_groups` for the formulas); ``snr`` is ``s = t^2``."""
    C, D = _check_sizes(num_classes, dim)
    s = _check_snr(snr)
    a = _check_alpha(alpha, C)
    (out, m_out), (mini, m_mini), (bulk, m_bulk), (zero, m_zero) = eigenvalue_groups(C, D, s, a)
    return TheoremEigenvalues(
        num_classes=C, dim=D, snr=s, alpha=a,
        outlier=float(out), outlier_multiplicity=m_out,
        mini_bulk=float(mini), mini_bulk_multiplicity=m_mini,
        bulk=float(bulk), bulk_multiplicity=m_bulk,
        zero=float(zero), zero_multiplicity=m_zero,
        outlier_to_bulk=float(out / bulk), mini_bulk_to_bulk=float(mini / bulk),
    )


def _ratio(num_classes: int, snr: Any, alpha: float, group: int) -> float | np.ndarray:
    C = check_num_classes(num_classes)
    a = _check_alpha(alpha, C)
    s = _as_real_array(snr, "snr", "SNR values s = t^2 >= 0", 0.0)
    groups = eigenvalue_groups(C, C, s, a)
    return _returned(np.asarray(groups[group][0] / groups[2][0], dtype=np.float64), s)


def outlier_to_bulk_ratio(num_classes: int, snr: Any, alpha: float) -> float | np.ndarray:
    """``lambda_out / lambda_bulk = 1 + s (1 - alpha) / b`` (independent of ``D``);
    vectorised over ``snr``."""
    return _ratio(num_classes, snr, alpha, 0)


def mini_bulk_to_bulk_ratio(num_classes: int, snr: Any, alpha: float) -> float | np.ndarray:
    """``lambda_mini / lambda_bulk = 1 + s / (C b)`` (independent of ``D``);
    vectorised over ``snr``."""
    return _ratio(num_classes, snr, alpha, 1)


def snr_from_ratio(ratio: Any, num_classes: int, alpha: float, *, which: RatioKind = "outlier") -> float | np.ndarray:
    """Invert the ratios of Theorem 8.1 for the SNR ``s``:
    ``s = (ratio - 1) b / (1 - alpha)`` (``which="outlier"``) or
    ``s = (ratio - 1) C b`` (``which="mini_bulk"``), ``b = 2 - alpha C/(C-1)``.
    ``ratio >= 1``; vectorised over ``ratio``."""
    C = check_num_classes(num_classes)
    a = _check_alpha(alpha, C)
    if which not in ("outlier", "mini_bulk"):
        raise ValueError(f"which: expected 'outlier' or 'mini_bulk', got {which!r}")
    r = _as_real_array(ratio, "ratio", "eigenvalue ratios >= 1 (the theorem's ratios are never below 1)", 1.0)
    b = bulk_factor(C, a)
    s = (r - 1.0) * (b / (1.0 - a) if which == "outlier" else C * b)
    return _returned(s, r)


# -- Bayes error --------------------------------------------------------------------

_HALF_WIDTH = 12.0  # phi(12) ~ 2e-32: the Gaussian mass beyond is far below the 1e-10 target
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def _bayes_error_scalar(t: float, C: int) -> float:
    if np.isinf(t):
        return 0.0

    # P_err = int phi(v) (1 - Phi(v + t)^(C-1)) dv, the complement computed without
    # cancellation as -expm1((C-1) log Phi(v + t)); for large t the integrand peaks
    # near v = -t/2 (phi(v) Phi(-(v + t)) ~ exp(-v^2/2 - (v + t)^2/2)).
    def integrand(v: float) -> float:
        return _INV_SQRT_2PI * np.exp(-0.5 * v * v) * -np.expm1((C - 1) * scipy.special.log_ndtr(v + t))

    value, abserr = scipy.integrate.quad(
        integrand, -0.5 * t - _HALF_WIDTH, _HALF_WIDTH, points=sorted({-0.5 * t, 0.0}),
        epsabs=0.0, epsrel=1e-12, limit=400,
    )
    if abserr > 1e-11:
        raise RuntimeError(f"bayes_error: quadrature did not converge for t={t}, C={C} (error estimate {abserr:.2g})")
    return min(max(value, 0.0), 1.0 - 1.0 / C)


def bayes_error(t: Any, num_classes: int) -> float | np.ndarray:
    """Misclassification of the optimal rule ``argmax_c x_c`` on the canonical model,
    ``P_err(t, C) = 1 - int phi(u - t) Phi(u)^(C-1) du``, by adaptive quadrature of
    the complement (absolute error below 1e-12, small errors to high relative
    accuracy). ``t = sqrt(s) >= 0`` is the amplitude (``P_err(0) = 1 - 1/C``,
    ``P_err(t, 2) = Phi(-t/sqrt(2))``); vectorised over ``t``."""
    C = check_num_classes(num_classes)
    t_arr = _as_real_array(t, "t", "amplitudes t = sqrt(SNR) >= 0", 0.0)
    values, inverse = np.unique(t_arr, return_inverse=True)
    errs = np.array([_bayes_error_scalar(float(v), C) for v in values])
    return _returned(errs[inverse].reshape(t_arr.shape), t_arr)


def snr_from_bayes_error(error: Any, num_classes: int) -> float | np.ndarray:
    """The SNR ``s = t^2`` at which :func:`bayes_error` equals ``error``, for
    ``0 < error <= 1 - 1/C``: the root of ``log P_err(t) = log error`` between the
    bounds ``Phi(-t/sqrt 2) <= P_err(t, C) <= (C - 1) Phi(-t/sqrt 2)``; vectorised."""
    C = check_num_classes(num_classes)
    top = 1.0 - 1.0 / C
    err = _as_real_array(error, "error", f"error rates in (0, 1 - 1/C] = (0, {top:.6g}]", 0.0, closed=False)
    if np.any(err > top * (1 + 1e-12)):
        raise ValueError(f"error: expected error rates in (0, 1 - 1/C] = (0, {top:.6g}], got {err.max()!r}")

    def solve(e: float) -> float:
        if e >= top:
            return 0.0
        lo = max(0.0, -np.sqrt(2.0) * scipy.special.ndtri(e) * (1 - 1e-9) - 1e-9)
        hi = -np.sqrt(2.0) * scipy.special.ndtri(e / (C - 1)) * (1 + 1e-9) + 1e-9
        f = lambda t: np.log(_bayes_error_scalar(t, C)) - np.log(e)  # noqa: E731
        return scipy.optimize.brentq(f, lo, hi, xtol=1e-14, rtol=4 * np.finfo(float).eps) ** 2

    values, inverse = np.unique(err, return_inverse=True)
    out = np.array([solve(float(e)) for e in values])
    return _returned(out[inverse].reshape(err.shape), err)


def predicted_error_from_ratio(
    ratio: Any, num_classes: int, alpha: float, *, which: RatioKind = "outlier"
) -> float | np.ndarray:
    """The error the theory predicts from a measured eigenvalue ratio:
    ``P_err(sqrt(snr_from_ratio(ratio, C, alpha, which)), C)``; vectorised over ``ratio``."""
    s = np.asarray(snr_from_ratio(ratio, num_classes, alpha, which=which))
    return _returned(np.asarray(bayes_error(np.sqrt(s), num_classes)), s)
