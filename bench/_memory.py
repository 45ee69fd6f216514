"""Peak memory of one job for the benchmarks: on CUDA the peak allocated above the
allocation at the start; on the CPU (Linux) the growth of the peak resident set
(``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``) above the resident set at
the start (``VmRSS``), since torch's CPU allocations are invisible to ``tracemalloc``.
For the resident set to follow the live memory, large blocks must go straight to and
back to the OS: :func:`reexec_for_rss` restarts the script with
``MALLOC_MMAP_THRESHOLD_=65536`` (call it first in ``main``)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

import torch


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
