"""The ``theorem`` study: Lemma 8.1 and Theorem 8.1 of Papyan (JMLR 2020) checked three ways.

1. Dense ``eigh`` of the expected Fisher (:func:`theory.mlr.expected_fisher`) against
   Theorem 8.1's eigenvalues and multiplicities over a grid of ``(C, D, SNR, alpha)``;
   the error is measured relative to the largest eigenvalue and should sit at round-off.
2. Monte Carlo: the empirical Fisher under symmetric probabilities,
   ``G_n = Ave_c S_c (x) U^c`` with ``S_c = (1/n) sum_{i in c} x_i x_i^T`` drawn from the
   canonical model (``n`` per class) and ``U^c = A(p_c)``, converges to Lemma 8.1's
   ``E[G] = Ave_c E[x x^T | c] (x) U^c``. ``G_n`` is an average of ``n`` i.i.d. terms, so
   ``E||G_n - E G||_F^2 = V / n`` exactly: the root-mean-square relative error over
   repeats falls as ``n^(-1/2)``; the slope of its log-log fit is reported.
3. The sympy derivations of :mod:`theory.symbolic` (identity, lemma, theorem).

Run ``python -m simulate theorem --out runs/theorem`` (``--quick`` for a small grid).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from theory.checks import check_int
from theory.figures import FONT, legend_outside, mark_zero_floor, new_figure, plain_log_ticks, set_labels
from theory.mlr import expected_fisher, symmetric_probabilities, theorem_eigenvalues
from theory.progress import progress
from theory.runs import RunFolder
from theory.symbolic import check_all

from .arguments import (
    check_alphas,
    check_classes,
    check_dim,
    check_snrs,
)
from .fisher import MLRFisher
from .mixtures import canonical_mixture

__all__ = [
    "TheoremSettings",
    "GridPoint",
    "Convergence",
    "TheoremStudy",
    "theorem_settings",
    "eigen_grid_point",
    "symmetric_fisher",
    "monte_carlo_fisher",
    "fisher_convergence",
    "run_theorem_study",
    "plot_theorem_study",
    "theorem_report",
    "configure",
    "run_cli",
]


@dataclass(frozen=True)
class TheoremSettings:
    """The grid of the dense check, the Monte Carlo problem and the sympy class counts.

    ``alphas`` are fractions of the largest admissible value ``1 - 1/C`` (so every
    grid point is valid for every ``C``); the Monte Carlo problem uses ``mc_alpha``
    as an absolute value.
    """

    classes: tuple[int, ...]
    dim_extras: tuple[int, ...]
    snrs: tuple[float, ...]
    alpha_fractions: tuple[float, ...]
    mc_classes: int
    mc_dim: int
    mc_snr: float
    mc_alpha: float
    mc_n_per_class: tuple[int, ...]
    mc_repeats: int
    symbolic_classes: tuple[int, ...]
    seed: int


def theorem_settings(quick: bool = False, seed: int = 0) -> TheoremSettings:
    """Default settings (about 20 s, most of it sympy), or ``quick`` ones for the tests."""
    if quick:
        return TheoremSettings(
            classes=(2, 3, 5), dim_extras=(0, 3), snrs=(0.0, 2.0, 25.0), alpha_fractions=(0.1, 1.0),
            mc_classes=3, mc_dim=6, mc_snr=4.0, mc_alpha=0.3, mc_n_per_class=(16, 64, 256, 1024),
            mc_repeats=24, symbolic_classes=(3,), seed=seed,
        )
    return TheoremSettings(
        classes=(2, 3, 4, 6, 10), dim_extras=(0, 1, 7, 30), snrs=(0.0, 0.3, 2.0, 9.0, 100.0),
        alpha_fractions=(0.01, 0.2, 0.6, 1.0),
        mc_classes=4, mc_dim=12, mc_snr=4.0, mc_alpha=0.3, mc_n_per_class=(16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
        mc_repeats=40, symbolic_classes=(3, 4), seed=seed,
    )


@dataclass(frozen=True)
class GridPoint:
    """Dense ``eigh`` of Lemma 8.1 against Theorem 8.1 at one ``(C, D, s, alpha)``:
    ``max_error = max_k |lambda_k(eigh) - lambda_k(theorem)| / lambda_max`` over the sorted
    spectra (which also checks the multiplicities)."""

    num_classes: int
    dim: int
    snr: float
    alpha: float
    largest: float
    max_error: float


def eigen_grid_point(num_classes: int, dim: int, snr: float, alpha: float) -> GridPoint:
    """Compare ``numpy.linalg.eigvalsh(expected_fisher(C, D, s, alpha))`` with
    ``theorem_eigenvalues(C, D, s, alpha).eigenvalues()`` (both ascending)."""
    dense = np.linalg.eigvalsh(expected_fisher(num_classes, dim, snr, alpha))
    theory = theorem_eigenvalues(num_classes, dim, snr, alpha).eigenvalues()
    scale = float(np.max(np.abs(theory)))
    return GridPoint(num_classes, dim, float(snr), float(alpha), scale, float(np.max(np.abs(dense - theory)) / scale))


def symmetric_fisher(X: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float) -> np.ndarray:
    """The empirical Fisher under symmetric probabilities, dense:
    ``(1/N) sum_i (x_i x_i^T) (x) A(p_{c_i}) = sum_c (N_c/N) S_c (x) U^c`` with
    ``S_c = X_c^T X_c / N_c`` and ``U^c = A(p_c)`` (``vec(W)`` in ``D`` blocks of ``C``, as
    :func:`theory.mlr.expected_fisher`)."""
    return MLRFisher(X, symmetric_probabilities(num_classes, alpha)[labels]).to_dense().numpy()


def monte_carlo_fisher(num_classes: int, dim: int, snr: float, alpha: float, n_per_class: int, seed: int) -> np.ndarray:
    """:func:`symmetric_fisher` on ``n_per_class`` examples per class of the canonical model
    drawn from ``seed``."""
    data = canonical_mixture(num_classes, dim, snr).sample(n_per_class, seed)
    return symmetric_fisher(data.X, data.labels, num_classes, alpha)


@dataclass(frozen=True)
class Convergence:
    """Relative Frobenius errors ``||G_n - E G||_F / ||E G||_F`` (``errors[j, r]``: size
    ``n_per_class[j]``, repeat ``r``), their root mean square over repeats, and the
    least-squares line ``log rms = intercept + slope log n`` with the slope's standard error."""

    num_classes: int
    dim: int
    snr: float
    alpha: float
    n_per_class: np.ndarray
    errors: np.ndarray
    rms: np.ndarray
    slope: float
    slope_stderr: float
    intercept: float


