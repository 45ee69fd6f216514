"""The spectral core against dense eigh on matrices with known spectra."""

import math

import numpy as np
import pytest
import torch

from theory.operators import CallableOperator, as_operator
from theory.spectral import (
    bulk_densities,
    bulk_density,
    deflate,
    estimate_bounds,
    gaussian_smooth,
    lanczos,
    log_spectral_density,
    spectral_densities,
    spectral_density,
    top_eigenpairs,
)

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


def _formula_width(half_width, num_steps, kappa=3.0):
    """sigma = h (2/(m-1)) / sqrt(8 ln kappa), written out here so that the truth does
    not take its width from the estimator under test."""
    return half_width * (2.0 / (num_steps - 1)) / math.sqrt(8.0 * math.log(kappa))


def _rel(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b)))


# ------------------------------------------------------------------------- Lanczos
def test_full_lanczos_is_exact():
    A = spiked_wishart(80, [5.0, 3.0])
    res = lanczos(A, 80, reorthogonalize=True, seed=3)
    np.testing.assert_allclose(res.ritz_values[0], torch.linalg.eigvalsh(A).numpy(), rtol=1e-10, atol=1e-10)
    assert abs(res.weights.sum() - 1.0) < 1e-12


def test_lanczos_tridiagonal_matches_projection():
    A = spiked_wigner(60, [4.0])
    start = torch.randn(60, generator=_gen(4), dtype=F64)
    res = lanczos(A, 10, reorthogonalize=True, start=start)
    # Rebuild the Krylov basis densely and compare Q^T A Q with T.
    Q = torch.zeros(60, 10, dtype=F64)
    Q[:, 0] = start / start.norm()
    for j in range(1, 10):
        w = A @ Q[:, j - 1]
        w -= Q[:, :j] @ (Q[:, :j].T @ w)
        w -= Q[:, :j] @ (Q[:, :j].T @ w)
        Q[:, j] = w / w.norm()
    np.testing.assert_allclose(res.tridiagonal(), (Q.T @ A @ Q).numpy(), atol=1e-10)


def test_fast_and_slow_lanczos_agree_early_and_weights_sum_to_one():
    A = spiked_wishart(300, [6.0])
    fast = lanczos(A, 20, num_starts=3, reorthogonalize=False, seed=1)
    slow = lanczos(A, 20, num_starts=3, reorthogonalize=True, seed=1)
    np.testing.assert_allclose(fast.alpha[:, :8], slow.alpha[:, :8], rtol=1e-8)
    np.testing.assert_allclose(fast.weights.sum(axis=1), 1.0, atol=1e-12)


def test_lanczos_stops_on_an_invariant_subspace():
    U = torch.randn(100, 4, generator=_gen(2), dtype=F64)
    A = U @ U.T  # rank 4: a start's Krylov space has dimension <= 5
    res = lanczos(A, 30, reorthogonalize=True, num_starts=2)
    assert np.all(res.num_valid <= 5)
    nodes, weights = res.nodes_and_weights()
    assert abs(weights.sum() - 2.0) < 1e-10
    top = np.sort(torch.linalg.eigvalsh(A).numpy())[-4:]
    for run in range(2):
        n = res.num_valid[run]
        np.testing.assert_allclose(np.sort(res.ritz_values[run, :n])[-4:], top, rtol=1e-9)


# ------------------------------------------------------------------------ bounds
def test_bounds_contain_the_spectrum():
    A = spiked_wigner(400, [6.0, -5.0])
    ev = torch.linalg.eigvalsh(A).numpy()
    b = estimate_bounds(A)
    assert b.lower < ev[0] and b.upper > ev[-1]
    assert b.upper - b.lower < 1.5 * (ev[-1] - ev[0])


