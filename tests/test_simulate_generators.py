"""Generators of simulate: statistics of the draws, seeds, balance and bad input."""

import numpy as np
import pytest

from simulate.dataset import Dataset
from simulate.mixtures import (
    GaussianMixture,
    canonical_mixture,
    covariance_factor,
    random_mixture,
    simplex_etf,
    simplex_mixture,
)
from simulate.teacher import LogisticTeacher, random_teacher


def test_canonical_means_and_white_noise():
    C, D, snr, sigma, n = 3, 6, 4.0, 0.5, 4000
    data = canonical_mixture(C, D, snr, sigma=sigma).sample(n, seed=1)
    t = sigma * np.sqrt(snr)
    assert data.X.shape == (n * C, D) and data.X.dtype == np.float64 and data.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(data.labels, minlength=C), [n] * C)
    for c in range(C):
        Xc = data.X[data.labels == c]
        # class mean t e_c to within 5 standard errors in every coordinate
        assert np.abs(Xc.mean(0) - t * np.eye(C, D)[c]).max() < 5 * sigma / np.sqrt(n)
        cov = np.cov(Xc.T)
        # sample covariance of white noise: relative error ~ sqrt(D / n) in spectral norm
        assert np.linalg.norm(cov - sigma**2 * np.eye(D), 2) < 4 * sigma**2 * np.sqrt(D / n)
    assert data.settings["snr"] == snr and data.settings["seed"] == 1


def test_general_noise_covariance():
    C, D, n = 2, 4, 20000
    rng = np.random.default_rng(0)
    A = rng.standard_normal((D, D))
    cov = A @ A.T / D + 0.1 * np.eye(D)
    mix = random_mixture(C, D, 2.0, seed=3, noise_cov=cov, sigma=2.0)
    L = mix.noise_factor
    np.testing.assert_allclose(L @ L.T, cov, atol=1e-12)
    data = mix.sample(n, seed=4)
    resid = data.X - mix.means[data.labels]
    emp = resid.T @ resid / resid.shape[0]
    assert np.linalg.norm(emp - 4.0 * cov, 2) < 4 * 4.0 * np.linalg.norm(cov, 2) * np.sqrt(D / (n * C))
    # the same covariance through a (non-square) factor gives the same law
    F = np.hstack([L, np.zeros((D, 2))])
    np.testing.assert_allclose(covariance_factor(D, factor=F), F)


def test_simplex_etf_and_random_means_geometry():
    C, D = 5, 9
    for seed in (None, 7):
        M = simplex_etf(C, D, seed=seed)
        gram = M @ M.T
        np.testing.assert_allclose(gram, C / (C - 1) * np.eye(C) - np.ones((C, C)) / (C - 1), atol=1e-13)
        np.testing.assert_allclose(M.sum(0), 0.0, atol=1e-13)
    assert not np.allclose(simplex_etf(C, D, seed=7), simplex_etf(C, D, seed=None))
    mix = simplex_mixture(C, D, 9.0, sigma=2.0, rotation_seed=1)
    np.testing.assert_allclose(np.linalg.norm(mix.means, axis=1), 2.0 * 3.0)
    rnd = random_mixture(C, D, 9.0, seed=2)
    np.testing.assert_allclose(np.linalg.norm(rnd.means, axis=1), 3.0)


def test_seeds_reproducible_and_train_test_independent():
    mix = canonical_mixture(3, 5, 1.0)
    a, b = mix.sample(10, seed=5), mix.sample(10, seed=5)
    np.testing.assert_array_equal(a.X, b.X)
    assert not np.array_equal(a.X, mix.sample(10, seed=6).X)
    tr1, te1 = mix.train_test(10, 20, seed=5)
    tr2, te2 = mix.train_test(10, 20, seed=5)
    np.testing.assert_array_equal(tr1.X, tr2.X)
    np.testing.assert_array_equal(te1.X, te2.X)
    assert te1.num_samples == 60 and tr1.settings["split"] == "train" and te1.settings["split"] == "test"
    assert not np.allclose(tr1.X, te1.X[:30])
    # a Generator is used as given (and advanced)
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    np.testing.assert_array_equal(mix.sample(4, g1).X, mix.sample(4, g2).X)
    assert mix.sample(4, g1).settings["seed"] is None


def test_teacher_labels_follow_softmax():
    teacher = random_teacher(3, 4, scale=2.0, seed=0)
    data = teacher.sample(40000, seed=1)
    P = np.exp(data.X @ teacher.W.T)
    P /= P.sum(1, keepdims=True)
    Y = np.eye(3)[data.labels]
    # the score at the true W has mean zero: E[(e_y - p) x^T] = 0 (5 standard errors)
    score = (Y - P)[:, :, None] * data.X[:, None, :]
    se = score.reshape(len(Y), -1).std(0) / np.sqrt(len(Y))
    assert (np.abs(score.reshape(len(Y), -1).mean(0)) < 5 * se).all()
    assert np.abs(Y.mean(0) - P.mean(0)).max() < 5 * 0.5 / np.sqrt(len(Y))
    tr, te = teacher.train_test(100, 50, seed=2)
    np.testing.assert_array_equal(tr.X, teacher.train_test(100, 50, seed=2)[0].X)
    assert te.num_samples == 50


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: canonical_mixture(1, 5, 1.0), "num_classes"),
        (lambda: canonical_mixture(4, 3, 1.0), "dim"),
        (lambda: canonical_mixture(3, 5, -0.1), "snr"),
        (lambda: canonical_mixture(3, 5, float("nan")), "snr"),
        (lambda: canonical_mixture(3, 5, 1.0, sigma=0.0), "sigma"),
        (lambda: canonical_mixture(3, 5, 1.0).sample(0, seed=1), "n_per_class"),
        (lambda: canonical_mixture(3, 5, 1.0).train_test(5, -1, seed=1), "n_test"),
        (lambda: canonical_mixture(3, 5, 1.0).sample(3, seed=-1), "seed"),
        (lambda: canonical_mixture(3, 5, 1.0, noise_cov=np.eye(4)), "noise_cov"),
        (lambda: canonical_mixture(3, 5, 1.0, noise_cov=-np.eye(5)), "noise_cov"),
        (lambda: canonical_mixture(3, 5, 1.0, noise_cov=np.triu(np.ones((5, 5)))), "noise_cov"),
        (lambda: canonical_mixture(3, 5, 1.0, noise_cov=np.eye(5), noise_factor=np.eye(5)), "noise_cov"),
        (lambda: canonical_mixture(3, 5, 1.0, noise_factor=np.full((5, 2), np.nan)), "noise_factor"),
        (lambda: GaussianMixture(np.full((3, 5), np.nan)), "means"),
        (lambda: Dataset(np.array([[0.0, np.nan]]), np.array([0]), 2), "X"),
        (lambda: Dataset(np.zeros((3, 2)), np.array([0, 1, 2]), 2), "labels"),
        (lambda: Dataset(np.zeros((3, 2)), np.array([0, 1]), 2), "labels"),
        (lambda: Dataset(np.zeros((3, 2)), np.array([0.5, 1, 0]), 2), "labels"),
        (lambda: random_teacher(3, 2, scale=1.0, seed=0), "dim"),
        (lambda: random_teacher(3, 4, scale=-1.0, seed=0), "scale"),
        (lambda: LogisticTeacher(np.zeros((3, 4)), b=np.zeros(2)), "b"),
        (lambda: random_teacher(3, 4, scale=1.0, seed=0).sample(0, seed=1), "num_samples"),
    ],
)
def test_bad_input_names_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()
