"""Data-parallel products: time of one G / Hessian product over a fixed data set with
1 process and with ``--world-size`` Gloo processes on this machine, and the share of
the all-reduce.

The data set (a class-balanced Fashion-MNIST subset, ``--per-class`` per class) and
the model (an MLP, ``--depth`` x ``--width``, eval mode, float32) are the same in
every run; with ``W`` processes each rank holds its class-balanced ``1/W`` shard and a
product is ``all_reduce(N_r A_r v) / N`` (:class:`deepnet.distributed.DistributedOperator`).
Per operator, the best of ``--repeats`` products (one column, after one warm-up) of

* ``1 proc``: the plain operator in one process;
* ``W procs``: the data-parallel product, timed on rank 0 from a barrier to its end,
  split into ``local`` (the rank-0 shard's product) and ``all-reduce`` (the
  collective, including any wait for the slower rank), both of the same product;
* ``pure reduce``: an all-reduce of the same ``(P, 1)`` tensor right after a
  barrier (communication only).

``speed-up = 1 proc / W procs``; ``share = all-reduce / W procs``. Then, on paper,
for ``W'`` (``--project``) ranks of this speed and interconnect:
``T(W') = T_1 / W' + 2 (W' - 1) / W' * c`` with ``T_1`` the one-process product and
``c`` the measured pure reduce over ``2 (W - 1) / W`` (a ring all-reduce moves
``2 (W-1)/W`` times the vector through each rank): perfect division of the compute
plus a communication that grows towards ``2 c``; ``T_1 / c`` is the measured
compute / communication ratio.

Run: ``python bench/distributed.py [--per-class 50] [--batch-size 250] [--repeats 5] [--world-size 2]``.
Each process uses one thread (``torch.set_num_threads(1)``): with ``W`` processes on
``W`` cores the comparison is between 1 and ``W`` cores. On a machine shared with
other jobs the timings are noisy; read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deepnet.data import load_subset
from deepnet.distributed import (
    DistributedContext,
    DistributedOperator,
    all_reduce_sum,
    init_distributed,
    shard_dataset,
)
from deepnet.models import MLP
from deepnet.operators import EmpiricalRisk, curvature_operator

KINDS = ("G", "hessian")


def _problem(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    bundle = load_subset("fashion-mnist", per_class=args.per_class, seed=0)
    torch.manual_seed(0)
    model = MLP(bundle.in_shape, bundle.num_classes, depth=args.depth, width=args.width, batch_norm=False).eval()
    return model, bundle.train.images, bundle.train.labels


def measure(ctx: DistributedContext, model, X, Y, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Per operator, the fastest of ``args.repeats`` products (each from a barrier): its
    total seconds and, data-parallel, its split into the shard's product and the
    all-reduce; then the fastest pure all-reduce of a ``(P, 1)`` tensor."""
    Xs, Ys = shard_dataset(X, Y, ctx)
    risk = EmpiricalRisk(model, (Xs, Ys), batch_size=args.batch_size)
    v = torch.randn(risk.size, 1, generator=torch.Generator().manual_seed(0))
    out = {}
    for kind in KINDS:
        local = curvature_operator(kind, risk)
        op = DistributedOperator(local, ctx) if ctx.active else local
        op.matmat(v)  # warm-up (and the first product's check of v)
        runs = []
        for _ in range(args.repeats):
            if ctx.active:
                dist.barrier()
            start = time.perf_counter()
            op.matmat(v)
            total = time.perf_counter() - start
            runs.append((total, getattr(op, "local_seconds", total), getattr(op, "reduce_seconds", 0.0)))
        total, own, reduce = min(runs)
        pure = []
        buffer = torch.zeros(risk.size, 1)
        for _ in range(args.repeats if ctx.active else 0):
            dist.barrier()
            start = time.perf_counter()
            all_reduce_sum(buffer, ctx)
            pure.append(time.perf_counter() - start)
        out[kind] = {"total": total, "local": own, "reduce": reduce, "pure": min(pure, default=0.0),
                     "num_data": risk.num_data, "size": risk.size}
    return out


def _worker(rank: int, world_size: int, port: int, folder: str, args: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = init_distributed("cpu", timeout_s=600)
    result = measure(ctx, *_problem(args), args)
    if ctx.is_writer:
        torch.save(result, Path(folder) / "result.pt")
    dist.barrier()
    dist.destroy_process_group()


def run_parallel(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """:func:`measure` on ``args.world_size`` spawned Gloo ranks (rank 0's numbers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_worker, args=(args.world_size, port, folder, args), nprocs=args.world_size,
                           start_method="spawn")
        return torch.load(Path(folder) / "result.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=50, help="examples per class (default: 50, N = 500)")
    parser.add_argument("--batch-size", type=int, default=250, help="examples per batch of a product (default: 250)")
    parser.add_argument("--depth", type=int, default=2, help="hidden layers of the MLP (default: 2)")
    parser.add_argument("--width", type=int, default=128, help="units per hidden layer (default: 128)")
    parser.add_argument("--repeats", type=int, default=5, help="products timed per case, the best kept (default: 5)")
    parser.add_argument("--world-size", type=int, default=2, help="processes of the data-parallel run (default: 2)")
    parser.add_argument("--project", type=int, default=8, help="ranks of the on-paper projection (default: 8)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, X, Y = _problem(args)
    single = measure(DistributedContext.single(), model, X, Y, args)
    parallel = run_parallel(args)
    W, Wp = args.world_size, args.project
    size = single["G"]["size"]
    print(f"One product (1 column) over N = {X.shape[0]} Fashion-MNIST examples, MLP {args.depth} x {args.width} "
          f"(P = {size:,}), float32, batches of {args.batch_size}, best of {args.repeats}; {W} Gloo processes on "
          f"loopback, 1 thread each; {os.cpu_count()} CPU cores.")
    print()
    print(f"| operator | 1 proc (s) | {W} procs (s) | speed-up | local (s) | all-reduce (s) | share | pure reduce (s) "
          f"| compute / comm. | on paper, {Wp} ranks: speed-up | reduce share |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in KINDS:
        one, many = single[kind]["total"], parallel[kind]
        reduce = many["reduce"]
        per_vector = many["pure"] / (2 * (W - 1) / W)
        comm = 2 * (Wp - 1) / Wp * per_vector
        projected = one / Wp + comm
        print(f"| {kind} | {one:.4f} | {many['total']:.4f} | {one / many['total']:.2f} | {many['local']:.4f} "
              f"| {reduce:.4f} | {reduce / many['total']:.1%} | {many['pure']:.5f} | {one / per_vector:.0f} | {one / projected:.2f} "
              f"| {comm / projected:.1%} |")


if __name__ == "__main__":
    main()
