"""Benchmark of the closed forms in theory.mlr.

1. Lemma 8.1 matrix-free (``ExpectedFisherOperator.matmat``) against the dense
   matrix product ``G @ V`` with the same ``V`` (dense matrix built once, outside the
   timed region), and, at sizes where no dense matrix fits, against one copy of ``V``
   (a memory-bound floor: the operator reads ``V`` and writes ``A V``).
2. ``bayes_error`` per value against the closed form ``Phi(-t/sqrt 2)`` for C = 2
   (scipy.special.ndtr), with the largest difference.

Run: ``python bench/mlr_closed_forms.py [--threads N]``. Times are the best of
repeated runs (the least disturbed by other load on a shared machine); both sides
of every ratio use the same number of torch threads (default 1: on a loaded
machine, thread hand-offs of small parallel kernels dominate and vary wildly).
"""

from __future__ import annotations

import argparse
import timeit

import numpy as np
import scipy.special
import torch

from theory import mlr


def best_time(fn, repeat: int = 7) -> float:
    number = max(1, int(0.05 / max(timeit.timeit(fn, number=1), 1e-7)))
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def operator_table() -> None:
    print("Lemma 8.1 products, float64, CPU threads:", torch.get_num_threads())
    print(f"{'C':>5} {'D':>6} {'p':>8} {'k':>3} {'operator [ms]':>14} {'reference [ms]':>15} {'ratio ref/op':>13}  reference")
    gen = torch.Generator().manual_seed(0)
    for C, D in [(10, 100), (10, 400), (50, 100), (10, 100_000), (100, 10_000)]:
        p = C * D
        op = mlr.expected_fisher_operator(C, D, 4.0, 0.3)
        dense = torch.as_tensor(mlr.expected_fisher(C, D, 4.0, 0.3)) if p <= 5_000 else None
        for k in (1, C):
            V = torch.randn(p, k, generator=gen, dtype=torch.float64)
            t_op = best_time(lambda: op.matmat(V))
            if dense is not None:
                assert torch.allclose(op.matmat(V), dense @ V, rtol=1e-12, atol=1e-12)
                t_ref, name = best_time(lambda: dense @ V), "dense G @ V"
            else:
                t_ref, name = best_time(lambda: V.clone()), "copy of V"
            print(f"{C:>5} {D:>6} {p:>8} {k:>3} {1e3 * t_op:>14.3f} {1e3 * t_ref:>15.3f} {t_ref / t_op:>13.2f}  {name}")


def bayes_table() -> None:
    print("\nbayes_error, per value")
    t = np.linspace(0.0, 10.0, 200)
    t_quad = best_time(lambda: mlr.bayes_error(t, 2), repeat=3) / t.size
    t_closed = best_time(lambda: scipy.special.ndtr(-t / np.sqrt(2)), repeat=3) / t.size
    err = np.max(np.abs(mlr.bayes_error(t, 2) - scipy.special.ndtr(-t / np.sqrt(2))))
    print(f"  quadrature {1e6 * t_quad:.1f} us, closed form (C=2) {1e6 * t_closed:.3f} us, "
          f"ratio {t_quad / t_closed:.0f}, max |difference| {err:.1e}")
    for C in (10, 1000):
        per = best_time(lambda: mlr.bayes_error(t, C), repeat=3) / t.size
        print(f"  C={C}: quadrature {1e6 * per:.1f} us per value")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    torch.set_num_threads(parser.parse_args().threads)
    operator_table()
    bayes_table()
