"""theory.spectrum: one record of outliers and deflated bulk, against dense eigh."""

import json
import math

import numpy as np
import pytest
import torch

from theory.checks import ArgumentError
from theory.density import DensitySettings, gaussian_smooth
from theory.operators import CallableOperator
from theory.spectral import Spectrum, spectrum

F64 = torch.float64


def spiked_wishart(p, spikes, seed=0):
    Z = torch.randn(p, 2 * p, generator=torch.Generator().manual_seed(seed), dtype=F64)
    D = torch.zeros(p, dtype=F64)
    D[: len(spikes)] = torch.tensor(spikes, dtype=F64)
    return Z @ Z.T / (2 * p) + torch.diag(D)


def test_spectrum_record_against_dense_eigenvalues():
    p = 500
    A = spiked_wishart(p, [9.0, 7.0, 5.0])
    ev = torch.linalg.eigvalsh(A).numpy()
    columns = {"n": 0}

    def fn(V):
        columns["n"] += V.shape[1]
        return A @ V

    s = DensitySettings(num_steps=96, num_repeats=6, seed=4)
    rec = spectrum(CallableOperator(fn, p), 3, s, name="wishart", tol=1e-9)
    assert isinstance(rec, Spectrum) and rec.name == "wishart" and rec.size == p and rec.dtype == "torch.float64"
    assert rec.top.converged and rec.settings == s and rec.point_mass is None and rec.warnings == ()
    np.testing.assert_allclose(rec.outliers, ev[::-1][:3], rtol=1e-9)
    assert rec.outlier_weight == 1 / p and rec.bulk_weight == (p - 3) / p
    assert rec.num_products == columns["n"] > 6 * 96
    # the bulk: its nodes and the remaining eigenvalues smoothed alike (6 starts: a
    # kernel wider than the estimator's, which test_density checks, averages their noise)
    bulk = ev[:-3]
    d = rec.density
    assert d.nodes.max() < bulk.max() + 1e-6 and d.bounds.upper < 0.5 * (bulk.max() + ev[-3])
    assert d.sigma == pytest.approx(d.bounds.half_width * (2 / 95) / math.sqrt(8 * math.log(3.0)), rel=1e-12)
    est = gaussian_smooth(d.nodes, d.weights, 0.05, d.grid)
    assert np.trapezoid(np.abs(est - gaussian_smooth(bulk, None, 0.05, d.grid)), d.grid) < 0.1
    ld = rec.log_density
    assert ld.scale == "log" and np.array_equal(ld.weights, d.weights)  # one quadrature for both
    y = np.log10(np.abs(bulk) + s.eps)
    est = gaussian_smooth(ld.nodes, ld.weights, 0.05, ld.grid)
    assert np.trapezoid(np.abs(est - gaussian_smooth(y, None, 0.05, ld.grid)), ld.grid) < 0.1
    payload = json.loads(json.dumps(rec.to_json(), allow_nan=False))
    assert payload["name"] == "wishart" and "eigenvectors" not in payload["top"]
    assert payload["settings"]["num_steps"] == 96 and len(payload["log_density"]["grid"]) == s.num_points


def test_zero_width_bulk_is_a_point_mass():
    p = 60
    U, _ = torch.linalg.qr(torch.randn(p, 2, generator=torch.Generator().manual_seed(1), dtype=F64))
    A = -1.5 * torch.eye(p, dtype=F64) + U @ torch.diag(torch.tensor([8.0, 6.0], dtype=F64)) @ U.T
    rec = spectrum(A, 2, DensitySettings(num_steps=20, num_repeats=3))
    np.testing.assert_allclose(rec.outliers, [6.5, 4.5], rtol=1e-10)
    assert rec.point_mass == pytest.approx(-1.5, rel=1e-12)
    for d in (rec.density, rec.log_density):
        assert np.isfinite(d.density).all() and abs(np.trapezoid(d.density, d.grid) - 1) < 1e-6
    zero = spectrum(torch.zeros(40, 40, dtype=F64), 3, DensitySettings(num_steps=10))
    assert zero.point_mass == 0.0 and np.all(zero.outliers == 0.0)
    json.dumps(zero.to_json(), allow_nan=False)


def test_spectrum_bad_input():
    A = spiked_wishart(30, [4.0])
    with pytest.raises(ArgumentError, match="k: expected"):
        spectrum(A, 29)
    with pytest.raises(ArgumentError, match="num_steps"):
        spectrum(A, 2)  # 128 steps on a dimension of 30
    with pytest.raises(ArgumentError, match="settings"):
        spectrum(A, 2, {"num_steps": 10})
