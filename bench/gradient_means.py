"""Cost of the C^2 cross-class gradient means of a network (``deepnet.passes.gradient_sums``)
in units of one plain gradient pass over the same data (``EmpiricalRisk.loss_and_gradient``).

For an MLP with batch norm (eval mode) on a class-balanced Fashion-MNIST subset, times

* ``means, batched over c'``: one forward and the C backward passes per class batch as
  one ``is_grads_batched`` call (goal: about C + 1 gradient passes);
* ``means, loop over c'``: the same C backward passes one at a time;
* ``squared norms``: the extra per-example passes (``torch.func`` ``vjp`` under ``vmap``)
  that make ``tr G`` exact, as the difference of a run with and without them;

once with the data in its stored (mixed-class) order, where each batch is split by
label into C sub-batches, and once sorted by class (class-pure batches). Timings are
the best of ``--repeats`` interleaved rounds. The peak memory of each job (measured after
the timings, ``bench/_memory.py``: CUDA allocations, or on the CPU the growth of the
peak resident set) is printed next to the goal ``C^2 P`` numbers (the sums) plus one
batch of inputs, and as a ratio to it.

Run: ``python bench/gradient_means.py [--per-class 300] [--batch-size 500] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
from _memory import peak_memory, reexec_for_rss
from products import best_times

from deepnet.data import load_subset
from deepnet.models import MLP
from deepnet.operators import EmpiricalRisk
from deepnet.passes import gradient_sums


def bench_order(label: str, model: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor, args: argparse.Namespace) -> None:
    risk = EmpiricalRisk(model, (X, Y), batch_size=args.batch_size)
    C, P = risk.num_classes, risk.size
    jobs: dict[str, Callable[[], object]] = {
        "gradient pass": risk.loss_and_gradient,
        "means, batched over c'": lambda: gradient_sums(risk, vectorize=True, squared_norms="none"),
        "means, loop over c'": lambda: gradient_sums(risk, vectorize=False, squared_norms="none"),
        "means + squared norms": lambda: gradient_sums(risk, vectorize=True, squared_norms="layers"),
    }
    t = best_times(jobs, args.repeats)
    t["squared norms (difference)"] = t["means + squared norms"] - t["means, batched over c'"]
    peaks = {name: peak_memory(job, risk.device) for name, job in jobs.items()}
    grad = t["gradient pass"]
    sums = C * C * P * X.element_size()
    batch = min(args.batch_size, len(Y)) * X[0].numel() * X.element_size()
    print(f"\n== {label}: P = {P:,}, N = {risk.num_data}, C = {C}, batch {args.batch_size}, {risk.dtype}, "
          f"{risk.device}; one gradient pass {1e3 * grad:.1f} ms; memory goal: the C^2 P sums {sums / 2**20:.1f} MiB "
          f"+ one batch {batch / 2**20:.1f} MiB = {(sums + batch) / 2**20:.1f} MiB")
    head = f"{'job':<28s} {'ms':>9s} {'/gradient':>10s} {'/(C+1)':>7s} {'peak MiB':>9s} {'/goal':>6s}"
    print(head)
    print("-" * len(head))
    for name, seconds in t.items():
        peak = peaks.get(name, float("nan"))
        print(f"{name:<28s} {1e3 * seconds:9.1f} {seconds / grad:10.2f} {seconds / grad / (C + 1):7.2f} "
              f"{peak / 2**20:9.1f} {peak / (sums + batch):6.2f}")


def main() -> None:
    reexec_for_rss()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist", help="a deepnet.data name (default fashion-mnist)")
    parser.add_argument("--root", default=None, help="data root (default: the usual places, see deepnet.data)")
    parser.add_argument("--per-class", type=int, default=300, help="training examples per class (default 300)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mlp-depth", type=int, default=2)
    parser.add_argument("--mlp-width", type=int, default=256)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = load_subset(args.dataset, root=args.root, per_class=args.per_class, seed=args.seed, device=device)
    X, Y = data.train.images.to(device), data.train.labels.to(device)
    print(f"{data.name}: {len(Y)} training images {tuple(data.in_shape)}, {data.num_classes} classes; "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}")
    torch.manual_seed(args.seed)
    model = MLP(data.in_shape, data.num_classes, depth=args.mlp_depth, width=args.mlp_width).to(device).eval()
    name = f"MLP {args.mlp_depth} x {args.mlp_width} (BN)"
    bench_order(f"{name}, stored order (batches split by label)", model, X, Y, args)
    order = torch.argsort(Y.cpu(), stable=True).to(device)
    bench_order(f"{name}, sorted by class (class-pure batches)", model, X[order], Y[order], args)


if __name__ == "__main__":
    main()
