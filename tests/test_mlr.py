"""Closed forms of theory.mlr against dense eigh, the model itself (exact moments,
autograd Jacobians, Monte Carlo) and independent references for the Bayes error."""

import itertools

import mpmath
import numpy as np
import pytest
import scipy.special
import torch

from theory import mlr
from theory.operators import check_symmetric
from theory.results import to_jsonable


def _grid():
    """(C, D, s, alpha) over several classes, dimensions, SNRs and alphas, including
    the edge cases D = C (no bulk), C = 2 (no mini-bulk), s = 0 and alpha = 1 - 1/C."""
    for C in (2, 3, 4, 7):
        for D, s, a in itertools.product((C, C + 1, 2 * C + 3), (0.0, 0.7, 4.0, 25.0), (0.05, 0.3, 1 - 1 / C)):
            if a <= 1 - 1 / C:
                yield C, D, s, a


def _lemma_from_moments(C, D, s, a):
    """Ave_c E[(x x^T) (x) A(p_c)] with E[x x^T] = s e_c e_c^T + I_D, built entry-free
    from the definition (no use of the Lemma's block form)."""
    P = mlr.symmetric_probabilities(C, a)
    G = np.zeros((C * D, C * D))
    for c in range(C):
        second_moment = np.eye(D)
        second_moment[c, c] += s
        G += np.kron(second_moment, np.diag(P[c]) - np.outer(P[c], P[c])) / C
    return G


def test_paper_numeric_example():
    ev = mlr.theorem_eigenvalues(4, 9, 4.0, 0.3)  # t = 2
    assert (ev.outlier_multiplicity, ev.mini_bulk_multiplicity, ev.bulk_multiplicity, ev.zero_multiplicity) == (4, 8, 15, 9)
    np.testing.assert_allclose([ev.outlier, ev.mini_bulk, ev.bulk, ev.zero], [0.44, 0.26, 0.16, 0.0], atol=1e-15)
    dense = np.linalg.eigvalsh(mlr.expected_fisher(4, 9, 4.0, 0.3))
    np.testing.assert_allclose(dense, np.repeat([0.0, 0.16, 0.26, 0.44], [9, 15, 8, 4]), atol=1e-15)


def test_theorem_matches_dense_eigh_over_grid():
    count = 0
    for C, D, s, a in _grid():
        ev = mlr.theorem_eigenvalues(C, D, s, a)
        values = ev.eigenvalues()
        assert values.shape == (C * D,)
        assert ev.outlier_multiplicity + ev.mini_bulk_multiplicity + ev.bulk_multiplicity + ev.zero_multiplicity == C * D
        dense = np.linalg.eigvalsh(mlr.expected_fisher(C, D, s, a))
        np.testing.assert_allclose(values, dense, rtol=0, atol=1e-14 * max(1.0, dense[-1]), err_msg=f"C={C} D={D} s={s} a={a}")
        np.testing.assert_array_equal(ev.eigenvalues(descending=True), values[::-1])
        count += 1
    assert count > 100


def test_dense_lemma_equals_the_model_expectation():
    for C, D, s, a in _grid():
        np.testing.assert_allclose(mlr.expected_fisher(C, D, s, a), _lemma_from_moments(C, D, s, a), rtol=0, atol=1e-15 * (1 + s))


def _jacobians(X, C):
    """d(W x)/d vec(W) by autograd, with W[c, d] = w[d*C + c] (the stated ordering)."""
    D = X.shape[1]

    def logits(w, x):
        return w.reshape(D, C).T @ x

    w0 = torch.zeros(C * D, dtype=torch.float64)
    return torch.func.vmap(torch.func.jacrev(logits), in_dims=(None, 0))(w0, torch.as_tensor(X)).numpy()


def test_parameter_ordering_matches_autograd():
    C, D = 3, 5
    X = np.random.default_rng(0).standard_normal((4, D))
    J = _jacobians(X, C)
    for i in range(4):
        np.testing.assert_array_equal(J[i], np.kron(X[i][None, :], np.eye(C)))


