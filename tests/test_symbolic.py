"""The sympy derivations of theory.symbolic hold for C = 3, 4 and detect wrong formulas."""

import numpy as np
import pytest
import sympy as sp

from theory import mlr, symbolic
from theory.results import to_jsonable
from theory.symbolic import alpha, lam, t


@pytest.mark.parametrize("C", [3, 4])
def test_all_derivations_hold(C):
    report = symbolic.check_all(C)
    assert set(report) == {"identity", "lemma", "theorem"}
    for name, check in report.items():
        assert check.holds, f"{name}: {check.residual}"
        assert check.residual == "0" and check.dim == (C if name == "identity" else C + 1)
    assert to_jsonable(report)["theorem"]["holds"] is True


def test_theorem_without_bulk_dimension_equal_to_classes():
    assert symbolic.check_theorem(3, 3).holds


def test_charpoly_factors_into_theorem_groups():
    C, D = 3, 4
    roots = symbolic.charpoly_roots(symbolic.block_charpolys(symbolic.fisher_from_model(C, D)))
    beta, b, s = alpha / 2, 2 - sp.Rational(3, 2) * alpha, t**2
    expected = {beta * (s * (1 - alpha) + b): 3, beta * (s / 3 + b): 3, beta * b: 2, sp.Integer(0): 4}
    assert sorted(roots.values()) == sorted(expected.values())
    for value, mult in expected.items():
        assert sum(m for r, m in roots.items() if sp.cancel(r - value) == 0) == mult


def test_symbolic_lemma_matches_numeric_expected_fisher():
    C, D = 4, 5
    M = symbolic.lemma_statement(C, D).subs({t: 2, alpha: sp.Rational(3, 10)})
    np.testing.assert_allclose(np.array(M, dtype=float), mlr.expected_fisher(C, D, 4.0, 0.3), rtol=0, atol=1e-15)
    derived = symbolic.fisher_from_model(C, D).subs({t: sp.Rational(3, 2), alpha: sp.Rational(1, 5)})
    np.testing.assert_allclose(np.array(derived, dtype=float), mlr.expected_fisher(C, D, 2.25, 0.2), rtol=0, atol=1e-15)


# -- the checks detect wrong formulas ------------------------------------------------------

def test_wrong_identity_is_detected():
    def without_weights(p):
        eye = sp.eye(p.shape[0])
        return sum(((eye[:, k] - p) * (eye[:, k] - p).T for k in range(p.shape[0])), sp.zeros(*eye.shape)) / p.shape[0]

    def sign_flipped(p):
        eye = sp.eye(p.shape[0])
        return sum((p[k] * (eye[:, k] + p) * (eye[:, k] + p).T for k in range(p.shape[0])), sp.zeros(*eye.shape))

    for rhs in (without_weights, sign_flipped):
        check = symbolic.check_identity(3, rhs=rhs)
        assert not check.holds and check.residual != "0"


def test_wrong_lemma_is_detected():
    def other_ordering(C, D):  # vec(W) in C blocks of D: (I_D (x) U) becomes (U (x) I_D)
        M = symbolic.lemma_statement(C, D)
        perm = [c * D + d for d in range(D) for c in range(C)]
        inv = [perm.index(i) for i in range(C * D)]
        return M.extract(inv, inv)

    def wrong_scale(C, D):  # s/(C-1) in place of s/C
        return symbolic.lemma_statement(C, D).subs(t, t * sp.sqrt(sp.Rational(C, C - 1)))

    def no_class_average(C, D):  # I_D (x) U^1 in place of I_D (x) U_bar
        M = symbolic.lemma_statement(C, D)
        p = symbolic.class_probabilities(C, 0)
        U1 = sp.diag(*p) - p * p.T
        U_bar = sum((sp.diag(*q) - q * q.T for q in (symbolic.class_probabilities(C, c) for c in range(C))), sp.zeros(C, C)) / C
        return M + sp.kronecker_product(sp.eye(D), U1 - U_bar)

    for lemma in (other_ordering, wrong_scale, no_class_average):
        check = symbolic.check_lemma(3, 4, lemma=lemma)
        assert not check.holds, lemma.__name__


def _perturbed(kind):
    def groups(C, D, s, a):
        (out, m_out), (mini, m_mini), (bulk, m_bulk), (zero, m_zero) = mlr.eigenvalue_groups(C, D, s, a)
        if kind == "b":  # b = 2 - alpha
            beta = a / (C - 1)
            return ((beta * (s * (1 - a) + 2 - a), m_out), (beta * (s / C + 2 - a), m_mini), (beta * (2 - a), m_bulk), (zero, m_zero))
        if kind == "multiplicity":
            return ((out, m_out), (mini, m_mini + 1), (bulk, m_bulk - 1), (zero, m_zero))
        if kind == "outlier":  # s (1 - alpha) -> s
            return ((out + a / (C - 1) * s * a, m_out), (mini, m_mini), (bulk, m_bulk), (zero, m_zero))
        raise AssertionError(kind)

    return groups


@pytest.mark.parametrize("kind", ["b", "multiplicity", "outlier"])
def test_wrong_theorem_is_detected(kind):
    check = symbolic.check_theorem(3, 4, groups=_perturbed(kind))
    assert not check.holds and "charpoly - theorem is not zero" in check.residual


def test_theorem_check_uses_the_matrix_it_is_given():
    wrong = symbolic.lemma_statement(3, 4).subs(alpha, alpha / 2)
    assert not symbolic.check_theorem(3, 4, matrix=wrong).holds
    assert symbolic.check_theorem(3, 4, matrix=symbolic.lemma_statement(3, 4)).holds


# -- building blocks --------------------------------------------------------------------

def test_gaussian_expectation_moments():
    z1, z2 = sp.symbols("z1 z2")
    a = sp.Symbol("a")
    E = lambda e: symbolic.gaussian_expectation(e, [z1, z2])  # noqa: E731
    assert E(z1**4) == 3 and E(z1**2 * z2**2) == 1 and E(z1 * z2) == 0 and E(z1**3) == 0
    assert sp.expand(E((a + z1) ** 2) - (a**2 + 1)) == 0
    assert E(z2**6) == 15


def test_fisher_charpoly_block_split_matches_direct_charpoly():
    x, y = sp.symbols("x y")
    B1 = sp.Matrix([[x, 1, 0], [1, y, 2], [0, 2, 3]])
    B2 = sp.Matrix([[y, x], [x, 1]])
    M = sp.diag(B1, B2)
    perm = [3, 0, 4, 2, 1]
    M = M.extract(perm, perm)  # block diagonal only after a permutation
    assert len(symbolic.block_charpolys(M)) == 2
    direct = sp.expand(M.charpoly(lam).as_expr())
    assert sp.expand(symbolic.fisher_charpoly(M).as_expr() - direct) == 0


def test_charpoly_roots_refuses_irrational_eigenvalues():
    with pytest.raises(ValueError, match="degree 2 in lambda"):
        symbolic.charpoly_roots(symbolic.block_charpolys(sp.Matrix([[0, 2], [1, 0]])))


@pytest.mark.parametrize("args,name", [((1,), "num_classes"), ((3, 2), "dim"), ((3.0,), "num_classes")])
def test_bad_sizes(args, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        symbolic.check_all(*args)
