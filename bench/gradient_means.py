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
from collections.abc import Callable

import torch
from _memory import peak_memory, reexec_for_rss, run_mlp_bench
from products import best_times

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
    run_mlp_bench(__doc__, bench_order)

if __name__ == "__main__":
    main()
