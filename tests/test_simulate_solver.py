"""The Numba MLR solver: loss and gradient against autograd, the minimiser against
scikit-learn, determinism across threads and paths, and bad input."""

import numba
import numpy as np
import pytest
import torch

from simulate import solver
from simulate.fisher import mlr_fisher
from simulate.mixtures import canonical_mixture
from simulate.solver import fit_mlr, fit_mlr_many, mlr_loss_grad, mlr_probabilities


def _problem(C=4, D=12, n=40, snr=2.0, seed=0):
    return canonical_mixture(C, D, snr).sample(n, seed=seed)


def test_loss_grad_and_probabilities_match_autograd():
    data = _problem()
    rng = np.random.default_rng(1)
    W, b, penalty = rng.standard_normal((4, 12)), rng.standard_normal(4), 0.3
    f, gW, gb = mlr_loss_grad(data.X, data.labels, W, b, penalty=penalty)
    Wt = torch.tensor(W, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    logits = torch.tensor(data.X) @ Wt.T + bt
    ref = torch.nn.functional.cross_entropy(logits, torch.tensor(data.labels)) + 0.5 * penalty * (Wt**2).sum()
    ref.backward()
    assert abs(f - ref.item()) < 1e-13 * abs(ref.item())
    np.testing.assert_allclose(gW, Wt.grad.numpy(), rtol=0, atol=1e-14)
    np.testing.assert_allclose(gb, bt.grad.numpy(), rtol=0, atol=1e-14)
    np.testing.assert_allclose(mlr_probabilities(data.X, W, b), torch.softmax(logits, 1).detach().numpy(), atol=1e-15)


@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("num_samples_per_class", [40, 400])  # serial compiled / parallel Python-driven path
def test_agrees_with_scikit_learn(fit_intercept, num_samples_per_class):
    linear_model = pytest.importorskip("sklearn.linear_model", reason="scikit-learn is a test-only dependency")
    data = _problem(n=num_samples_per_class)
    N, penalty, tol = data.num_samples, 1e-2, 1e-10
    fit = fit_mlr(data.X, data.labels, 4, penalty=penalty, fit_intercept=fit_intercept, tol=tol)
    assert fit.converged and fit.grad_norm <= tol and fit.status == "converged"
    sk = linear_model.LogisticRegression(
        C=1.0 / (N * penalty), fit_intercept=fit_intercept, solver="newton-cholesky", tol=1e-14, max_iter=1000
    ).fit(data.X, data.labels)
    b_sk = sk.intercept_ - sk.intercept_.mean() if fit_intercept else None  # intercepts: up to a common shift
    _, gW, gb = mlr_loss_grad(data.X, data.labels, sk.coef_, b_sk, penalty=penalty)
    g_sk = np.sqrt((gW**2).sum() + (gb**2).sum() * fit_intercept)
    # |theta - theta*| <= |grad f(theta)| / mu with mu the smallest curvature of f: penalty without
    # intercept; with it, the Hessian (Fisher of [x, 1] plus the ridge on W) off the null direction
    # of the common intercept shift.
    mu = penalty
    if fit_intercept:
        X1 = np.hstack([data.X, np.ones((N, 1))])
        H = mlr_fisher(X1, np.hstack([fit.W, fit.b[:, None]])).to_dense().numpy()
        C = fit.W.shape[0]
        H += np.diag(np.r_[np.full(data.dim * C, penalty), np.zeros(C)])  # the last block of vec is b
        evals = np.linalg.eigvalsh(H)
        assert evals[0] < 1e-12 < evals[1]  # exactly one flat direction
        mu = 0.5 * evals[1]  # curvature at the solution, with a margin for the segment to theta
    np.testing.assert_allclose(fit.b.sum(), 0.0, atol=1e-12)  # Newton-CG stays off the flat direction
    err = np.sqrt(((fit.W - sk.coef_) ** 2).sum() + ((fit.b - (b_sk if fit_intercept else 0.0)) ** 2).sum())
    assert err <= (fit.grad_norm + g_sk) / mu + 1e-12
    assert err < 1e-7


def test_unpenalised_agrees_with_scikit_learn_up_to_the_softmax_shift():
    linear_model = pytest.importorskip("sklearn.linear_model", reason="scikit-learn is a test-only dependency")
    data = _problem(snr=0.5, n=100)  # not separable
    fit = fit_mlr(data.X, data.labels, 4, tol=1e-11)
    assert fit.converged
    np.testing.assert_allclose(fit.W.sum(0), 0.0, atol=1e-12)  # Newton-CG stays in range(H)
    sk = linear_model.LogisticRegression(
        C=np.inf, fit_intercept=False, solver="newton-cholesky", tol=1e-14, max_iter=1000
    ).fit(data.X, data.labels)
    W_sk = sk.coef_ - sk.coef_.mean(0)
    np.testing.assert_allclose(fit.W, W_sk, atol=1e-7)


def test_stopping_rules_and_warm_start():
    data = _problem()
    fit = fit_mlr(data.X, data.labels, 4, penalty=1e-3, max_iter=1)
    assert fit.iterations == 1 and not fit.converged and fit.status == "max_iter"
    full = fit_mlr(data.X, data.labels, 4, penalty=1e-3, tol=1e-9)
    warm = fit_mlr(data.X, data.labels, 4, penalty=1e-3, tol=1e-9, W0=full.W)
    assert warm.iterations == 0 and warm.converged
    loose = fit_mlr(data.X, data.labels, 4, penalty=1e-3, tol=1e-2)
    assert loose.grad_norm <= 1e-2 and loose.iterations < full.iterations


def test_bitwise_reproducible_across_threads_and_paths():
    small = _problem(n=30, seed=3)
    large = _problem(n=600, seed=4)  # several chunks: parallel kernels driven from Python
    assert solver.kernels.chunking(large.num_samples)[0] > 1
    threads = numba.get_num_threads()
    try:
        fits = [fit_mlr(large.X, large.labels, 4, penalty=1e-3, tol=1e-10)]
        numba.set_num_threads(1)  # compiled serial path
        fits.append(fit_mlr(large.X, large.labels, 4, penalty=1e-3, tol=1e-10))
    finally:
        numba.set_num_threads(threads)
    many = fit_mlr_many(
        np.stack([small.X, small.X[::-1].copy()]), np.stack([small.labels, small.labels[::-1].copy()]), 4,
        penalty=1e-3, tol=1e-10,
    )
    many_large = fit_mlr_many(large.X[None], large.labels[None], 4, penalty=1e-3, tol=1e-10)
    np.testing.assert_array_equal(fits[0].W, fits[1].W)
    np.testing.assert_array_equal(fits[0].W, many_large.W[0])
    assert fits[0].loss == fits[1].loss == many_large.loss[0]
    single = fit_mlr(small.X, small.labels, 4, penalty=1e-3, tol=1e-10)
    np.testing.assert_array_equal(single.W, many.W[0])
    assert many.converged.all() and many.status == ("converged", "converged")
    # the second problem is the same data in another order: same minimiser, other rounding
    np.testing.assert_allclose(many.W[1], many.W[0], atol=1e-8)


def test_many_problems_of_different_data():
    mix = canonical_mixture(3, 6, 4.0)
    sets = [mix.sample(20, seed=s) for s in range(6)]
    many = fit_mlr_many(np.stack([d.X for d in sets]), np.stack([d.labels for d in sets]), 3, penalty=1e-2)
    assert many.W.shape == (6, 3, 6) and many.converged.all()
    for m, d in enumerate(sets):
        np.testing.assert_array_equal(many.W[m], fit_mlr(d.X, d.labels, 3, penalty=1e-2).W)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda d: fit_mlr(d.X, d.labels, 1), "num_classes"),
        (lambda d: fit_mlr(d.X, d.labels, 3), "labels"),
        (lambda d: fit_mlr(d.X, d.labels[:-1], 4), "labels"),
        (lambda d: fit_mlr(np.where(d.X > 2, np.nan, d.X), d.labels, 4), "X"),
        (lambda d: fit_mlr(d.X, d.labels, 4, penalty=-1.0), "penalty"),
        (lambda d: fit_mlr(d.X, d.labels, 4, tol=0.0), "tol"),
        (lambda d: fit_mlr(d.X, d.labels, 4, max_iter=0), "max_iter"),
        (lambda d: fit_mlr(d.X, d.labels, 4, W0=np.zeros((4, 3))), "W0"),
        (lambda d: fit_mlr_many(d.X, d.labels, 4), "X"),
        (lambda d: fit_mlr_many(d.X[None], d.labels, 4), "labels"),
        (lambda d: mlr_loss_grad(d.X, d.labels, np.zeros((4, 3))), "W"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(_problem())
