"""Accumulation throughput of the cross-class accumulator against plain torch sums.

    python bench/structure.py                       # P = 10^6, C = 10, float64 and float32
    python bench/structure.py --dim 100000 --dtype float32

Each example brings C vectors of length P (row c' of ``v_{i,c,.}``); the sums are
``S[c, c'] += p_{i,c'} v_{i,c,c'}`` (C^2 x P), the cell weights ``P_{c,c'}``, and
(accumulator only, and the "+norms" reference) the weighted squared norms.
References measured in the same run on the same batches:

* ``index_add``: ``S.index_add_(0, labels, p[:, :, None] * v)``;
* ``matmul``: one product per batch, ``S.view(C, C P) += onehot^T (p v).view(b, C P)``.

Prints vectors per second (vectors of length P) and the ratio reference time /
accumulator time (> 1: the accumulator is faster). Memory: the C^2 sums take
C^2 P values (800 MB in float64 for P = 10^6, C = 10) and one batch b C P more.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from theory.structure import CrossClassAccumulator  # noqa: E402


def make_batches(num_batches: int, b: int, C: int, P: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(b, C, P, generator=gen, dtype=dtype)  # one data block, reused: data generation is not timed
    out = []
    for _ in range(num_batches):
        labels = torch.randint(0, C, (b,), generator=gen)
        probs = torch.softmax(torch.randn(b, C, generator=gen, dtype=dtype), dim=1)
        out.append((v, labels, probs))
    return out


class IndexAdd:
    def __init__(self, C, P, dtype, norms):
        self.S = torch.zeros(C, C, P, dtype=dtype)
        self.W = torch.zeros(C, C, dtype=dtype)
        self.Q = torch.zeros(C, C, dtype=dtype) if norms else None

    def update(self, v, labels, probs):
        self.S.index_add_(0, labels, probs[:, :, None] * v)
        self.W.index_add_(0, labels, probs)
        if self.Q is not None:
            self.Q.index_add_(0, labels, probs * torch.linalg.vector_norm(v, dim=2).square())


class Matmul:
    def __init__(self, C, P, dtype):
        self.C = C
        self.S = torch.zeros(C, C * P, dtype=dtype)
        self.W = torch.zeros(C, C, dtype=dtype)

    def update(self, v, labels, probs):
        onehot = torch.nn.functional.one_hot(labels, self.C).to(v.dtype)
        self.S.addmm_(onehot.T, (probs[:, :, None] * v).reshape(v.shape[0], -1))
        self.W.addmm_(onehot.T, probs)


class Accumulator:
    def __init__(self, C, P, dtype):
        self.acc = CrossClassAccumulator(C, weighted=True, dtype=dtype)

    def update(self, v, labels, probs):
        self.acc.update(v, labels, probs)


def run(args, dtype: torch.dtype) -> None:
    C, P, b = args.classes, args.dim, args.batch
    batches = make_batches(args.batches, b, C, P, dtype, args.seed)
    makers = {
        "accumulator (theory.structure)": lambda: Accumulator(C, P, dtype),
        "reference index_add": lambda: IndexAdd(C, P, dtype, norms=False),
        "reference index_add +norms": lambda: IndexAdd(C, P, dtype, norms=True),
        "reference matmul": lambda: Matmul(C, P, dtype),
    }
    times: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(args.repeats):  # interleaved, so that load changes hit every method alike
        for name, make in makers.items():
            impl = make()
            impl.update(*batches[0])  # warm-up (allocation, first touch of the sums)
            start = time.perf_counter()
            for batch in batches:
                impl.update(*batch)
            times[name].append((time.perf_counter() - start) / (len(batches) * b))
            del impl
    acc_time = statistics.median(times["accumulator (theory.structure)"])
    print(f"\nP = {P}, C = {C}, batch = {b} examples ({b * C} vectors), dtype = {str(dtype).split('.')[-1]}, "
          f"{args.batches} batches x {args.repeats} repeats, median; torch threads = {torch.get_num_threads()}")
    print(f"{'method':34s} {'ms/example':>11s} {'vectors/s':>10s} {'ref/acc':>8s}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:34s} {1e3 * t:11.1f} {C / t:10.1f} {t / acc_time:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=10**6, help="P, the length of each vector")
    parser.add_argument("--classes", type=int, default=10, help="C")
    parser.add_argument("--batch", type=int, default=16, help="examples per batch")
    parser.add_argument("--batches", type=int, default=4, help="timed batches per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["float64", "float32", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in (["float64", "float32"] if args.dtype == "both" else [args.dtype]):
        run(args, getattr(torch, name))


if __name__ == "__main__":
    main()
