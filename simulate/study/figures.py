"""The study's four figures (PNG): spectra with the attribution knockouts, ratio vs error,
predicted vs measured error, and the finite-sample checks."""

from __future__ import annotations

import math
import textwrap
from typing import Any

import numpy as np

from theory.attribution import knockout_limits, knockout_panel
from theory.figures import FONT, figure_legend, legend_outside, new_figure, plain_log_ticks, set_labels
from theory.finite_sample import predicted_overlap
from theory.mlr import bayes_error, predicted_error_from_ratio, theorem_eigenvalues

from .measure import PointResult
from .run import Study

__all__ = ["plot_attribution", "plot_ratio_vs_error", "plot_predicted_vs_measured", "plot_finite_samples"]


ATTRIBUTION_KNOCKOUTS = ("A", "A - class", "A - cross", "A - within")
"""The operators of the study's attribution figure: the Fisher and its subtraction
knockouts (the verdicts are decided by subtraction)."""


def verdict_words(verdicts: dict[str, dict[str, Any]]) -> str:
    """The verdicts of one attribution in words: ``outliers from class, no bump, bulk from
    within`` (``not attributable`` spelled out)."""
    words = []
    for feature, v in verdicts.items():
        if v["verdict"] == "attributable":
            words.append(f"{feature} from {v['component']}")
        elif v["verdict"] == "absent":
            words.append(f"no {feature}")
        else:
            words.append(f"{feature} not attributable")
    return ", ".join(words)


