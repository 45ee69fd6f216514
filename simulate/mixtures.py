"""Gaussian mixtures with balanced classes: ``x = mu_c + sigma L z``, ``z ~ N(0, I_r)``.

The means ``mu_c`` (rows of a ``C x D`` matrix) have norm ``t = sigma sqrt(snr)``,
so ``snr = t^2 / sigma^2`` is the signal-to-noise ratio of docs/math.md#the-mlr-theorem when
the noise is white (``L = I``). Three layouts of the means:

* canonical: ``mu_c = t e_c`` (the model of Lemma 8.1 / Theorem 8.1);
* simplex: a simplex equiangular tight frame, ``<mu_c, mu_c'> = -t^2/(C-1)``
  for ``c != c'``, in the first ``C`` coordinates or a seeded random ``C``-dimensional
  subspace;
* random: independent directions, uniform on the sphere of radius ``t``.

A general noise covariance ``Sigma = L L^T`` is given either as the matrix
``noise_cov`` (D x D, symmetric positive semi-definite) or as a factor
``noise_factor`` (D x r); ``sigma`` scales it. Every draw takes an explicit seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from theory.checks import check_dim, check_int, check_num_classes

from .dataset import Dataset, as_generator, seed_record, spawn_generators

__all__ = [
    "GaussianMixture",
    "canonical_mixture",
    "simplex_mixture",
    "random_mixture",
    "simplex_etf",
    "covariance_factor",
]


def _check_snr(snr: Any) -> float:
    snr_f = float(snr)
    if not np.isfinite(snr_f) or snr_f < 0:
        raise ValueError(f"snr: expected a finite number >= 0, got {snr!r}")
    return snr_f


def _check_sigma(sigma: Any) -> float:
    sigma_f = float(sigma)
    if not np.isfinite(sigma_f) or sigma_f <= 0:
        raise ValueError(f"sigma: expected a finite number > 0, got {sigma!r}")
    return sigma_f


def covariance_factor(
    dim: int, cov: Any = None, factor: Any = None, *, names: tuple[str, str] = ("noise_cov", "noise_factor")
) -> np.ndarray | None:
    """The factor ``L`` (D x r) of a covariance ``L L^T`` given as the matrix ``cov`` (D x D,
    symmetric PSD; factored by eigh) or as ``factor`` itself; ``None`` (identity) when both are
    ``None``. ``names`` are the argument names used in error messages."""
    cov_name, factor_name = names
    if cov is not None and factor is not None:
        raise ValueError(f"{cov_name}, {factor_name}: give at most one of them")
    if factor is not None:
        L = np.asarray(factor, dtype=np.float64)
        if L.ndim != 2 or L.shape[0] != dim or L.shape[1] < 1:
            raise ValueError(f"{factor_name}: expected shape ({dim}, r) with r >= 1, got {L.shape}")
        if not np.isfinite(L).all():
            raise ValueError(f"{factor_name}: contains NaN or Inf")
        return np.ascontiguousarray(L)
    if cov is not None:
        S = np.asarray(cov, dtype=np.float64)
        if S.shape != (dim, dim):
            raise ValueError(f"{cov_name}: expected shape ({dim}, {dim}), got {S.shape}")
        if not np.isfinite(S).all():
            raise ValueError(f"{cov_name}: contains NaN or Inf")
        if not np.allclose(S, S.T, rtol=1e-10, atol=1e-12 * np.abs(S).max()):
            raise ValueError(f"{cov_name}: expected a symmetric matrix")
        evals, evecs = np.linalg.eigh(S)
        if evals[0] < -1e-10 * max(evals[-1], 0.0):
            raise ValueError(f"{cov_name}: expected a positive semi-definite matrix, smallest eigenvalue {evals[0]:.3g}")
        return np.ascontiguousarray(evecs * np.sqrt(np.clip(evals, 0.0, None)))
    return None


def simplex_etf(num_classes: int, dim: int, *, seed: Any = None) -> np.ndarray:
    """Unit-norm simplex equiangular tight frame (C x D): ``M = sqrt(C/(C-1)) (I - 11^T/C) U^T``.

    ``U`` (D x C, orthonormal columns) is the first ``C`` coordinate axes when ``seed``
    is ``None``, else a uniformly random orthonormal frame drawn from ``seed``.
    Rows have norm one and pairwise inner products ``-1/(C-1)``.
    """
    C = check_num_classes(num_classes)
    D = check_dim(dim, C)
    M = np.sqrt(C / (C - 1)) * (np.eye(C) - np.full((C, C), 1.0 / C))
    if seed is None:
        U = np.eye(D, C)
    else:
        Q, R = np.linalg.qr(as_generator(seed).standard_normal((D, C)))
        U = Q * np.sign(np.diag(R))
    return np.ascontiguousarray(M @ U.T)


@dataclass(frozen=True)
class GaussianMixture:
    """Balanced mixture ``x = means[c] + sigma L z``, ``z ~ N(0, I_r)`` (``L = I_D`` when
    ``noise_factor`` is ``None``); ``means`` is ``C x D``."""

    means: np.ndarray
    sigma: float = 1.0
    noise_factor: np.ndarray | None = None
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        means = np.ascontiguousarray(np.asarray(self.means, dtype=np.float64))
        if means.ndim != 2:
            raise ValueError(f"means: expected a 2-D array (C x D), got shape {means.shape}")
        C = check_num_classes(means.shape[0])
        check_dim(means.shape[1], C)
        if not np.isfinite(means).all():
            raise ValueError("means: contains NaN or Inf")
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "sigma", _check_sigma(self.sigma))
        object.__setattr__(self, "noise_factor", covariance_factor(means.shape[1], None, self.noise_factor))
        object.__setattr__(self, "settings", dict(self.settings))

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n_per_class: int, seed: Any) -> Dataset:
        """``n_per_class`` examples of every class, in class order (labels ``0..0, 1..1, ...``)."""
        n = check_int("n_per_class", n_per_class, 1)
        return self._draw(n, as_generator(seed), {"seed": seed_record(seed)})

    def train_test(self, n_train: int, n_test: int, seed: Any) -> tuple[Dataset, Dataset]:
        """A training set and a fresh test set (``n_train``, ``n_test`` per class) from two
        independent streams spawned from ``seed``."""
        n_train = check_int("n_train", n_train, 1)
        n_test = check_int("n_test", n_test, 1)
        streams = spawn_generators(seed, 2)
        record = seed_record(seed)
        return (
            self._draw(n_train, streams[0], {"seed": record, "split": "train"}),
            self._draw(n_test, streams[1], {"seed": record, "split": "test"}),
        )

    def _draw(self, n: int, rng: np.random.Generator, record: dict) -> Dataset:
        C, D = self.means.shape
        labels = np.repeat(np.arange(C, dtype=np.int64), n)
        r = D if self.noise_factor is None else self.noise_factor.shape[1]
        Z = rng.standard_normal((n * C, r))
        noise = Z if self.noise_factor is None else Z @ self.noise_factor.T
        X = self.means[labels] + self.sigma * noise
        return Dataset(X, labels, C, {**self.settings, "n_per_class": n, **record})


def _mixture(kind: str, means: np.ndarray, snr: float, sigma: float, noise_cov: Any, noise_factor: Any, **extra: Any) -> GaussianMixture:
    C, D = means.shape
    L = covariance_factor(D, noise_cov, noise_factor)
    settings = {
        "generator": kind,
        "num_classes": C,
        "dim": D,
        "snr": snr,
        "sigma": sigma,
        "noise": "white" if L is None else "general",
        **extra,
    }
    return GaussianMixture(means, sigma, L, settings)


def canonical_mixture(
    num_classes: int, dim: int, snr: float, *, sigma: float = 1.0, noise_cov: Any = None, noise_factor: Any = None
) -> GaussianMixture:
    """The canonical model ``x = t e_c + sigma L z`` with ``t = sigma sqrt(snr)`` (Papyan 2020, Sec. 8; docs/math.md#the-mlr-theorem)."""
    C = check_num_classes(num_classes)
    D = check_dim(dim, C)
    snr, sigma = _check_snr(snr), _check_sigma(sigma)
    return _mixture("canonical", sigma * np.sqrt(snr) * np.eye(C, D), snr, sigma, noise_cov, noise_factor)


def simplex_mixture(
    num_classes: int,
    dim: int,
    snr: float,
    *,
    sigma: float = 1.0,
    rotation_seed: Any = None,
    noise_cov: Any = None,
    noise_factor: Any = None,
) -> GaussianMixture:
    """Means on a simplex ETF of radius ``t = sigma sqrt(snr)`` (see :func:`simplex_etf`)."""
    C = check_num_classes(num_classes)
    D = check_dim(dim, C)
    snr, sigma = _check_snr(snr), _check_sigma(sigma)
    means = sigma * np.sqrt(snr) * simplex_etf(C, D, seed=rotation_seed)
    return _mixture("simplex", means, snr, sigma, noise_cov, noise_factor, rotation_seed=seed_record(rotation_seed))


def random_mixture(
    num_classes: int,
    dim: int,
    snr: float,
    *,
    seed: Any,
    sigma: float = 1.0,
    noise_cov: Any = None,
    noise_factor: Any = None,
) -> GaussianMixture:
    """Means ``t u_c`` with ``u_c`` independent and uniform on the unit sphere of R^D (drawn from ``seed``)."""
    C = check_num_classes(num_classes)
    D = check_dim(dim, C)
    snr, sigma = _check_snr(snr), _check_sigma(sigma)
    U = as_generator(seed).standard_normal((C, D))
    means = sigma * np.sqrt(snr) * U / np.linalg.norm(U, axis=1, keepdims=True)
    return _mixture("random", means, snr, sigma, noise_cov, noise_factor, means_seed=seed_record(seed))
