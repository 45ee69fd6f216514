"""top_eigenpairs and deflate against dense eigh: known spectra (spiked Wishart and
Wigner, clustered, repeated and negative eigenvalues, tiny sizes, k up to p), the
reported residuals, seeds, argument checks, and a float32 network Hessian."""

import math
import warnings

import numpy as np
import pytest
import torch

from theory.checks import ArgumentError
from theory.eigenpairs import ConvergenceWarning, deflate, top_eigenpairs
from theory.operators import CallableOperator

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def spiked_wishart(p, spikes, ratio=2, seed=0):
    """Z Z^T / n + diag(spikes, 0, ...): Marchenko-Pastur bulk plus outliers."""
    Z = torch.randn(p, ratio * p, generator=_gen(seed), dtype=F64)
    D = torch.zeros(p, dtype=F64)
    D[: len(spikes)] = torch.tensor(spikes, dtype=F64)
    return Z @ Z.T / (ratio * p) + torch.diag(D)


def spiked_wigner(p, spikes, seed=0):
    """Symmetric Gaussian / sqrt(p) (semicircle on [-2, 2]) plus rank-k spikes on random directions."""
    W = torch.randn(p, p, generator=_gen(seed), dtype=F64)
    W = (W + W.T) / math.sqrt(2 * p)
    U, _ = torch.linalg.qr(torch.randn(p, len(spikes), generator=_gen(seed + 1), dtype=F64))
    return W + U @ torch.diag(torch.tensor(spikes, dtype=F64)) @ U.T


def with_spectrum(values, seed=0):
    """Q diag(values) Q^T with a random orthogonal Q."""
    values = torch.as_tensor(values, dtype=F64)
    Q, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=_gen(seed), dtype=F64))
    return (Q * values) @ Q.T


def wanted(ev, k, which):
    """The k eigenvalues ``which`` asks for, descending by value."""
    key = {"largest": ev, "smallest": -ev, "magnitude": np.abs(ev)}[which]
    return np.sort(ev[np.argsort(-key, kind="stable")[:k]])[::-1]


def check_against_eigh(A, k, which="largest", tol=1e-10, **kwargs):
    """Eigenvalues to ``tol`` relative to |A|, orthonormal vectors, reported residuals
    equal to the recomputed ``|A v - lambda v|`` and within the criterion."""
    ev = torch.linalg.eigvalsh(A).numpy()
    scale = np.abs(ev).max()
    res = top_eigenpairs(A, k, which=which, tol=tol, **kwargs)
    assert res.converged and res.eigenvalues.shape == (k,) and res.eigenvectors.shape == (A.shape[0], k)
    assert np.all(np.diff(res.eigenvalues) <= 0)
    np.testing.assert_allclose(res.eigenvalues, wanted(ev, k, which), rtol=0, atol=max(tol, 1e-13) * scale * 10)
    V = res.eigenvectors
    np.testing.assert_allclose((V.T @ V).numpy(), np.eye(k), atol=1e-12)
    R = torch.linalg.vector_norm(A @ V - V * torch.as_tensor(res.eigenvalues), dim=0).numpy()
    np.testing.assert_allclose(res.residuals, R, rtol=1e-6, atol=1e-14 * scale)
    assert np.all(R <= np.maximum(tol * np.abs(res.eigenvalues), 10 * np.finfo(float).eps * scale) * 1.01)
    return res


# ------------------------------------------------------------------ against eigh
@pytest.mark.parametrize(
    "name, matrix, k, which",
    [
        ("wishart", spiked_wishart(600, [9.0, 7.0, 5.0]), 3, "largest"),
        ("wigner", spiked_wigner(600, [8.0, 6.0, 4.5]), 3, "largest"),
        ("huge outlier", spiked_wishart(500, [1e6, 10.0]) * 1e-3, 2, "largest"),
        ("indefinite magnitude", spiked_wigner(500, [7.0, -9.0, 5.0]), 3, "magnitude"),
        ("indefinite largest", spiked_wigner(500, [7.0, -9.0, 5.0]), 3, "largest"),
        ("negative smallest", spiked_wigner(400, [7.0, -9.0, -6.0]), 2, "smallest"),
        ("negative definite smallest", -spiked_wishart(400, [6.0, 4.0]), 2, "smallest"),
        ("bulk edge, k = 12", spiked_wishart(300, [4.0]), 12, "largest"),
        ("k = 1", spiked_wigner(300, [5.0, 4.9]), 1, "largest"),
    ],
)
def test_against_eigh(name, matrix, k, which):
    check_against_eigh(matrix, k, which)