def plot_attribution(study: Study):
    """One block of rows per ``C``: the Fisher ``G`` of trained MLR, then its knockouts
    ``G - class``, ``G - cross``, ``G - within``; one column per attribution SNR, each
    column of a block on shared axes with one log-spectrum per panel (Papyan 2020, Fig. 5
    style; panels by :func:`theory.attribution.knockout_panel`: ``G`` shaded grey, the
    knockout in its component's colour, ``G``'s features as markers at their eigenvalues,
    the null space a share in the title). The top title of a column gives the verdicts of
    the trained Fisher and of its positive control (Theorem 8.1's probabilities) in words."""
    attributions = sorted(study.attribution, key=lambda a: (a.num_classes, a.snr))
    names = [n for n in ATTRIBUTION_KNOCKOUTS if any(s.name == n for s in attributions[0].trained.report.spectra)]
    blocks: dict[int, list] = {}
    for a in attributions:
        blocks.setdefault(a.num_classes, []).append(a)
    cols = max(len(group) for group in blocks.values())
    fig, axes = new_figure(len(names) * len(blocks), cols, figsize=(4.2 * cols, (2.9 * len(names) + 1.0) * len(blocks) + 0.4),
                           squeeze=False, layout="constrained")
    for block, group in enumerate(blocks.values()):
        rows = axes[block * len(names):(block + 1) * len(names)]
        for col in range(cols):
            column = rows[:, col]
            if col >= len(group):
                for ax in column:
                    ax.set_visible(False)
                continue
            a = group[col]
            for ax in column[1:]:
                ax.sharex(column[0])
                ax.sharey(column[0])
            rep = a.trained.report
            spectra = {s.name: s for s in rep.spectra}
            drawn = [knockout_panel(ax, rep, spectra[n], symbol="G") for ax, n in zip(column, names)]
            knockout_limits(column[0], drawn)
            verdicts = textwrap.fill(f"C = {a.num_classes}, SNR {a.snr:g}, trained: {verdict_words(a.trained.verdicts)}; "
                                     f"positive control: {verdict_words(a.control.verdicts)}", 52)
            column[0].set_title(f"{verdicts}\n{column[0].get_title()}", fontsize=FONT["title"])
    figure_legend(fig, axes, ncols=3)
    fig.suptitle("Fisher G of trained MLR and its knockouts: what each subtraction removes", fontsize=FONT["suptitle"])
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
    """Left: the test error predicted from the outlier-to-bulk ratio (Theorem 8.1's map,
    filled; the finite-sample inversion, open) against the measured test error, every
    point, with the diagonal. Right: the unequal-means sweep (class ``c`` at SNR
    ``s (1 + eta (2c/(C-1) - 1))``): predicted, test and Bayes error against ``eta``."""
    fig, axes = new_figure(1, 2, figsize=(9.0, 4.6), layout="constrained")
    ax = axes[0]
    markers = "osD^v<>"
    for i, C in enumerate(study.settings.classes):
        pts = [p for p in study.points if p.num_classes == C]
        ax.scatter([p.test_error for p in pts], [p.predicted_error for p in pts], marker=markers[i % 7], s=22, color=f"C{i}",
                   label=f"C = {C}: Theorem 8.1's map")
        ax.scatter([p.test_error for p in pts], [p.predicted_error_bbp for p in pts], marker=markers[i % 7], s=22,
                   facecolors="none", edgecolors=f"C{i}", label=f"C = {C}: finite-sample inversion")
    lo = max(1e-4, min(min(p.test_error for p in study.points), min(p.predicted_error for p in study.points)) / 2)
    ax.plot([lo, 1], [lo, 1], "k:", lw=1, label="predicted = measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, 1)
    ax.set_ylim(lo, 1)
    set_labels(ax, "measured test error (fraction misclassified)", "error predicted from the ratio (fraction)",
               "Test error predicted from the spectrum vs measured")
    g = study.summary["largest_gap"]
    ax.text(0.97, 0.03, f"largest gap: {g['predicted_minus_test']:+.3f}\nat C = {g['num_classes']}, SNR {g['snr']:g}",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=FONT["note"])
    ax.set_box_aspect(1.0)
    ax = axes[1]
    if study.asymmetric:
        rows = study.summary["asymmetry"]
        eta = [r["eta"] for r in rows]
        ax.plot(eta, [r["predicted_error"] for r in rows], "o-", label="predicted from the ratio")
        ax.plot(eta, [r["test_error"] for r in rows], "s-", label="test error")
        ax.plot(eta, [r["bayes_error"] for r in rows], "^-", label="Bayes error (optimal rule, test data)")
        set_labels(ax, "spread of the class SNRs $\\eta$ (0: equal means)", "error (fraction misclassified)",
                   f"Unequal class means: C = {study.settings.asymmetry_classes}, mean SNR $s$ = {study.settings.asymmetry_snr:g}\n"
                   "(class $c$ at SNR $s\\,(1 + \\eta\\,(2c/(C-1) - 1))$)")
        ax.set_box_aspect(1.0)
    else:
        ax.set_visible(False)
    figure_legend(fig, axes, ncols=3)
    return fig


def plot_finite_samples(study: Study):
    """Per ``C`` (columns). Top: eigenvalue / bulk mean vs SNR: mean of the top ``C``
    (trained and symmetric probabilities), bulk top (measured; moment-matched
    Marchenko-Pastur edge), Theorem 8.1 and the finite-sample formula. Bottom: squared
    overlap of the top-``C`` eigenvectors with the signal space vs Paul's formula; the
    BBP threshold ``sqrt(D/n)`` in both. One legend per row, right of the panels."""
    classes = study.settings.classes
    gamma = study.settings.dim / study.settings.n_per_class
    fig, axes = new_figure(2, len(classes), figsize=(4.6 * len(classes) + 2.6, 7.0), squeeze=False, layout="constrained")
    for col, C in enumerate(classes):
        ax = axes[0, col]
        snrs, ratio = _by_snr(study.points, C, lambda p: p.ratio)
        _, edge = _by_snr(study.points, C, lambda p: p.measures.bulk_edge / p.measures.bulk)
        _, edge_mp = _by_snr(study.points, C, lambda p: p.measures.predicted_bulk_edge / p.measures.bulk)
        _, theo = _by_snr(study.points, C, lambda p: p.theorem_ratio)
        _, fs = _by_snr(study.points, C, lambda p: p.finite_sample_ratio)
        sym = sorted((q for q in study.symmetric if q.num_classes == C), key=lambda q: q.snr)
        ax.plot(snrs, theo, "k-", lw=1.2, label="Theorem 8.1 ($N = \\infty$)")
        ax.plot(snrs, fs, "k--", lw=1.2, label="finite-sample formula")
        ax.plot(snrs, ratio, "o", color="tab:blue", label="mean of the top C, trained $p$")
        ax.plot([q.snr for q in sym], [q.ratio for q in sym], "^", color="tab:green", label="mean of the top C, symmetric $p$")
        ax.plot(snrs, edge, "s", color="tab:gray", ms=4, label="bulk top (measured), trained $p$")
        ax.plot(snrs, edge_mp, "-", color="tab:gray", lw=1, label="MP edge $(1+\\sqrt{\\gamma_{eff}})^2$, trained $p$")
        ax.plot([q.snr for q in sym], [q.bulk_edge / q.bulk for q in sym], "v", color="tab:olive", ms=4, label="bulk top (measured), symmetric $p$")
        ax.plot([q.snr for q in sym], [q.predicted_bulk_edge / q.bulk for q in sym], "--", color="tab:olive", lw=1, label="MP edge, symmetric $p$")
        ax.set_yscale("log")
        set_labels(ax, "SNR $s$", "eigenvalue / bulk mean",
                   f"C = {C}, D = {study.settings.dim}, n = {study.settings.n_per_class} per class ($D/n$ = {gamma:.2f})")
        ax = axes[1, col]
        _, ov = _by_snr(study.points, C, lambda p: p.measures.signal_overlap)
        fine = np.geomspace(snrs[0], snrs[-1], 300)
        ax.plot(fine, [predicted_overlap(v, gamma) for v in fine], "k--", lw=1.2,
                label="Paul: $(1 - \\gamma/s^2)/(1 + \\gamma/s)$, $\\gamma = D/n$")
        ax.plot(snrs, ov, "o", color="tab:blue", label="trained $p$")
        ax.plot([q.snr for q in sym], [q.signal_overlap for q in sym], "^", color="tab:green", label="symmetric $p$")
        set_labels(ax, "SNR $s$", "squared overlap with\nthe signal space (0 to 1)",
                   f"Top-C eigenvectors vs the class-mean span, C = {C}")
        ax.set_ylim(0, 1.02)
        for a in axes[:, col]:
            a.axvline(math.sqrt(gamma), color="tab:red", ls=":", lw=1, label="BBP threshold $\\sqrt{D/n}$")
            a.set_xscale("log")
            plain_log_ticks(a.xaxis)
        plain_log_ticks(axes[0, col].yaxis)
    for row in axes:
        legend_outside(row[-1])
    return fig
