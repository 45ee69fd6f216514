"""The synthetic check of the density estimator (Papyan 2020, Fig. 15).

``Y = diag(5, 4, 3, 0, ..., 0) + Z Z^T / n`` with ``Z`` an ``n x n`` standard normal
matrix: a Marchenko-Pastur bulk on about ``[0, 4]`` and three outliers at
``theta^2 / (theta - 1)`` = 6.25, 5.33, 4.5 for ``theta`` = 5, 4, 3 (the additive
BBP transition at aspect ratio one). The estimator sees ``Y`` only through
products; a dense ``eigh`` gives the truth it is compared with.

Run ``python -m simulate synthetic --out runs/synthetic``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .figures import COLORS, FONT, figure_legend, new_figure, point_mass_stems, set_labels
from .operators import as_operator
from .spectral import DeflatedDensity, SpectralDensity, bulk_density, gaussian_smooth, spectral_density, top_eigenpairs

__all__ = ["SyntheticCheck", "plot_synthetic_check", "report", "run_synthetic_check"]

SPIKES = (5.0, 4.0, 3.0)


@dataclass(frozen=True)
class SyntheticCheck:
    """Numbers of the synthetic check; ``*_l1`` are L1 distances between the
    estimated density and the exact eigenvalues smoothed with the same kernel."""

    size: int
    seed: int
    outliers_theory: list[float]
    outliers_exact: list[float]
    outliers_estimated: list[float]
    outliers_max_relative_error: float
    bulk_edges_exact: tuple[float, float]
    bulk_edges_marchenko_pastur: tuple[float, float]
    density_l1: float
    bulk_density_l1: float
    density_integral: float
    seconds_exact_eigh: float
    seconds_estimates: float
    density: SpectralDensity
    deflated: DeflatedDensity


def run_synthetic_check(
    size: int = 2000, num_steps: int = 128, num_repeats: int = 10, kappa: float = 3.0, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[SyntheticCheck, np.ndarray]:
    """Build ``Y``, estimate its spectrum matrix-free and compare with ``eigh``.

    ``Z`` is drawn on the CPU from ``seed`` (the same matrix on every device), then moved to
    ``device`` for the products and the dense ``eigh``. Returns the check and the exact
    eigenvalues (ascending)."""
    if size < 2 * len(SPIKES) or num_steps > size:
        raise ValueError(f"size: expected at least {max(2 * len(SPIKES), num_steps)}, got {size}")
    gen = torch.Generator().manual_seed(seed)
    Z = torch.randn(size, size, generator=gen, dtype=torch.float64)
    Z = Z.to(device)
    Y = Z @ Z.T / size
    Y.diagonal()[: len(SPIKES)] += torch.tensor(SPIKES, dtype=torch.float64, device=Y.device)
    op = as_operator(Y)

    t0 = time.perf_counter()
    exact = torch.linalg.eigvalsh(Y).cpu().numpy()
    t1 = time.perf_counter()
    density = spectral_density(op, num_steps=num_steps, num_repeats=num_repeats, kappa=kappa, seed=seed)
    pairs = top_eigenpairs(op, len(SPIKES), seed=seed)
    deflated = bulk_density(op, pairs, num_steps=num_steps, num_repeats=num_repeats, kappa=kappa, seed=seed)
    t2 = time.perf_counter()

    k = len(SPIKES)
    top = exact[::-1][:k]
    bulk = exact[:-k]
    l1 = np.trapezoid(np.abs(density.density - gaussian_smooth(exact, None, density.sigma, density.grid)), density.grid)
    b = deflated.bulk
    bulk_l1 = np.trapezoid(np.abs(b.density - gaussian_smooth(bulk, None, b.sigma, b.grid)), b.grid)
    check = SyntheticCheck(
        size=size,
        seed=seed,
        outliers_theory=[t * t / (t - 1) for t in SPIKES],
        outliers_exact=top.tolist(),
        outliers_estimated=pairs.eigenvalues.tolist(),
        outliers_max_relative_error=float(np.max(np.abs(pairs.eigenvalues - top) / top)),
        bulk_edges_exact=(float(bulk[0]), float(bulk[-1])),
        bulk_edges_marchenko_pastur=(0.0, 4.0),
        density_l1=float(l1),
        bulk_density_l1=float(bulk_l1),
        density_integral=float(np.trapezoid(density.density, density.grid)),
        seconds_exact_eigh=t1 - t0,
        seconds_estimates=t2 - t1,
        density=density,
        deflated=deflated,
    )
    return check, exact


def plot_synthetic_check(check: SyntheticCheck, exact: np.ndarray):
    """Two panels on a log density axis: the full density with the histogram of
    exact eigenvalues, and the deflated bulk (times its weight ``(p-k)/p``) with the
    outliers, point masses ``1/p`` each, as stems of height ``1/p`` on a right axis of
    point-mass weights (:func:`theory.figures.point_mass_stems`), labelled with their
    estimated values; the theory values ``theta^2 / (theta - 1)`` dotted."""
    fig, axes = new_figure(1, 2, figsize=(10.5, 4.0), sharey=True, layout="constrained")
    k = len(check.outliers_exact)
    d, b = check.density, check.deflated.bulk
    bins = np.linspace(min(d.grid[0], 0.0), d.grid[-1], 120)
    for ax, values, dens, title in (
        (axes[0], exact, d, "whole spectrum (no deflation)"),
        (axes[1], exact[:-k], b, f"bulk after deflating the top {k}; the {k} outliers as point masses"),
    ):
        hist, edges = np.histogram(values, bins=bins, density=True)
        ax.stairs(hist * len(values) / len(exact), edges, fill=True, alpha=0.35, color="tab:gray", label="exact eigenvalues (histogram)")
        scale = 1.0 if dens is d else check.deflated.bulk_weight
        ax.plot(dens.grid, dens.density * scale, color=COLORS["G"], lw=1.5, label="Lanczos density estimate")
        ax.set_yscale("log")
        ax.set_ylim(1e-5, 30)
        set_labels(ax, "eigenvalue $\\lambda$", "density (share of eigenvalues per unit $\\lambda$)", title)
        for x in check.outliers_theory:
            ax.axvline(x, color="tab:red", ls=":", lw=1)
    axes[0].plot([], [], color="tab:red", ls=":", label=r"theory $\theta^2/(\theta-1)$")
    twin = point_mass_stems(axes[1], np.asarray(check.outliers_estimated), check.deflated.outlier_weight, color="tab:green",
                            label=f"outliers by subspace iteration: point masses of weight $1/p$ = {check.deflated.outlier_weight:.1e} (right axis)")
    figure_legend(fig, [axes[0], axes[1], twin], ncols=2)
    fig.suptitle(f"Synthetic check: diag(5, 4, 3, 0, ...) + $ZZ^T/n$, n = {check.size}", fontsize=FONT["suptitle"])
    return fig


def report(check: SyntheticCheck) -> str:
    rows = "\n".join(
        f"| {t:.4f} | {e:.4f} | {s:.4f} | {abs(s - e) / e:.1e} |"
        for t, e, s in zip(check.outliers_theory, check.outliers_exact, check.outliers_estimated)
    )
    lo, hi = check.bulk_edges_exact
    return f"""# Synthetic check of the density estimator

`Y = diag(5, 4, 3, 0, ...) + Z Z^T / n`, n = {check.size}, seed {check.seed}; products only,
compared with a dense `eigh` of `Y`.

| outlier, theory | exact (eigh) | subspace iteration | relative error |
|---|---|---|---|
{rows}

* Bulk of the exact spectrum on [{lo:.3f}, {hi:.3f}] (Marchenko-Pastur: [0, 4]).
* Density: integrates to {check.density_integral:.6f}; L1 distance to the exact
  eigenvalues smoothed with the same kernel {check.density_l1:.3f} (whole spectrum),
  {check.bulk_density_l1:.3f} (bulk after deflation).
* Settings: {check.density.num_steps} Lanczos steps, {check.density.num_repeats} starts,
  kappa = {check.density.kappa}.
* Time: estimates {check.seconds_estimates:.2f} s; dense eigh {check.seconds_exact_eigh:.2f} s.

Figure: `synthetic_check.png` (log density axis; left the whole spectrum, right
the bulk after deflation with the outliers as point masses of weight 1/p).
"""

