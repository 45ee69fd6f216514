"""Peak memory of one job for the benchmarks, and their shared MLP set-up: on CUDA the peak allocated above the
allocation at the start; on the CPU (Linux) the growth of the peak resident set
(``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``) above the resident set at
the start (``VmRSS``), since torch's CPU allocations are invisible to ``tracemalloc``.
For the resident set to follow the live memory, large blocks must go straight to and
back to the OS: :func:`reexec_for_rss` restarts the script with
``MALLOC_MMAP_THRESHOLD_=65536`` (call it first in ``main``)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable

import torch

from deepnet.data import load_subset
from deepnet.models import MLP


def reexec_for_rss() -> None:
    """Re-execute the running script with ``MALLOC_MMAP_THRESHOLD_=65536`` (Linux, once)."""
    if sys.platform == "linux" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as handle:
        return int(re.search(rf"{key}:\s+(\d+) kB", handle.read()).group(1)) * 1024


def peak_rss_growth(job: Callable[[], object]) -> float:
    """Bytes by which the peak resident set grows above the current one while ``job`` runs
    (NaN where ``/proc/self/clear_refs`` is missing, i.e. off Linux)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return float("nan")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    base = _status_bytes("VmRSS")
    job()
    return float(_status_bytes("VmHWM") - base)


def peak_cuda_bytes(job: Callable[[], object], device: torch.device) -> float:
    """Peak CUDA memory allocated during ``job`` above the allocation at its start."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    job()
    torch.cuda.synchronize(device)
    return float(torch.cuda.max_memory_allocated(device) - base)


def peak_memory(job: Callable[[], object], device: torch.device) -> float:
    """Peak bytes of ``job`` on ``device``: CUDA allocations, else the resident-set growth."""
    return peak_cuda_bytes(job, device) if device.type == "cuda" else peak_rss_growth(job)


def run_mlp_bench(doc: str, bench_order: Callable[..., None]) -> None:
    """Parse the shared options, load the data and time ``bench_order`` on an MLP with
    batch norm, once in stored order and once with the batches sorted by class."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
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