def fisher_convergence(
    num_classes: int, dim: int, snr: float, alpha: float, n_per_class: Sequence[int], repeats: int, seed: int,
    show_progress: bool = False,
) -> Convergence:
    """Monte Carlo convergence of the empirical Fisher to Lemma 8.1 (seeds ``seed + r``
    for repeat ``r``, shared across sizes)."""
    expected = expected_fisher(num_classes, dim, snr, alpha)
    norm = np.linalg.norm(expected)
    sizes = np.asarray(n_per_class, dtype=np.int64)
    errors = np.empty((sizes.size, repeats))
    jobs = list(itertools.product(range(sizes.size), range(repeats)))
    for j, r in progress(jobs, desc="Monte Carlo Fisher", enabled=show_progress):
        G = monte_carlo_fisher(num_classes, dim, snr, alpha, int(sizes[j]), seed + r)
        errors[j, r] = np.linalg.norm(G - expected) / norm
    rms = np.sqrt(np.mean(errors**2, axis=1))
    X = np.stack([np.ones(sizes.size), np.log(sizes)], axis=1)
    coef, res, *_ = np.linalg.lstsq(X, np.log(rms), rcond=None)
    dof = max(sizes.size - 2, 1)
    sigma2 = float(res[0]) / dof if res.size else 0.0
    stderr = float(np.sqrt(sigma2 * np.linalg.inv(X.T @ X)[1, 1]))
    return Convergence(num_classes, dim, float(snr), float(alpha), sizes, errors, rms, float(coef[1]), stderr, float(coef[0]))


@dataclass(frozen=True)
class TheoremStudy:
    """Everything the ``theorem`` study measured."""

    settings: TheoremSettings
    grid: list[GridPoint]
    grid_max_error: float
    grid_worst: GridPoint
    convergence: Convergence
    symbolic: dict[str, dict[str, object]]
    symbolic_all_hold: bool
    seconds: dict[str, float]


