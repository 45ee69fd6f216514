"""Cost of the per-layer features + errors pass (``deepnet.layers``) for all layers, in
units of one plain gradient pass over the same data (``EmpiricalRisk.loss_and_gradient``);
goal: at most ``C + 2``.

For an MLP with batch norm (eval mode) on a class-balanced Fashion-MNIST subset, times

* ``layer passes``: one forward and the C backward passes to the outputs of every
  Linear layer per class batch (``layer_passes``, batched over c'), nothing kept;
* ``statistics, sums only``: the same streamed into the accumulators (C sums per layer
  for the features, C^2 for the errors) without dense second moments (``dense_limit=1``);
* ``statistics, dense``: with the dense ``d x d`` second moments of features and errors
  (the default for ``d <= 3000``; they cost about ``(C + 1) / 3`` gradient passes more);

in the stored (mixed-class) order and sorted by class. Timings are the best of
``--repeats`` interleaved rounds. Peak memory of each job: on CUDA the peak allocated
above the start; on the CPU (Linux) the growth of the peak resident set above the
resident set at the start (torch's CPU allocations are invisible to ``tracemalloc``; the
script re-executes itself with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed blocks
leave the resident set). Memory is measured after the timings (warm).

Run: ``python bench/layers.py [--per-class 300] [--batch-size 500] [--threads 1]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from _memory import peak_memory, reexec_for_rss, run_mlp_bench
from products import best_times

from deepnet.layers import layer_passes, layer_statistics, select_layers
from deepnet.operators import EmpiricalRisk


def bench_order(label: str, model: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor, args: argparse.Namespace) -> None:
    risk = EmpiricalRisk(model, (X, Y), batch_size=args.batch_size)
    C = risk.num_classes
    modules = select_layers(risk.model)

    def passes_only() -> None:
        for _ in layer_passes(risk, modules):
            pass

    jobs: dict[str, Callable[[], object]] = {
        "gradient pass": risk.loss_and_gradient,
        "layer passes": passes_only,
        "statistics, sums only": lambda: layer_statistics(risk, dense_limit=1),
        "statistics, dense": lambda: layer_statistics(risk),
    }
    t = best_times(jobs, args.repeats)
    peaks = {name: peak_memory(job, risk.device) for name, job in jobs.items()}
    grad = t["gradient pass"]
    widths = [m.in_features for m in modules.values()] + [modules[list(modules)[-1]].out_features]
    sums = sum(C * m.in_features + C * C * m.out_features for m in modules.values()) * X.element_size()
    dense = sum(m.in_features**2 + m.out_features**2 for m in modules.values()) * X.element_size()
    print(f"\n== {label}: layer widths {widths}, N = {risk.num_data}, C = {C}, batch {args.batch_size}, {risk.dtype}, "
          f"{risk.device}; one gradient pass {1e3 * grad:.1f} ms; accumulator sums {sums / 2**20:.2f} MiB, "
          f"dense second moments {dense / 2**20:.2f} MiB")
    head = f"{'job':<24s} {'ms':>9s} {'/gradient':>10s} {'/(C+2)':>7s} {'peak MiB':>9s}"
    print(head)
    print("-" * len(head))
    for name, seconds in t.items():
        print(f"{name:<24s} {1e3 * seconds:9.1f} {seconds / grad:10.2f} {seconds / grad / (C + 2):7.2f} {peaks[name] / 2**20:9.1f}")


def main() -> None:
    reexec_for_rss()
    run_mlp_bench(__doc__, bench_order)

if __name__ == "__main__":
    main()
