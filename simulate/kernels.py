"""Numba kernels of multinomial logistic regression (MLR), fused per sample.

Model: logits ``z_i = W x_i + b`` (``W`` is ``C x D``, ``b`` has length ``C``),
probabilities ``p_i = softmax(z_i)``, loss ``(1/N) sum_i [logsumexp(z_i) - z_{i,y_i}]``.

* ``loss_grad_{par,ser}`` -- loss, ``G = (1/N) sum_i (p_i - e_{y_i}) x_i^T`` and
  ``g_b = (1/N) sum_i (p_i - e_{y_i})`` in one pass over ``X``; stores ``p_i``.
* ``curvature_product_{par,ser}`` -- for ``k`` directions ``(V_j, v_j)`` (``C x D`` and ``C``),
  ``(1/N) sum_i A(p_i) u_ij x_i^T`` and ``(1/N) sum_i A(p_i) u_ij`` with
  ``u_ij = V_j x_i + v_j`` and ``A(p) = diag(p) - p p^T``: the Hessian of the mean
  cross-entropy (= its Gauss-Newton = the empirical Fisher) applied to ``(V_j, v_j)``.

Each sample is read once per call (per direction): its logits, softmax and
rank-one update are computed while ``x_i`` is in cache, where a BLAS formulation
reads ``X`` twice and writes ``N x C`` temporaries.

Determinism: samples are split into chunks that depend only on ``N``
(:func:`chunking`), each chunk accumulates into its own buffer, and the buffers
are summed in chunk order. Results are therefore bitwise identical for any
number of threads, and the parallel (``*_par``) and serial (``*_ser``) variants
agree bitwise. The serial variants exist for use inside an outer ``prange``
(many independent problems): nested parallel launches are not portable across
Numba's threading layers.

The inner loops use ``fastmath={"reassoc", "contract"}`` so that dot products
vectorise; the summation order is then fixed at compile time (same machine and
Numba build: same bits), and no NaN/Inf assumptions are made.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = [
    "chunking",
    "use_parallel",
    "loss_grad_par",
    "loss_grad_ser",
    "curvature_product_par",
    "curvature_product_ser",
]

_FASTMATH = {"reassoc", "contract"}
_MIN_CHUNK = 128
_MAX_CHUNKS = 64
# Multiply-adds per call below which a parallel launch costs more than it saves.
_PARALLEL_WORK = 1 << 18


@numba.njit(cache=True)
def chunking(num_samples: int) -> tuple[int, int]:
    """``(num_chunks, chunk_size)``: at most 64 chunks of at least 128 samples, a function of ``N`` only."""
    size = max(_MIN_CHUNK, -(-num_samples // _MAX_CHUNKS))
    return max(1, -(-num_samples // size)), size


def use_parallel(num_samples: int, work_per_sample: int) -> bool:
    """Whether to call a ``*_par`` kernel rather than its serial twin (same bits either way):
    more than one thread and one chunk, and at least ``2^18`` multiply-adds in all."""
    return (
        numba.get_num_threads() > 1
        and chunking(num_samples)[0] > 1
        and num_samples * work_per_sample >= _PARALLEL_WORK
    )


# Samples go in tiles of four: a row of W (or V) is loaded once for four dot products
# and a row of G (or out) is updated once with four rank-one terms, which cuts the
# memory traffic of the one-sample-at-a-time form by about a third (bench/mlr.py);
# the last ``< 4`` samples of a chunk go one by one. (Written out rather than through
# helper functions: the helpers measured 1.5x slower.)


@numba.njit(cache=True, fastmath=_FASTMATH)
def _loss_grad_chunk(X, labels, W, b, start, stop, P, G, gb):
    """Chunk ``[start, stop)``: adds ``(p_i - e_{y_i}) x_i^T`` into ``G`` and ``p_i - e_{y_i}``
    into ``gb``, writes ``p_i`` into ``P[i]``, returns ``sum_i logsumexp(z_i) - z_{i,y_i}``."""
    C, D = W.shape
    z = np.empty((4, C))  # logits, then r = p - e_y
    loss = 0.0
    i = start
    while i < stop:
        nt = 4 if i + 4 <= stop else 1
        for c in range(C):
            if nt == 4:
                x0, x1, x2, x3 = X[i], X[i + 1], X[i + 2], X[i + 3]
                s0 = s1 = s2 = s3 = b[c]
                for d in range(D):
                    w = W[c, d]
                    s0 += w * x0[d]
                    s1 += w * x1[d]
                    s2 += w * x2[d]
                    s3 += w * x3[d]
                z[0, c], z[1, c], z[2, c], z[3, c] = s0, s1, s2, s3
            else:
                s0 = b[c]
                for d in range(D):
                    s0 += W[c, d] * X[i, d]
                z[0, c] = s0
        for t in range(nt):
            zmax = -np.inf
            for c in range(C):
                zmax = max(zmax, z[t, c])
            total = 0.0
            for c in range(C):
                e = math.exp(z[t, c] - zmax)
                P[i + t, c] = e
                total += e
            y = labels[i + t]
            loss += zmax + math.log(total) - z[t, y]
            inv = 1.0 / total
            for c in range(C):
                p = P[i + t, c] * inv
                P[i + t, c] = p
                z[t, c] = p - 1.0 if c == y else p
                gb[c] += z[t, c]
        for c in range(C):
            if nt == 4:
                x0, x1, x2, x3 = X[i], X[i + 1], X[i + 2], X[i + 3]
                r0, r1, r2, r3 = z[0, c], z[1, c], z[2, c], z[3, c]
                for d in range(D):
                    G[c, d] += r0 * x0[d] + r1 * x1[d] + r2 * x2[d] + r3 * x3[d]
            else:
                r0 = z[0, c]
                for d in range(D):
                    G[c, d] += r0 * X[i, d]
        i += nt
    return loss


@numba.njit(cache=True, fastmath=_FASTMATH)
def _curvature_chunk(X, P, V, vb, start, stop, out, outb):
    """Chunk ``[start, stop)``: for each direction ``j`` adds ``r x_i^T`` into ``out[j]`` and
    ``r`` into ``outb[j]``, ``r = A(p_i) u``, ``u = V[j] x_i + vb[j]``. Directions are the
    outer loop so that ``V[j]`` and ``out[j]`` stay in cache while the chunk streams by."""
    k, C, D = V.shape
    u = np.empty((4, C))  # u, then r = A(p) u
    for j in range(k):
        i = start
        while i < stop:
            nt = 4 if i + 4 <= stop else 1
            for c in range(C):
                if nt == 4:
                    x0, x1, x2, x3 = X[i], X[i + 1], X[i + 2], X[i + 3]
                    s0 = s1 = s2 = s3 = vb[j, c]
                    for d in range(D):
                        v = V[j, c, d]
                        s0 += v * x0[d]
                        s1 += v * x1[d]
                        s2 += v * x2[d]
                        s3 += v * x3[d]
                    u[0, c], u[1, c], u[2, c], u[3, c] = s0, s1, s2, s3
                else:
                    s0 = vb[j, c]
                    for d in range(D):
                        s0 += V[j, c, d] * X[i, d]
                    u[0, c] = s0
            for t in range(nt):
                pu = 0.0
                for c in range(C):
                    pu += P[i + t, c] * u[t, c]
                for c in range(C):
                    u[t, c] = P[i + t, c] * (u[t, c] - pu)
                    outb[j, c] += u[t, c]
            for c in range(C):
                if nt == 4:
                    x0, x1, x2, x3 = X[i], X[i + 1], X[i + 2], X[i + 3]
                    r0, r1, r2, r3 = u[0, c], u[1, c], u[2, c], u[3, c]
                    for d in range(D):
                        out[j, c, d] += r0 * x0[d] + r1 * x1[d] + r2 * x2[d] + r3 * x3[d]
                else:
                    r0 = u[0, c]
                    for d in range(D):
                        out[j, c, d] += r0 * X[i, d]
            i += nt


@numba.njit(cache=True)
def _chunk_sum(parts, m):
    """``sum_k parts[k, m]`` in chunk order (the deterministic reduction)."""
    s = 0.0
    for k in range(parts.shape[0]):
        s += parts[k, m]
    return s


# The parallel kernels are called from Python only: a cached jitted function that
# calls a parallel one can crash when loaded from the cache (numba issue #8578).


@numba.njit(cache=True, parallel=True)
def loss_grad_par(X, labels, W, b, P, G, gb):
    """Mean loss; writes ``P`` (N x C), ``G`` (C x D) and ``gb`` (C) (no penalty). Parallel over chunks."""
    N = X.shape[0]
    C, D = W.shape
    nchunks, size = chunking(N)
    Gs = np.zeros((nchunks, C * D))
    gbs = np.zeros((nchunks, C))
    losses = np.zeros((nchunks, 1))
    for k in numba.prange(nchunks):
        losses[k, 0] = _loss_grad_chunk(
            X, labels, W, b, k * size, min(N, (k + 1) * size), P, Gs[k].reshape(C, D), gbs[k]
        )
    G1 = G.reshape(-1)
    for m in numba.prange(C * D):
        G1[m] = _chunk_sum(Gs, m) / N
    for c in range(C):
        gb[c] = _chunk_sum(gbs, c) / N
    return _chunk_sum(losses, 0) / N


@numba.njit(cache=True)
def loss_grad_ser(X, labels, W, b, P, G, gb):
    """Serial twin of :func:`loss_grad_par` (same chunks, same bits)."""
    N = X.shape[0]
    C, D = W.shape
    nchunks, size = chunking(N)
    Gs = np.zeros((nchunks, C * D))
    gbs = np.zeros((nchunks, C))
    losses = np.zeros((nchunks, 1))
    for k in range(nchunks):
        losses[k, 0] = _loss_grad_chunk(
            X, labels, W, b, k * size, min(N, (k + 1) * size), P, Gs[k].reshape(C, D), gbs[k]
        )
    G1 = G.reshape(-1)
    for m in range(C * D):
        G1[m] = _chunk_sum(Gs, m) / N
    for c in range(C):
        gb[c] = _chunk_sum(gbs, c) / N
    return _chunk_sum(losses, 0) / N


@numba.njit(cache=True, parallel=True)
def curvature_product_par(X, P, V, vb, out, outb):
    """``out[j] = (1/N) sum_i A(p_i) u_ij x_i^T``, ``outb[j] = (1/N) sum_i A(p_i) u_ij``,
    ``u_ij = V[j] x_i + vb[j]``; ``V, out`` are ``k x C x D``, ``vb, outb`` ``k x C``."""
    N = X.shape[0]
    k, C, D = V.shape
    nchunks, size = chunking(N)
    parts = np.zeros((nchunks, k * C * D))
    partsb = np.zeros((nchunks, k * C))
    for m in numba.prange(nchunks):
        _curvature_chunk(
            X, P, V, vb, m * size, min(N, (m + 1) * size), parts[m].reshape(k, C, D), partsb[m].reshape(k, C)
        )
    out1, outb1 = out.reshape(-1), outb.reshape(-1)
    for m in numba.prange(k * C * D):
        out1[m] = _chunk_sum(parts, m) / N
    for m in range(k * C):
        outb1[m] = _chunk_sum(partsb, m) / N


@numba.njit(cache=True)
def curvature_product_ser(X, P, V, vb, out, outb):
    """Serial twin of :func:`curvature_product_par` (same chunks, same bits)."""
    N = X.shape[0]
    k, C, D = V.shape
    nchunks, size = chunking(N)
    parts = np.zeros((nchunks, k * C * D))
    partsb = np.zeros((nchunks, k * C))
    for m in range(nchunks):
        _curvature_chunk(
            X, P, V, vb, m * size, min(N, (m + 1) * size), parts[m].reshape(k, C, D), partsb[m].reshape(k, C)
        )
    out1, outb1 = out.reshape(-1), outb.reshape(-1)
    for m in range(k * C * D):
        out1[m] = _chunk_sum(parts, m) / N
    for m in range(k * C):
        outb1[m] = _chunk_sum(partsb, m) / N
