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

Run: ``python bench/kfac.py [--per-class 300] [--batch-size 500] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import sys

import torch
from products import best_times

from deepnet.data import load_subset
from deepnet.kfac import kfac_factors
from deepnet.models import MLP
from deepnet.operators import EmpiricalRisk


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


if __name__ == "__main__":
    main()
