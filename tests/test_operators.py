"""The operator contract: adapters and compositions against dense matrices."""

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch

from theory.operators import (
    CallableOperator,
    CountedOperator,
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


def test_products_are_new_tensors_that_leave_the_input_unchanged(M, V):
    """The contract: ``matmat`` returns a new tensor and never changes its input,
    also for composites over a base operator whose product is its input."""
    identity = CallableOperator(lambda X: X, 30)
    U = torch.randn(30, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    s = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    eye = torch.eye(30, dtype=torch.float64)
    cases = {
        "identity": (identity, eye),
        "low-rank update": (identity.low_rank_update(U, s), eye + U @ torch.diag(s) @ U.T),
        "sum": (identity + as_operator(M), eye + M),
        "scaling": (2.0 * identity, 2.0 * eye),
        "projection": (identity.project_out(U), eye - orthonormal_basis(U) @ orthonormal_basis(U).T),
        "update of an update": (identity.low_rank_update(U, s).low_rank_update(U, -s), eye),
    }
    for name, (op, dense) in cases.items():
        for X in (V.clone(), V[:, 0].clone()):
            before = X.clone()
            out = op.matmat(X)
            assert out.untyped_storage().data_ptr() != X.untyped_storage().data_ptr(), name
            torch.testing.assert_close(X, before, rtol=0, atol=0, msg=name)
            torch.testing.assert_close(out, dense @ X, rtol=1e-13, atol=1e-13, msg=name)
        AV, scale = op.matmat_with_scale(V)
        torch.testing.assert_close(AV, dense @ V, rtol=1e-13, atol=1e-13, msg=name)
        assert scale.shape == (4,) and bool((scale >= (dense @ V).norm(dim=0) * (1 - 1e-12)).all()), name


def test_symmetry_probe_judges_round_off_against_the_operator_scale():
    """``R = U U^T`` (U of shape (300, 4)) deflated by its own top eigenpairs, or
    projected onto their complement, has products of round-off size; it is symmetric
    and must pass, while a genuinely non-symmetric operator, deflated or projected
    the same way, is refused."""
    U = torch.randn(300, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    R = U @ U.T
    values, vectors = torch.linalg.eigh(R)
    deflated = as_operator(R).low_rank_update(vectors[:, -4:], -values[-4:])
    assert float(deflated.matmat(torch.ones(300, 1)).norm()) < 1e-10 * float(R.norm())
    assert check_symmetric(deflated) < 1e-12
    projected = as_operator(R).project_out(vectors[:, -4:])  # the operator of bulk_density(R, top 4)
    assert float(projected.matmat(torch.ones(300, 1)).norm()) < 1e-10 * float(R.norm())
    assert check_symmetric(projected) < 1e-12
    assert check_symmetric(as_operator(R.float()).low_rank_update(vectors[:, -4:].float(), -values[-4:].float())) < 1e-5
    skew = torch.randn(300, 300, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    skew = 1e-3 * float(R.norm()) / float(skew.norm()) * (skew - skew.T)
    for op in (
        as_operator(R + skew),
        as_operator(R + skew).low_rank_update(vectors[:, -4:], -values[-4:]),
        as_operator(R + skew).project_out(vectors[:, -4:]),
    ):
        with pytest.raises(ValueError, match="not symmetric"):
            check_symmetric(op)


def test_counted_operator_counts_and_keeps_the_scale_of_the_terms():
    """A counted low-rank update gives the same products and the same term scale as the
    update itself (so the symmetry probe judges both alike), and counts columns and calls."""
    gen = torch.Generator().manual_seed(0)
    U = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    A = as_operator(torch.eye(30, dtype=torch.float64)).low_rank_update(U, [2.0, -1.0, 0.5])
    counted = CountedOperator(A)
    V = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    out, scale = counted.matmat_with_scale(V)
    ref, ref_scale = A.matmat_with_scale(V)
    assert torch.equal(out, ref) and torch.equal(scale, ref_scale)
    assert torch.equal(counted.matmat(V[:, 0]), A.matmat(V[:, 0]))
    assert (counted.columns, counted.calls) == (5, 2) and counted.seconds >= 0.0
    counted.reset()
    assert (counted.columns, counted.calls, counted.seconds) == (0, 0, 0.0)


def test_a_projected_product_costs_one_base_column_per_column():
    """``(I - QQ^T) A (I - QQ^T) V`` multiplies ``A`` by the ``k`` projected columns only (the
    doubled block with ``V`` itself is the symmetry probe's, for its scale), and equals the
    dense projection."""
    gen = torch.Generator().manual_seed(1)
    M = torch.randn(20, 20, generator=gen, dtype=torch.float64)
    M = M + M.T
    Q = orthonormal_basis(torch.randn(20, 3, generator=gen, dtype=torch.float64))
    counted = CountedOperator(as_operator(M))
    V = torch.randn(20, 5, generator=gen, dtype=torch.float64)
    P = torch.eye(20, dtype=torch.float64) - Q @ Q.T
    torch.testing.assert_close(ProjectedOperator(counted, Q, orthonormalize=False).matmat(V), P @ M @ P @ V)
    assert (counted.columns, counted.calls) == (5, 1)
