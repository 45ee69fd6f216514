"""Cost of one Hessian / G / E product over a data set, in units of one plain
gradient pass over the same data, with curvlinops' products side by side.

For an MLP and a small CNN (VGG11 with narrow channels) on a class-balanced
Fashion-MNIST subset, in eval mode, every product ``A V`` (``V`` of shape
(P, k), all parameters) makes one pass over the same batches as the gradient
pass (``EmpiricalRisk.loss_and_gradient``). Timed for one vector (a Lanczos
step) and for a block of ``--columns`` vectors (Lanczos with several starts,
subspace iteration), per column. Timings are the best of ``--repeats`` rounds,
all jobs interleaved within each round so that machine load hits them alike;
``--clock cpu`` (the default on the CPU) times the CPU seconds of this process
(``time.process_time``), which with ``--threads 1`` is the compute of the job and
leaves out the time it waits for a core that other jobs hold (on a loaded 2-core
machine wall time ran 2-4x the CPU time and moved the ratios by up to 2x between
runs); ``--clock wall`` (the default on a GPU, whose work the CPU clock does not
see) times wall seconds.
The last column is ``|ours - theirs| / |theirs|`` for one vector (curvlinops
has no ``E``; its ``E v`` is ``H v - G v``, two products).

Run: ``python bench/products.py [--per-class 50] [--batch-size 250] [--repeats 2] [--threads 1] [--clock cpu]``; one
table of both models (defaults: the README's 2 x 128 MLP and a VGG11 of width 8, hidden 64, P = 154k)
(curvlinops from ``pip install -e ".[bench]"``; without it only our columns are shown).
On a machine shared with other jobs use ``--threads 1``: oversubscribed intra-op
threads make every timing erratic (there a gradient pass took 6x longer with 2
threads than with 1)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from deepnet.data import load_subset
from deepnet.models import MLP, VGG11
from deepnet.operators import (
    EmpiricalRisk,
    GaussNewtonOperator,
    HessianOperator,
    ResidualOperator,
)


def curvlinops_products(model: nn.Module, risk: EmpiricalRisk, X: torch.Tensor, Y: torch.Tensor, batch_size: int):
    """curvlinops' Hessian and GGN operators on the same batches (None if not installed)."""
    try:
        from curvlinops import GGNLinearOperator, HessianLinearOperator
    except ImportError:
        return None
    data = list(zip(X.split(batch_size), Y.split(batch_size)))
    params = [p for n, p in model.named_parameters() if n in risk.names]
    kwargs = dict(check_deterministic=False, num_data=risk.num_data)
    loss = nn.CrossEntropyLoss(reduction="mean")
    return {
        "hessian": HessianLinearOperator(model, loss, params, data, **kwargs),
        "G": GGNLinearOperator(model, loss, params, data, **kwargs),
    }


def curvlinops_available() -> bool:
    try:
        import curvlinops  # noqa: F401
    except ImportError:
        return False
    return True