def test_lemma_by_monte_carlo_with_autograd_fisher():
    C, D, t, a = 3, 5, 1.5, 0.2
    G = mlr.expected_fisher(C, D, t * t, a)
    P = mlr.symmetric_probabilities(C, a)
    rng = np.random.default_rng(1)

    def monte_carlo(n):
        total = np.zeros_like(G)
        for c in range(C):
            X = rng.standard_normal((n, D))
            X[:, c] += t
            J = _jacobians(X, C)  # (n, C, C D)
            A = np.diag(P[c]) - np.outer(P[c], P[c])
            total += np.einsum("nki,kl,nlj->ij", J, A, J) / (n * C)
        return total

    err_small = np.linalg.norm(monte_carlo(2_000) - G) / np.linalg.norm(G)
    err_large = np.linalg.norm(monte_carlo(32_000) - G) / np.linalg.norm(G)
    assert err_large < 3.0 / np.sqrt(32_000)
    assert err_small / err_large > 2.0  # 1/sqrt(N): about 4 for 16 times the samples
    # the check has power: the other Kronecker ordering is far off
    perm = np.arange(C * D).reshape(D, C).T.reshape(-1)  # C blocks of D
    wrong = G[np.ix_(perm, perm)]
    assert np.linalg.norm(wrong - G) / np.linalg.norm(G) > 0.2


@pytest.mark.parametrize("C,D,s,a", [(2, 2, 1.0, 0.5), (3, 7, 0.0, 0.1), (4, 9, 4.0, 0.3), (5, 5, 10.0, 0.8), (6, 20, 2.5, 0.05)])
def test_operator_matches_dense(C, D, s, a):
    op = mlr.expected_fisher_operator(C, D, s, a)
    dense = mlr.expected_fisher(C, D, s, a)
    assert op.shape == dense.shape and op.dtype == torch.float64
    np.testing.assert_allclose(op.to_dense().numpy(), dense, rtol=0, atol=1e-15 * (1 + s))
    v = np.random.default_rng(2).standard_normal(C * D)
    np.testing.assert_allclose(op.matvec(v).numpy(), dense @ v, rtol=1e-13, atol=1e-13)
    check_symmetric(op)
    op32 = mlr.expected_fisher_operator(C, D, s, a, dtype=torch.float32)
    assert op32.dtype == torch.float32
    np.testing.assert_allclose(op32.to_dense().double().numpy(), dense, rtol=0, atol=1e-6 * (1 + s))


