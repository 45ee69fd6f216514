"""The study's measurements at one point: fit MLR, measure the Fisher's spectrum
(:class:`FisherSpectrum`), predict the error from the outlier-to-bulk ratio
(:class:`PointResult`); the symmetric-probability Fisher (:class:`SymmetricPoint`) and the
attribution verdicts (:class:`AttributionSummary`). The formulas are in
:mod:`theory.mlr` (Theorem 8.1) and :mod:`theory.finite_sample`."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from theory.attribution import AttributionReport, attribute_decomposition
from theory.finite_sample import (
    class_mean_basis,
    effective_aspect_ratio,
    finite_sample_ratio,
    predicted_overlap,
    snr_from_finite_sample_ratio,
)
from theory.mlr import bayes_error, predicted_error_from_ratio, snr_from_ratio, symmetric_probabilities, theorem_eigenvalues
from theory.operators import as_operator
from theory.spectral import bulk_density, top_eigenpairs
from theory.structure import CrossClassAccumulator

from ..fisher import mlr_extended_gradients, mlr_fisher
from ..mixtures import GaussianMixture, canonical_mixture
from ..solver import fit_mlr, mlr_probabilities
from ..theorem import symmetric_fisher
from .settings import StudySettings

__all__ = [
    "FisherSpectrum",
    "fisher_spectrum",
    "PointResult",
    "measure_point",
    "SymmetricPoint",
    "symmetric_point",
    "AttributionSummary",
    "attribution_summary",
]


@dataclass(frozen=True)
class FisherSpectrum:
    """The Fisher's spectrum summarised: the top ``C`` eigenvalues (subspace iteration),
    the bulk mean (exact trace on the complement of the class-mean span, module
    docstring), the mean of the nonzero spectrum after deflating the outliers, exact
    (``(tr G - sum outliers) / (CD - D - C)``; it mixes bulk and mini-bulk) and from the
    deflated Lanczos density with the null mass removed (a check of the estimator),
    the mini-bulk mean (trace on the class-mean span minus the outliers, over its
    ``C(C-2)`` eigenvalues), the bulk's top eigenvalue (``bulk_edge``, the largest
    eigenvalue of ``G`` on the complement), the moment-matched aspect ratio, the number of
    outliers above ``bulk_edge`` and ``signal_overlap``, the mean squared overlap of the top
    ``C`` eigenvectors with the true signal space ``span(e_0..e_{C-1}) (x) R^C`` (its first
    ``C^2`` coordinates)."""

    outliers: np.ndarray
    outlier_residuals: np.ndarray
    bulk: float
    deflated_mean: float
    deflated_density_mean: float
    mini_bulk: float
    bulk_edge: float
    gamma_eff: float
    predicted_bulk_edge: float
    num_separated: int
    signal_overlap: float
    trace: float
    subspace_iterations: int


def fisher_spectrum(
    X: np.ndarray, labels: np.ndarray, probs: np.ndarray, op: Any, num_classes: int, *,
    eig_tol: float, max_iterations: int, density_steps: int, density_repeats: int, seed: int,
) -> FisherSpectrum:
    """Measure :class:`FisherSpectrum` of ``op`` (the Fisher of ``X`` with probabilities
    ``probs``, ``vec(W)`` in ``D`` blocks of ``C``)."""
    C = num_classes
    N, D = X.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # low SNR: no gap below the top C, eigenvalues still accurate
        pairs = top_eigenpairs(op, C, tol=eig_tol, max_iterations=max_iterations, seed=seed)
    deflated = bulk_density(op, pairs, num_steps=density_steps, num_repeats=density_repeats, seed=seed)
    b = deflated.bulk
    p = C * D
    density_mean = float(np.sum(b.nodes * b.weights) / np.sum(b.weights)) * (p - C) / (p - C - D)
    Q = class_mean_basis(X, labels, C)
    w = 1.0 - (probs**2).sum(axis=1)  # tr A(p_i)
    total = float(np.mean((X**2).sum(axis=1) * w))
    signal = float(np.mean(((X @ Q) ** 2).sum(axis=1) * w))
    bulk = (total - signal) / ((D - C) * (C - 1))
    mini = (signal - float(pairs.eigenvalues.sum())) / (C * (C - 2)) if C > 2 else float("nan")
    basis = torch.as_tensor(np.kron(Q, np.eye(C)), dtype=op.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        edge = float(top_eigenpairs(op.project_out(basis, orthonormalize=False), 1, tol=eig_tol, max_iterations=max_iterations, seed=seed + 1).eigenvalues[0])
    gamma = effective_aspect_ratio(probs, D, C)
    return FisherSpectrum(
        outliers=pairs.eigenvalues,
        outlier_residuals=pairs.residuals,
        bulk=bulk,
        deflated_mean=(total - float(pairs.eigenvalues.sum())) / (p - C - D),
        deflated_density_mean=density_mean,
        mini_bulk=mini,
        bulk_edge=edge,
        gamma_eff=gamma,
        predicted_bulk_edge=bulk * (1 + math.sqrt(gamma)) ** 2,
        num_separated=int(np.sum(pairs.eigenvalues > edge)),
        signal_overlap=float((pairs.eigenvectors[: C * C].to(torch.float64) ** 2).sum() / C),
        trace=total,
        subspace_iterations=pairs.num_iterations,
    )


@dataclass(frozen=True)
class PointResult:
    """One fitted MLR and its Fisher. ``alpha`` = mean of ``1 - p_{i, y_i}`` on the training set
    (``alpha_per_class`` per class; ``alpha_used`` clipped into ``(0, 1 - 1/C]``); ``ratio`` =
    mean outlier / bulk; ``theorem_*`` are Theorem 8.1 at the true SNR and ``alpha_used``;
    ``finite_sample_ratio`` the module's finite-``n`` ratio; ``predicted_error`` from the
    ratio by Theorem 8.1, ``predicted_error_bbp`` by the finite-sample inversion;
    ``bayes_error``: ``P_err(sqrt(s), C)`` for the canonical model, the optimal rule's error
    on the test set otherwise (``eta > 0``)."""

    num_classes: int
    dim: int
    n_per_class: int
    snr: float
    eta: float
    seed: int
    alpha: float
    alpha_used: float
    alpha_per_class: np.ndarray
    spectrum: FisherSpectrum
    ratio: float
    mini_ratio: float
    theorem_outlier: float
    theorem_bulk: float
    theorem_ratio: float
    theorem_mini_ratio: float
    finite_sample_ratio: float
    predicted_snr: float
    predicted_error: float
    predicted_snr_bbp: float
    below_transition: bool
    predicted_error_bbp: float
    test_error: float
    train_error: float
    bayes_error: float
    fit_iterations: int
    fit_converged: bool
    fit_grad_norm: float
    seconds: float


def _mixture(C: int, D: int, snr: float, eta: float) -> GaussianMixture:
    if eta == 0.0:
        return canonical_mixture(C, D, snr)
    scale = 1.0 + eta * (2.0 * np.arange(C) / (C - 1) - 1.0)
    means = np.sqrt(snr * scale)[:, None] * np.eye(C, D)
    return GaussianMixture(means, settings={"generator": "unequal norms", "snr": snr, "eta": eta})


def _optimal_rule_error(means: np.ndarray, X: np.ndarray, labels: np.ndarray) -> float:
    """Error of the Bayes rule ``argmax_c <mu_c, x> - |mu_c|^2/2`` (equal priors, white noise)."""
    scores = X @ means.T - 0.5 * (means**2).sum(axis=1)
    return float(np.mean(scores.argmax(axis=1) != labels))


def measure_point(st: StudySettings, num_classes: int, snr: float, seed: int, eta: float = 0.0) -> tuple[PointResult, dict[str, Any]]:
    """Fit, measure and predict at one point; also returns the objects the attribution needs."""
    start = time.perf_counter()
    C, D = num_classes, st.dim
    mix = _mixture(C, D, snr, eta)
    # one independent stream per (seed, C, SNR, eta): entropy from all four, no collisions
    stream = np.random.SeedSequence([seed, C, int(round(snr * 1e6)), int(round(eta * 1e6))])
    train, test = mix.train_test(st.n_per_class, st.n_test_per_class, stream)
    fit = fit_mlr(train.X, train.labels, C, penalty=st.penalty, tol=st.solver_tol)
    probs = mlr_probabilities(train.X, fit.W)
    off = 1.0 - probs[np.arange(train.num_samples), train.labels]
    alpha = float(off.mean())
    alpha_used = min(max(alpha, 1e-12), 1.0 - 1.0 / C)
    op = mlr_fisher(train.X, fit.W)
    spec = fisher_spectrum(
        train.X, train.labels, probs, op, C, eig_tol=st.eig_tol, max_iterations=st.max_iterations,
        density_steps=st.density_steps, density_repeats=st.density_repeats, seed=seed,
    )
    ratio = float(spec.outliers.mean() / spec.bulk)
    theory = theorem_eigenvalues(C, D, snr, alpha_used)
    gamma_c = D / st.n_per_class
    s_hat = float(snr_from_ratio(max(ratio, 1.0), C, alpha_used))
    s_bbp, below = snr_from_finite_sample_ratio(max(ratio, 1.0), C, alpha_used, gamma_c)
    test_pred = mlr_probabilities(test.X, fit.W).argmax(axis=1)
    bayes = float(bayes_error(math.sqrt(snr), C)) if eta == 0.0 else _optimal_rule_error(mix.means, test.X, test.labels)
    result = PointResult(
        num_classes=C, dim=D, n_per_class=st.n_per_class, snr=float(snr), eta=float(eta), seed=int(seed),
        alpha=alpha, alpha_used=alpha_used,
        alpha_per_class=np.array([off[train.labels == c].mean() for c in range(C)]),
        spectrum=spec, ratio=ratio, mini_ratio=float(spec.mini_bulk / spec.bulk),
        theorem_outlier=theory.outlier, theorem_bulk=theory.bulk,
        theorem_ratio=theory.outlier_to_bulk, theorem_mini_ratio=theory.mini_bulk_to_bulk,
        finite_sample_ratio=finite_sample_ratio(snr, C, alpha_used, gamma_c),
        predicted_snr=s_hat,
        predicted_error=float(predicted_error_from_ratio(max(ratio, 1.0), C, alpha_used)),
        predicted_snr_bbp=s_bbp, below_transition=below,
        predicted_error_bbp=float(bayes_error(math.sqrt(s_bbp), C)),
        test_error=float(np.mean(test_pred != test.labels)),
        train_error=float(np.mean(probs.argmax(axis=1) != train.labels)),
        bayes_error=bayes,
        fit_iterations=fit.iterations, fit_converged=fit.converged, fit_grad_norm=fit.grad_norm,
        seconds=time.perf_counter() - start,
    )
    return result, {"train": train, "W": fit.W}


@dataclass(frozen=True)
class SymmetricPoint:
    """The Fisher under symmetric probabilities ``p_c`` (alpha = that of the trained seed-0
    point at this ``(C, s)``) on the same training sizes, dense ``eigh``: the random-matrix part of the
    finite-sample story without the training. ``outliers`` = top ``C``; ``bulk``, ``bulk_edge``
    as in :class:`FisherSpectrum`; predictions from the module's formulas."""

    num_classes: int
    snr: float
    alpha: float
    outliers: np.ndarray
    bulk: float
    bulk_edge: float
    gamma_eff: float
    predicted_bulk_edge: float
    ratio: float
    finite_sample_ratio: float
    theorem_ratio: float
    num_separated: int
    signal_overlap: float
    predicted_overlap: float


