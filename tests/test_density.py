"""Densities from one quadrature: settings, the kernel width pinned to its formula,
densities against exact smoothed eigenvalue histograms with an independently
computed width, bounds from the density's own runs, products counted, point
masses for zero-width spectra, and the resolution warning of the log axis."""

import json
import math
import warnings

import numpy as np
import pytest
import torch

from theory.checks import ArgumentError
from theory.density import (
    DensitySettings,
    bulk_density,
    gaussian_smooth,
    kernel_width,
    log_spectral_density,
    quadrature,
    spectral_densities,
    spectral_density,
)
from theory.lanczos import estimate_bounds
from theory.operators import CallableOperator
from theory.results import to_jsonable

F64 = torch.float64


def rotated(eigenvalues, seed=0):
    """``Q diag(eigenvalues) Q^T`` with a random orthogonal ``Q``."""
    p = len(eigenvalues)
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return (Q * torch.as_tensor(np.asarray(eigenvalues, dtype=np.float64))) @ Q.T


def clusters(p=800, seed=0):
    """Eight narrow clusters (width 0.02) at 1, 2, ..., 8: sharp features, so that a
    wrong kernel width shows."""
    rng = np.random.default_rng(seed)
    return np.concatenate([c + 0.02 * (rng.random(p // 8) - 0.5) for c in range(1, 9)])


def counting(A):
    calls = {"calls": 0, "columns": 0}

    def fn(V):
        calls["calls"] += 1
        calls["columns"] += V.shape[1]
        return A @ V

    return CallableOperator(fn, A.shape[0]), calls


def sigma_by_hand(half_width, num_steps, kappa):
    """The kernel width of LanczosApproxSpec (Papyan 2020, Appendix C), written out here."""
    return half_width * (2.0 / (num_steps - 1)) / math.sqrt(8.0 * math.log(kappa))


# ------------------------------------------------------------------------ settings
def test_settings_are_checked_and_clamped():
    s = DensitySettings()
    assert (s.num_steps, s.num_repeats, s.kappa, s.num_points, s.margin, s.eps, s.seed, s.reorthogonalize) == (
        128, 10, 3.0, 1024, 0.05, 1e-6, 0, False)
    for bad, match in [
        (dict(num_steps=1), "num_steps"), (dict(kappa=1.0), "kappa"), (dict(kappa="3"), "kappa"),
        (dict(seed=2**70), "seed"), (dict(seed=-1), "seed"), (dict(eps=0.0), "eps"), (dict(margin=-0.1), "margin"),
        (dict(num_repeats=0), "num_repeats"), (dict(reorthogonalize=1), "reorthogonalize"),
    ]:
        with pytest.raises(ArgumentError, match=match):
            DensitySettings(**bad)
    small = s.clamped(80)
    assert small.num_steps == 80 and small.num_repeats == s.num_repeats and s.clamped(500) is s
    with pytest.raises(ArgumentError, match="size"):
        s.clamped(1)
    A = rotated(np.linspace(1, 2, 50))
    with pytest.raises(ArgumentError, match=r"num_steps: expected an integer in \[2, 50\]"):
        quadrature(A, DensitySettings(num_steps=51))
    with pytest.raises(ArgumentError, match="unexpected density settings"):
        spectral_density(A, num_step=10)
    with pytest.raises(ArgumentError, match="dimension >= 2"):
        quadrature(torch.ones(1, 1, dtype=F64), DensitySettings(num_steps=2))


def test_settings_and_keywords_give_the_same_numbers():
    A = rotated(clusters(200))
    a = spectral_density(A, DensitySettings(num_steps=40, num_repeats=3, seed=2))
    b = spectral_density(A, num_steps=40, num_repeats=3, seed=2)
    assert np.array_equal(a.density, b.density) and np.array_equal(a.grid, b.grid)
    json.dumps(to_jsonable(quadrature(A, DensitySettings(num_steps=8, num_repeats=2))), allow_nan=False)


# ----------------------------------------------------------------- the kernel width
def test_kernel_width_is_pinned_to_its_formula():
    # m = 101, kappa = e^(1/2): sqrt(8 ln kappa) = 2, so sigma = h (2/100) / 2 = h / 100
    assert kernel_width(101, math.exp(0.5), 3.0) == pytest.approx(0.03, rel=1e-14)
    assert kernel_width(11, math.exp(2.0), 1.0) == pytest.approx(0.2 / 4.0, rel=1e-14)
    q = quadrature(rotated(clusters(200)), DensitySettings(num_steps=64, num_repeats=2))
    lin = q.linear()
    assert lin.sigma == pytest.approx(sigma_by_hand(q.bounds.half_width, 64, 3.0), rel=1e-14)
    assert q.linear(kappa=9.0).sigma == pytest.approx(lin.sigma * math.sqrt(math.log(3) / math.log(9)), rel=1e-14)


@pytest.mark.parametrize("scale", ["linear", "log"])
def test_density_equals_the_smoothed_histogram_with_an_independent_width(scale):
    """The truth is the exact eigenvalues smoothed with the width computed here from the
    formula (not by the estimator): an estimator with twice or half its kernel fails."""
    ev = clusters(800)
    s = DensitySettings(num_steps=128, num_repeats=10)
    q = quadrature(rotated(ev), s)
    b = q.bounds
    if scale == "linear":
        d, points = q.linear(), ev
        sigma = sigma_by_hand(0.5 * (b.upper - b.lower), s.num_steps, s.kappa)
    else:
        d, points = q.log(), np.log10(np.abs(ev) + s.eps)
        assert b.lower > 0  # so the log interval is [log10(lower + eps), log10(upper + eps)]
        y_lo, y_hi = math.log10(b.lower + s.eps), math.log10(b.upper + s.eps)
        sigma = sigma_by_hand(0.5 * (y_hi - y_lo), s.num_steps, s.kappa)
    assert abs(np.trapezoid(d.density, d.grid) - 1.0) < 1e-6
    error = np.trapezoid(np.abs(d.density - gaussian_smooth(points, None, sigma, d.grid)), d.grid)
    assert error < 0.08, error  # measured 0.03; twice or half the width gives 0.55 to 0.62


# ------------------------------------------------------------ bounds from the run
def wigner_with_spikes(p=600, spikes=(6.0, -5.0), seed=1):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(p, p, generator=g, dtype=F64)
    W = (W + W.T) / math.sqrt(2 * p)
    U, _ = torch.linalg.qr(torch.randn(p, len(spikes), generator=g, dtype=F64))
    return W + U @ torch.diag(torch.tensor(spikes, dtype=F64)) @ U.T


@pytest.mark.parametrize("name, tolerance", [("spikes", 1e-7), ("clusters", 1e-3)])
def test_own_bounds_against_a_separate_bounds_run(name, tolerance):
    """The density's bounds come from its own runs. Nodes and weights are the same
    numbers whatever the bounds; the bounds set only sigma (proportional to their
    width) and the grid. Where both runs have converged the extreme eigenvalues
    (isolated spikes at both ends) the two agree to round-off; where the 32-step
    run of ``estimate_bounds`` has not (cluster edges), they differ by its error."""
    A = wigner_with_spikes() if name == "spikes" else rotated(clusters(800))
    ev = torch.linalg.eigvalsh(A).numpy()
    s = DensitySettings(num_steps=96, num_repeats=4, seed=3)
    own = quadrature(A, s)
    separate = estimate_bounds(A, margin=s.margin, seed=s.seed + 1)
    other = quadrature(A, s, bounds=separate)
    assert np.array_equal(own.nodes, other.nodes) and np.array_equal(own.weights, other.weights)
    for b in (own.bounds, separate):
        assert b.lower < ev[0] and b.upper > ev[-1]
    ratio = own.bounds.half_width / separate.half_width
    assert abs(ratio - 1) < tolerance
    a, c = own.linear(), other.linear()
    assert a.sigma / c.sigma == pytest.approx(ratio, rel=1e-13)
    grid = a.grid
    diff = np.trapezoid(np.abs(gaussian_smooth(a.nodes, a.weights, a.sigma, grid) - gaussian_smooth(c.nodes, c.weights, c.sigma, grid)), grid)
    assert diff < 10 * tolerance


def test_a_density_costs_num_steps_products_per_start():
    A = rotated(clusters(200))
    for repeats in (1, 10):
        op, calls = counting(A)
        q = quadrature(op, DensitySettings(num_steps=90, num_repeats=repeats))
        assert calls == {"calls": 91, "columns": 90 * repeats + 2}  # one (p, 2) symmetry probe, then the runs
        assert q.num_products == calls["columns"]
        q.linear(), q.log(), q.linear(kappa=1.5, num_points=300), q.log(eps=1e-3)  # no new products
        assert calls["columns"] == 90 * repeats + 2
    op, calls = counting(A)
    spectral_density(op, num_steps=90, num_repeats=1, check_symmetry=False)
    assert calls == {"calls": 90, "columns": 90}
    op, calls = counting(A)
    linear, log = spectral_densities(op, num_steps=30, num_repeats=2)
    assert calls["columns"] == 62 and linear.scale == "linear" and log.scale == "log"


# ------------------------------------------------------------------- point masses
def assert_point_mass(d, value, y, rtol=1e-12):
    assert np.isfinite(d.density).all() and np.isfinite(d.grid).all()
    assert d.point_mass == pytest.approx(value, abs=rtol * max(1.0, abs(value)))
    assert abs(np.trapezoid(d.density, d.grid) - 1.0) < 1e-6
    assert abs(d.grid[np.argmax(d.density)] - y) < 2 * (d.grid[1] - d.grid[0]) + 3 * d.sigma


def test_zero_operator_is_a_point_mass_at_zero():
    Z = torch.zeros(50, 50, dtype=F64)
    ld = log_spectral_density(Z, num_steps=16)  # all NaN before
    assert_point_mass(ld, 0.0, math.log10(1e-6))
    assert_point_mass(spectral_density(Z, num_steps=16), 0.0, 0.0)
    op, calls = counting(Z)
    q = quadrature(op, DensitySettings(num_steps=16, num_repeats=3))
    assert calls["columns"] == 2 + 3  # each run stops after its first step
    assert q.num_products == 5 and q.point_mass == 0.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scaled_identity_is_a_point_mass(dtype):
    A = 3.5 * torch.eye(60, dtype=dtype)
    lin, log = spectral_densities(A, num_steps=20, num_repeats=2)
    rtol = 10 * torch.finfo(dtype).eps
    assert_point_mass(lin, 3.5, 3.5, rtol)
    assert_point_mass(log, 3.5, math.log10(3.5 + 1e-6), rtol)
    assert lin.sigma < 1e-3 * 3.5


def test_deflated_remainder_of_a_shifted_low_rank_matrix_is_a_point_mass():
    p = 80
    U, _ = torch.linalg.qr(torch.randn(p, 3, generator=torch.Generator().manual_seed(0), dtype=F64))
    A = 2.0 * torch.eye(p, dtype=F64) + U @ torch.diag(torch.tensor([9.0, 7.0, 5.0], dtype=F64)) @ U.T
    dd = bulk_density(A, (np.array([11.0, 9.0, 7.0]), U), num_steps=30)
    assert_point_mass(dd.bulk, 2.0, 2.0)


def test_non_finite_products_are_refused():
    def fn(V):
        out = V.clone()
        out[0] = float("inf")
        return out

    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        quadrature(CallableOperator(fn, 30), DensitySettings(num_steps=8), check_symmetry=False)


# ---------------------------------------------------------------- resolution
def test_log_density_warns_where_the_nodes_do_not_resolve_the_axis():
    """Eigenvalues log-uniform over 1e-6 .. 1e3: a third of the mass lies below 1e-3,
    which 128 steps cannot resolve; the log density says so."""
    ev = np.logspace(-6, 3, 1500)
    q = quadrature(rotated(ev), DensitySettings())
    with pytest.warns(RuntimeWarning, match=r"not resolved below .*Raise num_steps"):
        d = q.log()
    r = d.resolution
    assert r.warning and r.floor > 1e-3 and r.decades > 2
    below = np.mean(ev < 1e-3)
    assert below == pytest.approx(1 / 3, abs=0.01)
    shown = np.trapezoid(d.density[d.grid < -3], d.grid[d.grid < -3])
    assert shown < 0.05 * below  # what the warning is about: the mass below 1e-3 is not shown
    assert np.mean(ev < r.floor) <= r.mass_below  # the Chebyshev-Markov-Stieltjes bound holds


@pytest.mark.parametrize("name", ["marchenko-pastur", "zeros and a low-rank part"])
def test_no_resolution_warning_where_the_nodes_resolve_the_axis(name):
    if name == "marchenko-pastur":  # spectrum in [0.09, 2.9], nothing near zero to miss
        Z = torch.randn(600, 1200, generator=torch.Generator().manual_seed(1), dtype=F64)
        ev = torch.linalg.eigvalsh(Z @ Z.T / 1200).numpy()
    else:  # most of the mass exactly at zero: a node converges onto it
        ev = np.concatenate([np.zeros(500), np.linspace(1, 10, 100)])
    q = quadrature(rotated(ev), DensitySettings(num_steps=64, num_repeats=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = q.log()
    assert d.resolution.warning is None
    assert np.mean(np.abs(ev) < d.resolution.floor) <= d.resolution.mass_below + 1e-12
