"""The study's headline numbers (``Study.summary``): the correlation of predicted and test
errors, the largest gaps, per ``C`` how the finite-sample formulas held, Claim C6 from the
separated outliers only (with two references), the attributions against the paper's
answer, and every eigensolve that did not converge."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from theory.finite_sample import half_overlap_snr, predicted_overlap

from .measure import AttributionRead, AttributionSummary, PointResult, SymmetricPoint
from .settings import StudySettings

__all__ = ["summarize", "c6_summary", "attribution_numbers", "reads_paper", "convergence_summary", "PAPER_COMPONENTS"]

# The paper's attribution (Papyan 2020, Sec. 8; docs/attribution.md, Sec. 4): outliers from the
# class means (the knockout of their span is class + diag), bump from the cross-class means,
# bulk from the within-cell variation.
PAPER_COMPONENTS = {"outliers": ("class+diag", "class"), "bump": ("cross",), "bulk": ("within",)}


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation, None with fewer than three points or a constant series."""
    if x.size < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    def rank(v: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(float)

    return _pearson(rank(x), rank(y)) if x.size >= 3 else None


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def c6_summary(st: StudySettings, points: list[PointResult]) -> dict[str, Any]:
    """Claim C6 from the separated class-span outliers (``PointResult.c6_*``): how many points
    get a prediction, per ``C`` the SNRs without one; on the predicted points the correlation
    of the prediction with the test error and with the Bayes error, next to the two
    references (Bayes error at the true SNR, training error) against the test error, the
    median absolute gaps, and how well the ratio recovers the SNR (``|s_hat / s - 1|``)."""
    pred = [p for p in points if p.c6_predicted_error is not None]
    out: dict[str, Any] = {"num_points": len(points), "num_predicted": len(pred), "per_class": {}}
    for C in st.classes:
        pts = [p for p in points if p.num_classes == C]
        none = sorted({p.snr for p in pts if p.c6_predicted_error is None})
        every = sorted(s for s in {p.snr for p in pts} if all(q.c6_predicted_error is not None for q in pts if q.snr == s))
        above = [s for s in every if not none or s > max(none)]
        errs = {s: max(abs(q.c6_predicted_snr / q.snr - 1) for q in pts if q.snr == s) for s in every if s > 0}
        good = [s for s in errs if all(errs[t] <= 0.25 for t in errs if t >= s)]
        out["per_class"][str(C)] = {
            "snr_within_25_percent_from": min(good) if good else None,
            "snrs_without_prediction": none,
            "snrs_with_prediction_for_every_seed": every,
            "separated_from_snr": above[0] if above else None,
        }
    if not pred:
        return out
    c6 = np.array([p.c6_predicted_error for p in pred])
    test = np.array([p.test_error for p in pred])
    bayes = np.array([p.bayes_error for p in pred])
    train = np.array([p.train_error for p in pred])
    snr_err = np.array([abs(p.c6_predicted_snr / p.snr - 1) for p in pred if p.snr > 0])
    out.update({
        "pearson": {"prediction_vs_test": _pearson(c6, test), "prediction_vs_bayes": _pearson(c6, bayes),
                    "bayes_vs_test": _pearson(bayes, test), "train_vs_test": _pearson(train, test)},
        "spearman": {"prediction_vs_test": _spearman(c6, test), "prediction_vs_bayes": _spearman(c6, bayes),
                     "bayes_vs_test": _spearman(bayes, test), "train_vs_test": _spearman(train, test)},
        "median_abs_gap": {"prediction_to_test": float(np.median(np.abs(c6 - test))), "prediction_to_bayes": float(np.median(np.abs(c6 - bayes))),
                           "bayes_to_test": float(np.median(np.abs(bayes - test))), "train_to_test": float(np.median(np.abs(train - test)))},
        "snr_recovery": {"median_rel_error": float(np.median(snr_err)), "max_rel_error": float(np.max(snr_err)),
                         "fraction_within_25_percent": float(np.mean(snr_err <= 0.25)),
                         "median_signed": float(np.median([p.c6_predicted_snr / p.snr - 1 for p in pred if p.snr > 0]))},
    })
    return out


def reads_paper(read: AttributionRead, feature: str, num_classes: int) -> bool:
    """The attribution reads the paper's answer for ``feature`` (:data:`PAPER_COMPONENTS`;
    outliers: at least ``C - 1`` of them, the common mode may be weak)."""
    v = read.verdicts[feature]
    size_ok = v["size"] >= num_classes - 1 if feature == "outliers" else v["size"] > 0
    return v["verdict"] == "attributable" and v["component"] in PAPER_COMPONENTS[feature] and size_ok


def _read_numbers(read: AttributionRead, C: int) -> dict[str, Any]:
    out = read.verdicts["outliers"]
    sh = out.get("shares", {})
    class_diag = sh.get("class", 0.0) + sh.get("diag", 0.0)
    return {
        "num_separated": read.num_separated,
        "num_class_outliers": out["size"],
        "common_mode_separated": None if read.common_mode is None else read.common_mode["separated"],
        "outlier_shares": sh,
        "outlier_diag_fraction": sh.get("diag", 0.0) / class_diag if out["size"] and class_diag > 0 else None,
        "bump_size": read.verdicts["bump"]["size"],
        "full_bump_size": C * (C - 2),
        "verdicts": {f: (v["verdict"], v["component"], v["size"]) for f, v in read.verdicts.items()},
        "reads_paper": {f: reads_paper(read, f, C) for f in PAPER_COMPONENTS},
        "num_unconverged": read.num_unconverged,
    }


def attribution_numbers(st: StudySettings, attributions: list[AttributionSummary]) -> dict[str, Any]:
    """Per ``C`` and attribution SNR: ``alpha`` and, for the trained Fisher and its control,
    the class-span outliers (count, common mode, shares; ``diag / (class + diag)``, which
    Theorem 8.1 puts at ``alpha``), the bump size, the verdicts and whether each reads the
    paper's answer; whether the control reads it wherever Theorem 8.1 puts the feature above
    the bulk (``expected``), and per feature the lowest SNR at which the trained Fisher reads
    it (None: at no attribution SNR)."""
    out: dict[str, Any] = {}
    for C in st.classes:
        rows = [a for a in attributions if a.num_classes == C]
        table = [{"snr": a.snr, "alpha": a.alpha, "in_grid": a.in_grid, "expected": a.expected,
                  "trained": _read_numbers(a.trained, C), "control": _read_numbers(a.control, C)} for a in rows]
        control_ok = [all(r["control"]["reads_paper"][f] == r["expected"][f] for f in PAPER_COMPONENTS) for r in table]
        out[str(C)] = {
            "rows": table,
            "control_agrees_with_theorem": control_ok,
            "trained_appears_at": {f: next((r["snr"] for r in table if r["trained"]["reads_paper"][f]), None) for f in PAPER_COMPONENTS},
            "trained_full_structure_at": next((r["snr"] for r in table if all(r["trained"]["reads_paper"].values())), None),
            "trained_full_bump_at": next((r["snr"] for r in table if r["trained"]["reads_paper"]["bump"]
                                          and r["trained"]["bump_size"] == C * (C - 2)), None),
            "control_appears_at": {f: next((r["snr"] for r in table if r["control"]["reads_paper"][f]), None) for f in PAPER_COMPONENTS},
        }
    return out


def convergence_summary(points: list[PointResult], asym: list[PointResult], attributions: list[AttributionSummary]) -> dict[str, Any]:
    """Every eigensolve that did not converge: of the points (top ``C`` and bulk edge) and of
    the attributions (trained, control), with where."""
    failed = []
    for kind, pts in (("main", points), ("asymmetric", asym)):
        for p in pts:
            if not p.spectrum.top.converged:
                failed.append({"where": kind, "num_classes": p.num_classes, "snr": p.snr, "eta": p.eta, "seed": p.seed, "solve": f"top {p.num_classes}", "count": 1})
            if not p.measures.bulk_edge_converged:
                failed.append({"where": kind, "num_classes": p.num_classes, "snr": p.snr, "eta": p.eta, "seed": p.seed, "solve": "bulk edge", "count": 1})
    for a in attributions:
        for name, read in (("attribution", a.trained), ("control attribution", a.control)):
            if read.num_unconverged:
                failed.append({"where": name, "num_classes": a.num_classes, "snr": a.snr, "eta": 0.0, "seed": 0, "solve": "knockouts", "count": read.num_unconverged})
    return {"num_unconverged": int(sum(f["count"] for f in failed)), "num_point_solves": 2 * (len(points) + len(asym)), "failed": failed}


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


def summarize(
    st: StudySettings, points: list[PointResult], symmetric: list[SymmetricPoint], asym: list[PointResult],
    attributions: list[AttributionSummary] = (),
) -> dict[str, Any]:
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
        sep = np.array([np.mean([p.measures.num_separated for p in grp]) for grp in by_s])
        half = np.full(snrs.size, 0.5)
        sym_s = np.array([q.snr for q in sym])
        out["per_class"][str(C)] = {
            "largest_gap": {"predicted_minus_test": float(w.predicted_error - w.test_error), "snr": w.snr, "seed": w.seed,
                            "predicted_error": w.predicted_error, "test_error": w.test_error},
            "snrs_within_25_percent": good.tolist(),
            "mean_num_separated": sep.tolist(),
            "num_separated_at_highest_snr": [p.measures.num_separated for p in by_s[-1]],
            "bbp_threshold": math.sqrt(gamma),
            "bulk_top_over_mean_trained": [float(np.mean([p.measures.bulk_edge / p.measures.bulk for p in g])) for g in by_s],
            "mp_edge_over_mean_trained": [float(np.mean([p.measures.predicted_bulk_edge / p.measures.bulk for p in g])) for g in by_s],
            "half_overlap_predicted": half_overlap_snr(gamma),
            "half_overlap_measured_trained": _transition(snrs, np.array([np.mean([p.measures.signal_overlap for p in g]) for g in by_s]), half),
            "half_overlap_measured_symmetric": _transition(sym_s, np.array([q.signal_overlap for q in sym]), half[: sym_s.size]) if sym else None,
            "symmetric_overlap_abs_error_above": float(np.max(np.abs([q.signal_overlap - q.predicted_overlap for q in sym if q.snr >= above]), initial=0.0)),
            "trained_overlap_minus_paul_below": _mean_or_none([p.measures.signal_overlap - predicted_overlap(p.snr, gamma) for p in pts if p.snr < math.sqrt(gamma)]),
            "trained_overlap_minus_paul_above": _mean_or_none([p.measures.signal_overlap - predicted_overlap(p.snr, gamma) for p in pts if p.snr >= above]),
            "trained_overlap_abs_error_above": float(np.max(np.abs([p.measures.signal_overlap - predicted_overlap(p.snr, gamma) for p in pts if p.snr >= above]), initial=0.0)),
            "symmetric_outlier_rel_error_formula": [float(q.ratio / q.finite_sample_ratio - 1) for q in sym],
            "symmetric_outlier_rel_error_formula_above": float(np.max(np.abs([q.ratio / q.finite_sample_ratio - 1 for q in sym if q.snr >= above]), initial=0.0)),
            "trained_outlier_rel_error_formula_above": float(np.max(np.abs([p.ratio / p.finite_sample_ratio - 1 for p in pts if p.snr >= above]), initial=0.0)),
            "symmetric_outlier_rel_error_theorem": [float(q.ratio / q.theorem_ratio - 1) for q in sym],
            "symmetric_edge_rel_error": [float(q.predicted_bulk_edge / q.bulk_edge - 1) for q in sym],
            "bulk_vs_theorem_rel": [float(np.mean([p.measures.bulk / p.theorem_bulk for p in grp]) - 1) for grp in by_s],
            "deflated_density_vs_exact_rel": float(np.max(np.abs([p.measures.deflated_density_mean / p.measures.deflated_mean - 1 for p in pts]))),
            "deflated_mean_vs_bulk_rel": [float(np.mean([p.measures.deflated_mean / p.measures.bulk for p in grp]) - 1) for grp in by_s],
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
    out["c6"] = c6_summary(st, points)
    out["attribution"] = attribution_numbers(st, list(attributions))
    out["convergence"] = convergence_summary(points, asym, list(attributions))
    return out