def symmetric_point(st: StudySettings, num_classes: int, snr: float, alpha: float, seed: int) -> SymmetricPoint:
    """``G = Ave_c S_c (x) U^c`` on ``n`` canonical examples per class, dense (``vec(W)`` in ``D``
    blocks of ``C``)."""
    C, D, n = num_classes, st.dim, st.n_per_class
    data = canonical_mixture(C, D, snr).sample(n, 10_000 + seed)  # the same noise at every SNR
    G = symmetric_fisher(data.X, data.labels, C, alpha)
    Q = class_mean_basis(data.X, data.labels, C)
    Qf = torch.as_tensor(np.kron(Q, np.eye(C)))
    Gt = torch.as_tensor(G)
    evals, vecs = torch.linalg.eigh(Gt)  # torch: its thread setting holds, unlike that of numpy's BLAS
    evals, top = evals.numpy()[::-1], vecs.numpy()[:, ::-1][:, :C]
    compressed = as_operator(Gt).project_out(Qf, orthonormalize=False).to_dense()
    bulk = float(torch.trace(compressed)) / ((D - C) * (C - 1))
    edge = float(torch.linalg.eigvalsh(compressed)[-1])
    probs = symmetric_probabilities(C, alpha)[data.labels]
    gamma = effective_aspect_ratio(probs, D, C)
    out = evals[:C]
    return SymmetricPoint(
        num_classes=C, snr=float(snr), alpha=float(alpha), outliers=out, bulk=bulk, bulk_edge=edge,
        gamma_eff=gamma, predicted_bulk_edge=bulk * (1 + math.sqrt(gamma)) ** 2,
        ratio=float(out.mean() / bulk), finite_sample_ratio=finite_sample_ratio(snr, C, alpha, D / n),
        theorem_ratio=theorem_eigenvalues(C, D, snr, alpha).outlier_to_bulk,
        num_separated=int(np.sum(out > edge)),
        signal_overlap=float((top[: C * C] ** 2).sum() / C),
        predicted_overlap=predicted_overlap(snr, D / n),
    )


