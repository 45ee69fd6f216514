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
``results.json``, ``report.md`` and ``spectra.png`` to a run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from theory.figures import new_figure
from theory.runs import RunFolder, claim_run
from theory.spectrum import Spectrum, spectrum

from .operators import METHODS, OPERATORS, EmpiricalRisk, curvature_operator

__all__ = ["Spectra", "compute_spectra", "spectra_figure", "spectra_report", "add_arguments", "run"]

LABELS = {"hessian": "Hessian", "G": "G", "E": "E"}
STYLES = {  # the Hessian wide and pale underneath, so that G and E stay visible where they coincide with it
    "hessian": dict(color="black", lw=2.4, alpha=0.45),
    "G": dict(color="tab:blue", lw=1.2),
    "E": dict(color="tab:red", lw=1.2, ls="--"),
}


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
    **density_changes: Any,
) -> Spectra:
    """One :func:`theory.spectrum.spectrum` record per operator.

    ``model``, ``data``, ``params``, ``batch_size``, ``num_classes``, ``dtype`` and
    ``device`` define the :class:`deepnet.operators.EmpiricalRisk`; ``which``,
    ``tol`` and ``max_iterations`` go to the top eigenpairs; ``density`` (default
    :class:`theory.density.DensitySettings`) with ``density_changes`` replacing its
    fields (``num_steps=...``, ``num_repeats=...``, ``kappa=...``, ``eps=...``,
    ``seed=...``) sets the densities, and its seed the eigenpairs' too.
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
        results.append(spectrum(op, k, settings, name=kind, which=which, tol=tol, max_iterations=max_iterations,
                                show_progress=show_progress))
        seconds[kind] = time.perf_counter() - start
    record = dict(
        operators=list(ops), num_outliers=k, which=which, tol=tol, max_iterations=max_iterations, method=method,
        batch_size=risk.batch_size, max_columns=max_columns, **dataclasses.asdict(settings),
    )
    return Spectra(tuple(results), risk.size, risk.num_data, risk.num_classes, risk.names,
                   str(risk.dtype), str(risk.device), seconds, record)


def spectra_figure(spectra: Spectra, title: str = "") -> Any:
    """Two panels: the deflated bulk densities (times their weight ``(P-k)/P``) on a
    linear axis (log-scale density) and on ``log10(|lambda| + eps)``, outliers as
    markers along the top; one colour per operator."""
    fig, axes = new_figure(1, 2, figsize=(12, 4.2))
    for s in spectra.spectra:
        style, label = STYLES[s.name], LABELS[s.name]
        for ax, bulk, log in ((axes[0], s.density, False), (axes[1], s.log_density, True)):
            y = s.bulk_weight * bulk.density
            ax.plot(bulk.grid, np.maximum(y, 1e-300), label=f"{label} bulk", **style)
            x = np.log10(np.abs(s.outliers) + bulk.eps) if log else s.outliers
            ax.plot(x, np.full(x.shape, 1.0), ls="none", marker="v", color=style["color"], ms=6, scaley=False,
                    transform=ax.get_xaxis_transform(), clip_on=False, label=f"{label} top-{len(x)}")
    axes[0].set_yscale("log")
    peak = max(float((s.bulk_weight * s.density.density).max()) for s in spectra.spectra)
    axes[0].set_ylim(1e-6 * peak, 3 * peak)
    axes[0].set_xlabel("eigenvalue $\\lambda$")
    axes[0].set_ylabel("density (bulk, deflated)")
    eps = spectra.settings.get("eps", 1e-6)
    axes[1].set_xlabel(f"$\\log_{{10}}(|\\lambda| + {eps:g})$")
    axes[1].set_ylabel("density of the log")
    axes[0].legend(fontsize=8, loc="upper right")
    fig.suptitle(title or f"Hessian = G + E: P = {spectra.num_parameters:,}, N = {spectra.num_data}, C = {spectra.num_classes} "
                 f"(outliers {chr(9660)} on top)")
    fig.tight_layout()
    return fig


def _negative_mass(record: Spectrum) -> float:
    """Share of the whole spectrum below zero (bulk by quadrature nodes, plus outliers)."""
    bulk = record.density
    below = float(bulk.weights[bulk.nodes < 0].sum()) * record.bulk_weight
    return below + record.outlier_weight * int((record.outliers < 0).sum())


def spectra_report(spectra: Spectra, source: str = "") -> str:
    """The markdown summary written as ``report.md``."""
    s = spectra.settings
    lines = [
        "# Hessian / G / E spectra",
        "",
        f"{source}P = {spectra.num_parameters:,} parameters ({len(spectra.params)} tensors), N = {spectra.num_data} "
        f"training examples, C = {spectra.num_classes} classes; {spectra.dtype} products on {spectra.device}, "
        f"batches of {s['batch_size']}.",
        "",
        f"Top {s['num_outliers']} eigenvalues ({s['which']}) by subspace iteration (tol {s['tol']:g}); the rest by "
        f"{s['num_repeats']} Lanczos runs of {s['num_steps']} steps on the deflated operator (kappa {s['kappa']:g}, "
        f"seed {s['seed']}). Figure: `spectra.png`; every number: `results.json`.",
        "",
        "| operator | top eigenvalues | max residual | converged | bulk range | share below 0 | products | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for sp in spectra.spectra:
        top = ", ".join(f"{v:.4g}" for v in sp.top.eigenvalues)
        b = sp.density.bounds
        bulk = f"point mass at {sp.point_mass:.4g}" if sp.point_mass is not None else f"[{b.lower:.3g}, {b.upper:.3g}]"
        lines.append(
            f"| {LABELS[sp.name]} | {top} | {float(np.max(sp.top.residuals)):.2e} | {'yes' if sp.top.converged else 'no'} "
            f"| {bulk} | {_negative_mass(sp):.3f} | {sp.num_products} | {spectra.seconds.get(sp.name, float('nan')):.1f} |"
        )
    if {"hessian", "G"} <= {sp.name for sp in spectra.spectra}:
        h, g = spectra["hessian"].top.eigenvalues, spectra["G"].top.eigenvalues
        lines += ["", f"Largest eigenvalue: Hessian {h[0]:.4g}, G {g[0]:.4g} (ratio {h[0] / g[0]:.3f})."]
    if any(not sp.top.converged for sp in spectra.spectra):
        lines += ["", "Some top eigenpairs did not reach the tolerance: raise `--max-iterations` (their residuals are listed)."]
    for sp in spectra.spectra:
        if sp.point_mass is not None:
            lines += ["", f"{LABELS[sp.name]}: the deflated bulk has zero width, a point mass at {sp.point_mass:.4g} "
                          f"(weight {sp.bulk_weight:.6g}); its densities show it as one kernel."]
        for note in sp.warnings:
            lines += ["", f"{LABELS[sp.name]}: {note}."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of `python -m deepnet train` (file or its run folder)")
    parser.add_argument("--operator", nargs="+", default=["hessian", "G", "E"], choices=list(OPERATORS),
                        help="operators to analyse (default: all three)")
    parser.add_argument("--out", default=None, help="run folder (default: runs/spectrum-<checkpoint folder name>)")
    parser.add_argument("--params", nargs="+", default=None,
                        help="parameter or module names to restrict to (one layer: e.g. layers.1); default all")
    parser.add_argument("--split", choices=["train", "test"], default="train", help="data the operators average over (default train)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--float64", action="store_true", help="products in float64 (a converted copy of the model)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--num-outliers", type=int, default=None, help="top eigenpairs to deflate (default: the number of classes)")
    parser.add_argument("--which", choices=["largest", "magnitude"], default="largest")
    parser.add_argument("--num-steps", type=int, default=128, help="Lanczos steps per density run")
    parser.add_argument("--num-repeats", type=int, default=10, help="Lanczos runs per density")
    parser.add_argument("--kappa", type=float, default=3.0, help="kernel sharpness (> 1)")
    parser.add_argument("--eps", type=float, default=1e-6, help="eps of the log axis log10(|lambda| + eps)")
    parser.add_argument("--tol", type=float, default=1e-4, help="relative residual tolerance of the top eigenpairs")
    parser.add_argument("--max-iterations", type=int, default=300, help="subspace iterations at most")
    parser.add_argument("--method", choices=list(METHODS), default="double-backward", help="Hessian / E product")
    parser.add_argument("--max-columns", type=int, default=8, help="columns per vectorised chunk")
    parser.add_argument("--seed", type=int, default=0)


def _load(checkpoint: str, split: str, device: str | None) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], int, Any]:
    """The checkpoint's model (eval mode) and the data split it is analysed on."""
    from .data import dataset_from_config
    from .train import load_checkpoint

    model, config, _ = load_checkpoint(checkpoint, device=device)
    bundle = dataset_from_config(config, device=next(model.parameters()).device)
    part = bundle.train if split == "train" else bundle.test
    return model, (part.images, part.labels), bundle.num_classes, config


