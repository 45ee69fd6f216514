"""Cost of the K-FAC factors (``deepnet.kfac``) for all layers, in units of one plain
gradient pass over the same data (``EmpiricalRisk.loss_and_gradient``); goal: at most
``C + 2`` for the true-Fisher factors. And one matrix-free product of the class-aware
form (``C`` Kronecker terms) against one of K-FAC (one term), per layer.

For an MLP with batch norm (eval mode) on a class-balanced Fashion-MNIST subset sorted
by class (class-pure batches), times the factors with the true Fisher (one forward and
``C`` backward passes to the layer outputs per class batch, batched over ``c'``), the
Monte Carlo Fisher with one label and the empirical Fisher (one backward pass each);
then, per layer, a product of ``--columns`` columns with K-FAC and with the corrected
form. Timings are the best of ``--repeats`` interleaved rounds after a warm-up.

Then one optimiser step (``deepnet.preconditioner.KFACOptimizer``; the same MLP without batch
norm, a batch of ``--step-batch``): SGD, K-FAC and the corrected form, each timed over
``--refresh`` steps (one factor refresh among them, so the refresh is amortised as in
training), in units of one gradient pass over that batch, and the corrected / K-FAC ratio.

Run: ``python bench/kfac.py [--per-class 300] [--batch-size 500] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from products import best_times

from deepnet.data import load_subset
from deepnet.kfac import kfac_factors
from deepnet.models import MLP
from deepnet.operators import EmpiricalRisk
from deepnet.preconditioner import KFACOptimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist", help="a deepnet.data name (default fashion-mnist)")
    parser.add_argument("--root", default=None, help="data root (default: the usual places, see deepnet.data)")
    parser.add_argument("--per-class", type=int, default=300, help="training examples per class (default 300)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mlp-depth", type=int, default=2)
    parser.add_argument("--mlp-width", type=int, default=256)
    parser.add_argument("--columns", type=int, default=8, help="columns of the timed operator products")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-batch", type=int, default=128, help="batch of the timed optimiser steps (default 128)")
    parser.add_argument("--refresh", type=int, default=20, help="steps between factor refreshes T (default 20)")
    parser.add_argument("--damping", type=float, default=0.1)
    parser.add_argument("--cg-tol", type=float, default=1e-2)
    parser.add_argument("--cg-maxiter", type=int, default=10)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = load_subset(args.dataset, root=args.root, per_class=args.per_class, seed=args.seed, device=device)
    order = torch.argsort(data.train.labels.cpu(), stable=True).to(device)
    X, Y = data.train.images.to(device)[order], data.train.labels.to(device)[order]
    torch.manual_seed(args.seed)
    model = MLP(data.in_shape, data.num_classes, depth=args.mlp_depth, width=args.mlp_width).to(device).eval()
    risk = EmpiricalRisk(model, (X, Y), batch_size=args.batch_size)
    C = risk.num_classes
    print(f"{data.name}: N = {risk.num_data}, C = {C}, MLP {args.mlp_depth} x {args.mlp_width} (BN), batch {args.batch_size}, "
          f"{risk.dtype}, {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    jobs = {
        "gradient pass": risk.loss_and_gradient,
        "factors, true Fisher": lambda: kfac_factors(risk),
        "factors, true, looped c'": lambda: kfac_factors(risk, vectorize=False),
        "factors, Monte Carlo (1)": lambda: kfac_factors(risk, fisher="mc"),
        "factors, empirical": lambda: kfac_factors(risk, fisher="empirical"),
    }
    t = best_times(jobs, args.repeats)
    grad = t["gradient pass"]
    head = f"{'job (all layers)':<26s} {'ms':>9s} {'/gradient':>10s} {'/(C+2)':>7s}"
    print(head + "\n" + "-" * len(head))
    for name, seconds in t.items():
        print(f"{name:<26s} {1e3 * seconds:9.1f} {seconds / grad:10.2f} {seconds / grad / (C + 2):7.2f}")

    factors = kfac_factors(risk)
    gen = torch.Generator().manual_seed(0)
    head = f"\n{'layer':<10s} {'P_l':>9s} {'K-FAC ms':>9s} {'corr. ms':>9s} {'corr./K-FAC':>12s}"
    print(head + "\n" + "-" * (len(head) - 1))
    for name, layer in factors.layers.items():
        V = torch.randn(layer.size, args.columns, generator=gen).to(dtype=risk.dtype, device=device)
        ops = {which: layer.operator(which) for which in ("kfac", "corrected")}
        p = best_times({which: (lambda op=op, V=V: op.matmat(V)) for which, op in ops.items()}, max(args.repeats, 5))
        print(f"{name:<10s} {layer.size:9d} {1e3 * p['kfac']:9.3f} {1e3 * p['corrected']:9.3f} {p['corrected'] / p['kfac']:12.2f}")
    steps(args, X, Y, data.in_shape, C)


def steps(args: argparse.Namespace, X: torch.Tensor, Y: torch.Tensor, in_shape: tuple[int, ...], C: int) -> None:
    """Mean time of one optimiser step over ``--refresh`` steps, in gradient passes over the batch."""
    torch.manual_seed(args.seed)
    base = MLP(in_shape, C, depth=args.mlp_depth, width=args.mlp_width, batch_norm=False).to(X.device)
    pick = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(args.seed))[: args.step_batch].to(X.device)
    x, y = X[pick], Y[pick]
    T = args.refresh

    def gradient() -> None:
        base.zero_grad(set_to_none=True)
        F.cross_entropy(base(x), y).backward()

    def run(make: Callable[[torch.nn.Module], torch.optim.Optimizer], preconditioned: bool) -> Callable[[], None]:
        def job() -> None:
            model = copy.deepcopy(base)
            opt = make(model)
            for _ in range(T):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                if preconditioned:
                    opt.step(batch=(x, y))
                else:
                    opt.step()
        return job

    kw = {"lr": 1e-4, "damping": args.damping, "momentum": 0.9, "refresh": T, "cg_tol": args.cg_tol, "cg_maxiter": args.cg_maxiter}
    jobs = {
        "gradient pass": gradient,
        "SGD": run(lambda m: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9), False),
        "K-FAC": run(lambda m: KFACOptimizer(m, form="kfac", **kw), True),
        "corrected": run(lambda m: KFACOptimizer(m, form="corrected", **kw), True),
    }
    t = best_times(jobs, args.repeats)
    grad = t.pop("gradient pass")
    print(f"\none optimiser step: MLP {args.mlp_depth} x {args.mlp_width} (no BN), batch {args.step_batch}, factors every "
          f"{T} steps (amortised), damping {args.damping:g}, PCG tol {args.cg_tol:g} / at most {args.cg_maxiter} products per layer")
    head = f"{'optimiser':<12s} {'ms/step':>9s} {'/gradient':>10s} {'/K-FAC':>7s}"
    print(head + "\n" + "-" * len(head))
    for name, seconds in t.items():
        step = seconds / T
        print(f"{name:<12s} {1e3 * step:9.2f} {step / grad:10.2f} {seconds / t['K-FAC']:7.2f}")
    print(f"corrected / K-FAC step: {t['corrected'] / t['K-FAC']:.2f}")


if __name__ == "__main__":
    main()
