"""Symbolic (sympy) derivations of the closed forms of :mod:`theory.mlr` for small ``C``.

Symbols: the amplitude ``t > 0`` (SNR ``s = t^2``), ``alpha > 0`` and the eigenvalue
variable ``lambda``; ``C`` and ``D`` are given integers (``C = 3, 4``, ``D = C + 1``
keeps every group of Theorem 8.1 present and each derivation under a few seconds).

1. :func:`logit_hessian_from_loss`: the Hessian of the cross-entropy in the logits,
   expressed in ``p = softmax(f)``; :func:`check_identity` shows it equals
   ``diag(p) - p p^T = sum_c' p_c' (e_c' - p)(e_c' - p)^T``.
2. :func:`fisher_from_model`: ``E[G] = Ave_c E_z[J^T A(p_c) J]`` with
   ``J = d(W x)/d vec(W)`` differentiated symbolically (``vec(W)`` in ``D`` blocks of
   ``C``, index ``d*C + c``), ``x = t e_c + z``, and the expectation taken from the
   Gaussian moments of ``z`` (``E z = 0``, ``E z z^T = I``); :func:`check_lemma`
   compares it with Lemma 8.1 as stated (:func:`lemma_statement`).
3. :func:`fisher_charpoly`: the characteristic polynomial of a symbolic matrix,
   exactly, as the product over the connected components of its nonzero pattern
   (a block-diagonal matrix up to a permutation; Lemma 8.1 gives ``D`` blocks of
   size ``C``), so only ``C x C`` determinants are expanded instead of a
   ``CD x CD`` one; :func:`check_theorem` factors it and compares the roots and
   multiplicities with :func:`theory.mlr.eigenvalue_groups` (the very formula the
   numerical code uses).

Each ``check_*`` returns a :class:`SymbolicCheck`; :func:`check_all` runs the three.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sympy as sp

from theory.checks import check_dim, check_num_classes
from theory.mlr import eigenvalue_groups

__all__ = [
    "t",
    "alpha",
    "lam",
    "SymbolicCheck",
    "probability_symbols",
    "logit_hessian_from_loss",
    "identity_sum",
    "class_probabilities",
    "gaussian_expectation",
    "fisher_from_model",
    "lemma_statement",
    "block_charpolys",
    "fisher_charpoly",
    "charpoly_roots",
    "check_identity",
    "check_lemma",
    "check_theorem",
    "check_all",
]

t = sp.Symbol("t", positive=True)
alpha = sp.Symbol("alpha", positive=True)
lam = sp.Symbol("lambda")

Groups = Sequence[tuple[Any, int]]


@dataclass(frozen=True)
class SymbolicCheck:
    """One derivation: whether it ``holds``, the simplified residual (``"0"`` when it
    holds) and the time it took."""

    name: str
    num_classes: int
    dim: int
    holds: bool
    residual: str
    seconds: float


def _check_sizes(num_classes: int, dim: int | None) -> tuple[int, int]:
    """``(C, D)`` checked, ``D = C + 1`` when ``dim`` is None."""
    C = check_num_classes(num_classes)
    return C, check_dim(C + 1 if dim is None else dim, C)


def _nonzero_entries(M: sp.Matrix) -> list[sp.Expr]:
    """The entries of ``M`` that do not cancel to zero (exact for rational functions)."""
    return [e for e in (sp.cancel(x) for x in M) if e != 0]


# -- 1. the logit Hessian and its identity -------------------------------------------

def probability_symbols(num_classes: int) -> sp.Matrix:
    """``p = (p_1, ..., p_{C-1}, 1 - p_1 - ... - p_{C-1})`` as a column (sum one)."""
    free = sp.symbols(f"p1:{num_classes}", positive=True)
    return sp.Matrix([*free, 1 - sum(free)])


def logit_hessian_from_loss(num_classes: int) -> sp.Matrix:
    """``d^2/df^2 [-f_c' + log sum_k exp f_k]`` (any label ``c'``) at ``f = log p``, in
    terms of :func:`probability_symbols`."""
    f = sp.symbols(f"f1:{num_classes + 1}", real=True)
    loss = -f[0] + sp.log(sum(sp.exp(fk) for fk in f))
    H = sp.hessian(loss, f)
    p = probability_symbols(num_classes)
    return H.subs({fk: sp.log(pk) for fk, pk in zip(f, p)}).applyfunc(sp.cancel)


def identity_sum(p: sp.Matrix) -> sp.Matrix:
    """``sum_c' p_c' (e_c' - p)(e_c' - p)^T`` for a probability column ``p``."""
    C = p.shape[0]
    eye = sp.eye(C)
    return sum((p[k] * (eye[:, k] - p) * (eye[:, k] - p).T for k in range(C)), sp.zeros(C, C))


def check_identity(num_classes: int, rhs: Callable[[sp.Matrix], sp.Matrix] = identity_sum) -> SymbolicCheck:
    """The Hessian of the cross-entropy in the logits equals ``diag(p) - p p^T`` and
    ``rhs(p)`` (default the identity of docs/math.md#notation), for general ``p``."""
    C, _ = _check_sizes(num_classes, None)
    start = time.perf_counter()
    p = probability_symbols(C)
    H = logit_hessian_from_loss(C)
    residuals = _nonzero_entries(H - (sp.diag(*p) - p * p.T)) + _nonzero_entries(H - rhs(p))
    return SymbolicCheck(
        "identity: A(p) = diag(p) - p p^T = sum_c' p_c' (e_c' - p)(e_c' - p)^T", C, C,
        not residuals, str(residuals[0]) if residuals else "0", time.perf_counter() - start,
    )


# -- 2. Lemma 8.1 from the model -------------------------------------------------------

def class_probabilities(num_classes: int, c: int) -> sp.Matrix:
    """``p_c``: ``1 - alpha`` on class ``c``, ``alpha/(C-1)`` on the others (a column)."""
    C = num_classes
    return sp.Matrix([1 - alpha if k == c else alpha / (C - 1) for k in range(C)])


def gaussian_expectation(expr: sp.Expr, z: Sequence[sp.Symbol]) -> sp.Expr:
    """``E[expr]`` for a polynomial in independent standard normals ``z``:
    ``E prod z_i^k_i = prod (k_i - 1)!!`` for even ``k_i``, zero otherwise."""
    poly = sp.Poly(sp.expand(expr), *z)
    total = sp.Integer(0)
    for powers, coeff in poly.terms():
        if all(k % 2 == 0 for k in powers):
            total += coeff * sp.prod(sp.factorial2(k - 1) for k in powers)
    return total


def fisher_from_model(num_classes: int, dim: int | None = None) -> sp.ImmutableMatrix:
    """``E[G] = Ave_c E_z[J^T A(p_c) J]`` derived from the model (see the module
    docstring), ``(C D) x (C D)`` in ``t`` and ``alpha``; ``vec(W)[d*C + c] = W[c, d]``.
    Cached: each ``(C, D)`` is derived once per process."""
    return _fisher_from_model(*_check_sizes(num_classes, dim))


@functools.lru_cache(maxsize=8)
def _fisher_from_model(C: int, D: int) -> sp.ImmutableMatrix:
    W = sp.Matrix(C, D, lambda c, d: sp.Symbol(f"w_{c}_{d}"))
    w = sp.Matrix([W[c, d] for d in range(D) for c in range(C)])
    z = sp.symbols(f"z0:{D}", real=True)
    p_sym = probability_symbols(C)
    H = logit_hessian_from_loss(C)
    total = sp.zeros(C * D, C * D)
    for c in range(C):
        x = t * sp.eye(D)[:, c] + sp.Matrix(z)
        J = (W * x).jacobian(w)  # C x CD
        p_c = class_probabilities(C, c)
        total += J.T * H.subs({p_sym[k]: p_c[k] for k in range(C - 1)}) * J
    # the expectation is linear: one Gaussian moment computation per entry of the sum
    return sp.ImmutableMatrix(total.applyfunc(lambda e: sp.cancel(gaussian_expectation(e, z) / C)))


def lemma_statement(num_classes: int, dim: int | None = None) -> sp.Matrix:
    """Lemma 8.1 as stated: ``(s/C) blkdiag(U^1, ..., U^C, 0, ..., 0) + I_D (x) U_bar``,
    ``U^c = diag(p_c) - p_c p_c^T``, ``U_bar = Ave_c U^c``, ``s = t^2``."""
    C, D = _check_sizes(num_classes, dim)
    U = [sp.diag(*p) - p * p.T for p in (class_probabilities(C, c) for c in range(C))]
    U_bar = sum(U, sp.zeros(C, C)) / C
    blocks = [(t**2 / C) * U[d] if d < C else sp.zeros(C, C) for d in range(D)]
    return sp.diag(*blocks) + sp.kronecker_product(sp.eye(D), U_bar)


def check_lemma(
    num_classes: int,
    dim: int | None = None,
    lemma: Callable[[int, int], sp.Matrix] = lemma_statement,
) -> SymbolicCheck:
    """:func:`fisher_from_model` equals ``lemma(C, D)`` entry by entry."""
    C, D = _check_sizes(num_classes, dim)
    start = time.perf_counter()
    residuals = _nonzero_entries(fisher_from_model(C, D) - lemma(C, D))
    return SymbolicCheck(
        "Lemma 8.1: E[G] from x = t e_c + z and symmetric probabilities", C, D,
        not residuals, str(residuals[0]) if residuals else "0", time.perf_counter() - start,
    )


# -- 3. the characteristic polynomial and Theorem 8.1 ----------------------------------

def _components(M: sp.Matrix) -> list[list[int]]:
    """Connected components of the graph ``i ~ j`` iff ``M[i, j] != 0`` (sorted indices)."""
    n = M.shape[0]
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    nonzero = [[sp.cancel(M[i, j]) != 0 for j in range(n)] for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if nonzero[i][j] or nonzero[j][i]:
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def block_charpolys(M: sp.Matrix) -> list[sp.Poly]:
    """``det(lambda I - M_k)`` for the diagonal blocks ``M_k`` of ``M`` after the
    permutation that groups the connected components of its nonzero pattern;
    their product is ``det(lambda I - M)`` exactly."""
    gens = (lam, *sorted(M.free_symbols | {t, alpha}, key=str))
    cache: dict[sp.ImmutableMatrix, sp.Poly] = {}
    polys = []
    for comp in _components(M):
        block = sp.ImmutableMatrix(M.extract(comp, comp))
        if block not in cache:
            cache[block] = sp.Poly(sp.cancel(block.charpoly(lam).as_expr()), *gens, domain="QQ")
        polys.append(cache[block])
    return polys


def fisher_charpoly(M: sp.Matrix) -> sp.Poly:
    """``det(lambda I - M)`` as a polynomial in ``lambda`` and the symbols of ``M``
    over the rationals (the product of :func:`block_charpolys`; exact for any matrix)."""
    return sp.prod(block_charpolys(M))


def charpoly_roots(polys: Sequence[sp.Poly]) -> dict[sp.Expr, int]:
    """The roots in ``lambda`` of ``prod(polys)`` with multiplicities, from the
    factorisation of each polynomial; raises if a factor is not linear in ``lambda``
    (then the eigenvalues are not rational functions of ``t, alpha``)."""
    roots: dict[sp.Expr, int] = {}
    for poly in polys:
        _, factors = sp.factor_list(poly)
        for factor, mult in factors:
            degree = factor.degree(lam)
            if degree == 0:
                continue
            if degree != 1:
                raise ValueError(f"polys: the factor {factor} has degree {degree} in lambda, not 1")
            root = sp.factor(sp.solve(factor.as_expr(), lam)[0])
            roots[root] = roots.get(root, 0) + mult
    return roots


def check_theorem(
    num_classes: int,
    dim: int | None = None,
    groups: Callable[[int, int, Any, Any], Groups] = eigenvalue_groups,
    matrix: sp.Matrix | None = None,
) -> SymbolicCheck:
    """The charpoly of ``matrix`` (default :func:`fisher_from_model`) equals
    ``prod (lambda - value)^multiplicity`` over ``groups(C, D, t^2, alpha)`` (default
    Theorem 8.1 as coded in :func:`theory.mlr.eigenvalue_groups`), and its
    factorisation has exactly those roots with those multiplicities."""
    C, D = _check_sizes(num_classes, dim)
    start = time.perf_counter()
    M = fisher_from_model(C, D) if matrix is None else matrix
    stated = [(sp.factor(sp.sympify(v)), m) for v, m in groups(C, D, t**2, alpha)]
    polys = block_charpolys(M)
    expected = sp.prod([sp.Poly(lam - v, *polys[0].gens, domain="QQ") ** m for v, m in stated if m > 0])
    difference = sp.prod(polys) - expected
    stated_roots: dict[sp.Expr, int] = {}
    for v, m in stated:
        if m > 0:
            stated_roots[v] = stated_roots.get(v, 0) + m
    found_roots = charpoly_roots(polys)
    holds = difference.is_zero and _same_roots(found_roots, stated_roots)
    residual = "0" if holds else (
        f"charpoly - theorem is not zero (degree {difference.degree(lam)} in lambda); "
        f"roots found {found_roots}, stated {stated_roots}"
    )
    return SymbolicCheck(
        "Theorem 8.1: charpoly of E[G] = prod (lambda - value)^multiplicity", C, D,
        holds, residual, time.perf_counter() - start,
    )


def _same_roots(found: dict[sp.Expr, int], stated: dict[sp.Expr, int]) -> bool:
    remaining = dict(stated)
    for root, mult in found.items():
        match = next((v for v in remaining if sp.cancel(v - root) == 0), None)
        if match is None or remaining.pop(match) != mult:
            return False
    return not remaining


def check_all(num_classes: int, dim: int | None = None) -> dict[str, SymbolicCheck]:
    """Run the three derivations for ``C`` (and ``D``, default ``C + 1``)."""
    C, D = _check_sizes(num_classes, dim)
    return {
        "identity": check_identity(C),
        "lemma": check_lemma(C, D),
        "theorem": check_theorem(C, D),
    }
