"""The operator contract: adapters and compositions against dense matrices."""

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch

from theory.operators import (
    CallableOperator,
    DenseOperator,
    ProjectedOperator,
    as_operator,
    check_symmetric,
    orthonormal_basis,
)


def _sym(p, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(p, p, generator=g, dtype=torch.float64)
    return (M + M.T) / 2


@pytest.fixture
def M():
    return _sym(30)


@pytest.fixture
def V():
    return torch.randn(30, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_adapters_give_the_same_products(M, V):
    expected = M @ V
    wrapped = [
        as_operator(M),
        as_operator(M.numpy()),
        as_operator(scipy.sparse.linalg.aslinearoperator(M.numpy())),
        as_operator(scipy.sparse.csr_matrix(M.numpy())),
        as_operator(lambda X: M @ X, size=30),
        as_operator(lambda x: M @ x, size=30, vectorized=False),
    ]
    for op in wrapped:
        assert op.shape == (30, 30) and op.dtype == torch.float64
        torch.testing.assert_close(op.matmat(V), expected, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(op.matvec(V[:, 0]), expected[:, 0], rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(op @ V.numpy(), expected, rtol=1e-13, atol=1e-13)


def test_compositions_match_dense(M, V):
    N = _sym(30, seed=2)
    A, B = as_operator(M), as_operator(N)
    torch.testing.assert_close((A + B).to_dense(), M + N)
    torch.testing.assert_close((A - 2.5 * B).to_dense(), M - 2.5 * N)
    torch.testing.assert_close((-A / 4).to_dense(), -M / 4)
    U = torch.randn(30, 3, dtype=torch.float64)
    s = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(A.low_rank_update(U, s).to_dense(), M + U @ torch.diag(s) @ U.T)
    Q = orthonormal_basis(U)
    P = torch.eye(30, dtype=torch.float64) - Q @ Q.T
    torch.testing.assert_close(A.project_out(U).to_dense(), P @ M @ P)
    torch.testing.assert_close(ProjectedOperator(A, Q, orthonormalize=False).to_dense(), P @ M @ P)


def test_to_scipy_round_trip(M, V):
    lin = as_operator(M).to_scipy()
    np.testing.assert_allclose(lin.matmat(V.numpy()), (M @ V).numpy(), rtol=1e-13)
    np.testing.assert_allclose(lin @ V[:, 0].numpy(), (M @ V[:, 0]).numpy(), rtol=1e-13)
    vals = scipy.sparse.linalg.eigsh(lin, k=2, which="LA", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(vals), torch.linalg.eigvalsh(M)[-2:].numpy(), rtol=1e-10)


def test_float32_operator_casts_inputs(M, V):
    op = as_operator(M.float())
    out = op.matmat(V)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), M @ V, rtol=1e-4, atol=1e-4)


def test_orthonormal_basis_drops_dependent_columns():
    U = torch.randn(20, 2, dtype=torch.float64)
    Q = orthonormal_basis(torch.cat([U, U @ torch.tensor([[1.0], [2.0]], dtype=torch.float64)], dim=1))
    assert Q.shape == (20, 2)
    torch.testing.assert_close(Q.T @ Q, torch.eye(2, dtype=torch.float64))


def test_symmetry_probe(M):
    assert check_symmetric(as_operator(M)) < 1e-10
    skew = M.clone()
    skew[0, 1] += 1.0
    with pytest.raises(ValueError, match="not symmetric"):
        check_symmetric(as_operator(skew))


def test_bad_input_errors(M):
    with pytest.raises(ValueError, match="matrix: expected a square"):
        as_operator(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"V: expected shape \(30, k\)"):
        as_operator(M).matmat(torch.zeros(29, 2))
    with pytest.raises(ValueError, match="sizes differ"):
        as_operator(M) + as_operator(torch.eye(5))
    with pytest.raises(ValueError, match="size: required"):
        as_operator(lambda x: x)
    with pytest.raises(TypeError, match="obj: expected"):
        as_operator("not an operator")
    with pytest.raises(ValueError, match=r"U: expected shape \(30, r\)"):
        as_operator(M).low_rank_update(torch.zeros(5, 2), [1.0, 1.0])
    with pytest.raises(ValueError, match="s: expected 2 values"):
        as_operator(M).low_rank_update(torch.zeros(30, 2), [1.0])
    with pytest.raises(RuntimeError, match="returned shape"):
        CallableOperator(lambda X: X[:-1], 30).matmat(torch.zeros(30, 1))
    with pytest.raises(ValueError, match="max_size"):
        DenseOperator(torch.eye(4)).to_dense(max_size=3)
