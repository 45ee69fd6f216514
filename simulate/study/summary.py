"""The study's headline numbers (``Study.summary``): the correlation of predicted and test
errors, the largest gaps, and per ``C`` how the finite-sample formulas held."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from theory.finite_sample import half_overlap_snr, predicted_overlap

from .measure import PointResult, SymmetricPoint
from .settings import StudySettings

__all__ = ["summarize"]


def _transition(snrs: np.ndarray, curve: np.ndarray, edge: np.ndarray) -> float | None:
    """First SNR (log-linear interpolation) where ``curve`` exceeds ``edge`` for good
    (``None`` if it never does; the first SNR if it always does)."""
    above = curve > edge
    if not above.any() or above.all():
        return None if not above.any() else float(snrs[0])
    j = int(np.flatnonzero(~above)[-1])
    if j + 1 >= snrs.size:
        return None
    d0, d1 = curve[j] - edge[j], curve[j + 1] - edge[j + 1]
    f = d0 / (d0 - d1)
    return float(np.exp(np.log(snrs[j]) + f * (np.log(snrs[j + 1]) - np.log(snrs[j]))))


def summarize(st: StudySettings, points: list[PointResult], symmetric: list[SymmetricPoint], asym: list[PointResult]) -> dict[str, Any]:
    """The headline numbers of the study (``Study.summary``, written to ``results.json``)."""
    pred = np.array([p.predicted_error for p in points])
    test = np.array([p.test_error for p in points])
    bayes = np.array([p.bayes_error for p in points])
    gaps = pred - test
    worst = points[int(np.argmax(np.abs(gaps)))]

    def rank(x: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(x)).astype(float)

    out: dict[str, Any] = {
        "num_points": len(points),
        "pearson_predicted_vs_test": float(np.corrcoef(pred, test)[0, 1]),
        "spearman_predicted_vs_test": float(np.corrcoef(rank(pred), rank(test))[0, 1]),
        "largest_gap": {
            "predicted_minus_test": float(gaps[np.argmax(np.abs(gaps))]),
            "num_classes": worst.num_classes, "snr": worst.snr, "seed": worst.seed,
            "predicted_error": worst.predicted_error, "test_error": worst.test_error, "bayes_error": worst.bayes_error,
        },
        "median_abs_gap": float(np.median(np.abs(gaps))),
        "median_abs_gap_to_bayes": float(np.median(np.abs(pred - bayes))),
        "median_abs_gap_bbp": float(np.median(np.abs(np.array([p.predicted_error_bbp for p in points]) - test))),
        "per_class": {},
    }
    for C in st.classes:
        pts = [p for p in points if p.num_classes == C]
        snrs = np.array(st.snrs)
        by_s = [[p for p in pts if p.snr == s] for s in snrs]
        mean = lambda key: np.array([np.mean([getattr(p, key) for p in g]) for g in by_s])  # noqa: E731
        gaps_c = np.array([p.predicted_error - p.test_error for p in pts])
        w = pts[int(np.argmax(np.abs(gaps_c)))]
        gamma = st.dim / st.n_per_class
        above = 2.0 * math.sqrt(gamma)  # well above the BBP threshold
        rel = np.abs(mean("predicted_error") - mean("test_error")) / np.maximum(mean("test_error"), 0.01)
        good = snrs[rel <= 0.25]
        sym = sorted((q for q in symmetric if q.num_classes == C), key=lambda q: q.snr)
        sep = np.array([np.mean([p.spectrum.num_separated for p in grp]) for grp in by_s])
        half = np.full(snrs.size, 0.5)
        sym_s = np.array([q.snr for q in sym])
        out["per_class"][str(C)] = {
            "largest_gap": {"predicted_minus_test": float(w.predicted_error - w.test_error), "snr": w.snr, "seed": w.seed,
                            "predicted_error": w.predicted_error, "test_error": w.test_error},
            "snrs_within_25_percent": good.tolist(),
            "mean_num_separated": sep.tolist(),
            "num_separated_at_highest_snr": [p.spectrum.num_separated for p in by_s[-1]],
            "bbp_threshold": math.sqrt(gamma),
            "bulk_top_over_mean_trained": [float(np.mean([p.spectrum.bulk_edge / p.spectrum.bulk for p in g])) for g in by_s],
            "mp_edge_over_mean_trained": [float(np.mean([p.spectrum.predicted_bulk_edge / p.spectrum.bulk for p in g])) for g in by_s],
            "half_overlap_predicted": half_overlap_snr(gamma),
            "half_overlap_measured_trained": _transition(snrs, np.array([np.mean([p.spectrum.signal_overlap for p in g]) for g in by_s]), half),
            "half_overlap_measured_symmetric": _transition(sym_s, np.array([q.signal_overlap for q in sym]), half[: sym_s.size]) if sym else None,
            "symmetric_overlap_abs_error_above": float(np.max(np.abs([q.signal_overlap - q.predicted_overlap for q in sym if q.snr >= above]), initial=0.0)),
            "trained_overlap_abs_error_above": float(np.max(np.abs([p.spectrum.signal_overlap - predicted_overlap(p.snr, gamma) for p in pts if p.snr >= above]), initial=0.0)),
            "symmetric_outlier_rel_error_formula": [float(q.ratio / q.finite_sample_ratio - 1) for q in sym],
            "symmetric_outlier_rel_error_formula_above": float(np.max(np.abs([q.ratio / q.finite_sample_ratio - 1 for q in sym if q.snr >= above]), initial=0.0)),
            "trained_outlier_rel_error_formula_above": float(np.max(np.abs([p.ratio / p.finite_sample_ratio - 1 for p in pts if p.snr >= above]), initial=0.0)),
            "symmetric_outlier_rel_error_theorem": [float(q.ratio / q.theorem_ratio - 1) for q in sym],
            "symmetric_edge_rel_error": [float(q.predicted_bulk_edge / q.bulk_edge - 1) for q in sym],
            "bulk_vs_theorem_rel": [float(np.mean([p.spectrum.bulk / p.theorem_bulk for p in grp]) - 1) for grp in by_s],
            "deflated_density_vs_exact_rel": float(np.max(np.abs([p.spectrum.deflated_density_mean / p.spectrum.deflated_mean - 1 for p in pts]))),
            "deflated_mean_vs_bulk_rel": [float(np.mean([p.spectrum.deflated_mean / p.spectrum.bulk for p in grp]) - 1) for grp in by_s],
        }
    if asym:
        etas = sorted({p.eta for p in asym})
        out["asymmetry"] = [
            {
                "eta": e,
                "mean_abs_gap_to_test": float(np.mean([abs(p.predicted_error - p.test_error) for p in asym if p.eta == e])),
                "mean_abs_gap_to_bayes": float(np.mean([abs(p.predicted_error - p.bayes_error) for p in asym if p.eta == e])),
                "alpha_class_spread": float(np.mean([np.std(p.alpha_per_class) / p.alpha for p in asym if p.eta == e])),
                "predicted_error": float(np.mean([p.predicted_error for p in asym if p.eta == e])),
                "test_error": float(np.mean([p.test_error for p in asym if p.eta == e])),
                "bayes_error": float(np.mean([p.bayes_error for p in asym if p.eta == e])),
            }
            for e in etas
        ]
    return out