# ----------------------------------------------------------------------- densities
def test_density_integrates_to_one_and_matches_smoothed_histogram():
    A = spiked_wishart(1000, [8.0, 6.0, 4.0])
    ev = torch.linalg.eigvalsh(A).numpy()
    errors = []
    sigma = 0.05  # one fixed kernel for truth and estimate, so errors are comparable across m
    for m in (8, 32, 128):
        d = spectral_density(A, num_steps=m, num_repeats=10, seed=0)
        assert abs(np.trapezoid(d.density, d.grid) - 1.0) < 1e-3
        truth = gaussian_smooth(ev, None, sigma, d.grid)
        est = gaussian_smooth(d.nodes, d.weights, sigma, d.grid)
        errors.append(np.trapezoid(np.abs(est - truth), d.grid))
    assert errors[0] > 2 * errors[1] > 2 * errors[2] * 0.99, errors
    assert errors[2] < 0.1, errors
    # and the estimator's kernel at m = 128 against the truth smoothed with the formula's width
    d = spectral_density(A, num_steps=128, num_repeats=10)
    truth = gaussian_smooth(ev, None, _formula_width(d.bounds.half_width, 128), d.grid)
    assert np.trapezoid(np.abs(d.density - truth), d.grid) < 0.15


def test_density_of_an_indefinite_matrix_and_log_density():
    A = spiked_wigner(800, [6.0])
    ev = torch.linalg.eigvalsh(A).numpy()
    d = spectral_density(A, num_steps=64)
    assert abs(np.trapezoid(d.density, d.grid) - 1.0) < 1e-3
    assert np.trapezoid(np.abs(d.density - gaussian_smooth(ev, None, _formula_width(d.bounds.half_width, 64), d.grid)), d.grid) < 0.15
    ld = log_spectral_density(A, num_steps=64, eps=1e-5)
    assert abs(np.trapezoid(ld.density, ld.grid) - 1.0) < 1e-3
    y = np.log10(np.abs(ev) + 1e-5)
    b = ld.bounds  # straddles zero: the y interval is [log10(eps), log10(max|bound| + eps)]
    y_half = 0.5 * (math.log10(max(-b.lower, b.upper) + 1e-5) - math.log10(1e-5))
    assert np.trapezoid(np.abs(ld.density - gaussian_smooth(y, None, _formula_width(y_half, 64), ld.grid)), ld.grid) < 0.2


def test_deflation_recovers_the_bulk():
    p = 1000
    A = spiked_wishart(p, [9.0, 7.0, 5.0])
    ev = torch.linalg.eigvalsh(A).numpy()
    pairs = top_eigenpairs(A, 3, tol=1e-9)
    np.testing.assert_allclose((deflate(A, pairs).to_dense() - A).norm().item() ** 2, np.sum(pairs.eigenvalues**2), rtol=1e-8)
    dd = bulk_density(A, pairs, num_steps=96)
    assert dd.outlier_weight == 1.0 / p and dd.bulk_weight == (p - 3) / p
    np.testing.assert_allclose(dd.outliers, ev[::-1][:3], rtol=1e-9)
    bulk = ev[:-3]
    assert dd.bulk.nodes.max() < bulk.max() + 1e-6  # no outlier node left in the bulk estimate
    assert dd.bulk.bounds.upper < 0.5 * (bulk.max() + ev[-3])
    est = gaussian_smooth(dd.bulk.nodes, dd.bulk.weights, 0.05, dd.bulk.grid)
    assert np.trapezoid(np.abs(est - gaussian_smooth(bulk, None, 0.05, dd.bulk.grid)), dd.bulk.grid) < 0.1
    log_dd = bulk_density(A, pairs, log=True, num_steps=64)
    assert log_dd.bulk.scale == "log" and abs(np.trapezoid(log_dd.bulk.density, log_dd.bulk.grid) - 1) < 1e-3


def test_one_run_gives_both_densities_with_the_same_numbers():
    A = spiked_wishart(400, [6.0, 4.0])
    calls = {"columns": 0}

    def fn(V):
        calls["columns"] += V.shape[1]
        return A @ V

    op = CallableOperator(fn, 400)
    linear, log = spectral_densities(op, eps=1e-5, num_steps=40, num_repeats=3, seed=2)
    shared = calls["columns"]
    calls["columns"] = 0
    separate = (spectral_density(op, num_steps=40, num_repeats=3, seed=2), log_spectral_density(op, eps=1e-5, num_steps=40, num_repeats=3, seed=2))
    assert calls["columns"] == 2 * shared
    for one, two in zip((linear, log), separate):
        assert np.array_equal(one.grid, two.grid) and np.array_equal(one.density, two.density)
    pairs = top_eigenpairs(A, 2)
    both = bulk_densities(A, pairs, eps=1e-5, num_steps=40, num_repeats=3)
    assert np.array_equal(both[0].bulk.density, bulk_density(A, pairs, num_steps=40, num_repeats=3).bulk.density)
    assert np.array_equal(both[1].bulk.density, bulk_density(A, pairs, log=True, eps=1e-5, num_steps=40, num_repeats=3).bulk.density)
    assert both[1].bulk.scale == "log" and both[0].outliers.tolist() == both[1].outliers.tolist()