def run(args: argparse.Namespace) -> int:
    _check_settings(args.operator, args.num_outliers, args.tol, args.max_iterations, args.which, args.method)
    density = DensitySettings(num_steps=args.num_steps, num_repeats=args.num_repeats, kappa=args.kappa, eps=args.eps,
                              seed=args.seed)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    checkpoint = Path(args.checkpoint)
    out = Path(args.out) if args.out else Path("runs") / f"spectrum-{(checkpoint if checkpoint.is_dir() else checkpoint.parent).resolve().name}"
    model, data, num_classes, config = _load(str(checkpoint), args.split, args.device)
    settings = {k: v for k, v in vars(args).items() if k not in ("device", "out")}
    settings["checkpoint"] = str(checkpoint.resolve())
    with claim_run(out, "deepnet spectrum", settings) as folder:  # before any product: a bad --out costs nothing
        _compute_and_write(args, model, data, num_classes, config, density, checkpoint, folder)
    print(f"spectrum: wrote {out}")
    return 0


def _compute_and_write(args: argparse.Namespace, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor],
                       num_classes: int, config: Any, density: DensitySettings, checkpoint: Path, folder: RunFolder) -> None:
    spectra = compute_spectra(
        model, data, operators=args.operator, params=args.params, batch_size=args.batch_size,
        num_classes=num_classes, dtype=torch.float64 if args.float64 else None, num_outliers=args.num_outliers,
        which=args.which, density=density, tol=args.tol, max_iterations=args.max_iterations, method=args.method,
        max_columns=args.max_columns, show_progress=True,
    )
    model_name = getattr(config, "model", type(model).__name__)
    dataset = getattr(config, "dataset", "")
    source = f"Checkpoint `{checkpoint}` ({model_name} on {dataset}, {args.split} split). "
    folder.write_json("results.json", {"checkpoint": str(checkpoint), "split": args.split, "config": config, "spectra": spectra})
    folder.try_figure("spectra.png", lambda: spectra_figure(spectra, f"{model_name} on {dataset} ({args.split}): Hessian = G + E"))
    folder.write_text("report.md", spectra_report(spectra, source))
