"""``python -m deepnet optimise``: SGD, K-FAC and the class-aware K-FAC as optimisers of the
paper's MLP (Papyan 2020, Sec. 7, the correction's open question; docs/kfac.md#as-a-preconditioner).

Every optimiser trains the MLP without batch norm (the K-FAC factors are computed in eval
mode, :class:`deepnet.preconditioner.KFACOptimizer`) at reduced depth and width on a
class-balanced subset, with the paper's protocol of :mod:`deepnet.train` for everything but
the step: the data (:func:`deepnet.data.dataset_from_config`), the initial weights and the
per-epoch data order from the seeds, the learning rate divided by 10 at 1/3 and 2/3 of the
epochs (:func:`deepnet.train.learning_rate`), momentum and weight decay, and the evaluation
(:func:`deepnet.train.evaluate`). SGD is ``torch.optim.SGD`` as in :func:`deepnet.train.train`;
K-FAC and the corrected form precondition every layer's gradient by ``(A + lambda I)^{-1}``.
Each optimiser runs a small sweep (learning rates, and dampings for K-FAC and the corrected
form), the setting with the lowest final test error (mean over the seeds) is kept, and the
kept settings are compared against epochs and against training wall time (the steps only,
evaluation excluded).

Files: ``results.json`` (every run, the selection and the summary), ``report.md`` (the verdict
first) and ``curves.png`` (test error against epochs and against wall time).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from theory.checks import ArgumentError, check_choice, check_int, check_real
from theory.figures import figure_legend, matrix_color, new_figure, set_labels
from theory.progress import progress
from theory.runs import RunFolder, claim_run

from .data import DataBundle, dataset_from_config, iterate_batches
from .kfac import FISHER_TYPES
from .models import build_model
from .preconditioner import KFACOptimizer
from .train import (
    TrainConfig,
    add_protocol_arguments,
    deterministic_mode,
    epoch_seed,
    evaluate,
    learning_rate,
    protocol_from_args,
    resolve_device,
)

__all__ = ["OPTIMISERS", "Comparison", "OptimiseSettings", "RunCurve", "add_arguments", "compare", "run", "train_run", "write_comparison"]

OPTIMISERS = ("sgd", "kfac", "corrected")
LABELS = {"sgd": "SGD", "kfac": "K-FAC", "corrected": "corrected K-FAC"}
COLORS = {"sgd": "black", "kfac": matrix_color("kfac"), "corrected": matrix_color("corrected")}


@dataclass(frozen=True)
class OptimiseSettings:
    """The comparison: ``train`` the protocol (its ``lr`` unused), ``sgd_lrs`` and ``kfac_lrs``
    (K-FAC and corrected) the swept learning rates, ``dampings`` the swept ``lambda``, ``refresh``
    the factor period ``T`` in steps, ``fisher`` the factors' type, ``cg_tol`` / ``cg_maxiter``
    the corrected solve, ``seeds`` runs per setting (seeds ``train.seed + i``)."""

    train: TrainConfig
    sgd_lrs: tuple[float, ...] = (0.05, 0.1, 0.2)
    kfac_lrs: tuple[float, ...] = (0.01, 0.03)
    dampings: tuple[float, ...] = (0.1, 0.3)
    refresh: int = 20
    fisher: str = "true"
    cg_tol: float = 1e-2
    cg_maxiter: int = 10
    seeds: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.train, TrainConfig):
            raise ArgumentError(f"train: expected a TrainConfig, got {type(self.train).__name__}")
        if self.train.model != "mlp" or self.train.model_kwargs.get("batch_norm", True):
            raise ArgumentError("train: expected model 'mlp' with model_kwargs batch_norm=False (the factors are computed in eval mode)")
        for name in ("sgd_lrs", "kfac_lrs", "dampings"):
            values = tuple(check_real(name, v, 0.0, low_open=True) for v in getattr(self, name))
            if not values:
                raise ArgumentError(f"{name}: expected at least one value")
            object.__setattr__(self, name, values)
        check_int("refresh", self.refresh, 1)
        check_choice("fisher", self.fisher, FISHER_TYPES)
        check_real("cg_tol", self.cg_tol, 0.0, 1.0, low_open=True, high_open=True)
        check_int("cg_maxiter", self.cg_maxiter, 1)
        check_int("seeds", self.seeds, 1)

    def runs(self) -> list[tuple[str, float, float | None, int]]:
        """``(optimiser, lr, damping, seed)`` of every run, in order (``damping`` None for SGD)."""
        seeds = [self.train.seed + i for i in range(self.seeds)]
        out: list[tuple[str, float, float | None, int]] = [("sgd", lr, None, s) for lr in self.sgd_lrs for s in seeds]
        for form in ("kfac", "corrected"):
            out += [(form, lr, d, s) for lr in self.kfac_lrs for d in self.dampings for s in seeds]
        return out


@dataclass(frozen=True)
class RunCurve:
    """One run: per epoch (0: the initial weights) the train / test loss and error after it and ``seconds``, the
    cumulative wall time of the training steps; ``step_ms`` the mean time of one step (gradient
    and update), ``cg_products`` the mean PCG products per step (summed over the layers; 0 but
    for the corrected form). ``diverged``: a non-finite loss stopped it (the arrays end there)."""

    optimiser: str
    lr: float
    damping: float | None
    seed: int
    epoch: np.ndarray
    train_loss: np.ndarray
    train_error: np.ndarray
    test_loss: np.ndarray
    test_error: np.ndarray
    seconds: np.ndarray
    steps: int
    step_ms: float
    cg_products: float
    diverged: bool

    @property
    def final_test_error(self) -> float:
        return math.inf if self.diverged else float(self.test_error[-1])

    @property
    def final_test_loss(self) -> float:
        return math.inf if self.diverged else float(self.test_loss[-1])


def _optimizer(model: torch.nn.Module, optimiser: str, config: TrainConfig, damping: float | None,
               settings: OptimiseSettings) -> torch.optim.Optimizer:
    if optimiser == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return KFACOptimizer(
        model, lr=config.lr, damping=damping, form=optimiser, momentum=config.momentum, weight_decay=config.weight_decay,
        refresh=settings.refresh, fisher=settings.fisher, cg_tol=settings.cg_tol, cg_maxiter=settings.cg_maxiter, seed=config.seed,
    )


def train_run(settings: OptimiseSettings, data: DataBundle, optimiser: str, lr: float, damping: float | None, seed: int,
              device: torch.device) -> RunCurve:
    """Train one run of :class:`OptimiseSettings` (module docstring) with ``optimiser`` at initial
    rate ``lr`` (``damping`` for K-FAC and corrected) from ``seed``; the caller's random state is
    kept. SGD makes the steps of :func:`deepnet.train.train` for the same configuration."""
    check_choice("optimiser", optimiser, OPTIMISERS)
    config = dataclasses.replace(settings.train, lr=lr, seed=seed)
    rows: list[tuple[float, ...]] = []
    spent, steps, products, diverged = 0.0, 0, 0, False
    cuda = [device] if device.type == "cuda" else []
    with deterministic_mode(True), torch.random.fork_rng(devices=cuda):
        torch.manual_seed(config.seed)
        model = build_model(config.model, data.num_classes, data.in_shape, **config.model_kwargs).to(device)
        opt = _optimizer(model, optimiser, config, damping, settings)
        rows.append((0, *evaluate(model, data.train, config.eval_batch_size, device), *evaluate(model, data.test, config.eval_batch_size, device), 0.0))
        for epoch in range(config.epochs):
            for group in opt.param_groups:
                group["lr"] = learning_rate(config, epoch)
            shuffle_seed = epoch_seed(config.seed, epoch)
            torch.manual_seed(shuffle_seed)
            order = torch.Generator().manual_seed(shuffle_seed)
            model.train()
            began = time.perf_counter()
            try:
                for x, y in iterate_batches(data.train, config.batch_size, device=device, generator=order):
                    opt.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(x), y)
                    if not math.isfinite(float(loss.detach())):
                        raise FloatingPointError("the loss is not finite")
                    loss.backward()
                    if optimiser == "sgd":
                        opt.step()
                    else:
                        opt.step(batch=(x, y))
                        products += opt.last_iterations
                    steps += 1
            except FloatingPointError:
                diverged = True
            spent += time.perf_counter() - began
            if diverged:
                break
            train_loss, train_error = evaluate(model, data.train, config.eval_batch_size, device)
            test_loss, test_error = evaluate(model, data.test, config.eval_batch_size, device)
            if not (math.isfinite(train_loss) and math.isfinite(test_loss)):
                diverged = True
                break
            rows.append((epoch + 1, train_loss, train_error, test_loss, test_error, spent))
    cols = np.array(rows, dtype=np.float64).reshape(-1, 6).T
    return RunCurve(
        optimiser=optimiser, lr=float(lr), damping=None if damping is None else float(damping), seed=int(seed),
        epoch=cols[0].astype(np.int64), train_loss=cols[1], train_error=cols[2], test_loss=cols[3], test_error=cols[4],
        seconds=cols[5], steps=steps, step_ms=1e3 * spent / max(steps, 1), cg_products=products / max(steps, 1), diverged=diverged,
    )


@dataclass(frozen=True)
class Best:
    """The kept setting of one optimiser: ``lr``, ``damping``, the mean (and min / max over the
    seeds) final test error, ``step_ms`` and ``cg_products`` averaged over its runs, and
    ``seconds`` its training wall time (mean over the seeds)."""

    optimiser: str
    lr: float
    damping: float | None
    runs: tuple[int, ...]
    final_test_error: float
    final_test_error_range: tuple[float, float]
    final_test_loss: float
    step_ms: float
    cg_products: float
    seconds: float


@dataclass(frozen=True)
class Comparison:
    """Every run, the kept setting per optimiser, the ``winner`` (lowest mean final test error)
    and its ``margin`` over the runner-up (error points), ``corrected_per_kfac`` the mean time of
    a corrected step over that of a K-FAC step (all their runs), ``target_error`` the worst of
    the kept final errors and ``time_to_target`` (s) / ``epochs_to_target`` of each kept setting
    (mean over seeds; None when a seed never reached it)."""

    settings: OptimiseSettings
    device: str
    threads: int
    train_size: int
    test_size: int
    runs: tuple[RunCurve, ...]
    best: dict[str, Best]
    winner: str
    margin: float
    corrected_per_kfac: float
    sgd_step_ms: float
    target_error: float
    time_to_target: dict[str, float | None]
    epochs_to_target: dict[str, float | None]


def _select(runs: Sequence[RunCurve], optimiser: str) -> Best:
    groups: dict[tuple[float, float | None], list[int]] = {}
    for i, r in enumerate(runs):
        if r.optimiser == optimiser:
            groups.setdefault((r.lr, r.damping), []).append(i)

    def key(item: tuple[tuple[float, float | None], list[int]]) -> tuple[float, float, float]:
        (lr, _), idx = item
        return (float(np.mean([runs[i].final_test_error for i in idx])), float(np.mean([runs[i].final_test_loss for i in idx])), lr)

    (lr, damping), idx = min(groups.items(), key=key)
    chosen = [runs[i] for i in idx]
    errors = [r.final_test_error for r in chosen]
    return Best(
        optimiser=optimiser, lr=lr, damping=damping, runs=tuple(idx), final_test_error=float(np.mean(errors)),
        final_test_error_range=(min(errors), max(errors)), final_test_loss=float(np.mean([r.final_test_loss for r in chosen])),
        step_ms=float(np.mean([r.step_ms for r in chosen])), cg_products=float(np.mean([r.cg_products for r in chosen])),
        seconds=float(np.mean([r.seconds[-1] for r in chosen])),
    )


def _reach(runs: Sequence[RunCurve], target: float, axis: str) -> float | None:
    """Mean over ``runs`` of the first ``seconds`` / ``epoch`` with test error <= ``target``."""
    hits = []
    for r in runs:
        at = np.flatnonzero(r.test_error <= target + 1e-12)
        if not at.size:
            return None
        hits.append(float(getattr(r, axis)[at[0]]))
    return float(np.mean(hits))


def compare(settings: OptimiseSettings, *, device: str | torch.device | None = "cpu", show_progress: bool = True) -> Comparison:
    """Run every setting of ``settings`` (:meth:`OptimiseSettings.runs`) and compare (:class:`Comparison`)."""
    device = resolve_device(device)
    data = dataset_from_config(settings.train, device)  # unknown data sets and missing files fail here
    plan = settings.runs()
    runs = tuple(train_run(settings, data, *job, device) for job in progress(plan, total=len(plan), desc="optimise", enabled=show_progress))
    best = {o: _select(runs, o) for o in OPTIMISERS}
    order = sorted(OPTIMISERS, key=lambda o: (best[o].final_test_error, best[o].final_test_loss))
    finite = [best[o].final_test_error for o in OPTIMISERS if math.isfinite(best[o].final_test_error)]
    target = max(finite) if finite else math.inf

    def mean_ms(o: str) -> float:
        return float(np.mean([r.step_ms for r in runs if r.optimiser == o]))

    kept = {o: [runs[i] for i in best[o].runs] for o in OPTIMISERS}
    return Comparison(
        settings=settings, device=str(device), threads=torch.get_num_threads(), train_size=len(data.train), test_size=len(data.test),
        runs=runs, best=best, winner=order[0], margin=best[order[1]].final_test_error - best[order[0]].final_test_error,
        corrected_per_kfac=mean_ms("corrected") / mean_ms("kfac"), sgd_step_ms=mean_ms("sgd"), target_error=target,
        time_to_target={o: _reach(kept[o], target, "seconds") for o in OPTIMISERS},
        epochs_to_target={o: _reach(kept[o], target, "epoch") for o in OPTIMISERS},
    )


# ----------------------------------------------------------------------------- run folder


def _curves_figure(comparison: Comparison) -> Any:
    fig, axes = new_figure(1, 2, figsize=(10, 4.2), layout="constrained")
    for ax, axis, xlabel in ((axes[0], "epoch", "epoch"), (axes[1], "seconds", "training wall time (s)")):
        for i, r in enumerate(comparison.runs):
            kept = i in comparison.best[r.optimiser].runs
            start = 1 if axis == "seconds" else 0  # a log time axis: from the first epoch
            ax.plot(getattr(r, axis)[start:], r.test_error[start:], "o-" if kept else "-", ms=2.5, color=COLORS[r.optimiser], lw=1.6 if kept else 0.7,
                        alpha=1.0 if kept else 0.3, label=LABELS[r.optimiser] if kept else None)
        set_labels(ax, xlabel, "test error")
    axes[1].set_xscale("log")
    axes[0].set_title("kept setting of each optimiser (faint: the rest of the sweep)")
    axes[1].set_title(f"{comparison.threads} CPU thread(s)" if comparison.device == "cpu" else comparison.device)
    top = max(float(np.max(r.test_error)) for r in comparison.runs)
    low = min(float(np.min(comparison.runs[i].test_error)) for b in comparison.best.values() for i in b.runs)
    for ax in axes:
        ax.set_ylim(low * 0.95, min(top, 0.9) * 1.05)
    figure_legend(fig, axes, ncols=3)
    return fig


def _setting(b: Best) -> str:
    return f"lr {b.lr:g}" + ("" if b.damping is None else f", damping {b.damping:g}")


def _report(c: Comparison) -> str:
    s, cfg = c.settings, c.settings.train
    best, w = c.best, c.winner
    others = [o for o in OPTIMISERS if o != w]
    per = "run" if s.seeds == 1 else "runs"
    counts = {o: sum(r.optimiser == o for r in c.runs) // s.seeds for o in OPTIMISERS}
    ms = {o: best[o].step_ms for o in OPTIMISERS}
    second = min(others, key=lambda o: (best[o].final_test_error, best[o].final_test_loss))
    overlap = ""
    if s.seeds > 1:
        apart = best[w].final_test_error_range[1] < best[second].final_test_error_range[0]
        overlap = f" (every seed beats every seed of {LABELS[second]})" if apart else " (the ranges over the seeds of the two overlap)"

    def reach(o: str) -> str:
        t, e = c.time_to_target[o], c.epochs_to_target[o]
        return "not reached by every seed" if t is None else f"{t:.1f} s (epoch {e:g})"

    lines = [
        "# Optimisers: SGD, K-FAC and the class-aware K-FAC",
        "",
        f"**{LABELS[w]} wins**: final test error {best[w].final_test_error:.4f} against "
        + " and ".join(f"{best[o].final_test_error:.4f} ({LABELS[o]})" for o in others)
        + f" after {cfg.epochs} epochs (mean over {s.seeds} seed{'s' if s.seeds > 1 else ''}), {100 * c.margin:.2f} points "
        f"better than the runner-up{overlap}.",
        (f"One corrected step costs **{c.corrected_per_kfac:.2f} K-FAC steps** (mean over all their runs; kept settings: "
        f"{ms['corrected']:.1f} ms against {ms['kfac']:.1f} ms, SGD {ms['sgd']:.1f} ms, {best['corrected'].cg_products:.1f} "
        "PCG products per corrected step)."),
        f"Against wall time, to reach test error {c.target_error:.4f} (the worst kept final error): "
        + "; ".join(f"{LABELS[o]} {reach(o)}" for o in OPTIMISERS) + ".",
        f"Runs per setting: {s.seeds} ({per} with seed{'s' if s.seeds > 1 else ''} "
        f"{', '.join(str(cfg.seed + i) for i in range(s.seeds))}); settings swept: "
        + ", ".join(f"{counts[o]} {LABELS[o]}" for o in OPTIMISERS) + "; the kept setting has the lowest final test error.",
        "",
        (f"* data: {cfg.dataset}, {cfg.per_class or 'all'} per class (subset seed {cfg.data_seed}): {c.train_size} training, "
        f"{c.test_size} test examples"),
        f"* model: MLP without batch norm, {cfg.model_kwargs.get('depth')} hidden layers of {cfg.model_kwargs.get('width')}",
        (f"* protocol (deepnet.train): {cfg.epochs} epochs, batch {cfg.batch_size}, momentum {cfg.momentum:g}, weight decay "
        f"{cfg.weight_decay:g}, lr x{cfg.lr_decay:g} at {', '.join(f'{f:.3g}' for f in cfg.lr_milestones)} of the epochs"),
        (f"* K-FAC / corrected: {s.fisher} Fisher factors of the current batch every {s.refresh} steps, exact damped K-FAC "
        f"inverse; corrected solve by PCG preconditioned by it to relative residual {s.cg_tol:g}, at most {s.cg_maxiter} "
        "products per layer"),
        f"* timing: {c.device}, {c.threads} thread(s); wall time counts the training steps, not the evaluation",
        "",
        "| optimiser | kept setting | final test error (min, max) | test loss | ms / step | PCG products / step | training s |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in OPTIMISERS:
        b = best[o]
        lines.append(f"| {LABELS[o]} | {_setting(b)} | {b.final_test_error:.4f} ({b.final_test_error_range[0]:.4f}, "
                     f"{b.final_test_error_range[1]:.4f}) | {b.final_test_loss:.4f} | {b.step_ms:.1f} | {b.cg_products:.1f} | {b.seconds:.1f} |")
    lines += ["", "![test error against epochs and wall time](curves.png)", "", "Every run:", "",
              "| optimiser | lr | damping | seed | final test error | final train error | ms / step | diverged |",
              "|---|---|---|---|---|---|---|---|"]
    for r in c.runs:
        train_error = "-" if r.diverged else f"{r.train_error[-1]:.4f}"
        test_error = f"{r.final_test_error:.4f}" if math.isfinite(r.final_test_error) else "-"
        lines.append(f"| {LABELS[r.optimiser]} | {r.lr:g} | {'-' if r.damping is None else f'{r.damping:g}'} | {r.seed} | "
                     f"{test_error} | {train_error} | {r.step_ms:.1f} | {'yes' if r.diverged else 'no'} |")
    lines += ["", "Every number: `results.json`.", ""]
    return "\n".join(lines)


def write_comparison(out: str | Path, comparison: Comparison) -> RunFolder:
    """Write ``results.json``, then ``curves.png`` and ``report.md``, to ``out``."""
    folder = RunFolder(out)
    folder.write_json("results.json", comparison)
    folder.try_figure("curves.png", lambda: _curves_figure(comparison))
    folder.write_text("report.md", _report(comparison))
    return folder


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m deepnet optimise``."""
    d = OptimiseSettings(TrainConfig(model_kwargs={"batch_norm": False}))
    t = TrainConfig()
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=t.dataset, help="a deepnet.data name (default %(default)s)")
    data.add_argument("--data-root", default=None, metavar="DIR", help="folder holding the data set (default: as deepnet.data)")
    data.add_argument("--per-class", type=int, default=200, metavar="N", help="training examples per class (default %(default)s)")
    data.add_argument("--data-seed", type=int, default=t.data_seed, help="seed of the subset (default %(default)s)")
    net = parser.add_argument_group("model (the paper's MLP, no batch norm, reduced depth and width)")
    net.add_argument("--depth", type=int, default=4, help="hidden layers (default %(default)s; the paper: 8)")
    net.add_argument("--width", type=int, default=64, help="hidden units (default %(default)s; the paper: 2048)")
    proto = parser.add_argument_group("protocol (deepnet.train)")
    proto.add_argument("--epochs", type=int, default=15, help="default %(default)s")
    add_protocol_arguments(proto, t)
    proto.add_argument("--seed", type=int, default=t.seed, help="seed of the first run of each setting (default %(default)s)")
    proto.add_argument("--seeds", type=int, default=d.seeds, help="runs per setting, seeds --seed, --seed + 1, ... (default %(default)s)")
    sweep = parser.add_argument_group("sweep and preconditioner")
    sweep.add_argument("--sgd-lrs", type=float, nargs="+", default=list(d.sgd_lrs), help="SGD learning rates (default %(default)s)")
    sweep.add_argument("--kfac-lrs", type=float, nargs="+", default=list(d.kfac_lrs),
                       help="K-FAC and corrected learning rates (default %(default)s)")
    sweep.add_argument("--dampings", type=float, nargs="+", default=list(d.dampings), help="damping lambda (default %(default)s)")
    sweep.add_argument("--refresh", type=int, default=d.refresh, help="steps between factor refreshes T (default %(default)s)")
    sweep.add_argument("--fisher", default=d.fisher, choices=list(FISHER_TYPES), help="factor type (default %(default)s)")
    sweep.add_argument("--cg-tol", type=float, default=d.cg_tol, help="relative residual of the corrected PCG (default %(default)s)")
    sweep.add_argument("--cg-maxiter", type=int, default=d.cg_maxiter, help="PCG products per layer and step at most (default %(default)s)")
    run_ = parser.add_argument_group("run")
    run_.add_argument("--out", default=None, help="run folder (default runs/optimise-<dataset>-n<N>-s<seed>)")
    run_.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default %(default)s; timings are for one device)")
    run_.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    run_.add_argument("--quiet", action="store_true", help="no progress bar")