@pytest.mark.gpu
def test_operator_on_cuda_matches_dense():
    C, D, s, a = 4, 9, 4.0, 0.3
    op = mlr.expected_fisher_operator(C, D, s, a, device="cuda")
    assert op.device.type == "cuda"
    V = torch.randn(C * D, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(op.matmat(V.cuda()).cpu().numpy(), mlr.expected_fisher(C, D, s, a) @ V.numpy(), rtol=0, atol=1e-14)


def test_operator_large_size_on_theorem_eigenvectors():
    """p = 100 000: apply the operator to the eigenvectors of each group of Theorem 8.1
    (built from the proof: within block d, 1, e_d - 1/C and vectors orthogonal to 1
    and e_d) and check A v = lambda v."""
    C, D, s, a = 20, 5_000, 3.0, 0.4
    op = mlr.expected_fisher_operator(C, D, s, a)
    ev = mlr.theorem_eigenvalues(C, D, s, a)
    rng = np.random.default_rng(3)

    def in_block(d, u):
        v = np.zeros((D, C))
        v[d] = u
        return v.reshape(-1)

    ones = np.ones(C)
    e = np.eye(C)
    u_perp = rng.standard_normal(C)
    u_perp -= u_perp.mean()
    cases = [
        (ev.outlier, in_block(7, e[7] - ones / C)),
        (ev.mini_bulk, in_block(7, np.where(np.arange(C) == 7, 0.0, u_perp - u_perp[np.arange(C) != 7].mean()))),
        (ev.bulk, in_block(4321, u_perp)),
        (0.0, in_block(7, ones)),
        (0.0, in_block(4321, ones)),
    ]
    V = np.stack([v for _, v in cases], axis=1)
    AV = op.matmat(V).numpy()
    for k, (value, v) in enumerate(cases):
        np.testing.assert_allclose(AV[:, k], value * v, rtol=0, atol=1e-14 * np.linalg.norm(v))
    assert ev.outlier > ev.mini_bulk > ev.bulk > 0


def test_ratios_formulas_and_independence_of_dim():
    C, a = 5, 0.25
    b = 2 - a * C / (C - 1)
    s = np.array([0.0, 0.5, 3.0, 40.0])
    np.testing.assert_allclose(mlr.outlier_to_bulk_ratio(C, s, a), 1 + s * (1 - a) / b, rtol=1e-15)
    np.testing.assert_allclose(mlr.mini_bulk_to_bulk_ratio(C, s, a), 1 + s / (C * b), rtol=1e-15)
    assert isinstance(mlr.outlier_to_bulk_ratio(C, 3.0, a), float)
    for D in (C + 1, 3 * C):
        dense = np.linalg.eigvalsh(mlr.expected_fisher(C, D, 3.0, a))
        bulk = dense[D]  # the D zeros come first, then the bulk
        ev = mlr.theorem_eigenvalues(C, D, 3.0, a)
        assert ev.outlier_to_bulk == pytest.approx(dense[-1] / bulk, rel=1e-13)
        assert ev.mini_bulk_to_bulk == pytest.approx(dense[-C - 1] / bulk, rel=1e-13)
        assert ev.outlier_to_bulk == pytest.approx(mlr.outlier_to_bulk_ratio(C, 3.0, a), rel=1e-15)


def test_theorem_result_is_json_ready():
    record = to_jsonable(mlr.theorem_eigenvalues(3, 4, 2.0, 0.2))
    assert record["outlier_multiplicity"] == 3 and record["zero_multiplicity"] == 4
    assert isinstance(record["outlier"], float)


@pytest.mark.parametrize("which", ["outlier", "mini_bulk"])
def test_inverse_maps_round_trip(which):
    for C, a in [(2, 0.1), (3, 0.3), (10, 0.6), (10, 0.9)]:
        s = np.array([0.0, 0.01, 1.0, 7.5, 60.0])
        ratio = (mlr.outlier_to_bulk_ratio if which == "outlier" else mlr.mini_bulk_to_bulk_ratio)(C, s, a)
        np.testing.assert_allclose(mlr.snr_from_ratio(ratio, C, a, which=which), s, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(
            mlr.predicted_error_from_ratio(ratio, C, a, which=which), mlr.bayes_error(np.sqrt(s), C), rtol=1e-12
        )
    assert isinstance(mlr.predicted_error_from_ratio(2.0, 3, 0.3), float)


def test_snr_from_bayes_error_round_trip():
    for C in (2, 3, 10, 100):
        s = np.array([0.0, 0.3, 2.0, 9.0, 50.0, 200.0])
        errors = mlr.bayes_error(np.sqrt(s), C)
        np.testing.assert_allclose(mlr.snr_from_bayes_error(errors, C), s, rtol=1e-9, atol=1e-12)


# -- Bayes error ---------------------------------------------------------------------

def test_bayes_error_two_classes_closed_form():
    t = np.array([0.0, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 30.0])
    exact = scipy.special.ndtr(-t / np.sqrt(2))
    np.testing.assert_allclose(mlr.bayes_error(t, 2), exact, rtol=1e-11, atol=0)


def _reference(t, C):
    """P_err by mpmath at 30 digits, on the complement 1 - Phi^(C-1) computed without
    cancellation, with the integration range split at the integrand's features."""
    with mpmath.workdps(30):
        f = lambda v: mpmath.npdf(v) * -mpmath.expm1((C - 1) * mpmath.log1p(-mpmath.ncdf(-(v + t))))  # noqa: E731
        return float(mpmath.quad(f, [-mpmath.inf, -t / 2 - 4, -t / 2, 0, 4, mpmath.inf]))


@pytest.mark.parametrize("C", [3, 5, 10, 100, 1000])
def test_bayes_error_against_high_precision(C):
    t = np.array([0.0, 0.3, 1.0, 2.0, 3.0, 4.5, 6.0, 9.0])
    values = mlr.bayes_error(t, C)
    reference = np.array([_reference(float(ti), C) for ti in t])
    np.testing.assert_allclose(values, reference, rtol=1e-9, atol=1e-12)
    assert values[0] == pytest.approx(1 - 1 / C, abs=1e-14)
    assert np.all(np.diff(values) < 0)


def test_bayes_error_monte_carlo():
    C, t, n = 5, 1.5, 400_000
    rng = np.random.default_rng(4)
    labels = rng.integers(C, size=n)
    X = rng.standard_normal((n, C))
    X[np.arange(n), labels] += t
    rate = np.mean(X.argmax(axis=1) != labels)
    expected = mlr.bayes_error(t, C)
    assert abs(rate - expected) < 5 * np.sqrt(expected * (1 - expected) / n)


def test_bayes_error_shapes_and_limits():
    t = np.array([[0.0, 1.0, 2.0], [1.0, np.inf, 0.5]])
    values = mlr.bayes_error(t, 4)
    assert values.shape == (2, 3)
    assert values[1, 1] == 0.0 and values[0, 1] == values[1, 0]
    assert isinstance(mlr.bayes_error(1.0, 4), float)
    assert isinstance(mlr.bayes_error(np.float64(1.0), 4), float)


# -- bad input -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: mlr.theorem_eigenvalues(1, 5, 1.0, 0.3), "num_classes"),
        (lambda: mlr.theorem_eigenvalues(4, 3, 1.0, 0.3), "dim"),
        (lambda: mlr.theorem_eigenvalues(4, 5, -0.1, 0.3), "snr"),
        (lambda: mlr.theorem_eigenvalues(4, 5, float("nan"), 0.3), "snr"),
        (lambda: mlr.theorem_eigenvalues(4, 5, 1.0, 0.0), "alpha"),
        (lambda: mlr.theorem_eigenvalues(4, 5, 1.0, 0.76), "alpha"),
        (lambda: mlr.theorem_eigenvalues(4, 5, 1.0, float("nan")), "alpha"),
        (lambda: mlr.expected_fisher(1, 5, 1.0, 0.3), "num_classes"),
        (lambda: mlr.expected_fisher(4, 2, 1.0, 0.3), "dim"),
        (lambda: mlr.expected_fisher(4, 5, -1.0, 0.3), "snr"),
        (lambda: mlr.expected_fisher(2, 5, 1.0, 0.6), "alpha"),
        (lambda: mlr.expected_fisher(100, 200, 1.0, 0.3), "max_size"),
        (lambda: mlr.expected_fisher_operator(3, 2, 1.0, 0.3), "dim"),
        (lambda: mlr.expected_fisher_operator(3, 4, 1.0, -0.3), "alpha"),
        (lambda: mlr.bayes_error(-0.5, 3), "t"),
        (lambda: mlr.bayes_error([1.0, float("nan")], 3), "t"),
        (lambda: mlr.bayes_error(1.0, 1), "num_classes"),
        (lambda: mlr.outlier_to_bulk_ratio(3, -1.0, 0.3), "snr"),
        (lambda: mlr.mini_bulk_to_bulk_ratio(3, 1.0, 0.7), "alpha"),
        (lambda: mlr.snr_from_ratio(0.9, 3, 0.3), "ratio"),
        (lambda: mlr.snr_from_ratio(2.0, 3, 0.3, which="bulk"), "which"),
        (lambda: mlr.predicted_error_from_ratio([2.0, 0.5], 3, 0.3), "ratio"),
        (lambda: mlr.snr_from_bayes_error(0.7, 3), "error"),
        (lambda: mlr.snr_from_bayes_error(0.0, 3), "error"),
        (lambda: mlr.symmetric_probabilities(3, 1.0), "alpha"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call()


@pytest.mark.parametrize("call", [lambda: mlr.theorem_eigenvalues(3.0, 5, 1.0, 0.3), lambda: mlr.expected_fisher(3, 5.5, 1.0, 0.3)])
def test_non_integer_sizes_are_rejected(call):
    with pytest.raises(TypeError, match="expected an integer"):
        call()
