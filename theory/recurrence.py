"""Fused CPU kernels for the Lanczos three-term recurrence on ``(p, s)`` blocks.

With ``s`` independent starts stored as the columns of row-major ``(p, s)``
tensors, column-wise reductions in torch stride through memory; these Numba
kernels instead walk the rows once. Each kernel splits the rows into chunks
that depend only on ``p`` and adds the chunk sums in a fixed order, so the
results are bitwise the same for any number of threads. Sums are accumulated
in float64 whatever the dtype of the vectors. GPU tensors, non-contiguous ones
and a single float64 column (where BLAS is best) take the plain torch path.

* :func:`column_dots`: ``a_j = sum_i q_ij w_ij``.
* :func:`recurrence_step`: ``w <- w - q diag(a) - q_prev diag(b)`` in place, and
  returns ``|w_j|^2``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numba
import numpy as np
import torch

__all__ = ["column_dots", "column_norms", "recurrence_step"]

_CHUNK = 1 << 15


@numba.njit(parallel=True, cache=True)
def _dots(X, Y):  # pragma: no cover - compiled
    p, s = X.shape
    chunks = (p + _CHUNK - 1) // _CHUNK
    partial = np.zeros((chunks, s))
    for c in numba.prange(chunks):
        for i in range(c * _CHUNK, min(p, (c + 1) * _CHUNK)):
            for j in range(s):
                partial[c, j] += np.float64(X[i, j]) * np.float64(Y[i, j])
    out = np.zeros(s)
    for c in range(chunks):
        out += partial[c]
    return out


@numba.njit(parallel=True, cache=True)
def _step(W, Q, Qp, a, b):  # pragma: no cover - compiled
    p, s = W.shape
    chunks = (p + _CHUNK - 1) // _CHUNK
    partial = np.zeros((chunks, s))
    for c in numba.prange(chunks):
        for i in range(c * _CHUNK, min(p, (c + 1) * _CHUNK)):
            for j in range(s):
                w = W[i, j] - a[j] * Q[i, j] - b[j] * Qp[i, j]
                W[i, j] = w
                partial[c, j] += np.float64(w) * np.float64(w)
    out = np.zeros(s)
    for c in range(chunks):
        out += partial[c]
    return out


def _fused(*tensors: torch.Tensor) -> bool:
    """Whether the Numba kernels apply: contiguous CPU blocks, except a single
    float64 column, where BLAS (``ddot``, ``daxpy``) is already optimal."""
    X = tensors[0]
    single_float64 = X.shape[1] == 1 and X.dtype == torch.float64
    return not single_float64 and all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)


@contextmanager
def _torch_thread_count() -> Iterator[None]:
    """Run a kernel on torch's thread count and leave that count as it was: Numba's
    OpenMP layer shares the OpenMP runtime with torch, and its first launch would
    otherwise set torch's count to Numba's (so that the same call in one process gave
    float32 numbers differing in the last bits before and after a kernel ran)."""
    threads = torch.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def column_dots(X: torch.Tensor, Y: torch.Tensor) -> np.ndarray:
    """``(x_j^T y_j)_j`` in float64 for ``(p, s)`` tensors ``X, Y``."""
    if _fused(X, Y):
        with _torch_thread_count():
            return _dots(X.numpy(), Y.numpy())
    if X.shape[1] == 1 and X.dtype == torch.float64:
        return torch.dot(X[:, 0], Y[:, 0]).reshape(1).cpu().numpy()
    return (X * Y).sum(dim=0, dtype=torch.float64).cpu().numpy()


def recurrence_step(W: torch.Tensor, Q: torch.Tensor, Q_prev: torch.Tensor, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """In place ``W <- W - Q diag(a) - Q_prev diag(b)``; returns ``|w_j|^2`` in float64."""
    if _fused(W, Q, Q_prev):
        np_dtype = W.numpy().dtype
        with _torch_thread_count():
            return _step(W.numpy(), Q.numpy(), Q_prev.numpy(), a.astype(np_dtype), b.astype(np_dtype))
    a_t = torch.as_tensor(a, dtype=W.dtype, device=W.device)[None, :]
    b_t = torch.as_tensor(b, dtype=W.dtype, device=W.device)[None, :]
    W.addcmul_(Q, a_t, value=-1.0).addcmul_(Q_prev, b_t, value=-1.0)
    return (torch.linalg.vector_norm(W, dim=0, dtype=torch.float64) ** 2).cpu().numpy()


def column_norms(W: torch.Tensor) -> np.ndarray:
    """``(|w_j|)_j`` in float64 for a ``(p, s)`` tensor; where the plain sum of squares
    overflows (``|w_j| > ~1e154``) the norm of ``w_j / max|w_j|`` times ``max|w_j|``."""
    norms = torch.linalg.vector_norm(W, dim=0, dtype=torch.float64)
    if not bool(torch.isfinite(norms).all()):
        peak = W.abs().amax(dim=0).to(torch.float64)
        scaled = peak * torch.linalg.vector_norm(W.double() / peak.clamp_min(torch.finfo(torch.float64).tiny), dim=0)
        norms = torch.where(torch.isfinite(norms), norms, scaled)
    return norms.cpu().numpy()
