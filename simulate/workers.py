"""Worker processes that die with their parent, and SIGTERM that stops a run like SIGINT.

This module imports nothing heavy: a spawned worker unpickles its initializer from here and
asks for its parent-death signal before it imports torch or Numba (seconds), so a parent
killed meanwhile still takes its workers along.

A worker asks the Linux kernel for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``)
and, on any system, watches its parent's pid from a daemon thread, so that a run killed with
SIGKILL leaves no worker (and so no resource tracker, which exits when its last client does).
:func:`stop_on_sigterm` turns SIGTERM into ``SystemExit(143)`` in the main thread: the pool is
terminated on the way out and no results file is written."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["die_with_parent", "init_worker", "set_threads", "stop_on_sigterm"]

_PR_SET_PDEATHSIG = 1
_WATCH_SECONDS = 0.5


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_WATCH_SECONDS)
    os._exit(1)  # the parent is gone: nobody will read our results


def die_with_parent(parent: int) -> None:
    """Make this process exit when process ``parent`` (its parent) dies: ``PR_SET_PDEATHSIG``
    on Linux, and a parent-pid watchdog thread everywhere (also covering a parent that died
    before the request)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watchdog", daemon=True).start()


def set_threads(threads: int) -> None:
    """Threads of torch and Numba in this process (numpy's BLAS reads its count from the
    environment when it loads: ``python -m simulate`` sets it first)."""
    import numba
    import torch

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def init_worker(threads: int, parent: int) -> None:
    """Initializer of a study worker: die with ``parent`` first, then import the numerics and
    set their thread counts."""
    die_with_parent(parent)
    set_threads(threads)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(128 + SIGTERM)`` in the main thread (as
    SIGINT raises ``KeyboardInterrupt``); the previous handler is restored after it. Outside
    the main thread it does nothing (Python delivers signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
