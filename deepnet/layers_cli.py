"""``python -m deepnet layers --checkpoint RUN [--out DIR]``: the class structure of a
trained classifier layer by layer (Papyan 2020, Sec. 7, Figs. 7-10 and 13).

Loads a checkpoint of ``python -m deepnet train``, rebuilds its training subset (or
the test split), and computes in one run

* per layer the features and errors (:func:`deepnet.layers.layer_statistics`) and
  their separation measures against depth (:func:`deepnet.layers.layer_separation`);
* the Kronecker cosines of the gradient means (:func:`deepnet.kronecker.kronecker_structure`,
  from :func:`deepnet.passes.gradient_sums`), for the Linear layers and, with
  ``--conv patches``, the Conv2d layers;
* the weights' singular values and stationarity predictions
  (:func:`deepnet.weights.weight_structure`) for the checkpoint's weight decay;

and writes ``results.json`` (atomically, :class:`theory.runs.RunFolder`), the figures
``separation.png``, ``spectra.png``, ``kronecker.png``, ``weights.png``, with
``--attribution`` the attribution of every layer's spectra (``attribution-*``), and
then ``report.md``. Every setting is checked before the checkpoint is read.
"""

from __future__ import annotations

import argparse
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from theory.checks import check_int, check_real
from theory.figures import FONT, figure_legend, new_figure, plain_log_ticks, set_labels
from theory.progress import progress
from theory.runs import RunFolder
from theory.spectral import top_eigenpairs

from .analysis import default_out, load_analysis
from .kronecker import KroneckerStructure, kronecker_structure
from .layers import (
    CONV_FEATURES,
    LayerStatistics,
    SeparationWithDepth,
    global_mean_share,
    layer_attribution,
    layer_separation,
    layer_statistics,
)
from .operators import EmpiricalRisk, HessianOperator
from .passes import gradient_sums
from .weights import WeightStructure, weight_structure

__all__ = ["add_arguments", "kronecker_figure", "layers_report", "run", "separation_figure", "spectra_figure", "weights_figure"]