def run_theorem_study(settings: TheoremSettings, show_progress: bool = True) -> TheoremStudy:
    """Run the three checks of the module docstring."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    points = [
        (C, C + extra, s, f * (1 - 1 / C))
        for C in settings.classes for extra in settings.dim_extras for s in settings.snrs for f in settings.alpha_fractions
    ]
    grid = [eigen_grid_point(*p) for p in progress(points, desc="dense eigh grid", enabled=show_progress)]
    worst = max(grid, key=lambda g: g.max_error)
    seconds["grid"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    conv = fisher_convergence(
        settings.mc_classes, settings.mc_dim, settings.mc_snr, settings.mc_alpha,
        settings.mc_n_per_class, settings.mc_repeats, settings.seed, show_progress,
    )
    seconds["monte_carlo"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    symbolic: dict[str, dict[str, object]] = {}
    for C in progress(settings.symbolic_classes, desc="sympy derivations", enabled=show_progress):
        for name, check in check_all(C).items():
            symbolic[f"C={C} {name}"] = {"holds": check.holds, "residual": check.residual, "statement": check.name, "seconds": check.seconds}
    seconds["symbolic"] = time.perf_counter() - t0
    return TheoremStudy(
        settings=settings,
        grid=grid,
        grid_max_error=worst.max_error,
        grid_worst=worst,
        convergence=conv,
        symbolic=symbolic,
        symbolic_all_hold=all(bool(v["holds"]) for v in symbolic.values()),
        seconds=seconds,
    )


def plot_theorem_study(study: TheoremStudy):
    """Left: RMS relative error of the Monte Carlo Fisher vs ``n`` per class (log-log) with
    the fitted line and a slope ``-1/2`` reference; right: the dense-vs-theorem errors of
    the grid, errors that are exactly zero drawn as open markers on a floor line a decade
    below the decade of the smallest nonzero error, the line's tick labelled 0 (a log axis has none,
    :func:`theory.figures.mark_zero_floor`), and counted in the legend."""
    conv = study.convergence
    fig, axes = new_figure(1, 2, figsize=(11.5, 4.0), layout="constrained")
    ax = axes[0]
    n = conv.n_per_class.astype(float)
    for r in range(conv.errors.shape[1]):
        ax.loglog(n, conv.errors[:, r], ".", color="0.75", ms=3, label="repeats" if r == 0 else None)
    ax.loglog(n, conv.rms, "o", color="tab:blue", label="root mean square")
    ax.loglog(n, np.exp(conv.intercept) * n**conv.slope, "-", color="tab:blue", label=f"fit: slope {conv.slope:.3f} ± {conv.slope_stderr:.3f}")
    ax.loglog(n, conv.rms[0] * (n / n[0]) ** -0.5, ":", color="k", label="slope -1/2")
    set_labels(ax, "examples per class n", r"relative error $\|G_n - E[G]\|_F \,/\, \|E[G]\|_F$",
               f"Monte Carlo Fisher vs Lemma 8.1 (C={conv.num_classes}, D={conv.dim}, s={conv.snr:g}, $\\alpha$={conv.alpha:g})")
    plain_log_ticks(ax.yaxis)
    ax.legend(fontsize=FONT["legend"], loc="lower left")
    ax = axes[1]
    sizes = np.array([g.num_classes * g.dim for g in study.grid], dtype=float)
    errs = np.array([g.max_error for g in study.grid], dtype=float)
    eps = float(np.finfo(float).eps)
    zero = errs == 0
    above = 10.0 ** math.floor(math.log10(min(float(errs[~zero].min()) if (~zero).any() else eps, eps)))
    floor = 0.1 * above  # the exact zeros' line, a decade below every tick of a drawn error
    ax.loglog(sizes[~zero], errs[~zero], "o", ms=4, alpha=0.6, color="tab:blue", label="grid points")
    if zero.any():
        ax.plot(sizes[zero], np.full(int(zero.sum()), floor), "o", ms=5, mfc="none", color="tab:blue", clip_on=False,
                label=f"exactly 0 ({int(zero.sum())} points, drawn on the line marked 0)")
        mark_zero_floor(ax, floor, above)
    ax.axhline(eps, color="k", ls=":", lw=1, label="machine epsilon")
    ax.set_ylim(bottom=floor / 2)
    ticks = np.unique(sizes)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xticks([], minor=True)
    set_labels(ax, "matrix size C D", r"max relative error $|\lambda_{eigh} - \lambda_{theorem}| / \lambda_{max}$",
               f"dense eigh vs Theorem 8.1: {len(study.grid)} grid points")
    legend_outside(ax)
    return fig


def theorem_report(study: TheoremStudy) -> str:
    conv, w, st = study.convergence, study.grid_worst, study.settings
    rows = "\n".join(
        f"| {n} | {r:.4e} |" for n, r in zip(conv.n_per_class, conv.rms)
    )
    sym = "\n".join(
        f"| {name} | {'holds' if v['holds'] else 'FAILS'} | {v['residual']} | {v['seconds']:.2f} |" for name, v in study.symbolic.items()
    )
    slope_ok = abs(conv.slope + 0.5) <= 3 * conv.slope_stderr + 0.05
    return f"""# Lemma 8.1 and Theorem 8.1, checked

