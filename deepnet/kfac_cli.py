"""``python -m deepnet kfac --checkpoint RUN [--out DIR]``: the spectra of K-FAC and of its
class-aware correction against the layer blocks ``G^l`` of a trained classifier
(Papyan 2020, Sec. 7, Figs. 11-12; docs/kfac.md).

Per Linear / Conv2d layer ``l`` (:func:`deepnet.kfac.kfac_factors`, one set of passes for
all layers) the three operators ``G^l`` (``GaussNewtonOperator`` restricted to the
layer's parameters), K-FAC ``Delta (x) H`` and the corrected ``sum_c pi_c Delta_c (x) H_c``
each get one :func:`theory.spectrum.spectrum` record: the top ``k = C^2`` eigenpairs and
the log density of the rest. Against ``G^l``, for ``A`` = K-FAC and corrected:

* ``wasserstein``: the Wasserstein-1 distance ``int |F_A - F_G| dx`` between the whole
  spectra on the log axis ``x = log10(|lambda| + eps)`` (outliers as point masses
  ``1/P``, the bulk density with weight ``(P - k)/P``);
* ``top_relative_error``: ``|lambda_j(A) - lambda_j(G)| / lambda_j(G)`` for ``j <= k``
  (mean and max reported);
* ``principal_angles``: between the top-``k`` eigenspaces, in degrees;
* ``frobenius``: ``||A - G^l||_F / ||G^l||_F`` by Hutchinson's estimator (the same
  ``num_probes`` Rademacher probes for both norms, the ratio of the two sums).

K-FAC's top eigenvalues are also taken exactly from the factor eigenvalues
(``kfac_exact``). Writes ``results.json`` (:class:`theory.runs.RunFolder`), then
``report.md`` and ``spectra.png``.
"""

from __future__ import annotations

import argparse
import math
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from theory.checks import check_int, check_real
from theory.density import DensitySettings
from theory.eigenpairs import ConvergenceWarning
from theory.figures import (
    FONT,
    SpectrumShares,
    figure_legend,
    log_limits,
    log_spectrum_curve,
    new_figure,
    outlier_markers,
    set_labels,
    spectrum_shares,
)
from theory.operators import SymmetricOperator
from theory.runs import RunFolder
from theory.spectrum import Spectrum, spectrum

from .analysis import default_out, load_analysis
from .kfac import FISHER_TYPES, KFACFactors, LayerFactors, kfac_factors
from .operators import EmpiricalRisk, GaussNewtonOperator

__all__ = ["Agreement", "LayerComparison", "add_arguments", "compare_layer", "kfac_figure", "kfac_report", "run"]

APPROXIMATIONS = ("kfac", "corrected")
LABELS = {"G": "$G^l$", "kfac": "K-FAC", "corrected": "class-aware"}
STYLES = {"G": {"color": "0.45", "lw": 1.4, "ls": "-", "row": 0.95},
          "kfac": {"color": "tab:red", "lw": 1.2, "ls": "--", "row": 0.87},
          "corrected": {"color": "tab:blue", "lw": 1.2, "ls": "-", "row": 0.79}}
"""Per operator: colour and line of its bulk curve (``G^l`` shaded) and the row (axes
units) of its top-``k`` ticks along the top of a panel: three rows, so none overprints
(ticks, not filled markers: ``k = C^2`` of them would merge into a bar)."""
HEADROOM = 1.8
"""Decades of density axis above the highest peak: the curves stay below the marker rows
(the peak at ``5 / (5 + HEADROOM)`` = 0.74 of the panel's height)."""
SHARE_DECADES = 2.0
"""The layers' panels share the ``|lambda|`` axis unless their ranges together span more
than this many decades beyond the widest panel's range."""


