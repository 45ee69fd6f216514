"""The study's measurements at one point: fit MLR, take the Fisher's
:class:`theory.spectrum.Spectrum` and the study's quantities derived from it
(:class:`FisherMeasures`), predict the error from the outlier-to-bulk ratio
(:class:`PointResult`; Claim C6 only where the outliers are separated and in the
class-mean span); the symmetric-probability Fisher (:class:`SymmetricPoint`) and the
attribution of the trained Fisher next to that of its positive control
(:class:`AttributionSummary`). The formulas are in :mod:`theory.mlr` (Theorem 8.1) and
:mod:`theory.finite_sample`. Every eigensolve's convergence is carried in the results
(``converged``, ``num_unconverged``) instead of a warning."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from theory.attribution import AttributionReport, attribute_decomposition
from theory.density import DensitySettings
from theory.eigenpairs import ConvergenceWarning, top_eigenpairs
from theory.finite_sample import (
    class_mean_basis,
    effective_aspect_ratio,
    finite_sample_ratio,
    predicted_overlap,
    snr_from_finite_sample_ratio,
)
from theory.mlr import bayes_error, predicted_error_from_ratio, snr_from_ratio, symmetric_probabilities, theorem_eigenvalues
from theory.operators import as_operator
from theory.spectrum import Spectrum, spectrum
from theory.structure import CrossClassAccumulator

from ..fisher import ExtendedGradients, mlr_extended_gradients, mlr_fisher
from ..mixtures import GaussianMixture, canonical_mixture
from ..solver import fit_mlr, mlr_probabilities
from ..theorem import symmetric_fisher
from .settings import StudySettings

__all__ = [
    "recorded_nonconvergence",
    "class_span_basis",
    "FisherMeasures",
    "fisher_spectrum",
    "fisher_measures",
    "study_density",
    "PointResult",
    "measure_point",
    "SymmetricPoint",
    "symmetric_point",
    "AttributionSummary",
    "attribution_summary",
]


@contextmanager
def recorded_nonconvergence() -> Iterator[list[str]]:
    """Collect the messages of the eigensolver's non-convergence warnings
    (:class:`theory.eigenpairs.ConvergenceWarning`) raised in the block into the yielded list (filled when the block ends) instead of printing them;
    every other warning is issued again."""
    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield found
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            found.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def study_density(st: StudySettings, seed: int) -> DensitySettings:
    """The density settings of the study's Fisher spectra (a 256-point grid: the study
    uses the quadrature's nodes and weights, the grid only for its record)."""
    return DensitySettings(num_steps=st.density_steps, num_repeats=st.density_repeats, num_points=256, seed=seed)


