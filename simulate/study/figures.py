"""The study's four figures (PNG): spectra with the attribution knockouts, ratio vs error,
predicted vs measured error, and the finite-sample checks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from theory.figures import new_figure
from theory.finite_sample import predicted_overlap
from theory.mlr import bayes_error, predicted_error_from_ratio, theorem_eigenvalues

from .measure import PointResult
from .run import Study

__all__ = ["plot_attribution", "plot_ratio_vs_error", "plot_predicted_vs_measured", "plot_finite_samples"]


def _short_verdict(v: dict[str, Any]) -> str:
    if v["verdict"] == "attributable":
        return str(v["component"])
    return "absent" if v["verdict"] == "absent" else "?"


def plot_attribution(study: Study):
    """Rows: ``C``; columns: the attribution SNRs. Log-density of ``G`` (grey) and of the
    knockouts ``P⊥GP⊥`` (class), ``P⊥GP⊥`` (cross) and ``G - within`` of the trained Fisher;
    separated eigenvalues as ticks; the verdicts of the trained Fisher and of its positive
    control in the title."""
    classes = sorted({a.num_classes for a in study.attribution})
    cols = max(sum(a.num_classes == C for a in study.attribution) for C in classes)
    fig, axes = new_figure(len(classes), cols, figsize=(4.4 * cols, 3.3 * len(classes)), squeeze=False)
    wanted = {"P⊥ A P⊥ (class)": "tab:red", "P⊥ A P⊥ (cross)": "tab:orange", "A - within": "tab:blue"}
    for row, C in enumerate(classes):
        for col, a in enumerate(sorted((a for a in study.attribution if a.num_classes == C), key=lambda a: a.snr)):
            ax = axes[row, col]
            rep = a.trained.report
            base = rep.spectra[0].log_density
            floor = max(base.density.max(), 1e-300) * 1e-5
            ax.fill_between(base.grid, floor, np.maximum(base.density, floor), color="0.8", label="G")
            for s in rep.spectra[1:]:
                if s.name in wanted:
                    ax.plot(s.log_density.grid, np.maximum(s.log_density.density, floor), color=wanted[s.name], lw=1.0, label=s.name)
            ax.set_yscale("log")
            top = rep.eigenvalues[rep.eigenvalues > rep.edge.threshold]
            ax.plot(np.log10(np.abs(top) + base.eps), np.full(top.size, floor * 3), "|", color="k", ms=12, label=f"separated ({top.size})")
            v, w = a.trained.verdicts, a.control.verdicts
            ax.set_title(
                f"C={C}, SNR {a.snr:g}: outliers→{_short_verdict(v['outliers'])}, "
                f"bump→{_short_verdict(v['bump'])}, bulk→{_short_verdict(v['bulk'])}\n"
                f"control: {_short_verdict(w['outliers'])} / {_short_verdict(w['bump'])} / {_short_verdict(w['bulk'])}", fontsize=8,
            )
            ax.set_xlabel("log10(|λ| + eps)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("Fisher of trained MLR: spectra and knockouts (verdicts: attributable component, '?' = not attributable)", fontsize=9)
    fig.tight_layout()
    return fig


def _by_snr(points: list[PointResult], C: int, key) -> tuple[np.ndarray, np.ndarray]:
    snrs = np.array(sorted({p.snr for p in points if p.num_classes == C}))
    return snrs, np.array([np.mean([key(p) for p in points if p.num_classes == C and p.snr == s]) for s in snrs])


def plot_ratio_vs_error(study: Study):
    """Measured outlier-to-bulk ratio vs test error per ``C``, with Theorem 8.1's curve
    ``(ratio(s, alpha(s)), P_err(sqrt(s)))`` for the measured ``alpha(s)``."""
    classes = study.settings.classes
    fig, axes = new_figure(1, len(classes), figsize=(5.2 * len(classes), 4.0), squeeze=False)
    for ax, C in zip(axes[0], classes):
        pts = [p for p in study.points if p.num_classes == C]
        sc = ax.scatter([p.ratio for p in pts], [p.test_error for p in pts], c=np.log10([p.snr for p in pts]), cmap="viridis", s=18, label="measured (test error)")
        snrs, alpha = _by_snr(study.points, C, lambda p: p.alpha_used)
        fine = np.geomspace(snrs[0], snrs[-1], 200)
        a = np.exp(np.interp(np.log(fine), np.log(snrs), np.log(alpha)))
        ratios = [theorem_eigenvalues(C, study.settings.dim, s, ai).outlier_to_bulk for s, ai in zip(fine, a)]
        ax.plot(ratios, bayes_error(np.sqrt(fine), C), "k-", lw=1.2, label="Theorem 8.1 with measured alpha(s)")
        r = np.linspace(1.0, max(max(p.ratio for p in pts), max(ratios)), 200)
        ax.plot(r, predicted_error_from_ratio(r, C, float(np.median(alpha))), "k:", lw=1, label=f"prediction map, alpha={np.median(alpha):.2f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("outlier-to-bulk ratio")
        ax.set_ylabel("test error")
        ax.set_title(f"C = {C}, D = {study.settings.dim}, n = {study.settings.n_per_class} per class", fontsize=9)
        ax.legend(fontsize=7)
        fig.colorbar(sc, ax=ax, label="log10 SNR")
    fig.tight_layout()
    return fig


def plot_predicted_vs_measured(study: Study):
    """Left: predicted (Theorem 8.1, filled; finite-sample inversion, hollow) vs measured test
    error, every point. Right: the unequal-means sweep: predicted, test and Bayes error vs eta."""
    fig, axes = new_figure(1, 2, figsize=(11, 4.4))
    ax = axes[0]
    markers = "osD^v<>"
    for i, C in enumerate(study.settings.classes):
        pts = [p for p in study.points if p.num_classes == C]
        ax.scatter([p.test_error for p in pts], [p.predicted_error for p in pts], marker=markers[i % 7], s=20, label=f"C={C}: Theorem 8.1")
        ax.scatter([p.test_error for p in pts], [p.predicted_error_bbp for p in pts], marker=markers[i % 7], s=20, facecolors="none", edgecolors=f"C{i}", label=f"C={C}: finite-sample inversion")
    lo = max(1e-4, min(min(p.test_error for p in study.points), min(p.predicted_error for p in study.points)) / 2)
    ax.plot([lo, 1], [lo, 1], "k:", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, 1)
    ax.set_ylim(lo, 1)
    ax.set_xlabel("measured test error")
    ax.set_ylabel("error predicted from the ratio")
    g = study.summary["largest_gap"]
    ax.set_title(f"largest gap {g['predicted_minus_test']:+.3f} at C={g['num_classes']}, SNR {g['snr']:g}", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    if study.asymmetric:
        rows = study.summary["asymmetry"]
        eta = [r["eta"] for r in rows]
        ax.plot(eta, [r["predicted_error"] for r in rows], "o-", label="predicted from the ratio")
        ax.plot(eta, [r["test_error"] for r in rows], "s-", label="test error")
        ax.plot(eta, [r["bayes_error"] for r in rows], "^-", label="Bayes error (optimal rule, test data)")
        ax.set_xlabel("eta (class SNRs s(1 + eta(2c/(C-1) - 1)))")
        ax.set_ylabel("error")
        ax.set_title(f"unequal class means, C={study.settings.asymmetry_classes}, mean SNR {study.settings.asymmetry_snr:g}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_finite_samples(study: Study):
    """Per ``C`` (columns). Top: eigenvalue / bulk mean vs SNR: mean outlier (trained and
    symmetric probabilities), bulk top (measured; moment-matched Marchenko-Pastur edge),
    Theorem 8.1 and the finite-sample formula. Bottom: squared overlap of the top-``C``
    eigenvectors with the signal space vs Paul's formula; the BBP threshold ``sqrt(D/n)``."""
    classes = study.settings.classes
    gamma = study.settings.dim / study.settings.n_per_class
    fig, axes = new_figure(2, len(classes), figsize=(5.4 * len(classes), 7.6), squeeze=False)
    for col, C in enumerate(classes):
        ax = axes[0, col]
        snrs, ratio = _by_snr(study.points, C, lambda p: p.ratio)
        _, edge = _by_snr(study.points, C, lambda p: p.measures.bulk_edge / p.measures.bulk)
        _, edge_mp = _by_snr(study.points, C, lambda p: p.measures.predicted_bulk_edge / p.measures.bulk)
        _, theo = _by_snr(study.points, C, lambda p: p.theorem_ratio)
        _, fs = _by_snr(study.points, C, lambda p: p.finite_sample_ratio)
        sym = sorted((q for q in study.symmetric if q.num_classes == C), key=lambda q: q.snr)
        ax.plot(snrs, ratio, "o", color="tab:blue", label="trained: mean top-C / bulk")
        ax.plot(snrs, edge, "s", color="tab:gray", ms=4, label="trained: bulk top (measured)")
        ax.plot(snrs, edge_mp, "-", color="tab:gray", lw=1, label="trained: MP edge (1+sqrt(gamma_eff))^2")
        ax.plot([q.snr for q in sym], [q.ratio for q in sym], "^", color="tab:green", label="symmetric p: mean top-C / bulk")
        ax.plot([q.snr for q in sym], [q.bulk_edge / q.bulk for q in sym], "v", color="tab:olive", ms=4, label="symmetric p: bulk top (measured)")
        ax.plot([q.snr for q in sym], [q.predicted_bulk_edge / q.bulk for q in sym], "--", color="tab:olive", lw=1, label="symmetric p: MP edge")
        ax.plot(snrs, theo, "k-", lw=1.2, label="Theorem 8.1 (N = inf)")
        ax.plot(snrs, fs, "k--", lw=1.2, label="finite-sample formula")
        ax.set_yscale("log")
        ax.set_ylabel("eigenvalue / bulk mean")
        ax.set_title(f"C={C}, D={study.settings.dim}, n={study.settings.n_per_class} per class (D/n = {gamma:.2f})", fontsize=9)
        ax = axes[1, col]
        _, ov = _by_snr(study.points, C, lambda p: p.measures.signal_overlap)
        ax.plot(snrs, ov, "o", color="tab:blue", label="trained")
        ax.plot([q.snr for q in sym], [q.signal_overlap for q in sym], "^", color="tab:green", label="symmetric p")
        fine = np.geomspace(snrs[0], snrs[-1], 300)
        ax.plot(fine, [predicted_overlap(v, gamma) for v in fine], "k--", lw=1.2, label="Paul: (1 - g/s^2)/(1 + g/s), g = D/n")
        ax.set_ylabel("squared overlap of top-C eigenvectors with the signal space")
        ax.set_ylim(0, 1.02)
        for a in axes[:, col]:
            a.axvline(math.sqrt(gamma), color="tab:red", ls=":", lw=1, label="BBP threshold sqrt(D/n)")
            a.set_xscale("log")
            a.set_xlabel("SNR s")
            a.legend(fontsize=6)
    fig.tight_layout()
    return fig