def settings_from_args(args: argparse.Namespace) -> OptimiseSettings:
    """The :class:`OptimiseSettings` of parsed ``optimise`` options (checked)."""
    train = TrainConfig(
        dataset=args.dataset, root=args.data_root, per_class=args.per_class, data_seed=args.data_seed, model="mlp",
        model_kwargs={"depth": check_int("--depth", args.depth, 0), "width": check_int("--width", args.width, 1), "batch_norm": False},
        epochs=args.epochs, seed=args.seed, **protocol_from_args(args),
    )
    return OptimiseSettings(
        train=train, sgd_lrs=tuple(args.sgd_lrs), kfac_lrs=tuple(args.kfac_lrs), dampings=tuple(args.dampings),
        refresh=args.refresh, fisher=args.fisher, cg_tol=args.cg_tol, cg_maxiter=args.cg_maxiter, seeds=args.seeds,
    )


def run(args: argparse.Namespace) -> int:
    """``python -m deepnet optimise``: every option and the run folder are checked before training."""
    settings = settings_from_args(args)
    if args.threads is not None:
        torch.set_num_threads(check_int("--threads", args.threads, 1))
    device = resolve_device(args.device)
    cfg = settings.train
    out = Path(args.out or f"runs/optimise-{cfg.dataset}-n{cfg.per_class}-s{cfg.seed}")
    with claim_run(out, "deepnet optimise", {"settings": settings, "device": str(device)}):
        comparison = compare(settings, device=device, show_progress=not args.quiet)
        write_comparison(out, comparison)
    print(_report(comparison).split("\n\n")[1])
    print(f"run folder: {out}")
    return 0