@dataclass(frozen=True)
class Agreement:
    """How close one approximation's spectrum is to that of ``G^l`` (module docstring)."""

    wasserstein: float
    top_relative_error: np.ndarray
    principal_angles: np.ndarray
    frobenius: float

    @property
    def mean_top_relative_error(self) -> float:
        return float(np.mean(self.top_relative_error))

    @property
    def mean_principal_angle(self) -> float:
        return float(np.mean(self.principal_angles))


@dataclass(frozen=True)
class LayerComparison:
    """The spectra of ``G^l``, K-FAC and the corrected form of one layer, the
    :class:`Agreement` of each approximation, and K-FAC's exact top eigenvalues."""

    name: str
    size: int
    k: int
    spectra: dict[str, Spectrum]
    agreement: dict[str, Agreement]
    kfac_exact: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)


def _spectrum_cdf(record: Spectrum, x: np.ndarray) -> np.ndarray:
    """The distribution function of the whole spectrum of ``record`` on the log axis at ``x``."""
    log = record.log_density
    cdf = np.concatenate([[0.0], np.cumsum(np.diff(log.grid) * (log.density[1:] + log.density[:-1]) / 2)])
    bulk = np.interp(x, log.grid, cdf / cdf[-1], left=0.0, right=1.0)
    outliers = np.log10(np.abs(record.outliers) + log.eps)
    return record.bulk_weight * bulk + record.outlier_weight * (outliers[None, :] <= x[:, None]).sum(1)


def wasserstein_log(a: Spectrum, b: Spectrum, num_points: int = 4096) -> float:
    """``int |F_a - F_b| dx`` on the log axis (whole spectra; module docstring)."""
    edges = [a.log_density.grid, b.log_density.grid, np.log10(np.abs(np.r_[a.outliers, b.outliers]) + a.log_density.eps)]
    lo, hi = min(float(e.min()) for e in edges) - 1e-9, max(float(e.max()) for e in edges) + 1e-9
    x = np.linspace(lo, hi, num_points)
    return float(np.trapezoid(np.abs(_spectrum_cdf(a, x) - _spectrum_cdf(b, x)), x))


def principal_angles(Q1: torch.Tensor, Q2: torch.Tensor) -> np.ndarray:
    """Principal angles (degrees, ascending) between the spans of the orthonormal ``Q1``, ``Q2``."""
    cos = torch.linalg.svdvals(Q1.to(torch.float64).T @ Q2.to(torch.float64)).clamp(max=1.0).cpu().numpy()
    return np.degrees(np.arccos(cos))


def relative_frobenius(A: SymmetricOperator, G: SymmetricOperator, GZ: torch.Tensor, Z: torch.Tensor) -> float:
    """``||A - G||_F / ||G||_F`` from Rademacher probes ``Z`` (P, m) and ``G Z`` (Hutchinson)."""
    diff = A.matmat(Z).to(torch.float64) - GZ.to(torch.float64)
    return float(diff.square().sum().sqrt() / GZ.to(torch.float64).square().sum().sqrt())