_MEASURES = (
    ("outlier_to_bulk", "$\\lambda_C / \\lambda_{C+1}$ (ratio)", "outliers over the bulk", True),
    ("class_eigenvalue_ratio", "$\\lambda_2 / \\lambda_C$ (ratio)", "spread of the class part's eigenvalues", True),
    ("trace_ratio", "tr $\\Sigma_B$ / tr $\\Sigma_W$ (ratio)", "between- over within-class variance", True),
    ("within_over_between", "tr$(\\Sigma_W \\Sigma_B^+) / C$ (ratio)", "within-class variability in the class-mean span", True),
    ("mean_abs_cosine", "mean |cos| (cosine)", "mean |cos| between centred class means", False),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of `python -m deepnet train` (file or its run folder; required)")
    parser.add_argument("--out", default=None, help="run folder (default: runs/layers-<checkpoint folder name>)")
    parser.add_argument("--layers", nargs="+", default=None, help="Linear / Conv2d module names (default: all of them)")
    parser.add_argument("--conv", choices=list(CONV_FEATURES), default="mean",
                        help="conv features: spatial mean of the input channels, or of the unfolded patches (default: %(default)s)")
    parser.add_argument("--unweighted", action="store_true", help="the sqrt(p)-scaled errors of arXiv 1901.08244")
    parser.add_argument("--split", choices=["train", "test"], default="train", help="data the passes stream (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1000,
                        help="examples per batch; memory grows with it, the result does not change (default: %(default)s)")
    parser.add_argument("--float64", action="store_true", help="passes in float64 (a converted copy of the model)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dense-limit", type=int, default=3072, help="layers up to this input width keep dense second moments, wider ones are matrix-free (default: %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=None, help="eta of the stationarity prediction (default: the checkpoint's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the matrix-free spectra of wide layers (default: %(default)s)")
    parser.add_argument("--attribution", action="store_true",
                        help="also attribute every layer's outliers / bump / bulk to the parts (slow for layers wider than --dense-limit)")
    parser.add_argument("--num-steps", type=int, default=128, help="Lanczos steps of the attribution densities, at most the layer width (default: %(default)s)")
    parser.add_argument("--num-repeats", type=int, default=10, help="Lanczos runs per attribution density (default: %(default)s)")
    parser.add_argument("--compare", default=None, metavar="CHECKPOINT",
                        help="a second checkpoint (e.g. the same network without batch norm, claim C7): report both runs' "
                             "global-mean share of the features per layer and their top C Hessian outliers (default: none)")


_STYLES = {"features": ("tab:blue", "o-", "features $h$ (layer inputs)"),
           "errors": ("tab:orange", "s--", "errors $\\delta$ (at the layer outputs)")}

ZERO_RTOL = 1e-12
"""Eigenvalues (singular values) below this fraction of the largest are numerical zeros:
not drawn on a log axis, counted in the panel's title instead (the floor of
:func:`numerical_zero`)."""


def numerical_zero(dtype: torch.dtype) -> float:
    """The relative size ``max(ZERO_RTOL, 10 eps)`` below which eigenvalues computed from
    passes in ``dtype`` are rounding (float32: 1.2e-6; the zeros beyond the rank ``N`` of
    the data sit near 1e-8 there, 2e-16 in float64)."""
    return max(ZERO_RTOL, 10.0 * torch.finfo(dtype).eps)


def _axes_by_depth(ax: Any, names: list[str], ylabel: str, title: str | None = None) -> None:
    """Layer names along x (forward order), the style's labels and title."""
    ax.set_xticks(range(len(names)), names, rotation=45, fontsize=FONT["tick"])
    set_labels(ax, "layer (input to output)", ylabel, title)


def _value_axis(ax: Any, which: str, values: np.ndarray) -> None:
    """Scale of the ``which`` (``"x"`` / ``"y"``) axis of ``ax`` for the positive finite
    ``values``: log where they span a decade or more (plain tick labels under two
    decades), else linear."""
    v = values[np.isfinite(values) & (values > 0)]
    if not v.size or v.max() < 10.0 * v.min():
        return
    getattr(ax, f"set_{which}scale")("log")
    if v.max() < 100.0 * v.min():
        plain_log_ticks(getattr(ax, f"{which}axis"))


def _above_zero(values: np.ndarray, rtol: float) -> tuple[np.ndarray, np.ndarray, int]:
    """What a log axis of the descending ``values`` relative to the largest shows:
    ``(k, values_k / values_1, hidden)`` for the finite ``values_k > rtol values_1``
    (``k`` from 1) and the count ``hidden`` of the others (numerical zeros)."""
    values = np.asarray(values, dtype=np.float64)
    if not values.size or not values[0] > 0:
        return np.zeros(0, dtype=int), np.zeros(0), values.size
    keep = np.isfinite(values) & (values > rtol * values[0])
    rel = values[keep] / values[0]
    return np.arange(1, values.size + 1)[keep], rel, int(values.size - keep.sum())


def _zeros_note(counts: dict[str, tuple[int, int]], rtol: float) -> str:
    """``"name: k of n at numerical zero"`` for every entry with ``k > 0``, or ``"none at
    numerical zero"``, wrapped to the width of a panel's title."""
    hidden = [f"{name}: {k} of {n}" for name, (k, n) in counts.items() if k]
    rule = f"at numerical zero (below {rtol:.2g} of the largest, not drawn)"
    return textwrap.fill(f"{', '.join(hidden)} {rule}" if hidden else f"none {rule}", 80, break_long_words=False)


def separation_figure(sep: SeparationWithDepth, title: str = "") -> Any:
    """Five measures of :class:`deepnet.layers.Separation` and the global-mean share
    ``|mu_G|^2 / tr H`` against depth, for the features and the errors (one panel each,
    log axes for the ratios; non-finite values, e.g. ``lambda_C / lambda_{C+1}`` where
    ``d <= C``, are left out)."""
    names = list(sep.layers)
    depth = np.arange(len(names))
    fig, axes = new_figure(2, 3, figsize=(13, 7.4), layout="constrained")
    for ax, (measure, ylabel, panel_title, log) in zip(axes.flat, _MEASURES):
        drawn = []
        for which, (colour, style, label) in _STYLES.items():
            values = sep.series(which, measure)
            keep = np.isfinite(values) & (values > 0 if log else True)
            ax.plot(depth[keep], values[keep], style, color=colour, label=label)
            drawn.append(values[keep])
        if log:
            _value_axis(ax, "y", np.concatenate(drawn))
        _axes_by_depth(ax, names, ylabel, panel_title)
    colour, style, label = _STYLES["features"]
    share = np.array([layer.global_mean_share for layer in sep.layers.values()])
    keep = np.isfinite(share)
    axes[-1, -1].plot(depth[keep], share[keep], style, color=colour, label=label)
    _axes_by_depth(axes[-1, -1], names, "$|\\mu_G|^2 / \\mathrm{tr}\\, H$ (share)", "global-mean share of the features")
    figure_legend(fig, axes)
    fig.suptitle(title or "Separation with depth", fontsize=FONT["suptitle"])
    return fig


def spectra_figure(sep: SeparationWithDepth, title: str = "", zero_rtol: float = ZERO_RTOL) -> Any:
    """The eigenvalues ``lambda_k / lambda_1`` of every layer's feature and error second
    moments (descending, log axes, one colour per depth), outliers marked by the first
    ``C`` points; numerical zeros (below ``zero_rtol``, e.g. beyond the rank ``N`` of the
    data) are not drawn, their count per layer is in the panel's title."""
    from matplotlib import colormaps

    fig, axes = new_figure(1, 2, figsize=(12, 5.0), layout="constrained")
    colours = colormaps["viridis"](np.linspace(0, 1, max(len(sep.layers), 2)))
    C = sep.num_classes
    for ax, which in zip(axes, ("features", "errors")):
        counts, drawn = {}, []
        for colour, (name, layer) in zip(colours, sep.layers.items()):
            lam = getattr(layer, which).eigenvalues
            k, rel, hidden = _above_zero(lam, zero_rtol)
            counts[name] = (hidden, len(lam))
            ax.plot(k, rel, color=colour, lw=1, label=name)
            ax.plot(k[k <= C], rel[k <= C], "o", color=colour, ms=3)
            drawn.append(rel)
        _value_axis(ax, "x", np.array([1.0, max(max(n for _, n in counts.values()), 1)]))
        _value_axis(ax, "y", np.concatenate(drawn))
        set_labels(ax, "index $k$ (eigenvalues descending)", "$\\lambda_k / \\lambda_1$ (ratio)",
                   f"{which} second moments (first C = {C} marked)\n{_zeros_note(counts, zero_rtol)}")
    figure_legend(fig, axes, ncols=min(len(sep.layers), 6))
    fig.suptitle(title or "Spectra of all layers", fontsize=FONT["suptitle"])
    return fig


def kronecker_figure(kron: KroneckerStructure, title: str = "") -> Any:
    """Per layer the cosines of the gradient cross-class means (all cells) and class means
    with their Kronecker predictions, and the ``P_{c,c'}``-weighted mean over the cells."""
    names = list(kron.layers)
    fig, ax = new_figure(figsize=(7.5, 4.6), layout="constrained")
    for k, layer in enumerate(kron.layers.values()):
        cells = layer.cell_cosines[np.isfinite(layer.cell_cosines)]
        classes = layer.class_cosines[np.isfinite(layer.class_cosines)]
        ax.plot(np.full(cells.shape, k - 0.1), cells, ".", color="tab:blue", alpha=0.4,
                label="cells $(c, c')$" if k == 0 else None)
        ax.plot(np.full(classes.shape, k + 0.1), classes, ".", color="tab:red", alpha=0.6,
                label="classes $c$" if k == 0 else None)
    mean = np.array([layer.mean_cell_cosine for layer in kron.layers.values()])
    keep = np.isfinite(mean)
    ax.plot(np.arange(len(names))[keep], mean[keep], "k-", label="weighted mean over the cells")
    _axes_by_depth(ax, names, "cos(g, $\\mu^\\delta \\otimes \\mu^h$) (cosine)",
                   "gradient means against their Kronecker predictions")
    figure_legend(fig, ax)
    fig.suptitle(title or "Kronecker structure of the gradient means", fontsize=FONT["suptitle"])
    return fig


def weights_figure(weights: WeightStructure, num_classes: int, title: str = "", zero_rtol: float = ZERO_RTOL) -> Any:
    """Singular values ``sigma_k / sigma_1`` of every weight (log axes, one colour per
    depth), ``k = C`` dotted; numerical zeros (below ``zero_rtol``) are not drawn, their
    count is in the title."""
    from matplotlib import colormaps

    fig, ax = new_figure(figsize=(7.5, 5.0), layout="constrained")
    colours = colormaps["viridis"](np.linspace(0, 1, max(len(weights.layers), 2)))
    counts, drawn = {}, []
    for colour, (name, layer) in zip(colours, weights.layers.items()):
        k, rel, hidden = _above_zero(layer.singular_values, zero_rtol)
        counts[name] = (hidden, len(layer.singular_values))
        ax.plot(k, rel, color=colour, lw=1, label=name)
        drawn.append(rel)
    ax.axvline(num_classes, color="grey", ls=":", lw=1, label=f"$k = C$ = {num_classes}")
    _value_axis(ax, "x", np.array([1.0, max([n for _, n in counts.values()] + [num_classes])]))
    _value_axis(ax, "y", np.concatenate(drawn))
    set_labels(ax, "index $k$ (singular values descending)", "$\\sigma_k / \\sigma_1$ (ratio)",
               f"singular values of the weights\n{_zeros_note(counts, zero_rtol)}")
    figure_legend(fig, ax, ncols=min(len(weights.layers) + 1, 6))
    fig.suptitle(title or "Singular values of the weights", fontsize=FONT["suptitle"])
    return fig


def _fmt(x: float | None) -> str:
    return "-" if x is None or np.isnan(x) else f"{x:.3g}"


def layers_report(
    sep: SeparationWithDepth,
    kron: KroneckerStructure | None,
    weights: WeightStructure | None,
    source: str = "",
    seconds: float = float("nan"),
) -> str:
    """The markdown summary written as ``report.md``."""
    lines = [
        "# Class structure layer by layer",
        "",
        (
            f"{source}C = {sep.num_classes} classes; errors {'weighted by p' if sep.weighted else 'scaled by sqrt(p)'}; "
            f"conv features: {sep.conv}; {seconds:.1f} s. Every number: `results.json`."
        ),
        "",
        (
            "Features `H^l` (inputs of the layers) and errors `Delta^l` (at the layer outputs): outliers/bulk "
            "`lambda_C / lambda_{C+1}`, `lambda_2 / lambda_C` of the class part, `tr Sigma_B / tr Sigma_W`, "
            "`tr(Sigma_W Sigma_B^+) / C`, mean |cos| of the centred class means; for the errors Sigma_B is the spread "
            "of the error class means and Sigma_W the within-cell part."
        ),
        "",
        "| layer | d_in | d_out | which | outl./bulk | l2/lC | trB/trW | tr(W B+)/C | mean abs cos | global share |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, layer in sep.layers.items():
        for which in ("features", "errors"):
            s = getattr(layer, which)
            share = _fmt(layer.global_mean_share) if which == "features" else ""
            lines.append(
                f"| {name} | {layer.feature_dim} | {layer.error_dim} | {which} | {_fmt(s.outlier_to_bulk)} | "
                f"{_fmt(s.class_eigenvalue_ratio)} | {_fmt(s.trace_ratio)} | {_fmt(s.within_over_between)} | "
                f"{_fmt(s.mean_abs_cosine)} | {share} |"
            )
    lines += ["", "![separation](separation.png)", "", "![spectra](spectra.png)", ""]
    if kron is None:
        lines += ["No layer for the Kronecker and weight measures (conv layers need `--conv patches`).", ""]
        return "\n".join(lines)
    lines += [
        (
            "Kronecker structure: cosine of the gradient means with `mu^delta (x) [mu^h; 1]` (weighted mean over the "
            "C^2 cells, min over cells, weighted mean over the C classes)."
        ),
        "",
        "| layer | mean cell cos | min cell cos | mean class cos |",
        "|---|---|---|---|",
    ]
    for name, layer in kron.layers.items():
        lines.append(f"| {name} | {_fmt(layer.mean_cell_cosine)} | {_fmt(float(np.nanmin(layer.cell_cosines)))} | {_fmt(layer.mean_class_cosine)} |")
    lines += ["", "![kronecker](kronecker.png)", ""]
    if weights is not None:
        lines += [
            (
                f"Weights (weight decay eta = {weights.weight_decay:g}): `W_stat = -(1/eta) dL/dW`, "
                "`W_class = -(1/eta) sum_c pi_c mu^delta_c (mu^h_c)^T`; share of the top-C singular pairs in the span "
                "of the class-mean outer products (left: error means, right: feature means)."
            ),
            "",
            "| layer | shape | top-C energy | top-C share | left | right | cos(W, W_class) | rel. error of W_stat |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, w in weights.layers.items():
            lines.append(
                f"| {name} | {tuple(w.shape)} | {_fmt(w.top_energy)} | {_fmt(w.top_share)} | {_fmt(w.left_share)} | "
                f"{_fmt(w.right_share)} | {_fmt(w.class_cosine)} | {_fmt(w.stationarity_error)} |"
            )
        lines += ["", "![weights](weights.png)", ""]
    return "\n".join(lines)


def hessian_outliers(risk: EmpiricalRisk, k: int, seed: int) -> np.ndarray:
    """The top ``k`` eigenvalues of the Hessian of ``risk`` (:class:`HessianOperator`, Lanczos)."""
    return top_eigenpairs(HessianOperator(risk), min(k, risk.size), seed=seed).eigenvalues


def batch_norm_comparison(runs: dict[str, tuple[str, EmpiricalRisk, LayerStatistics]], seed: int) -> dict[str, dict[str, Any]]:
    """Per run (label -> checkpoint path, risk and layer statistics): ``global_mean_share = |mu_G|^2 / tr H^l``
    of every layer's features and the top ``C`` Hessian eigenvalues (claim C7)."""
    return {
        label: {"path": path, "global_mean_share": {n: global_mean_share(layer.features) for n, layer in stats.layers.items()},
                "hessian_outliers": hessian_outliers(risk, risk.num_classes, seed)}
        for label, (path, risk, stats) in runs.items()
    }


def _comparison_text(comparison: dict[str, dict[str, Any]]) -> str:
    lines = ["\n## Global mean and Hessian outliers of both runs (claim C7)\n"]
    for label, entry in comparison.items():
        shares = ", ".join(f"{n}: {v:.3f}" for n, v in entry["global_mean_share"].items())
        top = ", ".join(f"{v:.4g}" for v in entry["hessian_outliers"])
        lines.append(f"* {label} (`{entry['path']}`): global-mean share |mu_G|^2 / tr H per layer {shares}; top Hessian eigenvalues {top}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    batch_size = check_int("--batch-size", args.batch_size, 1)
    dense_limit = check_int("--dense-limit", args.dense_limit, 1)
    seed = check_int("--seed", args.seed, 0)
    density = {"num_steps": check_int("--num-steps", args.num_steps, 2), "num_repeats": check_int("--num-repeats", args.num_repeats, 1)}
    if args.weight_decay is not None:
        check_real("--weight-decay", args.weight_decay, 0.0)
    checkpoint = Path(args.checkpoint)
    out = default_out("layers", checkpoint, args.out)
    model, data, num_classes, config = load_analysis(checkpoint, args.split, args.device, sort_by_class=True)
    risk = EmpiricalRisk(model, data, batch_size=batch_size, num_classes=num_classes,
                         dtype=torch.float64 if args.float64 else None)
    other = None
    if args.compare is not None:  # loaded (and so checked) before the long work
        model2, data2, num_classes2, _config2 = load_analysis(Path(args.compare), args.split, args.device, sort_by_class=True)
        other = EmpiricalRisk(model2, data2, batch_size=batch_size, num_classes=num_classes2,
                              dtype=torch.float64 if args.float64 else None)
    weighted = not args.unweighted
    start = time.perf_counter()
    print(f"layers: features and errors of {risk.num_data} examples ({risk.num_classes} classes)", flush=True)
    stats = layer_statistics(risk, args.layers, conv=args.conv, weighted=weighted, dense_limit=dense_limit, show_progress=True)
    print("layers: separation measures and spectra", flush=True)
    sep = layer_separation(stats, seed=seed, show_progress=True)
    eligible = [n for n, layer in stats.layers.items() if layer.params and (layer.kind == "linear" or stats.conv == "patches")]
    print("layers: gradient means and Kronecker cosines", flush=True)
    kron = weights = None
    if eligible:
        kron = kronecker_structure(stats, gradient_sums(risk, weighted=weighted, squared_norms="none"), risk.model, layers=eligible)
        eta = config.weight_decay if args.weight_decay is None else args.weight_decay
        weights = weight_structure(risk, stats, eta, layers=eligible) if eta > 0 else None
    reports: dict[str, dict[str, Any]] = {}
    skipped = {}
    for layer in progress(stats.layers, desc="spectral attribution per layer (features, errors)") if args.attribution else ():
        for which in ("features", "errors"):
            try:
                reports.setdefault(layer, {}).update(layer_attribution(stats, [layer], [which], seed=seed, density=density)[layer])
            except ValueError as error:  # e.g. too narrow for a bulk edge (d close to C)
                skipped[f"{layer} {which}"] = str(error)
    comparison = None
    if other is not None:
        print(f"layers: features of {args.compare} and the Hessian outliers of both runs", flush=True)
        other_stats = layer_statistics(other, conv=args.conv, weighted=weighted, dense_limit=dense_limit)
        comparison = batch_norm_comparison({"checkpoint": (str(checkpoint), risk, stats), "compare": (str(args.compare), other, other_stats)}, seed)
    seconds = time.perf_counter() - start
    name = f"{config.model} on {config.dataset} ({args.split})"
    folder = RunFolder(out)  # created only now: a run that fails above leaves nothing behind
    folder.write_json("results.json", {
        "checkpoint": str(checkpoint), "split": args.split, "config": config, "seconds": seconds,
        "settings": {"layers": args.layers, "conv": args.conv, "weighted": weighted, "batch_size": batch_size,
                     "dense_limit": dense_limit, "dtype": str(risk.dtype), "device": str(risk.device), "seed": seed},
        "separation": sep, "kronecker": kron, "weights": weights, "compare": comparison,
    })
    folder.save_figure("separation.png", separation_figure(sep, f"Separation with depth: {name}"))
    zero_rtol = numerical_zero(risk.dtype)
    folder.save_figure("spectra.png", spectra_figure(sep, f"Spectra of all layers: {name}", zero_rtol))
    if kron is not None:
        folder.save_figure("kronecker.png", kronecker_figure(kron, f"Kronecker structure: {name}"))
    if weights is not None:
        folder.save_figure("weights.png", weights_figure(weights, risk.num_classes, f"Weights: {name}", zero_rtol))
    verdicts = ["| layer | which | feature | size | verdict | component |", "|---|---|---|---|---|---|"]
    for layer, pair in reports.items():
        for which, report in pair.items():
            report.save(folder, prefix=f"attribution-{layer}-{which}")
            verdicts += [f"| {layer} | {which} | {f.feature} | {f.size} | {f.verdict} | {f.component or '-'} |" for f in report.features]
    text = layers_report(sep, kron, weights, f"Checkpoint `{checkpoint}` ({name}). ", seconds)
    if comparison is not None:
        text += _comparison_text(comparison)
    if args.attribution:
        text += "\nSpectral attribution (`attribution-<layer>-<features|errors>.md`):\n\n" + "\n".join(verdicts) + "\n"
        text += "".join(f"\n* {layer}: not attributed ({reason})" for layer, reason in skipped.items()) + "\n"
    folder.write_text("report.md", text)
    print(f"layers: wrote {folder.path}")
    return 0