def class_span_basis(X: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> torch.Tensor:
    """Orthonormal basis (DC x C, float64) of the span of the Fisher's class means
    ``v_c`` (the range of its class part, Papyan 2020, Sec. 4; docs/attribution.md):
    ``P_c v_c = -P_{c,c} v_{c,c} = -sum_{i in c} p_{i,c} x_i (x) (p_i - e_c)`` (``vec(W)``
    index ``d*C + c'``)."""
    D = X.shape[1]
    C = probs.shape[1]
    means = np.empty((D * C, C))
    for c in range(C):
        rows = labels == c
        E = probs[rows] - np.eye(C)[c]
        means[:, c] = ((X[rows] * probs[rows, c : c + 1]).T @ E).reshape(-1)
    Q, _ = np.linalg.qr(means)
    return torch.as_tensor(Q)


@dataclass(frozen=True)
class FisherMeasures:
    """The study's quantities derived from one Fisher's :class:`theory.spectrum.Spectrum`
    (top ``C`` eigenpairs and the deflated density) and its data: the bulk mean (exact trace
    on the complement of the class-mean span, module docstring); the mean of the nonzero
    spectrum after deflating the outliers, exact (``(tr G - sum outliers) / (CD - D - C)``;
    it mixes bulk and mini-bulk) and from the deflated Lanczos density with the null mass
    removed (a check of the estimator); the mini-bulk mean (trace on the class-mean span
    minus the outliers, over its ``C(C-2)`` eigenvalues); ``bulk_edge``, the largest
    eigenvalue of ``G`` on that complement (its own eigensolve: ``bulk_edge_converged``);
    the moment-matched aspect ratio and edge; ``num_separated``, the outliers above
    ``bulk_edge``; ``class_span_overlaps[k]``, the squared norm of top eigenvector ``k`` in
    the span of the class means ``v_c`` (:func:`class_span_basis`) and
    ``num_class_outliers``, the outliers above ``bulk_edge`` with at least half their
    eigenvector there (Claim C6 predicts from these only); ``signal_overlap``, the mean
    squared overlap of the top ``C`` eigenvectors with the true signal space
    ``span(e_0..e_{C-1}) (x) R^C`` (its first ``C^2`` coordinates); ``converged``: every
    eigensolve of the point converged."""

    bulk: float
    deflated_mean: float
    deflated_density_mean: float
    mini_bulk: float
    bulk_edge: float
    bulk_edge_converged: bool
    gamma_eff: float
    predicted_bulk_edge: float
    num_separated: int
    class_span_overlaps: np.ndarray
    num_class_outliers: int
    signal_overlap: float
    trace: float
    converged: bool


def fisher_spectrum(op: Any, num_classes: int, *, eig_tol: float, max_iterations: int, density: DensitySettings) -> Spectrum:
    """The :class:`theory.spectrum.Spectrum` of the Fisher ``op``: its top ``C`` eigenpairs
    (relative residual ``eig_tol``) and the density of the rest. A non-converged eigensolve
    is carried in ``top.converged`` (and counted in the report), not warned about."""
    with recorded_nonconvergence():
        return spectrum(op, num_classes, density, tol=eig_tol, max_iterations=max_iterations)


def fisher_measures(
    spec: Spectrum, X: np.ndarray, labels: np.ndarray, probs: np.ndarray, op: Any, *, eig_tol: float, max_iterations: int, seed: int,
) -> FisherMeasures:
    """:class:`FisherMeasures` of ``op`` (the Fisher of ``X`` with probabilities ``probs``,
    ``vec(W)`` in ``D`` blocks of ``C``) from its :class:`~theory.spectrum.Spectrum` ``spec``."""
    C = probs.shape[1]
    D = X.shape[1]
    p = C * D
    values, vectors = spec.top.eigenvalues, spec.top.eigenvectors
    dens = spec.density
    density_mean = float(np.sum(dens.nodes * dens.weights) / np.sum(dens.weights)) * (p - C) / (p - C - D)
    Q = class_mean_basis(X, labels, C)
    w = 1.0 - (probs**2).sum(axis=1)  # tr A(p_i)
    total = float(np.mean((X**2).sum(axis=1) * w))
    signal = float(np.mean(((X @ Q) ** 2).sum(axis=1) * w))
    bulk = (total - signal) / ((D - C) * (C - 1))
    mini = (signal - float(values.sum())) / (C * (C - 2)) if C > 2 else float("nan")
    basis = torch.as_tensor(np.kron(Q, np.eye(C)), dtype=op.dtype)
    with recorded_nonconvergence():
        edge_pair = top_eigenpairs(op.project_out(basis, orthonormalize=False), 1, tol=eig_tol, max_iterations=max_iterations, seed=seed + 1)
    edge = float(edge_pair.eigenvalues[0])
    gamma = effective_aspect_ratio(probs, D, C)
    span = class_span_basis(X, labels, probs)
    in_span = ((span.T @ vectors.to(torch.float64)) ** 2).sum(dim=0).numpy()
    return FisherMeasures(
        bulk=bulk,
        deflated_mean=(total - float(values.sum())) / (p - C - D),
        deflated_density_mean=density_mean,
        mini_bulk=mini,
        bulk_edge=edge,
        bulk_edge_converged=bool(edge_pair.converged),
        gamma_eff=gamma,
        predicted_bulk_edge=bulk * (1 + math.sqrt(gamma)) ** 2,
        num_separated=int(np.sum(values > edge)),
        class_span_overlaps=in_span,
        num_class_outliers=int(np.sum((values > edge) & (in_span >= 0.5))),
        signal_overlap=float((vectors[: C * C].to(torch.float64) ** 2).sum() / C),
        trace=total,
        converged=bool(spec.top.converged and edge_pair.converged),
    )


@dataclass(frozen=True)
class PointResult:
    """One fitted MLR and its Fisher. ``alpha`` = mean of ``1 - p_{i, y_i}`` on the training set
    (``alpha_per_class`` per class; ``alpha_used`` clipped into ``(0, 1 - 1/C]``);
    ``spectrum``: the Fisher's :class:`~theory.spectrum.Spectrum` (top ``C``), ``measures``
    the study's quantities from it; ``ratio`` = mean of the top ``C`` / bulk;
    ``theorem_*`` are Theorem 8.1 at the true SNR and ``alpha_used``;
    ``finite_sample_ratio`` the module's finite-``n`` ratio; ``predicted_error`` from the
    ratio by Theorem 8.1, ``predicted_error_bbp`` by the finite-sample inversion;
    ``c6_*``: Claim C6 honestly, from the separated class-span outliers only
    (``c6_ratio`` = their mean / bulk, the SNR and error by Theorem 8.1), None ("no
    prediction") when fewer than ``C - 1`` are separated (``C - 1``: the common mode may be
    weak, docs/attribution.md); ``bayes_error``: ``P_err(sqrt(s), C)`` for the canonical
    model, the optimal rule's error on the test set otherwise (``eta > 0``)."""

    num_classes: int
    dim: int
    n_per_class: int
    snr: float
    eta: float
    seed: int
    alpha: float
    alpha_used: float
    alpha_per_class: np.ndarray
    spectrum: Spectrum
    measures: FisherMeasures
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
    c6_ratio: float | None
    c6_predicted_snr: float | None
    c6_predicted_error: float | None
    test_error: float
    train_error: float
    bayes_error: float
    fit_iterations: int
    fit_converged: bool
    fit_grad_norm: float
    seconds: float


def c6_prediction(measures: FisherMeasures, outliers: np.ndarray, num_classes: int, alpha: float) -> tuple[float, float, float] | None:
    """Claim C6 from the outliers above the bulk edge with at least half their eigenvector
    in the class-mean span: ``(ratio, s_hat, P_err(sqrt(s_hat)))`` by Theorem 8.1 with
    ``ratio`` = their mean / bulk, or None when fewer than ``C - 1`` qualify."""
    C = num_classes
    keep = (outliers > measures.bulk_edge) & (measures.class_span_overlaps >= 0.5)
    if int(keep.sum()) < C - 1:
        return None
    ratio = float(outliers[keep].mean() / measures.bulk)
    return ratio, float(snr_from_ratio(max(ratio, 1.0), C, alpha)), float(predicted_error_from_ratio(max(ratio, 1.0), C, alpha))


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
    spec = fisher_spectrum(op, C, eig_tol=st.eig_tol, max_iterations=st.max_iterations, density=study_density(st, seed))
    meas = fisher_measures(spec, train.X, train.labels, probs, op, eig_tol=st.eig_tol, max_iterations=st.max_iterations, seed=seed)
    ratio = float(spec.outliers.mean() / meas.bulk)
    theory = theorem_eigenvalues(C, D, snr, alpha_used)
    gamma_c = D / st.n_per_class
    s_hat = float(snr_from_ratio(max(ratio, 1.0), C, alpha_used))
    s_bbp, below = snr_from_finite_sample_ratio(max(ratio, 1.0), C, alpha_used, gamma_c)
    c6 = c6_prediction(meas, spec.top.eigenvalues, C, alpha_used)
    test_pred = mlr_probabilities(test.X, fit.W).argmax(axis=1)
    bayes = float(bayes_error(math.sqrt(snr), C)) if eta == 0.0 else _optimal_rule_error(mix.means, test.X, test.labels)
    result = PointResult(
        num_classes=C, dim=D, n_per_class=st.n_per_class, snr=float(snr), eta=float(eta), seed=int(seed),
        alpha=alpha, alpha_used=alpha_used,
        alpha_per_class=np.array([off[train.labels == c].mean() for c in range(C)]),
        spectrum=spec, measures=meas, ratio=ratio, mini_ratio=float(meas.mini_bulk / meas.bulk),
        theorem_outlier=theory.outlier, theorem_bulk=theory.bulk,
        theorem_ratio=theory.outlier_to_bulk, theorem_mini_ratio=theory.mini_bulk_to_bulk,
        finite_sample_ratio=finite_sample_ratio(snr, C, alpha_used, gamma_c),
        predicted_snr=s_hat,
        predicted_error=float(predicted_error_from_ratio(max(ratio, 1.0), C, alpha_used)),
        predicted_snr_bbp=s_bbp, below_transition=below,
        predicted_error_bbp=float(bayes_error(math.sqrt(s_bbp), C)),
        c6_ratio=None if c6 is None else c6[0], c6_predicted_snr=None if c6 is None else c6[1],
        c6_predicted_error=None if c6 is None else c6[2],
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
    as in :class:`FisherMeasures`; predictions from the module's formulas."""

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
class AttributionRead:
    """One attribution (full report in ``attribution/``): per feature its size, verdict,
    component, shares and evidence; ``num_separated`` above the bulk edge of ``A``;
    ``common_mode``: whether the sum of the class means is one of the outliers and its share
    there; ``num_unconverged``: eigensolves of the attribution that did not converge (their
    messages in ``unconverged``)."""

    num_separated: int
    verdicts: dict[str, dict[str, Any]]
    common_mode: dict[str, Any] | None
    num_unconverged: int
    unconverged: list[str]
    report: AttributionReport = field(metadata={"json": False}, repr=False)


@dataclass(frozen=True)
class AttributionSummary:
    """The attribution at one ``(C, s)``, seed 0: of the trained Fisher and of its positive
    control, the symmetric-probability Fisher of Theorem 8.1 on the same training data at the
    trained ``alpha`` (both by :func:`theory.attribution.attribute_decomposition` with the same
    settings). ``in_grid``: the SNR is one of the study's main SNRs (else fitted for the
    attribution only)."""

    num_classes: int
    snr: float
    alpha: float
    in_grid: bool
    expected: dict[str, bool]
    trained: AttributionRead
    control: AttributionRead
    file_prefix: str


def _attribute(st: StudySettings, grads: ExtendedGradients, seed: int) -> AttributionRead:
    """Split the Fisher of ``grads`` into class / cross / within / diag parts and attribute its
    outliers, bump and bulk by knockouts."""
    acc = CrossClassAccumulator(grads.num_classes)
    for batch in grads.batches(512):
        acc.update(batch.v, batch.labels, batch.probs)
    decomposition = acc.finalize(total=grads.fisher())
    with recorded_nonconvergence() as failed:
        report = attribute_decomposition(
            decomposition, eigensolver=st.attribution_eigensolver, eig_tol=st.eig_tol, max_iterations=st.max_iterations, seed=seed,
            density={"num_steps": st.density_steps, "num_repeats": st.density_repeats},
        )
    verdicts = {
        f.feature: {"size": f.size, "verdict": f.verdict, "component": f.component, "shares": dict(f.shares), "evidence": f.evidence}
        for f in report.features
    }
    m = report.common_mode
    mode = None if m is None else {"separated": m.separated, "in_outliers": m.in_outliers, "rayleigh": m.rayleigh}
    return AttributionRead(report.edge.num_separated, verdicts, mode, len(failed), list(failed), report)


def expected_features(C: int, D: int, snr: float, alpha: float, probs: np.ndarray) -> dict[str, bool]:
    """Which features of Theorem 8.1 stand above its bulk at ``N`` examples: the outliers
    ``beta (s (1-a) + b)`` and the bump ``beta (s/C + b)`` against the moment-matched
    Marchenko-Pastur edge ``beta b (1 + sqrt(gamma_eff))^2`` of the bulk (``probs``: N x C,
    :func:`theory.finite_sample.effective_aspect_ratio`); the bulk is always there."""
    t = theorem_eigenvalues(C, D, snr, alpha)
    edge = t.bulk * (1 + math.sqrt(effective_aspect_ratio(probs, D, C))) ** 2
    return {"outliers": bool(t.outlier > edge), "bump": bool(C > 2 and t.mini_bulk > edge), "bulk": True}


def attribution_summary(st: StudySettings, C: int, snr: float, objects: dict[str, Any], seed: int, alpha: float, in_grid: bool) -> AttributionSummary:
    """Attribute the Fisher of the fitted point (``objects`` from :func:`measure_point`) and
    that of its positive control (symmetric probabilities ``p_{y_i}`` at ``alpha``, same data)."""
    train, W = objects["train"], objects["W"]
    trained = _attribute(st, mlr_extended_gradients(train.X, W, train.labels), seed)
    sym = symmetric_probabilities(C, alpha)[train.labels]
    control = _attribute(st, ExtendedGradients(train.X, sym, train.labels, C), seed)
    expected = expected_features(C, st.dim, snr, alpha, sym)
    return AttributionSummary(C, float(snr), float(alpha), bool(in_grid), expected, trained, control, f"attribution_C{C}_snr{snr:g}")