def test_clustered_eigenvalues_are_resolved():
    """Gaps of 1e-4 inside the wanted cluster and to the next eigenvalue."""
    ev = np.concatenate([[5.0, 5.0 - 1e-4, 5.0 - 2e-4, 5.0 - 3e-4], np.linspace(0.0, 1.0, 196)])
    check_against_eigh(with_spectrum(ev), 3)


@pytest.mark.parametrize("block_size", [3, 4])
def test_repeated_eigenvalues_with_a_block_at_least_the_multiplicity(block_size):
    """A triple eigenvalue at the top and a double one at the bottom; a block of
    ``b >= 3`` columns finds every copy."""
    ev = np.concatenate([[4.0, 4.0, 4.0, 3.0], np.linspace(-1.0, 1.0, 144), [-5.0, -5.0]])
    A = with_spectrum(ev, seed=3)
    res = check_against_eigh(A, 4, block_size=block_size)
    assert res.block_size == block_size
    check_against_eigh(A, 2, "smallest", block_size=block_size)
    check_against_eigh(A, 6, "magnitude", block_size=block_size)


@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("which", ["largest", "smallest", "magnitude"])
def test_tiny_sizes_every_k(p, which):
    A = with_spectrum([3.0, -2.0, 0.5][:p], seed=p)
    for k in range(1, p + 1):
        check_against_eigh(A, k, which)


def test_k_near_and_at_the_size():
    A = spiked_wigner(40, [6.0, -5.0])
    for k in (38, 40):
        res = check_against_eigh(A, k)
        assert res.num_products <= 40 + 2  # the Krylov space fills the whole space once


def test_rank_deficient_operator_restarts_from_fresh_directions():
    """A = U U^T of rank 4: the Krylov space of one start is invariant after 4 steps."""
    U = torch.randn(100, 4, generator=_gen(2), dtype=F64)
    A = U @ U.T
    res = check_against_eigh(A, 6)
    np.testing.assert_allclose(res.eigenvalues[4:], 0.0, atol=1e-12 * res.eigenvalues[0])


def test_zero_operator():
    res = top_eigenpairs(torch.zeros(30, 30, dtype=F64), 2)
    assert res.converged and np.all(res.eigenvalues == 0) and np.all(res.residuals == 0)


def test_products_are_counted_and_bounded():
    A = spiked_wishart(1000, [9.0, 8.0, 7.0, 6.0, 5.5, 5.0, 4.5, 4.2, 4.0, 3.9])
    calls = {"columns": 0}

    def fn(V):
        calls["columns"] += V.shape[1]
        return A @ V

    res = top_eigenpairs(CallableOperator(fn, 1000), 10, tol=1e-6, check_symmetry=False)
    assert res.converged and res.num_products == calls["columns"]
    assert res.num_products <= 60  # eigsh (ARPACK) takes about 36 here


def test_fixed_iteration_count_is_respected():
    A = spiked_wishart(200, [9.0, 7.0])
    res = top_eigenpairs(A, 2, num_iterations=3, basis_size=10)
    assert res.num_iterations == 3
    assert res.num_products == 9 + 2 * (9 - 5)  # 9 to fill the basis, then 4 per restart (5 Ritz pairs kept)


