"""Lanczos invariants on dense random symmetric matrices: the three-term relation
``A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T`` (with and without reorthogonalisation),
``Q^T Q = I`` with it, the residual bounds of the Ritz values, and the bounds
taken from a run's Ritz values."""

import numpy as np
import pytest
import torch

from theory.lanczos import bounds_from_lanczos, lanczos

F64 = torch.float64


def random_symmetric(p, seed):
    X = torch.randn(p, p, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return (X + X.T) / 2


def three_term_defect(A, res, run):
    """``|A Q - Q T - beta_m q_{m+1} e_m^T|_F / |A|_F`` and ``Q`` for one run."""
    m = res.num_steps
    Q = res.basis[run, :m].T
    T = torch.as_tensor(res.tridiagonal(run))
    E = A @ Q - Q @ T
    E[:, -1] -= res.beta[run, m - 1] * res.basis[run, m]
    return float(E.norm() / A.norm()), Q


@pytest.mark.parametrize("reorthogonalize", [True, False])
@pytest.mark.parametrize("num_starts", [1, 3])  # one float64 column and a block take different kernels
def test_three_term_relation_holds_to_round_off(reorthogonalize, num_starts):
    A = random_symmetric(150, seed=0)
    res = lanczos(A, 40, num_starts=num_starts, reorthogonalize=reorthogonalize, seed=1, keep_basis=True)
    assert res.basis.shape == (num_starts, 41, 150) and np.all(res.num_valid == 40)
    for run in range(num_starts):
        defect, Q = three_term_defect(A, res, run)
        assert defect < 1e-13, defect
        np.testing.assert_allclose(Q.norm(dim=0).numpy(), 1.0, atol=1e-13)
        # consecutive vectors are orthogonal to round-off even without reorthogonalisation
        assert float(torch.abs((Q[:, 1:] * Q[:, :-1]).sum(dim=0)).max()) < 1e-12


def test_reorthogonalised_basis_is_orthonormal_and_the_plain_one_is_not():
    A = random_symmetric(120, seed=2)
    A[0, 0] += 60.0  # an outlier that converges early: the plain recurrence loses orthogonality to it
    A[1, 1] -= 40.0
    full = lanczos(A, 100, reorthogonalize=True, seed=3, keep_basis=True)
    plain = lanczos(A, 100, reorthogonalize=False, seed=3, keep_basis=True)
    Qf, Qp = full.basis[0, :100].T, plain.basis[0, :100].T
    eye = torch.eye(100, dtype=F64)
    assert float((Qf.T @ Qf - eye).abs().max()) < 1e-13
    assert float((Qp.T @ Qp - eye).abs().max()) > 1e-3  # the reason reorthogonalisation exists
    # with it, T is the exact projection Q^T A Q
    np.testing.assert_allclose((Qf.T @ A @ Qf).numpy(), full.tridiagonal(), atol=1e-12 * float(A.norm()))


def test_ritz_residual_bounds_hold_an_eigenvalue():
    """Each ``[theta_k - r_k, theta_k + r_k]`` with ``r_k = |beta_m S_{m,k}|`` holds an
    eigenvalue of ``A`` (the Ritz pair's residual is exactly ``r_k``)."""
    A = random_symmetric(200, seed=4)
    ev = torch.linalg.eigvalsh(A).numpy()
    res = lanczos(A, 25, reorthogonalize=True, seed=5, keep_basis=True)
    theta, r = res.ritz_values[0], res.residual_bounds[0]
    gap = np.min(np.abs(ev[None, :] - theta[:, None]), axis=1)
    assert np.all(gap <= r * (1 + 1e-8) + 1e-12)
    # and r_k is the residual norm |A y - theta y| of the Ritz vector y = Q s_k
    T = res.tridiagonal(0)
    w, S = np.linalg.eigh(T)
    Y = res.basis[0, :25].T @ torch.as_tensor(S)
    R = A @ Y - Y * torch.as_tensor(w)
    np.testing.assert_allclose(R.norm(dim=0).numpy(), r, rtol=1e-6, atol=1e-12)


def test_bounds_from_a_run_contain_the_spectrum_and_use_its_extremes():
    A = random_symmetric(300, seed=6)
    ev = torch.linalg.eigvalsh(A).numpy()
    res = lanczos(A, 60, num_starts=2, reorthogonalize=False, seed=7)
    b = bounds_from_lanczos(res, margin=0.0)
    assert b.lower <= ev[0] + 1e-9 and b.upper >= ev[-1] - 1e-9
    assert b.upper - b.lower < 1.01 * (ev[-1] - ev[0])
    assert b.ritz_min == np.nanmin(res.ritz_values) and b.ritz_max == np.nanmax(res.ritz_values)
    wide = bounds_from_lanczos(res, margin=0.1)
    np.testing.assert_allclose(wide.half_width, 1.2 * b.half_width, rtol=1e-12)
    np.testing.assert_allclose(wide.center, b.center, rtol=1e-12)


def test_basis_is_kept_only_on_request():
    A = random_symmetric(40, seed=8)
    assert lanczos(A, 10, reorthogonalize=True).basis is None
    assert lanczos(A, 10, reorthogonalize=False, keep_basis=True).basis.shape == (1, 11, 40)


def test_numba_kernels_leave_torchs_thread_count_alone():
    """Numba's OpenMP layer shares the runtime with torch: a kernel launch must not change
    torch's thread count (it did: 1 -> 2, so a second identical run differed in float32)."""
    from theory.recurrence import column_dots, recurrence_step

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        X = torch.randn(5000, 3, generator=torch.Generator().manual_seed(0))
        column_dots(X, X)
        recurrence_step(X.clone(), X, X, np.ones(3), np.ones(3))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