def compare_layer(
    G: SymmetricOperator, layer: LayerFactors, settings: DensitySettings, *, k: int, num_probes: int = 10, tol: float = 1e-4,
    block_size: int = 8, max_iterations: int = 100,
) -> LayerComparison:
    """:class:`LayerComparison` of one layer with factors ``layer`` and block ``G`` (on the
    layer's parameters ``layer.params``, e.g. ``GaussNewtonOperator(EmpiricalRisk(...,
    params=layer.params))``): ``k`` outliers (at most ``P_l - 2``), ``num_probes`` probes;
    ``tol``, ``block_size`` (columns per product, which the data passes of ``G`` share) and
    ``max_iterations`` (restarts) of the top eigenpairs (``top.converged`` says whether they met ``tol``)."""
    if G.size != layer.size:
        raise ValueError(f"G: expected an operator of size P_l = {layer.size} (layer {layer.name!r}), got {G.size}")
    ops: dict[str, SymmetricOperator] = {"G": G, "kfac": layer.operator("kfac"), "corrected": layer.operator("corrected")}
    k = min(check_int("k", k, 1), G.size - 2)
    steps = settings.clamped(G.size)
    spectra, seconds = {}, {}
    for name, op in ops.items():
        start = time.perf_counter()
        with warnings.catch_warnings():  # recorded as top.converged
            warnings.simplefilter("ignore", ConvergenceWarning)
            spectra[name] = spectrum(op, k, steps, name=name, tol=tol, block_size=min(block_size, k), max_iterations=max_iterations)
        seconds[name] = time.perf_counter() - start
    gen = torch.Generator().manual_seed(settings.seed)
    Z = (torch.randint(0, 2, (G.size, num_probes), generator=gen) * 2 - 1).to(dtype=G.dtype, device=G.device)
    GZ = G.matmat(Z)
    QG = spectra["G"].top.eigenvectors
    agreement = {
        name: Agreement(
            wasserstein=wasserstein_log(spectra[name], spectra["G"]),
            top_relative_error=np.abs(spectra[name].outliers - spectra["G"].outliers) / np.abs(spectra["G"].outliers),
            principal_angles=principal_angles(QG, spectra[name].top.eigenvectors.to(QG.device)),
            frobenius=relative_frobenius(ops[name], G, GZ, Z),
        )
        for name in APPROXIMATIONS
    }
    return LayerComparison(layer.name, G.size, k, spectra, agreement, layer.kfac_eigenpairs(k)[0], seconds)


UNRESOLVED = "\u2020"
"""Marks a null-space share that also holds what the Lanczos nodes do not resolve from zero
(``spectrum_shares(...).unresolved_below``: its ``zero_tol`` is twice their floor)."""


def _null_text(shares: dict[str, SpectrumShares]) -> str:
    """``null space: G^l 12.0%, K-FAC 30.0%, class-aware 14.0%``: each operator's share of
    eigenvalues at ``|lambda| <= zero_tol`` (:func:`theory.figures.spectrum_shares`), with
    :data:`UNRESOLVED` where the Lanczos nodes do not resolve the axis towards zero."""
    parts = [f"{LABELS[which]} {sh.null_share:.1%}" + ("" if sh.unresolved_below is None else UNRESOLVED)
             for which, sh in shares.items()]
    return "null space: " + ", ".join(parts)


def _layer_panel(ax: Any, name: str, layer: LayerComparison,
                 shares: dict[str, SpectrumShares]) -> tuple[float | None, float | None, float]:
    """Draw one layer's panel of :func:`kfac_figure` (``shares``: each operator's
    :func:`theory.figures.spectrum_shares`); ``(lowest, highest, peak)``: the range of
    ``|lambda|`` drawn (None when everything is null) and the highest density."""
    lows, highs, peak = [], [], 0.0
    for which, record in layer.spectra.items():
        zero_tol = shares[which].zero_tol
        style = STYLES[which]
        shown = log_spectrum_curve(
            ax, record.density.nodes, record.density.weights, sigma=record.log_density.sigma, num_runs=record.log_density.num_repeats,
            weight=record.bulk_weight, zero_tol=zero_tol, point_mass=record.point_mass, color=style["color"],
            label=f"{LABELS[which]} bulk", fill=which == "G", lw=style["lw"], ls=style["ls"],
        )
        outlier_markers(ax, record.outliers, color=style["color"], zero_tol=zero_tol, y=style["row"],
                        marker="|", annotate="none",
                        label=f"{LABELS[which]}: top {record.outliers.size} ($1/P$ each)")
        values = np.abs(record.outliers[np.abs(record.outliers) > zero_tol])
        lows += [v for v in (shown.lowest, values.min(initial=np.inf)) if v is not None and np.isfinite(v)]
        highs += [v for v in (shown.highest, values.max(initial=0.0)) if v is not None and v > 0]
        peak = max(peak, shown.peak)
    if not lows:
        ax.text(0.5, 0.5, "every spectrum lies in its null space", transform=ax.transAxes, ha="center", va="center",
                fontsize=FONT["note"])
    set_labels(ax, "$|\\lambda|$ (eigenvalue magnitude)", "density per decade of $|\\lambda|$",
               f"{name} (P = {layer.size:,}, k = {layer.k})\n" + textwrap.fill(_null_text(shares), 60))
    ax.tick_params(labelbottom=True, labelleft=True)
    return (min(lows), max(highs), peak) if lows else (None, None, peak)