def wall_clock() -> float:
    """``time.perf_counter`` after the GPU's queued work is done (when there is a GPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": wall_clock}


def best_times(jobs: dict[str, Callable[[], object]], repeats: int, clock: str = "cpu") -> dict[str, float]:
    """Best time of each job on ``clock`` (see :data:`CLOCKS`) over ``repeats`` interleaved
    rounds (after one warm-up)."""
    now = CLOCKS[clock]
    for job in jobs.values():
        job()
    best = {name: float("inf") for name in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            start = now()
            job()
            best[name] = min(best[name], now() - start)
    return best


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def bench_model(name: str, short: str, model: nn.Module, X: torch.Tensor, Y: torch.Tensor,
                args: argparse.Namespace) -> list[list[str]]:
    """Time every product of ``model`` and its gradient pass in one interleaved run; the table rows."""
    model = model.eval()
    risk = EmpiricalRisk(model, (X, Y), batch_size=args.batch_size)
    gen = torch.Generator().manual_seed(0)
    k = args.columns
    vectors = {1: torch.randn(risk.size, 1, generator=gen).to(risk.device),
               k: torch.randn(risk.size, k, generator=gen).to(risk.device)}
    cols = dict(max_columns=k)
    ours = {
        "hessian (double-backward)": HessianOperator(risk, method="double-backward", **cols),
        "hessian (forward-over-reverse)": HessianOperator(risk, method="forward-over-reverse", **cols),
        "G": GaussNewtonOperator(risk, **cols),
        "E (double-backward)": ResidualOperator(risk, method="double-backward", **cols),
        "E (forward-over-reverse)": ResidualOperator(risk, method="forward-over-reverse", **cols),
        "hessian (reverse-over-forward)": HessianOperator(risk, method="reverse-over-forward", **cols),
        "E (reverse-over-forward)": ResidualOperator(risk, method="reverse-over-forward", **cols),
    }
    peer = {"hessian (double-backward)": "hessian", "hessian (forward-over-reverse)": "hessian", "G": "G",
            "E (double-backward)": "E", "E (forward-over-reverse)": "E",
            "hessian (reverse-over-forward)": "hessian", "E (reverse-over-forward)": "E"}
    theirs = curvlinops_products(model, risk, X, Y, args.batch_size)

    jobs: dict[str, Callable[[], object]] = {"gradient": risk.loss_and_gradient}
    for cols_k, V in vectors.items():
        for label, op in ours.items():
            jobs[f"ours {label} {cols_k}"] = lambda op=op, V=V: op.matmat(V)
        if theirs is not None:
            for label, their in theirs.items():
                jobs[f"curvlinops {label} {cols_k}"] = lambda their=their, V=V: their @ V
    t = best_times(jobs, args.repeats, args.clock)
    for cols_k in vectors:  # curvlinops has no E: its E v is H v - G v, two products
        if theirs is not None:
            t[f"curvlinops E {cols_k}"] = t[f"curvlinops hessian {cols_k}"] + t[f"curvlinops G {cols_k}"]
    grad = t["gradient"]

    diffs: dict[str, str] = {}
    if theirs is not None:
        v = vectors[1]
        Hv, Gv = theirs["hessian"] @ v, theirs["G"] @ v
        ref = {"hessian": Hv, "G": Gv, "E": Hv - Gv}
        diffs = {label: f"{rel_diff(op.matmat(v), ref[peer[label]]):.1e}" for label, op in ours.items()}

    print(f"{name}: P = {risk.size:,} parameters, N = {risk.num_data} examples, batch {args.batch_size}, "
          f"{risk.dtype}, {risk.device}; one gradient pass {1e3 * grad:.1f} ms ({args.clock} time)")
    rows = []
    for cols_k in vectors:
        for label in ours:
            mine = t[f"ours {label} {cols_k}"] / cols_k
            row = [short, label, f"{cols_k}", f"{1e3 * mine:.1f}", f"{mine / grad:.2f}"]
            if theirs is not None:
                other = t[f"curvlinops {peer[label]} {cols_k}"] / cols_k
                row += [f"{1e3 * other:.1f}", f"{other / grad:.2f}", f"{mine / other:.2f}", diffs[label] if cols_k == 1 else ""]
            rows.append(row)
    return rows


def print_table(rows: list[list[str]], with_peer: bool) -> None:
    """One table: every model's rows, times per column and as ratios to its own gradient pass."""
    head = ["model", "product", "columns", "ours ms/col", "/grad"]
    if with_peer:
        head += ["curvlinops ms/col", "/grad", "ours/theirs", "rel diff"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    print("\n" + line(head))
    print("-" * len(line(head)))
    for r in rows:
        print(line(r))
    if not with_peer:
        print("(curvlinops not installed: its columns are left out; pip install -e \".[bench]\")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist", help="a deepnet.data name (default fashion-mnist)")
    parser.add_argument("--root", default=None, help="data root (default: the usual places, see deepnet.data)")
    parser.add_argument("--per-class", type=int, default=50, help="training examples per class (default 50)")
    parser.add_argument("--batch-size", type=int, default=250, help="examples per batch (default 250)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds, best kept (default 2)")
    parser.add_argument("--columns", type=int, default=4, help="columns of the block product (default 4)")
    parser.add_argument("--mlp-depth", type=int, default=2, help="MLP hidden layers (default 2, the README's small MLP)")
    parser.add_argument("--mlp-width", type=int, default=128, help="MLP width (default 128)")
    parser.add_argument("--cnn-width", type=int, default=8, help="VGG11 channel width (64 is the paper's)")
    parser.add_argument("--cnn-hidden", type=int, default=64, help="VGG11 classifier width (default 64; 4096 is the paper's)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--clock", choices=list(CLOCKS), default=None,
                        help="cpu: CPU seconds of this process, insensitive to other jobs on a shared machine; "
                             "wall: wall seconds (default: cpu on the CPU, wall on a GPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data subset, the weights and the vectors (default 0)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # rows appear as they are measured, also in a log file
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.clock = args.clock or ("cpu" if device.type == "cpu" else "wall")
    data = load_subset(args.dataset, root=args.root, per_class=args.per_class, seed=args.seed, device=device)
    X, Y = data.train.images.to(device), data.train.labels.to(device)
    print(f"{data.name}: {len(Y)} training images {tuple(data.in_shape)}, {data.num_classes} classes; "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}")
    torch.manual_seed(args.seed)
    mlp = MLP(data.in_shape, data.num_classes, depth=args.mlp_depth, width=args.mlp_width).to(device)
    torch.manual_seed(args.seed)
    cnn = VGG11(data.in_shape, data.num_classes, width=args.cnn_width, hidden=args.cnn_hidden).to(device)
    rows = bench_model(f"MLP {args.mlp_depth} x {args.mlp_width} (BN)", "MLP", mlp, X, Y, args)
    rows += bench_model(f"VGG11-BN width {args.cnn_width}, hidden {args.cnn_hidden}", "VGG11", cnn, X, Y, args)
    print_table(rows, with_peer=curvlinops_available())


if __name__ == "__main__":
    main()
