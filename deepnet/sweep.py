"""How the outliers, the bump and the bulk of ``G`` move during training and with the
training-set size (1811.07062; Papyan 2020, Fig. 6).

``python -m deepnet sweep --out DIR`` trains one network per per-class size ``n`` (log
spaced, :func:`deepnet.train.train` with ``save_epochs``) and measures, at every saved
epoch of the largest size and at the end of training of every size, the structure of
``G = class + cross + within + diag`` (:func:`deepnet.structure.decompose_gradients`):

* outliers: the ``C`` eigenvalues of the class part ``(1/N) sum_c N_c g_c g_c^T``;
* bump edge: the largest eigenvalue of the cross part (the ``C(C-1)`` cross-class means);
* bulk: the largest eigenvalue of the within part and its mean eigenvalue ``tr / P``;
* and the top ``C + 1`` eigenvalues of ``G`` itself.

One sub-run folder per point (``size-NNNN/`` training folders, ``point-<name>/`` with
``point.json`` written last); a rerun after a kill skips the finished points (the
training resumes from its last checkpoint). ``results.json`` then ``sweep.png``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from theory.checks import ArgumentError, check_int
from theory.figures import figure_legend, new_figure, set_labels
from theory.progress import progress
from theory.runs import RunFolder, claim_run
from theory.spectral import top_eigenpairs

from .analysis import load_analysis
from .operators import EmpiricalRisk
from .structure import decompose_gradients
from .train import CHECKPOINT, TrainConfig, check_save_epochs, epoch_checkpoint, resolve_device, train

__all__ = ["SweepResult", "add_arguments", "measure_point", "run", "run_sweep", "check_sizes", "sweep_figure"]

POINT = "point.json"


@dataclass(frozen=True)
class SweepResult:
    """The points of a sweep: ``epochs`` (of the largest size) and ``sizes`` (per class, at
    the end of training), each a dict of measures; ``computed``: the points measured in
    this call (the others were finished before and read back)."""

    epochs: dict[int, dict[str, Any]]
    sizes: dict[int, dict[str, Any]]
    computed: tuple[str, ...]


def check_sizes(name: str, value: Any) -> tuple[int, ...]:
    """``value`` (ints, or ``"n1,n2,..."``) as strictly increasing per-class sizes >= 1."""
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ArgumentError(f"{name}: expected comma-separated per-class sizes such as 8,16,32, got {value!r}") from None
    sizes = tuple(check_int(name, v, 1) for v in value)
    if not sizes or any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ArgumentError(f"{name}: expected strictly increasing per-class sizes, got {list(sizes)}")
    return sizes


def measure_point(checkpoint: str | Path, *, device: str | None = None, batch_size: int = 500, seed: int = 0) -> dict[str, Any]:
    """The outliers, bump edge and bulk of ``G`` of one checkpoint on its training data (see
    the module docstring); float64 products."""
    model, data, num_classes, _config = load_analysis(checkpoint, "train", device, sort_by_class=True)
    risk = EmpiricalRisk(model, data, batch_size=batch_size, num_classes=num_classes, dtype=torch.float64)
    dec = decompose_gradients(risk)
    C, P = num_classes, risk.size
    outliers = dec.class_part.eigenpairs(min(C, dec.class_part.rank))[0]
    bump = dec.cross_part.eigenpairs(1)[0] if dec.cross_part.rank else np.zeros(1)
    within = dec.within_part.as_operator()
    bulk_edge = top_eigenpairs(within, 1, seed=seed).eigenvalues
    top = top_eigenpairs(dec.total_operator(), min(C + 1, P), seed=seed).eigenvalues
    return {
        "outliers": outliers, "bump_edge": float(bump[0]), "bulk_edge": float(bulk_edge[0]),
        "bulk_mean": float(dec.within_part.trace / P), "G_top": top, "num_examples": risk.num_data, "num_parameters": P,
    }


def run_sweep(
    config: TrainConfig,
    out: str | Path,
    sizes: Sequence[int],
    save_epochs: Sequence[int],
    *,
    device: str | None = None,
    batch_size: int = 500,
    show_progress: bool = True,
) -> SweepResult:
    """Train ``config`` with ``per_class = n`` for each ``n`` in ``sizes`` (folders
    ``out/size-NNNN``, keeping ``save_epochs``) and measure every point (:func:`measure_point`)
    whose ``point.json`` is missing. Checked before any work: ``sizes`` increasing,
    ``save_epochs`` increasing within ``config.epochs``."""
    sizes = check_sizes("sizes", sizes)
    save_epochs = check_save_epochs("save_epochs", save_epochs, config.epochs)
    out = Path(out)
    device = str(resolve_device(device))
    points: list[tuple[str, Path]] = []
    for n in sizes:
        folder = out / f"size-{n:04d}"
        keep = save_epochs if n == sizes[-1] else ()
        if not all((folder / f).exists() for f in (CHECKPOINT, *map(epoch_checkpoint, keep))) or not _finished(folder, config.epochs):
            train(TrainConfig.from_dict({**config.to_dict(), "per_class": n}), folder, device=device,
                  save_epochs=keep, show_progress=show_progress)
        points.append((f"size-{n:04d}", folder / CHECKPOINT))
    points += [(f"epoch-{e:03d}", out / f"size-{sizes[-1]:04d}" / epoch_checkpoint(e)) for e in save_epochs]
    computed, values = [], {}
    for name, checkpoint in progress(points, desc="sweep: structure of G per point", enabled=show_progress):
        folder = out / f"point-{name}"
        if not (folder / POINT).exists():
            RunFolder(folder).write_json(POINT, {"checkpoint": str(checkpoint), **measure_point(checkpoint, device=device, batch_size=batch_size)})
            computed.append(name)
        values[name] = json.loads((folder / POINT).read_text())
    return SweepResult(
        epochs={e: values[f"epoch-{e:03d}"] for e in save_epochs},
        sizes={n: values[f"size-{n:04d}"] for n in sizes},
        computed=tuple(computed),
    )


def _finished(folder: Path, epochs: int) -> bool:
    log = folder / "log.json"
    return log.exists() and len(json.loads(log.read_text())["history"]) == epochs


def sweep_figure(result: SweepResult, title: str = "") -> Any:
    """Outliers (smallest and largest of the ``C``), bump edge, bulk edge and bulk mean of
    ``G`` against epoch (left) and against the per-class size (right), log scales."""
    fig, axes = new_figure(1, 2, layout="constrained")
    for ax, series, xlabel in ((axes[0], result.epochs, "epoch"), (axes[1], result.sizes, "examples per class")):
        x = np.array(sorted(series))
        rows = [series[k] for k in x]
        ax.fill_between(x, [min(r["outliers"]) for r in rows], [max(r["outliers"]) for r in rows], alpha=0.3, label="outliers (class part)")
        for key, label in (("bump_edge", "bump edge (cross part)"), ("bulk_edge", "bulk edge (within part)"), ("bulk_mean", "bulk mean tr/P")):
            ax.plot(x, [r[key] for r in rows], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(x, [str(v) for v in x], minor=False)
        ax.set_xticks([], minor=True)
        set_labels(ax, xlabel, "eigenvalue of G")
    figure_legend(fig, axes)
    if title:
        fig.suptitle(title)
    return fig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/sweep", help="run folder (default: %(default)s)")
    parser.add_argument("--sizes", default="8,16,32", metavar="N1,N2,...",
                        help="per-class training-set sizes, strictly increasing, log spaced (default: %(default)s)")
    parser.add_argument("--save-epochs", default="1,2,4,8", metavar="E1,E2,...",
                        help="epochs of the largest size measured, increasing, at most --epochs (default: %(default)s)")
    parser.add_argument("--dataset", default="mnist-5k", help="data set of python -m deepnet train (default: %(default)s)")
    parser.add_argument("--depth", type=int, default=2, help="MLP hidden layers (default: %(default)s)")
    parser.add_argument("--width", type=int, default=32, help="MLP hidden units (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs per size (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate (default: %(default)s)")
    parser.add_argument("--train-batch-size", type=int, default=32, help="training batch size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and subsets (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=500, help="examples per batch of the measurements (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    epochs = check_int("--epochs", args.epochs, 1)
    sizes = check_sizes("--sizes", args.sizes)
    save_epochs = check_save_epochs("--save-epochs", args.save_epochs, epochs)
    batch_size = check_int("--batch-size", args.batch_size, 1)
    config = TrainConfig(dataset=args.dataset, per_class=sizes[-1], model="mlp",
                         model_kwargs={"depth": check_int("--depth", args.depth, 1), "width": check_int("--width", args.width, 1)},
                         epochs=epochs, lr=args.lr, batch_size=check_int("--train-batch-size", args.train_batch_size, 1),
                         seed=check_int("--seed", args.seed, 0), data_seed=args.seed)
    settings = {"config": config.to_dict(), "sizes": sizes, "save_epochs": save_epochs, "batch_size": batch_size}
    with claim_run(args.out, "deepnet sweep", settings) as folder:
        result = run_sweep(config, folder.path, sizes, save_epochs, device=args.device, batch_size=batch_size,
                           show_progress=not args.quiet)
        folder.write_json("results.json", {"settings": settings, "epochs": result.epochs, "sizes": result.sizes,
                                           "computed": result.computed})
        folder.save_figure("sweep.png", sweep_figure(result, f"Structure of G: {config.dataset}, MLP {config.model_kwargs}"))
    print(f"sweep: {len(result.computed)} points measured, {len(result.sizes) + len(result.epochs) - len(result.computed)} "
          f"read back; wrote {folder.path}")
    return 0