def kfac_figure(layers: dict[str, LayerComparison], title: str = "") -> Any:
    """One log-spectrum panel per layer (Papyan 2020, Sec. 7, Figs. 11-12): the density per
    decade of ``|lambda|`` of each deflated bulk (``(P-k)/P`` times its quadrature measure;
    :func:`theory.figures.log_spectrum_curve`: the density's own kernel ``sigma``, widened
    to the ``num_repeats``-th nearest distinct node where the nodes are sparser, see
    :func:`theory.figures.merge_coincident`), ``G^l`` shaded grey, K-FAC and the class-aware form as curves
    over it; the top ``k`` eigenvalues of each as ticks at their values along the top, one
    row per operator; the null space ``|lambda| <= zero_tol`` (``spectrum_shares``) of each
    as a share in the panel's title, not drawn; one legend below the panels. The density
    axis is shared; the ``|lambda|`` axis too (the layers read on one scale) unless the
    layers' ranges together span more than :data:`SHARE_DECADES` decades beyond the widest
    one's (then each panel gets its own range)."""
    n = len(layers)
    cols = n if n <= 3 else min(3, math.ceil(math.sqrt(n)))
    rows = -(-n // cols)
    fig, axes = new_figure(rows, cols, figsize=(4.4 * cols, 3.6 * rows), squeeze=False, layout="constrained",
                           sharey=True)
    shares = {name: {which: spectrum_shares(r) for which, r in layer.spectra.items()} for name, layer in layers.items()}
    drawn = [_layer_panel(ax, name, layer, shares[name]) for ax, (name, layer) in zip(axes.flat, layers.items())]
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    spans = [(lo, hi) for lo, hi, _ in drawn if lo is not None]
    if spans:
        union = np.log10(max(hi for _, hi in spans) / min(lo for lo, _ in spans))
        share = union <= max(np.log10(hi / lo) for lo, hi in spans) + SHARE_DECADES
        for ax, (lo, hi, _) in zip(axes.flat, drawn):
            if share and ax is not axes[0, 0]:
                ax.sharex(axes[0, 0])
            elif not share and lo is not None:
                ax.set_xlim(lo / 3.0, hi * 3.0)
        if share:
            axes[0, 0].set_xlim(min(lo for lo, _ in spans) / 3.0, max(hi for _, hi in spans) * 3.0)
    axes[0, 0].set_ylim(*log_limits(max(peak for *_, peak in drawn), decades=5.0, headroom=HEADROOM))
    figure_legend(fig, axes, ncols=3)
    lines = [title or "$G^l$, K-FAC and the class-aware correction",
             f"{n} layer{'s' if n > 1 else ''} ({', '.join(layers)}); bulk after deflating the top k of each",
             "null space: $|\\lambda|\\leq$ max(eps, $10^{-5}$ max $|\\lambda|$)"]
    if any(sh.unresolved_below is not None for layer in shares.values() for sh in layer.values()):
        lines[-1] += f"; {UNRESOLVED}: null space or not resolved from zero by the Lanczos nodes"
    fig.suptitle("\n".join(textwrap.fill(line, 50 * cols) for line in lines), fontsize=FONT["suptitle"])
    return fig


def _fmt(x: float) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.3g}"


def _first_values(v: np.ndarray, n: int = 5) -> str:
    return ", ".join(f"{x:.3g}" for x in v[:n])