@dataclass(frozen=True)
class AttributionSummary:
    """The attribution verdicts at one ``(C, s)`` (full reports in ``attribution/``)."""

    num_classes: int
    snr: float
    num_separated: int
    verdicts: dict[str, dict[str, Any]]
    file_prefix: str
    report: AttributionReport = field(metadata={"json": False}, repr=False)


def attribution_summary(st: StudySettings, C: int, snr: float, objects: dict[str, Any], seed: int) -> AttributionSummary:
    """Split the Fisher of the fitted point (``objects`` from :func:`measure_point`) into class /
    cross / within / diag parts and attribute its outliers, bump and bulk by knockouts."""
    train, W = objects["train"], objects["W"]
    ext = mlr_extended_gradients(train.X, W, train.labels)
    acc = CrossClassAccumulator(C)
    for batch in ext.batches(512):
        acc.update(batch.v, batch.labels, batch.probs)
    decomposition = acc.finalize(total=ext.fisher())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        report = attribute_decomposition(
            decomposition, eig_tol=st.eig_tol, max_iterations=st.max_iterations, seed=seed,
            density={"num_steps": st.density_steps, "num_repeats": st.density_repeats},
        )
    verdicts = {
        f.feature: {"size": f.size, "verdict": f.verdict, "component": f.component, "evidence": f.evidence}
        for f in report.features
    }
    return AttributionSummary(C, float(snr), report.edge.num_separated, verdicts, f"attribution_C{C}_snr{snr:g}", report)


