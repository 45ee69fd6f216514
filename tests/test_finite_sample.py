"""theory.finite_sample against Monte Carlo of the canonical mixture at moderate sizes (the
formulas are asymptotic; tolerances are a few times the finite-size deviations measured here,
and below the gap to the formulas they correct), plus their exact identities."""

import math

import numpy as np
import pytest

from theory.finite_sample import (
    class_mean_basis,
    effective_aspect_ratio,
    finite_sample_ratio,
    half_overlap_snr,
    predicted_overlap,
    snr_from_finite_sample_ratio,
)
from theory.mlr import bulk_factor, logit_hessian, outlier_to_bulk_ratio, symmetric_probabilities

C, D, N_PER_CLASS, ALPHA = 3, 120, 200, 0.3  # gamma = D/n = 0.6, BBP threshold sqrt(0.6) = 0.77


def _symmetric_fisher(snr: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``G = (1/N) sum_c X_c^T X_c (x) U^c`` on the canonical mixture, from its definition."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C), N_PER_CLASS)
    X = rng.standard_normal((labels.size, D))
    X[np.arange(labels.size), labels] += math.sqrt(snr)
    U = logit_hessian(symmetric_probabilities(C, ALPHA))
    G = sum(np.kron(X[labels == c].T @ X[labels == c], U[c]) for c in range(C)) / labels.size
    return X, labels, G


def _measured(snr: float, seeds=range(3)) -> tuple[float, float]:
    """Seed means of the outlier ratio (mean top-C / bulk trace off the class-mean span) and of
    the top-C eigenvectors' squared overlap with the signal space (``vec`` index ``d*C + c``)."""
    ratios, overlaps = [], []
    for seed in seeds:
        X, labels, G = _symmetric_fisher(snr, seed)
        Q = class_mean_basis(X, labels, C)
        perp = np.kron(np.eye(D) - Q @ Q.T, np.eye(C))
        bulk = np.trace(perp @ G @ perp) / ((D - C) * (C - 1))
        evals, vecs = np.linalg.eigh(G)
        ratios.append(evals[-C:].mean() / bulk)
        overlaps.append((vecs[: C * C, -C:] ** 2).sum() / C)
    return float(np.mean(ratios)), float(np.mean(overlaps))


@pytest.mark.parametrize("snr", [4.0, 9.0])
def test_outlier_ratio_and_overlap_follow_the_spiked_model(snr):
    gamma = D / N_PER_CLASS
    ratio, overlap = _measured(snr)
    formula = finite_sample_ratio(snr, C, ALPHA, gamma)
    theorem = outlier_to_bulk_ratio(C, snr, ALPHA)
    assert ratio == pytest.approx(formula, rel=0.04)
    assert abs(ratio / theorem - 1) > 0.06  # the correction is needed at this D/n
    assert overlap == pytest.approx(predicted_overlap(snr, gamma), abs=0.03)
    assert abs(overlap - (1 - gamma / snr**2)) > 0.05  # Paul's denominator matters


def test_below_the_bbp_threshold_the_outliers_carry_no_signal():
    gamma = D / N_PER_CLASS
    assert predicted_overlap(0.3, gamma) == 0.0
    _, overlap = _measured(0.3)
    assert overlap < 0.1  # a random C-dimensional subspace: C^2 / (C D) = 0.025


@pytest.mark.parametrize("temperature", [0.5, 3.0])
def test_bulk_moments_are_those_of_marchenko_pastur_with_the_effective_aspect_ratio(temperature):
    """Random probabilities independent of the noise: the compressed Fisher's second moment over
    its squared mean is ``1 + gamma_eff`` (Marchenko-Pastur), not ``1 + (D - C)/N``."""
    C4, D4, N = 4, 60, 1500
    measured, predicted = [], []
    for seed in range(2):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, C4, N)
        X = rng.standard_normal((N, D4))
        P = np.exp(temperature * rng.standard_normal((N, C4)))
        P /= P.sum(axis=1, keepdims=True)
        A = np.stack([np.diag(p) - np.outer(p, p) for p in P])
        G = np.einsum("ni,nj,nab->iajb", X, X, A).reshape(D4 * C4, D4 * C4) / N
        Q = class_mean_basis(X, labels, C4)
        perp = np.kron(np.eye(D4) - Q @ Q.T, np.eye(C4))
        M = perp @ G @ perp
        size = (D4 - C4) * (C4 - 1)
        m1, m2 = np.trace(M) / size, np.trace(M @ M) / size
        measured.append(m2 / m1**2 - 1)
        predicted.append(effective_aspect_ratio(P, D4, C4))
    assert np.mean(measured) == pytest.approx(np.mean(predicted), rel=0.05)
    if temperature > 1:  # unequal A_i: far from the plain aspect ratio
        assert np.mean(measured) > 2 * (D4 - C4) / N


def test_effective_aspect_ratio_limits():
    N, D5, C5 = 400, 50, 4
    same = np.tile([0.4, 0.3, 0.2, 0.1], (N, 1))  # every A_i equal: (D - C)/N times A's anisotropy
    ev = np.linalg.eigvalsh(logit_hessian(same[0]))[1:]
    aniso = (C5 - 1) * np.sum(ev**2) / np.sum(ev) ** 2
    assert effective_aspect_ratio(same, D5, C5) == pytest.approx((D5 - C5) / N * aniso, rel=1e-12)
    uniform = np.full((N, C5), 1 / C5)  # A = (I - 11^T/C)/C is isotropic on 1^perp: exactly (D - C)/N
    assert effective_aspect_ratio(uniform, D5, C5) == pytest.approx((D5 - C5) / N, rel=1e-12)


def test_finite_sample_ratio_inverts_and_tends_to_the_theorem():
    C10, a, g = 10, 0.3, 0.2
    for s in (0.6, 2.0, 9.0):
        r = finite_sample_ratio(s, C10, a, g)
        s_hat, below = snr_from_finite_sample_ratio(r, C10, a, g)
        assert not below and s_hat == pytest.approx(s, rel=1e-10)
    # no finite-sample effect as D/n -> 0: Theorem 8.1's ratio
    assert finite_sample_ratio(4.0, C10, a, 1e-12) == pytest.approx(outlier_to_bulk_ratio(C10, 4.0, a), rel=1e-9)
    # below the transition the ratio is the edge value and the inversion says so
    r0 = finite_sample_ratio(0.1, C10, a, g)
    assert r0 == pytest.approx(1 + (1 - a) / bulk_factor(C10, a) * ((1 + math.sqrt(g)) ** 2 - 1))
    assert snr_from_finite_sample_ratio(r0, C10, a, g) == (math.sqrt(g), True)


def test_paul_overlap_formula_and_half_point():
    g = 0.2
    assert predicted_overlap(0.9 * math.sqrt(g), g) == 0.0
    assert predicted_overlap(half_overlap_snr(g), g) == pytest.approx(0.5, rel=1e-12)
    assert predicted_overlap(1e6, g) == pytest.approx(1.0, abs=1e-6)


def test_class_mean_basis_spans_the_class_means():
    rng = np.random.default_rng(0)
    X, labels = rng.standard_normal((90, 7)), np.repeat(np.arange(3), 30)
    Q = class_mean_basis(X, labels, 3)
    np.testing.assert_allclose(Q.T @ Q, np.eye(3), atol=1e-14)
    means = np.stack([X[labels == c].mean(0) for c in range(3)], 1)
    np.testing.assert_allclose(Q @ (Q.T @ means), means, atol=1e-14)