def test_non_convergence_warns_and_says_so():
    A = spiked_wishart(400, [3.0, 2.99])  # a slow pair, few restarts
    with pytest.warns(ConvergenceWarning, match="not converged"):
        res = top_eigenpairs(A, 2, tol=1e-12, max_iterations=1, basis_size=8)
    assert not res.converged and res.num_iterations == 1
    assert issubclass(ConvergenceWarning, RuntimeWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        top_eigenpairs(A, 2, tol=1e-12, num_iterations=1, basis_size=8)  # a fixed count does not warn


def test_same_seed_same_numbers():
    A = spiked_wishart(300, [5.0, 4.0])
    e1, e2, e3 = (top_eigenpairs(A, 2, seed=s) for s in (4, 4, 5))
    assert np.array_equal(e1.eigenvalues, e2.eigenvalues) and torch.equal(e1.eigenvectors, e2.eigenvectors)
    assert e1.seed == 4 and not torch.equal(e1.eigenvectors.abs(), e3.eigenvectors.abs())


@pytest.mark.parametrize(
    "name, value",
    [
        ("k", 0), ("k", 51), ("k", 2.0), ("which", "biggest"), ("tol", 0.0), ("tol", float("nan")),
        ("num_iterations", 0), ("max_iterations", 0), ("block_size", 0), ("basis_size", 3),
        ("seed", 1.5), ("check_symmetry", 1), ("show_progress", "yes"),
    ],
)
def test_bad_arguments_name_the_argument(name, value):
    args = {"k": 2, name: value}
    with pytest.raises(ArgumentError, match=f"^{name}: expected"):
        top_eigenpairs(spiked_wishart(50, [3.0]), args.pop("k"), **args)


def test_nan_products_raise():
    A = spiked_wishart(50, [3.0])
    calls = {"n": 0}

    def fn(V):
        calls["n"] += 1
        return A @ V if calls["n"] < 4 else torch.full_like(V, float("nan"))

    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        top_eigenpairs(CallableOperator(fn, 50), 2, check_symmetry=False)


# ------------------------------------------------------------------------- deflation
def test_deflation_equals_the_dense_update_and_zeroes_the_top_eigenvalues():
    """``deflate(A, pairs) = A - Q diag(lambda) Q^T``; its spectrum is A's with the top
    k eigenvalues replaced by zeros (a sign error would give 2 lambda)."""
    A = spiked_wigner(300, [9.0, 7.0, 5.0])
    ev = torch.linalg.eigvalsh(A).numpy()
    pairs = top_eigenpairs(A, 3, tol=1e-12)
    Q, lam = pairs.eigenvectors, torch.as_tensor(pairs.eigenvalues)
    D = deflate(A, pairs).to_dense()
    np.testing.assert_allclose(D.numpy(), (A - (Q * lam) @ Q.T).numpy(), atol=1e-13)
    expected = np.sort(np.concatenate([ev[:-3], np.zeros(3)]))
    np.testing.assert_allclose(torch.linalg.eigvalsh(D).numpy(), expected, atol=1e-10)
    # the same from a (values, vectors) tuple of the exact pairs
    w, U = torch.linalg.eigh(A)
    D2 = deflate(A, (w[-3:].numpy(), U[:, -3:])).to_dense()
    np.testing.assert_allclose(torch.linalg.eigvalsh(D2).numpy(), expected, atol=1e-12)


# ------------------------------------------------------------ float32 network operator
def test_float32_network_hessian_converges_to_the_float64_eigenpairs():
    """The Hessian of a small MLP in float32 (the default of deep-network operators):
    eigenvalues of float64 ``eigh`` to 1e-6, unit vectors to 1e-7, true relative
    residuals below 2e-6 (the old subspace iteration: 2e-7, 2.5e-5)."""
    from deepnet.models import MLP
    from deepnet.operators import EmpiricalRisk, HessianOperator

    g = _gen(0)
    X, Y = torch.randn(200, 20, generator=g), torch.randint(0, 5, (200,), generator=g)
    torch.manual_seed(0)
    model = MLP((20,), 5, depth=2, width=16, batch_norm=False).eval()
    op = HessianOperator(EmpiricalRisk(model, (X, Y)))
    assert op.dtype == torch.float32 and op.size == 693
    H = HessianOperator(EmpiricalRisk(model, (X, Y), dtype=F64)).to_dense()
    ev = torch.linalg.eigvalsh(0.5 * (H + H.T)).numpy()
    for k, which in ((5, "largest"), (3, "magnitude")):
        res = top_eigenpairs(op, k, which=which, tol=1e-6)
        assert res.converged and res.num_products <= 120 and res.eigenvectors.dtype == torch.float32
        np.testing.assert_allclose(res.eigenvalues, wanted(ev, k, which), rtol=1e-6)
        V = res.eigenvectors.double()
        assert np.abs(V.norm(dim=0).numpy() ** 2 - 1).max() < 1e-7
        R = torch.linalg.vector_norm(H @ V - V * torch.as_tensor(res.eigenvalues), dim=0).numpy()
        assert np.max(R / np.abs(res.eigenvalues)) < 2e-6
        np.testing.assert_allclose(res.residuals, R, rtol=0.5, atol=1e-7 * np.abs(ev).max())
