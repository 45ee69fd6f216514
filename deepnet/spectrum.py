"""Hessian, G and E spectra of a trained classifier over its training data
(Papyan 2020, Figs. 3-4: Hessian = G + E, outliers from G, the bulk largely from E).

For each operator ``A`` (:mod:`deepnet.operators`):

* one :class:`theory.spectrum.Spectrum` record (:func:`theory.spectrum.spectrum`):
  the top ``C`` eigenpairs (``C`` = number of classes by default, with residuals
  and ``converged``) as point masses ``1/P``, and the density of the rest (``A``
  restricted to the complement of their eigenvectors) on a linear axis and on
  the log axis ``log10(|lambda| + eps)``, from one set of Lanczos runs.

:func:`compute_spectra` is the library entry point; ``python -m deepnet spectrum
--checkpoint RUN [--operator hessian G E] [--out DIR]`` loads a checkpoint of
``python -m deepnet train``, rebuilds its training subset and writes
``results.json``, ``report.md`` and ``spectra.png`` to a run folder. Under
``torchrun`` every rank holds a shard of the data and the products are all-reduced
(:class:`deepnet.distributed.DistributedOperator`); only rank 0 writes the run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from theory.checks import check_int, check_real
from theory.density import DensitySettings, density_settings
from theory.figures import (
    FONT,
    figure_legend,
    log_limits,
    new_figure,
    spectrum_panel,
    spectrum_shares,
)
from theory.operators import CountedOperator, SymmetricOperator
from theory.runs import RunFolder, claim_run
from theory.spectrum import Spectrum, spectrum

from .analysis import default_out, load_analysis
from .distributed import DistributedContext, DistributedOperator
from .operators import METHODS, OPERATORS, EmpiricalRisk, curvature_operator

__all__ = ["Spectra", "compute_spectra", "expected_products", "announce_products", "spectra_figure", "spectra_report", "add_arguments", "run"]

LABELS = {"hessian": "Hessian", "G": "G", "E": "E"}


@dataclass(frozen=True)
class Spectra:
    """The spectra of several operators of one model and data set (one
    :class:`theory.spectrum.Spectrum` each, ``name`` the operator), the wall time
    of each in ``seconds``, and the settings used."""

    spectra: tuple[Spectrum, ...]
    num_parameters: int
    num_data: int
    num_classes: int
    params: tuple[str, ...]
    dtype: str
    device: str
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, operator: str) -> Spectrum:
        for record in self.spectra:
            if record.name == operator:
                return record
        raise KeyError(operator)


def _check_settings(
    operators: Sequence[str], num_outliers: int | None, tol: float, max_iterations: int, which: str, method: str,
) -> tuple[str, ...]:
    """Validate the settings other than the density's before any data is touched."""
    ops = tuple(operators)
    if not ops or any(op not in OPERATORS for op in ops) or len(set(ops)) != len(ops):
        raise ValueError(f"operators: expected distinct names from {tuple(OPERATORS)}, got {ops!r}")
    check_int("max_iterations", max_iterations, 1)
    if num_outliers is not None:
        check_int("num_outliers", num_outliers, 1, what="(default: the number of classes)")
    check_real("tol", tol, 0.0, low_open=True)
    if which not in ("largest", "magnitude"):
        raise ValueError(f"which: expected 'largest' or 'magnitude', got {which!r}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    return ops


def expected_products(k: int, settings: DensitySettings, eigen_restarts: int = 4) -> int:
    """Rough product count of one :func:`theory.spectrum.spectrum`: the density's
    ``num_steps * num_repeats`` plus the eigenpairs' ``b + restarts * (b - k)`` with the
    thick-restart basis ``b = max(2k, 20) + 2`` (a few restarts; more when eigenvalues cluster)."""
    basis = max(2 * k, 20) + 2
    return settings.num_steps * settings.num_repeats + basis + eigen_restarts * max(basis - k, 1)


def announce_products(op: SymmetricOperator, count: int, label: str, seed: int = 0, width: int = 1, stream: Any = None) -> float:
    """Time ``op`` on a block of ``width`` random columns (the block the Lanczos runs
    multiply, through :class:`theory.operators.CountedOperator`) after one warm-up
    product (the first call builds what later ones reuse), print ``label: about N
    products x T s = ~M min`` before a long computation; returns ``T``, seconds per column."""
    counted = CountedOperator(op)
    V = torch.randn(op.size, width + 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    V = V.to(dtype=op.dtype, device=op.device)
    counted.matmat(V[:, :1])
    warm = counted.seconds
    counted.matmat(V[:, 1:])
    per = (counted.seconds - warm) / width
    print(f"{label}: about {count} products x {per:.3g} s = ~{count * per / 60:.1f} min", file=stream or sys.stderr, flush=True)
    return per


def compute_spectra(
    model: nn.Module,
    data: Any,
    *,
    operators: Iterable[str] = ("hessian", "G", "E"),
    params: Sequence[str] | str | None = None,
    batch_size: int | None = None,
    num_classes: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    num_outliers: int | None = None,
    which: str = "largest",
    density: DensitySettings | None = None,
    tol: float = 1e-4,
    max_iterations: int = 300,
    method: str = "double-backward",
    max_columns: int = 8,
    show_progress: bool = False,
    ctx: DistributedContext | None = None,
    **density_changes: Any,
) -> Spectra:
    """One :func:`theory.spectrum.spectrum` record per operator.

    ``model``, ``data``, ``params``, ``batch_size``, ``num_classes``, ``dtype`` and
    ``device`` define the :class:`deepnet.operators.EmpiricalRisk`; ``which``,
    ``tol`` and ``max_iterations`` go to the top eigenpairs; ``density`` (default
    :class:`theory.density.DensitySettings`) with ``density_changes`` replacing its
    fields (``num_steps=...``, ``num_repeats=...``, ``kappa=...``, ``eps=...``,
    ``seed=...``) sets the densities, and its seed the eigenpairs' too.
    ``ctx`` (data-parallel, under torchrun): ``data`` is this rank's shard, every
    product is all-reduced over the ranks (:class:`deepnet.distributed.DistributedOperator`)
    and the result, the same on every rank, is that of the whole data set.
    """
    ops = _check_settings(list(operators), num_outliers, tol, max_iterations, which, method)
    settings = density_settings(density, **density_changes)
    risk = EmpiricalRisk(model, data, batch_size=batch_size, params=params, num_classes=num_classes, dtype=dtype, device=device)
    k = risk.num_classes if num_outliers is None else num_outliers
    if k + settings.num_steps > risk.size:
        raise ValueError(
            f"num_outliers + num_steps: {k} + {settings.num_steps} exceeds the {risk.size} selected parameters; "
            "lower them or select more parameters"
        )
    results, seconds = [], {}
    for kind in ops:
        start = time.perf_counter()
        op = curvature_operator(kind, risk, max_columns=max_columns, method=method)
        if ctx is not None and ctx.active:
            op = DistributedOperator(op, ctx)
        if show_progress:  # before the long part: what it will cost, from one measured product
            announce_products(op, expected_products(k, settings), f"spectrum {LABELS[kind]}", settings.seed,
                              width=settings.num_repeats)
        results.append(spectrum(op, k, settings, name=kind, which=which, tol=tol, max_iterations=max_iterations,
                                show_progress=show_progress))
        seconds[kind] = time.perf_counter() - start
    record = dict(
        operators=list(ops), num_outliers=k, which=which, tol=tol, max_iterations=max_iterations, method=method,
        batch_size=risk.batch_size, max_columns=max_columns, **dataclasses.asdict(settings),
    )
    num_data = op.num_data if isinstance(op, DistributedOperator) else risk.num_data
    return Spectra(tuple(results), risk.size, num_data, risk.num_classes, risk.names,
                   str(risk.dtype), str(risk.device), seconds, record)


def spectra_figure(spectra: Spectra, source: str = "") -> Any:
    """One log-spectrum panel per operator, shared axes (Papyan 2020, Figs. 3-4 style):
    the deflated bulk (times ``(P-k)/P``) as a density per decade of ``|lambda|``, the
    top ``k`` eigenvalues as markers at their values, the null space and the share
    below zero as numbers in each panel's title (:func:`theory.figures.spectrum_panel`).
    The title names the operators computed and ``source`` (model, data)."""
    n = len(spectra.spectra)
    fig, axes = new_figure(1, n, sharex=True, sharey=True, squeeze=False, layout="constrained",
                           figsize=(max(4.2 * n, 6.0), 3.6))
    shown = [spectrum_panel(ax, s, label=LABELS[s.name]) for ax, s in zip(axes.flat, spectra.spectra)]
    lows = [v.lowest for v in shown if v.lowest is not None]
    highs = [v.highest for v in shown if v.highest is not None]
    eps = spectra.settings.get("eps", 1e-6)
    lo, hi = (min(lows), max(highs)) if lows else (eps, 1.0)
    axes[0, 0].set_xlim(lo / 3.0, hi * 3.0)
    axes[0, 0].set_ylim(*log_limits(max(v.peak for v in shown), decades=5.0))
    for ax in axes.flat:
        ax.set_xlabel("$|\\lambda|$ (eigenvalue magnitude)")
        ax.set_ylabel("density per decade of $|\\lambda|$")
    figure_legend(fig, axes)
    k = spectra.spectra[0].outliers.size
    fig.suptitle(f"Spectra of {_join([LABELS[s.name] for s in spectra.spectra])}" + (f": {source}" if source else "")
                 + f"\nP = {spectra.num_parameters:,} parameters, N = {spectra.num_data} examples, "
                 f"C = {spectra.num_classes} classes; bulk after deflating the top {k}", fontsize=FONT["suptitle"])
    return fig


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def spectra_report(spectra: Spectra, source: str = "") -> str:
    """The markdown summary written as ``report.md``: first what the spectra look like
    (largest eigenvalues, null space, share below zero, the bulk), then how they were
    computed, the table (its columns explained once) and the warnings. The shares are
    those of the figure (:func:`theory.figures.spectrum_shares`)."""
    s = spectra.settings
    names = [LABELS[sp.name] for sp in spectra.spectra]
    shares = {sp.name: spectrum_shares(sp) for sp in spectra.spectra}

    def bulk(name: str) -> str:
        r = shares[name].bulk_range
        return "all in the null space" if r is None else f"[{r[0]:.3g}, {r[1]:.3g}]"

    largest = ", ".join(f"{LABELS[sp.name]} {sp.top.eigenvalues[0]:.4g}" for sp in spectra.spectra)
    kinds = {sp.name for sp in spectra.spectra}
    if {"hessian", "G"} <= kinds:
        largest += f" (Hessian / G = {spectra['hessian'].top.eigenvalues[0] / spectra['G'].top.eigenvalues[0]:.3f})"
    null = ", ".join(f"{LABELS[n]} {v.null_share:.1%}" for n, v in shares.items())
    negative = ", ".join(f"{LABELS[n]} {v.negative_share:.1%}" for n, v in shares.items() if v.negative_share > 0) or "none"
    lines = [
        f"# {' / '.join(names)} spectra",
        "",
        f"* Largest eigenvalues: {largest}.",
        f"* Null space (eigenvalues Lanczos cannot tell from zero): {null} of the P = {spectra.num_parameters:,} "
        f"parameters; below zero: {negative}.",
        "* Bulk (1st to 99th percentile outside the null space): " + "; ".join(f"{LABELS[n]} {bulk(n)}" for n in shares) + ".",
        "",
        (f"{source}P = {spectra.num_parameters:,} parameters ({len(spectra.params)} tensors), N = {spectra.num_data} "
         f"training examples, C = {spectra.num_classes} classes; {spectra.dtype} products on {spectra.device}, "
         f"batches of {s['batch_size']}."),
        "",
        (f"Top {s['num_outliers']} eigenvalues ({s['which']}) by subspace iteration (tol {s['tol']:g}); the rest by "
         f"{s['num_repeats']} Lanczos runs of {s['num_steps']} steps on the deflated operator (kappa {s['kappa']:g}, "
         f"seed {s['seed']}). Figure: `spectra.png`; every number: `results.json`."),
        "",
        "| operator | top eigenvalues | max residual | converged | bulk | null space | below 0 | products | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sp in spectra.spectra:
        top = ", ".join(f"{v:.4g}" for v in sp.top.eigenvalues)
        sh = shares[sp.name]
        lines.append(
            f"| {LABELS[sp.name]} | {top} | {float(np.max(sp.top.residuals)):.2e} | {'yes' if sp.top.converged else 'no'} "
            f"| {bulk(sp.name)} | {sh.null_share:.1%} (\\|λ\\| ≤ {sh.zero_tol:.1g}) | {sh.negative_share:.1%} "
            f"| {sp.num_products} | {spectra.seconds.get(sp.name, float('nan')):.1f} |"
        )
    lines += [
        "",
        "Columns: *max residual* is the largest `|A v - lambda v|` of the top eigenpairs (unit `v`); *bulk* the 1st "
        "and 99th percentiles of the deflated bulk's quadrature measure outside the null space (the bulk itself, not "
        "the estimator's bounds); *null space* the share of all P eigenvalues at `|lambda|` up to the tolerance shown "
        "(zero, or below what the Lanczos nodes resolve); *below 0* the share below minus that tolerance; *products* "
        "the operator-vector products used (eigenpairs, densities, symmetry probes).",
    ]
    if any(not sp.top.converged for sp in spectra.spectra):
        lines += ["", "Some top eigenpairs did not reach the tolerance: raise `--max-iterations` (their residuals are listed)."]
    for sp in spectra.spectra:
        if sp.point_mass is not None:
            lines += ["", (f"{LABELS[sp.name]}: the deflated bulk has zero width, a point mass at {sp.point_mass:.4g} "
                           f"(weight {sp.bulk_weight:.6g}); the figure reports it as a share, not as a density.")]
        for note in sp.warnings:
            lines += ["", f"{LABELS[sp.name]}: {note}."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m deepnet spectrum``, each with its default and meaning."""
    parser.description = (
        "Top eigenvalues and log-spectra of the Hessian, G and E of a trained checkpoint over its data "
        "(Papyan 2020, Figs. 3-4); writes results.json, report.md and spectra.png to a run folder."
    )
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint of `python -m deepnet train`: the .pt file or its run folder (required)")
    parser.add_argument("--operator", nargs="+", default=["hessian", "G", "E"], choices=list(OPERATORS),
                        help="operators to analyse, any of hessian (H), G (Gauss-Newton) and E = H - G "
                             "(default: all three)")
    parser.add_argument("--out", default=None, help="run folder to write (default: runs/spectrum-<checkpoint folder name>)")
    parser.add_argument("--params", nargs="+", default=None,
                        help="parameter or module names to restrict the operators to, e.g. layers.1 for one layer "
                             "(default: all parameters)")
    parser.add_argument("--split", choices=["train", "test"], default="train",
                        help="data split the operators average over (default: train)")
    parser.add_argument("--batch-size", type=int, default=1000,
                        help="examples per batch of a product; memory grows with it, the result does not change "
                             "(default: 1000)")
    parser.add_argument("--float64", action="store_true",
                        help="products in float64 on a converted copy of the model (default: the model's dtype)")
    parser.add_argument("--device", default=None, help="device of the products, e.g. cpu or cuda:0 (default: cuda when available, else cpu)")
    parser.add_argument("--num-outliers", type=int, default=None,
                        help="top eigenpairs computed and deflated before the bulk density (default: the number of classes C)")
    parser.add_argument("--which", choices=["largest", "magnitude"], default="largest",
                        help="top eigenpairs by largest value or by largest magnitude (negative ones too) (default: largest)")
    parser.add_argument("--num-steps", type=int, default=128,
                        help="Lanczos steps per density run; the log axis is resolved down to about width/steps^2 "
                             "(default: 128)")
    parser.add_argument("--num-repeats", type=int, default=10,
                        help="Lanczos runs (random starts) per density; more runs smooth the density (default: 10)")
    parser.add_argument("--kappa", type=float, default=3.0,
                        help="kernel sharpness kappa > 1 of the density (larger: narrower kernel) (default: 3)")
    parser.add_argument("--eps", type=float, default=1e-6, help="eps of the log axis log10(|lambda| + eps) (default: 1e-6)")
    parser.add_argument("--tol", type=float, default=1e-4,
                        help="relative residual tolerance |A v - lambda v| / |lambda| of the top eigenpairs (default: 1e-4)")
    parser.add_argument("--max-iterations", type=int, default=300, help="subspace iterations at most (default: 300)")
    parser.add_argument("--method", choices=list(METHODS), default="double-backward",
                        help="how Hessian and E products are computed (default: double-backward)")
    parser.add_argument("--max-columns", type=int, default=8,
                        help="product columns computed together in one vectorised chunk (default: 8)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random starts of the eigenpairs and the Lanczos runs (default: 0)")


def run(args: argparse.Namespace) -> int:
    _check_settings(args.operator, args.num_outliers, args.tol, args.max_iterations, args.which, args.method)
    density = DensitySettings(num_steps=args.num_steps, num_repeats=args.num_repeats, kappa=args.kappa, eps=args.eps,
                              seed=args.seed)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    checkpoint = Path(args.checkpoint)
    out = default_out("spectrum", checkpoint, args.out)
    ctx = getattr(args, "distributed", None)  # set by python -m deepnet under torchrun
    model, data, num_classes, config = load_analysis(checkpoint, args.split, args.device, ctx=ctx)
    settings = {k: v for k, v in vars(args).items() if k not in ("device", "out", "distributed")}
    settings["checkpoint"] = str(checkpoint.resolve())
    if ctx is not None and not ctx.is_writer:  # the same products as rank 0, nothing written
        _compute_and_write(args, model, data, num_classes, config, density, checkpoint, None, ctx)
        return 0
    with claim_run(out, "deepnet spectrum", settings) as folder:  # before any product: a bad --out costs nothing
        _compute_and_write(args, model, data, num_classes, config, density, checkpoint, folder, ctx)
    print(f"spectrum: wrote {out}")
    return 0


def _compute_and_write(args: argparse.Namespace, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor],
                       num_classes: int, config: Any, density: DensitySettings, checkpoint: Path, folder: RunFolder | None,
                       ctx: DistributedContext | None) -> None:
    spectra = compute_spectra(
        model, data, operators=args.operator, params=args.params, batch_size=args.batch_size,
        num_classes=num_classes, dtype=torch.float64 if args.float64 else None, num_outliers=args.num_outliers,
        which=args.which, density=density, tol=args.tol, max_iterations=args.max_iterations, method=args.method,
        max_columns=args.max_columns, show_progress=True, ctx=ctx,
    )
    if folder is None:
        return
    model_name = getattr(config, "model", type(model).__name__)
    dataset = getattr(config, "dataset", "")
    source = f"Checkpoint `{checkpoint}` ({model_name} on {dataset}, {args.split} split). "
    folder.write_json("results.json", {"checkpoint": str(checkpoint), "split": args.split, "config": config, "spectra": spectra})
    folder.try_figure("spectra.png", lambda: spectra_figure(spectra, f"{model_name} on {dataset} ({args.split})"))
    folder.write_text("report.md", spectra_report(spectra, source))
