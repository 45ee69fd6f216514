"""``python -m deepnet structure --checkpoint RUN --out DIR``: the class / cross-class
structure of a trained checkpoint's G and Hessian (:mod:`deepnet.structure_report`).

Steps: load the checkpoint and its training subset, check every argument and the
layer names (before any pass over the data), one gradient-sums pass (``C`` backward
passes per example for the cross-class means, ``C`` more for ``tr G``), then the
attribution of ``G`` (whole network, and per layer with ``--layers``) and the
Hessian comparison. Writes, each file atomically and only once everything is
computed: ``results.json`` first, then ``report.md``, ``attribution.png`` (and
``attribution-<layer>.png``) and ``hessian.png``. Every stage draws a progress bar
with an ETA on standard error. Under ``torchrun`` every rank holds a shard of the
data: the gradient sums and every product are all-reduced
(:mod:`deepnet.distributed`) and only rank 0 writes the run folder.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from theory.checks import check_choice, check_int, check_real
from theory.density import DensitySettings
from theory.progress import progress
from theory.runs import RunFolder

from .analysis import default_out, load_analysis
from .distributed import (
    DistributedContext,
    DistributedOperator,
    distributed_decomposition,
    reduce_gradient_sums,
)
from .operators import METHODS, EmpiricalRisk, curvature_operator
from .passes import gradient_sums
from .structure import layer_parameters, restricted_risk
from .structure_report import (
    GradientAttribution,
    HessianStructure,
    attribute_gradients,
    attribution_figure,
    hessian_figure,
    hessian_structure,
    top_pairs,
)

__all__ = ["add_arguments", "run", "structure_report"]

WEIGHTINGS = ("weighted", "unweighted")
ANALYSES = ("G", "H")


class _ProgressBatches:
    """A re-iterable view of ``risk``'s batches drawing a progress bar (when ``enabled``)."""

    def __init__(self, risk: EmpiricalRisk, desc: str):
        self.risk, self.desc, self.enabled = risk, desc, False
        self.total = sum(1 for _ in risk._raw_batches())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return progress(self.risk.batches(), total=self.total, desc=self.desc, enabled=self.enabled)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of `python -m deepnet train` (file or its run folder; required)")
    parser.add_argument("--out", default=None, help="run folder (default: runs/structure-<checkpoint folder name>)")
    parser.add_argument("--operator", nargs="+", default=list(ANALYSES), choices=list(ANALYSES),
                        help="G: attribution of G (Fig. 5); H: the Hessian's outliers against G and the class means "
                             "(default: %(default)s)")
    parser.add_argument("--layers", nargs="*", default=None, metavar="NAME",
                        help="also attribute G per layer: module names (e.g. layers.1), or none given for every module "
                             "owning parameters (default: whole network only)")
    parser.add_argument("--weighting", choices=list(WEIGHTINGS), default="weighted",
                        help="cross-class means weighted by p (Papyan 2020) or by sqrt(p) (arXiv 1901.08244) "
                             "(default: %(default)s)")
    parser.add_argument("--split", choices=["train", "test"], default="train", help="data G and H average over (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1000, help="examples per batch (default: %(default)s)")
    parser.add_argument("--float64", action="store_true", help="products in float64 (a converted copy of the model)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: cuda when available, else cpu)")
    parser.add_argument("--num-top", type=int, default=None,
                        help="top eigenpairs of G (default: 3C; C^2 resolves the whole cross-class bump, at about C/3 "
                             "times the cost)")
    parser.add_argument("--num-steps", type=int, default=48, help="Lanczos steps per density run (default: %(default)s)")
    parser.add_argument("--num-repeats", type=int, default=2, help="Lanczos runs per density (default: %(default)s)")
    parser.add_argument("--kappa", type=float, default=3.0, help="kernel sharpness, > 1 (default: %(default)s)")
    parser.add_argument("--eps", type=float, default=1e-6, help="eps of the log axis log10(|lambda| + eps) (default: %(default)s)")
    parser.add_argument("--tol", type=float, default=1e-3, help="relative residual tolerance of the top eigenpairs (default: %(default)s)")
    parser.add_argument("--max-iterations", type=int, default=60, help="eigensolver iterations (restarts) at most (default: %(default)s)")
    parser.add_argument("--method", choices=list(METHODS), default="double-backward", help="Hessian product (default: %(default)s)")
    parser.add_argument("--max-columns", type=int, default=32, help="product columns per vectorised chunk (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random start (default: %(default)s)")


def _check(args: argparse.Namespace) -> DensitySettings:
    """Every argument that needs no data, before the checkpoint is read."""
    check_choice("--weighting", args.weighting, WEIGHTINGS)
    for name in ("batch_size", "max_iterations", "max_columns"):
        check_int(f"--{name.replace('_', '-')}", getattr(args, name), 1)
    if args.num_top is not None:
        check_int("--num-top", args.num_top, 1)
    check_real("--tol", args.tol, 0.0, low_open=True)
    if not args.operator or len(set(args.operator)) != len(args.operator):
        raise ValueError(f"--operator: expected distinct names from {ANALYSES}, got {args.operator}")
    return DensitySettings(num_steps=args.num_steps, num_repeats=args.num_repeats, kappa=args.kappa, eps=args.eps, seed=args.seed)


def structure_report(
    risk: EmpiricalRisk,
    *,
    analyses: tuple[str, ...] = ANALYSES,
    layers: list[str] | None = None,
    per_layer: bool = False,
    weighted: bool = True,
    num_top: int | None = None,
    density: DensitySettings | None = None,
    tol: float = 1e-3,
    max_iterations: int = 60,
    method: str = "double-backward",
    max_columns: int = 32,
    seed: int = 0,
    show_progress: bool = False,
    ctx: DistributedContext | None = None,
) -> dict[str, Any]:
    """Everything the command computes for ``risk``: ``network`` and ``layers``
    (:class:`GradientAttribution`, ``G`` in ``analyses``), ``hessian``
    (:class:`HessianStructure`, ``H`` in ``analyses``), traces and seconds.
    ``per_layer``: attribute every layer of ``layers`` (None: every module owning
    parameters); the layer names are checked before any pass over the data. ``num_top``:
    top eigenpairs of ``G`` (default ``3 C``). ``ctx`` (data-parallel): ``risk`` is this
    rank's shard; the sums are all-reduced and ``G``, ``H`` are the whole data set's."""
    density = DensitySettings(seed=seed) if density is None else density
    groups = layer_parameters(risk, layers) if per_layer else {}
    C = risk.num_classes
    k = 3 * C if num_top is None else check_int("num_top", num_top, 1)
    if min(k + 2, k + density.num_steps) > risk.size:
        raise ValueError(f"num_top: {k} top eigenpairs (+ 2) exceed the {risk.size} parameters")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    source = _ProgressBatches(risk, "gradient means (C backward passes per batch)")
    sums_risk = EmpiricalRisk(risk.model, source, params=list(risk.names), num_classes=C)
    source.enabled = show_progress
    ctx = DistributedContext.single(risk.device) if ctx is None else ctx
    sums = reduce_gradient_sums(gradient_sums(sums_risk, weighted=weighted), ctx)
    seconds["gradient_means"] = time.perf_counter() - start
    whole = distributed_decomposition(risk, sums, ctx, max_columns=max_columns)
    options = {"density": density, "eig_tol": tol, "max_iterations": max_iterations, "seed": seed, "show_progress": show_progress}
    out: dict[str, Any] = {"num_parameters": risk.size, "num_data": whole.num_examples, "num_classes": C,
                           "weighted": weighted, "num_top": k}
    network = None
    if "G" in analyses:
        network = attribute_gradients(whole, "network", num_top=k, **options)
        seconds["attribution"] = network.seconds
        out["network"] = network
        out["layers"] = {}
        for label, names in groups.items():
            layer = distributed_decomposition(restricted_risk(risk, list(names)), sums.restrict(names), ctx,
                                              max_columns=max_columns)
            kl = min(k, layer.dim - density.num_steps - 2)
            if kl < 1:
                continue
            out["layers"][label] = attribute_gradients(layer, label, num_top=kl, **options)
            seconds[f"attribution {label}"] = out["layers"][label].seconds
    if "H" in analyses:
        hessian = curvature_operator("hessian", risk, max_columns=max_columns, method=method)
        hessian = DistributedOperator(hessian, ctx) if ctx.active else hessian
        g_pairs = None if network is None else top_pairs(network.report)
        start = time.perf_counter()
        out["hessian"] = hessian_structure(
            whole, hessian, g_pairs, means_seconds=seconds["gradient_means"], means_backward_passes=2 * C,
            tol=tol, max_iterations=max_iterations, seed=seed, show_progress=show_progress,
        )
        seconds["hessian"] = time.perf_counter() - start
    out["traces"] = {"G": whole.total_trace, **{n: p.trace for n, p in whole.parts.items()}}
    out["seconds"] = seconds
    return out


def _fmt(values: Any, n: int = 12) -> str:
    values = np.asarray(values, dtype=np.float64).ravel()
    text = ", ".join(f"{v:.4g}" for v in values[:n])
    return text + (f", ... ({values.size} in all)" if values.size > n else "")


def _attribution_rows(result: GradientAttribution) -> list[str]:
    r = result.report
    rows = []
    for f in r.features:
        shares = " / ".join(f"{f.shares.get(n, float('nan')):.2f}" for n in ("class", "cross", "within", "diag"))
        rows.append(f"| {result.name} | {r.edge.num_separated} | {f.feature} | {f.size} | {f.verdict} | {f.component or '-'} | {shares} |")
    return rows


def report_markdown(results: dict[str, Any], source: str = "") -> str:
    """The markdown summary written as ``report.md``."""
    s = results["settings"]
    lines = [
        "# Class / cross-class structure of G and the Hessian",
        "",
        (f"{source}P = {results['num_parameters']:,} parameters, N = {results['num_data']} examples, C = {results['num_classes']} "
        f"classes; {'weighted (p)' if results['weighted'] else 'unweighted (sqrt p)'} cross-class means. Top "
        f"{results['num_top']} eigenpairs of G by theory.eigenpairs.top_eigenpairs (tol {s['tol']:g}, at most "
        f"{s['max_iterations']} iterations); densities from {s['num_repeats']} Lanczos runs of {s['num_steps']} steps (seed {s['seed']}). "
        "Every number: `results.json`."),
        "",
        f"Gradient means (C backward passes per example, C more for tr G): {results['seconds']['gradient_means']:.1f} s.",
    ]
    t = results["traces"]
    lines += ["", "Traces: " + ", ".join(f"tr {n} = {v:.4g}" for n, v in t.items())
              + f" (class + cross + within + diag = {sum(v for n, v in t.items() if n != 'G'):.4g})."]
    if "network" in results:
        lines += [
            "", "## Attribution of G (Papyan 2020, Fig. 5): `attribution.png`", "",
            "Verdicts by subtraction knockouts (docs/attribution.md); shares are normalised Rayleigh quotients.",
            "",
            "| parameters | separated | feature | size | verdict | component | shares class / cross / within / diag |",
            "|---|---|---|---|---|---|---|",
        ]
        for result in [results["network"], *results["layers"].values()]:
            lines += _attribution_rows(result)
        for result in [results["network"], *results["layers"].values()]:
            m, h = result.report.common_mode, result.hierarchy
            lines += ["", (f"**{result.name}** (P = {result.size:,}, {result.products} products of G, {result.seconds:.1f} s): "
                          f"top eigenvalues of G {_fmt(result.report.eigenvalues, 12)}; class Gram {_fmt(result.gram_eigenvalues['class'])}; "
                          f"hierarchy lambda_c(G) >= lambda_c(class+cross) >= lambda_c(class) "
                          f"{'holds' if h.holds else 'VIOLATED'} (largest excess {h.violation:.3g}).")]
            if m is not None:
                lines[-1] += (f" Common mode: {m.in_outliers:.2f} of it in the outlier eigenspace "
                              f"({'one of the outliers' if m.separated else 'not among the outliers'}).")
        lines += ["", "### Knockout details (whole network)", "", results["network"].report.summary().split("\n", 2)[2]]
    if "hessian" in results:
        hs: HessianStructure = results["hessian"]
        per_product = hs.h_seconds / max(hs.h_products, 1)
        lines += [
            "", "## The Hessian H = G + E (arXiv 1901.08244, Figs. 3-4): `hessian.png`", "",
            "| j | lambda_j(H) | lambda_j(G) | class Gram | class+cross Gram | means Gram | overlap with top-C of G | overlap with class span |",
            "|---|---|---|---|---|---|---|---|",
        ]
        g = hs.gram_eigenvalues

        def at(v: np.ndarray, j: int) -> str:
            return f"{v[j]:.4g}" if j < len(v) else "-"

        for j in range(hs.h.size):
            lines.append(f"| {j + 1} | {hs.h[j]:.4g} | {at(hs.g, j)} | {at(g['class'], j)} | {at(g['class+cross'], j)} | "
                         f"{at(g['means'], j)} | {hs.overlap_g[j]:.3f} | {hs.overlap_class[j]:.3f} |")
        lines += [
            "",
            (f"Hierarchy on the top {hs.hierarchy.g.size}: {'holds' if hs.hierarchy.holds else 'VIOLATED'} "
            f"(largest excess {hs.hierarchy.violation:.3g}). H eigenpairs {'converged' if hs.h_converged else 'NOT converged'} "
            f"(max residual {float(np.max(hs.h_residuals)):.3g})."),
            "",
            (f"Averaging instead of eigenanalysis: principal angles between span{{g_c}} (the C class means) and the top-C "
            f"eigenspace of H: {_fmt(hs.class_mean_angles)} degrees (cosines {_fmt(hs.class_mean_cosines)}). Cost: the class "
            f"means took one gradient-sums pass ({hs.means_backward_passes} backward passes per example, "
            f"{hs.means_seconds:.1f} s); the eigensolver took {hs.h_products} Hessian-vector products "
            f"({hs.h_seconds:.1f} s, {per_product:.3g} s each)."),
        ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    density = _check(args)
    checkpoint = Path(args.checkpoint)
    out = default_out("structure", checkpoint, args.out)
    ctx = getattr(args, "distributed", None)  # set by python -m deepnet under torchrun
    model, data, num_classes, config = load_analysis(checkpoint, args.split, args.device, ctx=ctx)
    risk = EmpiricalRisk(model, data, batch_size=args.batch_size, num_classes=num_classes,
                         dtype=torch.float64 if args.float64 else None)
    results = structure_report(
        risk, analyses=tuple(args.operator), layers=args.layers or None, per_layer=args.layers is not None,
        weighted=args.weighting == "weighted", num_top=args.num_top, density=density, tol=args.tol,
        max_iterations=args.max_iterations, method=args.method, max_columns=args.max_columns, seed=args.seed,
        show_progress=True, ctx=ctx,
    )
    if ctx is not None and not ctx.is_writer:
        return 0
    results["settings"] = {k: v for k, v in vars(args).items() if k != "distributed"}
    model_name = getattr(config, "model", type(model).__name__)
    dataset = getattr(config, "dataset", "")
    results["checkpoint"], results["config"] = str(checkpoint), config
    folder = RunFolder(out)  # created only now: a run that fails above leaves nothing behind
    folder.write_json("results.json", results)
    folder.write_text("report.md", report_markdown(results, f"Checkpoint `{checkpoint}` ({model_name} on {dataset}, {args.split} split). "))
    if "network" in results:
        folder.save_figure("attribution.png", attribution_figure(results["network"], f"{model_name} on {dataset}: attribution of G"))
        for label, result in results["layers"].items():
            folder.save_figure(f"attribution-{label}.png", attribution_figure(result, f"{model_name}: attribution of G of the parameters of {label}"))
    if "hessian" in results:
        folder.save_figure("hessian.png", hessian_figure(results["hessian"], f"{model_name} on {dataset}: Hessian = G + E"))
    print(f"structure: wrote {folder.path}")
    return 0