**Dense eigh vs Theorem 8.1.** {len(study.grid)} points (C in {list(st.classes)}, D = C + {list(st.dim_extras)},
SNR in {list(st.snrs)}, alpha = {list(st.alpha_fractions)} x (1 - 1/C)): the largest error of a sorted
eigenvalue, relative to the largest eigenvalue, is **{study.grid_max_error:.2e}** (at C={w.num_classes}, D={w.dim},
s={w.snr:g}, alpha={w.alpha:.4g}); round-off, so the eigenvalues and multiplicities of the theorem hold.

**Monte Carlo.** Empirical Fisher under symmetric probabilities, C={conv.num_classes}, D={conv.dim},
s={conv.snr:g}, alpha={conv.alpha:g}, {conv.errors.shape[1]} repeats per size. Root-mean-square relative
Frobenius error against Lemma 8.1:

| n per class | RMS error |
|---|---|
{rows}

Log-log slope **{conv.slope:.3f} ± {conv.slope_stderr:.3f}** (expected -1/2: the error of an average of n
i.i.d. terms; {'consistent' if slope_ok else 'NOT consistent'} with it).

**Sympy derivations** ({'all hold' if study.symbolic_all_hold else 'SOME FAIL'}):

| derivation | verdict | residual | seconds |
|---|---|---|---|
{sym}

Time: grid {study.seconds['grid']:.1f} s, Monte Carlo {study.seconds['monte_carlo']:.1f} s, sympy {study.seconds['symbolic']:.1f} s.
Figure: `theorem.png` (left: convergence; right: grid errors). Every number: `results.json`.
"""


def configure(
    quick: bool = False,
    seed: int = 0,
    classes: Sequence[int] | None = None,
    snrs: Sequence[float] | None = None,
    alpha: float | None = None,
    dim: int | None = None,
    n_per_class: int | None = None,
) -> TheoremSettings:
    """Default (or ``quick``) settings with checked overrides: ``classes`` and ``snrs`` of the
    dense grid; ``alpha``, ``dim`` and the largest ``n_per_class`` of the Monte Carlo problem."""
    settings = theorem_settings(quick, seed)
    overrides: dict[str, object] = {}
    if classes is not None:
        overrides["classes"] = check_classes(classes)
    if snrs is not None:
        overrides["snrs"] = check_snrs(snrs)
    mc_C = (settings.mc_classes,)
    if dim is not None:
        overrides["mc_dim"] = check_dim(dim, mc_C)
    if alpha is not None:
        overrides["mc_alpha"] = check_alphas([alpha], mc_C)[0]
    check_int("--seed", seed, 0, 2**63 - 1)
    extra = max(settings.dim_extras)
    largest = max(c for c in range(2, 101) if c * (c + extra) <= 10_000)  # expected_fisher's dense size limit
    for c in overrides.get("classes", ()):
        check_int("--classes", c, 2, largest, what=f"(the dense grid's C (C + {extra}) rows must stay <= 10000)")
    if n_per_class is not None:  # the N^(-1/2) slope fit needs several sizes from 16 up
        top = check_int("--n-per-class", n_per_class, 32, what="(Monte Carlo sizes from 16 up to it, for the N^(-1/2) slope fit)")
        overrides["mc_n_per_class"] = tuple(int(v) for v in np.unique(np.geomspace(min(16, top), top, 6).round().astype(int)))
    return replace(settings, **overrides)


def run_cli(out: str, settings: TheoremSettings, show_progress: bool = True) -> TheoremStudy:
    """Run the study and write ``results.json``, ``theorem.png`` and ``report.md`` into ``out``."""
    folder = RunFolder(out)
    study = run_theorem_study(settings, show_progress)
    folder.write_json("results.json", study)  # the numbers first: a failing figure never costs them
    folder.try_figure("theorem.png", lambda: plot_theorem_study(study))
    text = theorem_report(study)
    folder.write_text("report.md", text)
    print(text)
    print(f"results written to {folder.path}/ (report.md, results.json, theorem.png)")
    return study
