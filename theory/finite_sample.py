"""Finite-sample corrections to Theorem 8.1 for the empirical MLR Fisher (beyond the paper;
our derivation, checked against simulation in ``tests/test_finite_sample.py`` and by
``python -m simulate study``).

Canonical model (:mod:`theory.mlr`): ``C`` classes, ``n`` examples per class, ``N = C n``,
``x = t e_c + z`` in ``D`` dimensions, SNR ``s = t^2``. With symmetric probabilities the
empirical Fisher is ``G = Ave_c S_c (x) U^c`` (``S_c`` the second moment of class ``c``,
``U^c = A(p_c)``).

(i) **Bulk.** With the noise directions of ``x`` independent of ``p``, the first two moments
of the bulk are exactly those of a Marchenko-Pastur law of mean ``mu = beta b`` and aspect
ratio ``gamma_eff = ((D - C)/N) (C - 1) Ave_i tr(A_i^2) / (Ave_i tr A_i)^2``, which is
``(D - C)/N`` when every ``A_i`` is the same isotropic ``A`` and up to ``C - 1`` times that
when they are rank one; the bulk edge is about ``mu (1 + sqrt(gamma_eff))^2``.

(ii) **Outliers.** ``S_c`` is a spiked sample second moment (population spike ``1 + s`` on
``e_c``, aspect ratio ``gamma = D/n``); by Baik-Ben Arous-Peche (2005) and Baik-Silverstein
(2006) its top eigenvalue tends to ``(1 + s)(1 + gamma/s)`` when ``s > sqrt(gamma)`` and
sticks to ``(1 + sqrt(gamma))^2`` below. The Rayleigh quotient of ``G`` on ``v_c (x) u_c``
(``v_c`` that eigenvector, ``u_c`` the top eigenvector of ``U^c``) gives the outlier

    lambda_out ~ beta (s (1 - alpha) + b) + beta (1 - alpha) gamma (1 + s) / s,

i.e. the ratio ``r ~ 1 + k (s + gamma + gamma/s)``, ``k = (1 - alpha)/b``, and the outlier
eigenvectors keep the squared overlap ``(1 - gamma/s^2) / (1 + gamma/s)`` with the signal
space ``span(e_0..e_{C-1}) (x) R^C`` (Paul 2007), zero below ``s = sqrt(gamma)``: the outliers
leave the bulk at ``s* = sqrt(D/n)`` and carry half their mass in the signal space at
``s_1/2 = (gamma + sqrt(gamma^2 + 8 gamma))/2``. Inverting the ratio gives a finite-sample
corrected SNR (:func:`snr_from_finite_sample_ratio`).

``b = 2 - alpha C/(C-1)`` is :func:`theory.mlr.bulk_factor`.
"""

from __future__ import annotations

import math

import numpy as np

from theory.mlr import bulk_factor

__all__ = [
    "class_mean_basis",
    "effective_aspect_ratio",
    "finite_sample_ratio",
    "snr_from_finite_sample_ratio",
    "predicted_overlap",
    "half_overlap_snr",
]


def class_mean_basis(X: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Orthonormal basis ``Q`` (D x C) of the span of the class means of ``X`` (N x D)."""
    means = np.stack([X[labels == c].mean(axis=0) for c in range(num_classes)], axis=1)
    Q, _ = np.linalg.qr(means)
    return Q


def effective_aspect_ratio(probs: np.ndarray, dim: int, num_classes: int) -> float:
    """``gamma_eff = ((D - C)/N) (C - 1) Ave_i tr(A_i^2) / (Ave_i tr A_i)^2`` with
    ``A_i = A(p_i)`` (``probs``: N x C): the aspect ratio of the Marchenko-Pastur law with the
    bulk's first two moments. ``tr A = 1 - |p|^2``, ``tr A^2 = sum p^2 - 2 sum p^3 + (sum p^2)^2``."""
    q2 = (probs**2).sum(axis=1)
    q3 = (probs**3).sum(axis=1)
    tr1, tr2 = 1.0 - q2, q2 - 2.0 * q3 + q2**2
    N = probs.shape[0]
    return float((dim - num_classes) / N * (num_classes - 1) * tr2.mean() / tr1.mean() ** 2)


def finite_sample_ratio(snr: float, num_classes: int, alpha: float, gamma: float) -> float:
    """The outlier-to-bulk ratio at finite ``n``: ``1 + k (s + gamma + gamma/s)`` above the
    class-covariance transition ``s > sqrt(gamma)``, ``1 + k ((1 + sqrt(gamma))^2 - 1)`` below,
    ``k = (1 - alpha)/b``, ``gamma = D/n``."""
    b = bulk_factor(num_classes, alpha)
    k = (1.0 - alpha) / b
    if snr > math.sqrt(gamma):
        return 1.0 + k * (snr + gamma + gamma / snr)
    return 1.0 + k * ((1.0 + math.sqrt(gamma)) ** 2 - 1.0)


def predicted_overlap(snr: float, gamma: float) -> float:
    """Squared overlap of a spiked sample covariance's top eigenvector with the spike (Paul 2007),
    ``(1 - gamma/s^2) / (1 + gamma/s)`` for ``s > sqrt(gamma)``, else 0."""
    if snr <= math.sqrt(gamma):
        return 0.0
    return (1.0 - gamma / snr**2) / (1.0 + gamma / snr)


def half_overlap_snr(gamma: float) -> float:
    """The SNR where :func:`predicted_overlap` is 1/2: ``(gamma + sqrt(gamma^2 + 8 gamma)) / 2``."""
    return 0.5 * (gamma + math.sqrt(gamma * gamma + 8.0 * gamma))


def snr_from_finite_sample_ratio(ratio: float, num_classes: int, alpha: float, gamma: float) -> tuple[float, bool]:
    """Invert :func:`finite_sample_ratio` for ``s``; returns ``(s_hat, below)`` where ``below``
    says the ratio is at or under the transition value (then ``s_hat = sqrt(gamma)``, an
    upper bound: the outliers carry no more information)."""
    b = bulk_factor(num_classes, alpha)
    q = (ratio - 1.0) * b / (1.0 - alpha)
    if q <= 2.0 * math.sqrt(gamma) + gamma:
        return math.sqrt(gamma), True
    m = q - gamma
    return 0.5 * (m + math.sqrt(max(m * m - 4.0 * gamma, 0.0))), False