def kfac_report(factors: KFACFactors, layers: dict[str, LayerComparison], source: str = "", seconds: float = float("nan")) -> str:
    """The markdown summary written as ``report.md``."""
    lines = [
        "# K-FAC and the class-aware correction against G layer by layer",
        "",
        (f"{source}C = {factors.num_classes}, N = {factors.num_examples}; Fisher: {factors.fisher}; {seconds:.1f} s. "
        "Every number: `results.json`."),
        "",
        ("W1: Wasserstein-1 distance between the log spectra (whole spectra, axis log10(|lambda| + eps)); top err: mean "
        "relative error of the top-k eigenvalues; angle: mean principal angle between the top-k eigenspaces (degrees); "
        "Frob: ||A - G||_F / ||G||_F (Hutchinson). Smaller is closer; `closer` by W1."),
        "",
        "| layer | P | k | W1 K-FAC | W1 corr. | top err K-FAC | top err corr. | angle K-FAC | angle corr. | Frob K-FAC | Frob corr. | closer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, layer in layers.items():
        a, b = layer.agreement["kfac"], layer.agreement["corrected"]
        closer = "corrected" if b.wasserstein < a.wasserstein else "K-FAC"
        lines.append(
            f"| {name} | {layer.size} | {layer.k} | {_fmt(a.wasserstein)} | {_fmt(b.wasserstein)} | {_fmt(a.mean_top_relative_error)} | "
            f"{_fmt(b.mean_top_relative_error)} | {_fmt(a.mean_principal_angle)} | {_fmt(b.mean_principal_angle)} | "
            f"{_fmt(a.frobenius)} | {_fmt(b.frobenius)} | {closer} |"
        )
    lines += ["", "Top eigenvalues (first 5) of G, K-FAC (Lanczos / exact from the factors) and the corrected form:", ""]
    show = _first_values
    for name, layer in layers.items():
        lines.append(
            f"* {name}: G [{show(layer.spectra['G'].outliers)}]; K-FAC [{show(layer.spectra['kfac'].outliers)}] / "
            f"[{show(layer.kfac_exact)}]; corrected [{show(layer.spectra['corrected'].outliers)}]; top-k converged: "
            + ", ".join(f"{w} {'yes' if r.top.converged else 'no'}" for w, r in layer.spectra.items())
        )
    lines += ["", "![spectra](spectra.png)", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of `python -m deepnet train` (file or its run folder; required)")
    parser.add_argument("--out", default=None, help="run folder (default: runs/kfac-<checkpoint folder name>)")
    parser.add_argument("--layers", nargs="+", default=None, help="Linear / Conv2d module names (default: all of them)")
    parser.add_argument("--fisher", choices=list(FISHER_TYPES), default="true", help="weighting of the errors in the factors: true Fisher (every class, weighted by p), mc (labels drawn from p) or empirical (the true label) (default: %(default)s)")
    parser.add_argument("--mc-samples", type=int, default=1, help="labels drawn per example for --fisher mc (default: %(default)s)")
    parser.add_argument("--split", choices=["train", "test"], default="train", help="data the factors and G average over (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1000,
                        help="examples per batch; memory grows with it, the result does not change (default: %(default)s)")
    parser.add_argument("--float64", action="store_true", help="passes in float64 (a converted copy of the model)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--outliers", type=int, default=None, help="top eigenpairs per operator (default C^2)")
    parser.add_argument("--num-steps", type=int, default=96, help="Lanczos steps per density run, at most the layer's parameter count (default: %(default)s)")
    parser.add_argument("--num-repeats", type=int, default=3, help="Lanczos runs per density (default: %(default)s)")
    parser.add_argument("--eps", type=float, default=DensitySettings.eps,
                        help="offset of the densities' log axis log10(|lambda| + eps), > 0; eigenvalues below it "
                             "count as the null space (default: %(default)s)")
    parser.add_argument("--probes", type=int, default=10, help="Rademacher probes of the Hutchinson estimate of the relative Frobenius error (default: %(default)s)")
    parser.add_argument("--tol", type=float, default=1e-4, help="relative residual tolerance of the top eigenpairs (default: %(default)s)")
    parser.add_argument("--block-size", type=int, default=8, help="columns per product of the top-eigenpair solver (default: %(default)s)")
    parser.add_argument("--max-iterations", type=int, default=100, help="restarts of the top-eigenpair solver at most (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Lanczos starts, probes and Monte Carlo labels (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    batch_size = check_int("--batch-size", args.batch_size, 1)
    mc_samples = check_int("--mc-samples", args.mc_samples, 1)
    probes = check_int("--probes", args.probes, 1)
    seed = check_int("--seed", args.seed, 0)
    tol = check_real("--tol", args.tol, 0.0, low_open=True)
    block_size = check_int("--block-size", args.block_size, 1)
    max_iterations = check_int("--max-iterations", args.max_iterations, 1)
    settings = DensitySettings(num_steps=check_int("--num-steps", args.num_steps, 2),
                               num_repeats=check_int("--num-repeats", args.num_repeats, 1),
                               eps=check_real("--eps", args.eps, 0.0, low_open=True), seed=seed)
    outliers = None if args.outliers is None else check_int("--outliers", args.outliers, 1)
    checkpoint = Path(args.checkpoint)
    out = default_out("kfac", checkpoint, args.out)
    model, data, num_classes, config = load_analysis(checkpoint, args.split, args.device, sort_by_class=True)
    risk = EmpiricalRisk(model, data, batch_size=batch_size, num_classes=num_classes,
                         dtype=torch.float64 if args.float64 else None)
    k = risk.num_classes**2 if outliers is None else outliers
    start = time.perf_counter()
    print(f"kfac: factors of {risk.num_data} examples ({risk.num_classes} classes, {args.fisher} Fisher)", flush=True)
    factors = kfac_factors(risk, args.layers, fisher=args.fisher, mc_samples=mc_samples, seed=seed)
    layers = {}
    for name, layer in factors.layers.items():
        print(f"kfac: spectra of {name} (P = {layer.size})", flush=True)
        G = GaussNewtonOperator(EmpiricalRisk(model, data, batch_size=batch_size,
                                              params=list(layer.params), num_classes=num_classes, dtype=risk.dtype))
        layers[name] = compare_layer(G, layer, settings, k=k, num_probes=probes, tol=tol, block_size=block_size,
                                     max_iterations=max_iterations)
    seconds = time.perf_counter() - start
    title = f"{config.model} on {config.dataset} ({args.split})"
    folder = RunFolder(out)  # created only now: a run that fails above leaves nothing behind
    folder.write_json("results.json", {
        "checkpoint": str(checkpoint), "split": args.split, "config": config, "seconds": seconds,
        "settings": {"layers": args.layers, "fisher": args.fisher, "mc_samples": mc_samples, "batch_size": batch_size,
                     "k": k, "density": settings, "probes": probes, "tol": tol,
                     "block_size": block_size, "max_iterations": max_iterations, "dtype": str(risk.dtype),
                     "device": str(risk.device), "seed": seed},
        "factors": factors,
        "layers": {name: {"size": c.size, "k": c.k, "seconds": c.seconds, "kfac_exact": c.kfac_exact,
                          "spectra": c.spectra,
                          "agreement": {a: {**vars(g), "mean_top_relative_error": g.mean_top_relative_error,
                                            "mean_principal_angle": g.mean_principal_angle} for a, g in c.agreement.items()}}
                   for name, c in layers.items()},
    })
    folder.write_text("report.md", kfac_report(factors, layers, f"Checkpoint `{checkpoint}` ({title}). ", seconds))
    folder.save_figure("spectra.png", kfac_figure(layers, f"$G^l$, K-FAC and the class-aware correction: {title}"))
    print(f"kfac: wrote {folder.path}")
    return 0