def test_float32_products_give_float64_densities_within_plotting_accuracy():
    A = spiked_wishart(800, [7.0, 5.0])
    d64 = spectral_density(A, num_steps=96, seed=5)
    d32 = spectral_density(A.float(), num_steps=96, seed=5, bounds=d64.bounds)
    np.testing.assert_allclose(d32.grid, d64.grid, rtol=1e-12)
    assert np.max(np.abs(d32.density - d64.density)) < 1e-2 * d64.density.max()
    e32 = top_eigenpairs(A.float(), 2)
    np.testing.assert_allclose(e32.eigenvalues, torch.linalg.eigvalsh(A).numpy()[::-1][:2], rtol=1e-5)


def test_same_seed_same_numbers():
    A = spiked_wishart(300, [5.0])
    a = spectral_density(A, num_steps=32, seed=11)
    b = spectral_density(A, num_steps=32, seed=11)
    c = spectral_density(A, num_steps=32, seed=12)
    assert np.array_equal(a.density, b.density) and not np.array_equal(a.density, c.density)
    e1, e2 = top_eigenpairs(A, 2, seed=4), top_eigenpairs(A, 2, seed=4)
    assert np.array_equal(e1.eigenvalues, e2.eigenvalues)
    assert torch.equal(e1.eigenvectors, e2.eigenvectors)


# -------------------------------------------------------------------------- errors
def test_bad_input_errors():
    A = spiked_wishart(50, [3.0])
    with pytest.raises(ValueError, match="num_steps"):
        lanczos(A, 1)
    with pytest.raises(ValueError, match="num_steps"):
        spectral_density(A, num_steps=51)
    with pytest.raises(ValueError, match="kappa"):
        spectral_density(A, num_steps=10, kappa=1.0)
    with pytest.raises(ValueError, match="k: expected"):
        top_eigenpairs(A, 51)
    with pytest.raises(ValueError, match="which"):
        top_eigenpairs(A, 2, which="biggest")
    with pytest.raises(ValueError, match="matrix: expected a square"):
        spectral_density(torch.zeros(5, 6))
    with pytest.raises(ValueError, match="eps"):
        log_spectral_density(A, eps=0.0)
    skew = A.clone()
    skew[0, 3] += 1.0
    with pytest.raises(ValueError, match="not symmetric"):
        spectral_density(skew, num_steps=8)
    spectral_density(skew, num_steps=8, check_symmetry=False)  # switchable off


def test_nan_product_names_the_step():
    A = spiked_wishart(50, [3.0])
    calls = {"n": 0}

    def fn(V):
        calls["n"] += 1
        return A @ V if calls["n"] < 6 else torch.full_like(V, float("nan"))

    op = CallableOperator(fn, 50)
    with pytest.raises(FloatingPointError, match="step 5"):
        lanczos(op, 20, check_symmetry=True)  # one product for the probe, then steps 1..4 fine


# ---------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
def test_cuda_matches_cpu():
    A = spiked_wishart(500, [7.0, 5.0])
    cpu = spectral_density(A, num_steps=64, seed=2)
    gpu = spectral_density(as_operator(A.cuda()), num_steps=64, seed=2, bounds=cpu.bounds)
    assert np.max(np.abs(gpu.density - cpu.density)) < 1e-6 * cpu.density.max()
    e = top_eigenpairs(A.cuda(), 2)
    assert e.eigenvectors.is_cuda
    np.testing.assert_allclose(e.eigenvalues, torch.linalg.eigvalsh(A).numpy()[::-1][:2], rtol=1e-8)
