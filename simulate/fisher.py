"""The empirical Fisher of multinomial logistic regression and its extended gradients.

Parameter ordering (as in Lemma 8.1 of Papyan 2020 and ``theory.mlr``; docs/math.md#parameter-order): ``vec(W)`` lists
``W`` (C x D) in ``D`` blocks of size ``C``, entry ``W[c, d]`` at index ``d*C + c``
(``vec(W) = W.T.reshape(-1)``). With ``p_i = softmax(W x_i + b)`` and
``A(p) = diag(p) - p p^T``,

    G = (1/N) sum_i (x_i x_i^T) (x) A(p_i)                     (CD x CD),

the Fisher, the Gauss-Newton matrix and the Hessian of the mean cross-entropy in
``W`` (logits are linear in ``W``). The extended gradient of example ``i`` for the
cross-class ``c'`` is the gradient of its loss as if its label were ``c'``,

    g_{i,c'} = x_i (x) (p_i - e_{c'})                          (length DC),

and ``G = sum_{i,c'} (p_{i,c'}/N) g_{i,c'} g_{i,c'}^T`` (docs/math.md#the-matrices-h-g-and-e).

* :func:`mlr_fisher` -- ``G`` as a :class:`theory.operators.SymmetricOperator`,
  matrix-free: for a block ``V`` (CD x k) each column is a ``C x D`` matrix ``M``
  and ``G vec(M) = vec((1/N) sum_i A(p_i) M x_i x_i^T)``.
* :func:`mlr_fisher_dense` -- ``G`` as a dense matrix (small sizes).
* :func:`mlr_extended_gradients` -- the extended gradients in factored form
  ``(x_i, p_i)``: streamed as ``N_b x C x DC`` batches for the class/cross-class
  decompositions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from theory.checks import check_int, check_num_classes
from theory.operators import SymmetricOperator, torch_dtype

from . import kernels
from .dataset import check_features, check_labels
from .solver import mlr_probabilities

__all__ = [
    "MLRFisher",
    "mlr_fisher",
    "mlr_fisher_dense",
    "ExtendedGradients",
    "ExtendedGradientBatch",
    "mlr_extended_gradients",
]

# Backend choice of ``backend="auto"`` (bench/mlr.py): the fused Numba kernel beat two
# BLAS products by 1.6-4.7x for blocks of 1-2 columns (Lanczos, CG) and by 1.1-2.3x at
# 4 columns (one tie, D=200 on two threads); at 16 columns BLAS won for D >= 200.
_NUMBA_MAX_COLUMNS = 4
# Rows of X per BLAS block, so that the N x kC intermediates stay below ~64 MB.
_BLAS_BLOCK_ELEMENTS = 1 << 23


class MLRFisher(SymmetricOperator):
    """``G = (1/N) sum_i (x_i x_i^T) (x) A(p_i)`` on ``vec(W)`` (index ``d*C + c``), size ``CD``.

    ``X``: N x D examples, ``probs``: N x C probabilities ``p_i`` (rows on the simplex).
    ``backend``: ``"numba"`` (fused per-sample kernel; CPU, float64), ``"torch"``
    (two matrix products; any device and dtype) or ``"auto"`` (Numba for blocks of
    at most four columns on CPU in float64, torch otherwise).
    """

    def __init__(
        self,
        X: Any,
        probs: Any,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        backend: str = "auto",
    ):
        if backend not in ("auto", "numba", "torch"):
            raise ValueError(f"backend: expected 'auto', 'numba' or 'torch', got {backend!r}")
        X_t, P_t = torch.as_tensor(X), torch.as_tensor(probs)
        device = torch.device(device) if device is not None else X_t.device
        dtype = torch_dtype(dtype) if dtype is not None else torch.float64
        if X_t.ndim != 2 or min(X_t.shape) < 1:
            raise ValueError(f"X: expected a non-empty 2-D array (N x D), got shape {tuple(X_t.shape)}")
        N, D = X_t.shape
        if P_t.ndim != 2 or P_t.shape[0] != N:
            raise ValueError(f"probs: expected shape ({N}, C), got {tuple(P_t.shape)}")
        C = check_num_classes(P_t.shape[1])
        if not bool(torch.isfinite(X_t).all()):
            raise ValueError("X: contains NaN or Inf")
        if not bool(torch.isfinite(P_t).all()) or bool((P_t < 0).any()) or not bool(
            torch.allclose(P_t.sum(1).double(), torch.ones(N, dtype=torch.float64, device=P_t.device), atol=1e-6)
        ):
            raise ValueError("probs: expected rows of non-negative probabilities summing to one")
        if backend == "numba" and (device.type != "cpu" or dtype != torch.float64):
            raise ValueError(f"backend: 'numba' needs device cpu and float64, got {device} and {dtype}")
        super().__init__(C * D, dtype, device)
        self.num_samples, self.dim, self.num_classes = N, D, C
        self.backend = backend
        self.X = X_t.to(device=device, dtype=dtype).contiguous()
        self.probs = P_t.to(device=device, dtype=dtype).contiguous()
        if device.type == "cpu" and dtype == torch.float64:
            self._X_np = self.X.numpy()
            self._P_np = self.probs.numpy()

    def _use_numba(self, k: int) -> bool:
        if self.backend == "auto":
            return self.device.type == "cpu" and self.dtype == torch.float64 and k <= _NUMBA_MAX_COLUMNS
        return self.backend == "numba"

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        k = V.shape[1]
        if self._use_numba(k):
            return self._matmat_numba(V)
        return self._matmat_torch(V)

    def _matmat_numba(self, V: torch.Tensor) -> torch.Tensor:
        C, D = self.num_classes, self.dim
        k = V.shape[1]
        M = np.ascontiguousarray(V.numpy().T.reshape(k, D, C).transpose(0, 2, 1))  # M[j, c, d]
        out = np.empty_like(M)
        outb = np.empty((k, C))
        parallel = kernels.use_parallel(self.num_samples, k * C * D)
        product = kernels.curvature_product_par if parallel else kernels.curvature_product_ser
        product(self._X_np, self._P_np, M, np.zeros((k, C)), out, outb)
        return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 2, 1).reshape(k, D * C).T))

    def _matmat_torch(self, V: torch.Tensor) -> torch.Tensor:
        C, D, N = self.num_classes, self.dim, self.num_samples
        k = V.shape[1]
        M = V.T.reshape(k, D, C).permute(1, 0, 2).reshape(D, k * C)  # M[d, j*C + c] = V[d*C + c, j]
        out = torch.zeros(D, k * C, dtype=self.dtype, device=self.device)
        block = max(1, _BLAS_BLOCK_ELEMENTS // (k * C))
        for start in range(0, N, block):
            Xb, Pb = self.X[start : start + block], self.probs[start : start + block, None, :]
            U = (Xb @ M).view(-1, k, C)  # u_ij = M_j x_i
            R = Pb * (U - (U * Pb).sum(-1, keepdim=True))  # A(p_i) u_ij
            out.addmm_(Xb.T, R.reshape(-1, k * C))
        out /= N
        return out.view(D, k, C).permute(0, 2, 1).reshape(D * C, k)


def _check_model(X: Any, W: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    W_arr = np.asarray(W.detach().cpu() if torch.is_tensor(W) else W, dtype=np.float64)
    if W_arr.ndim != 2:
        raise ValueError(f"W: expected a 2-D array (num_classes x D), got shape {W_arr.shape}")
    check_num_classes(W_arr.shape[0])
    X_arr = check_features(X.detach().cpu() if torch.is_tensor(X) else X)
    if W_arr.shape[1] != X_arr.shape[1]:
        raise ValueError(f"W: expected {X_arr.shape[1]} columns (the dimension D of X), got shape {W_arr.shape}")
    b_arr = None if b is None else np.asarray(b.detach().cpu() if torch.is_tensor(b) else b, dtype=np.float64)
    return X_arr, mlr_probabilities(X_arr, W_arr, b_arr)


def mlr_fisher(
    X: Any,
    W: Any,
    b: Any = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    backend: str = "auto",
) -> MLRFisher:
    """The empirical Fisher ``G = (1/N) sum_i (x_i x_i^T) (x) A(p_i)``, ``p_i = softmax(W x_i + b)``,
    as an operator of size ``CD`` on ``vec(W)`` ordered in ``D`` blocks of size ``C``
    (``W[c, d]`` at index ``d*C + c``). ``X``: N x D, ``W``: C x D, ``b``: C or ``None``.

    It is the Fisher, Gauss-Newton and Hessian of the mean cross-entropy in ``W`` (the
    intercept held fixed; to include it append a column of ones to ``X`` and ``b`` to ``W``).
    """
    X_arr, P = _check_model(X, W, b)
    return MLRFisher(X_arr, P, dtype=dtype, device=device, backend=backend)


class ExtendedGradientBatch(NamedTuple):
    """A batch of extended gradients in the layout of ``theory.structure``: ``v`` (N_b x C x DC),
    ``v[i, c'] = x_i (x) (p_i - e_{c'})``; ``labels`` (N_b,) the classes ``c``; ``probs``
    (N_b x C) the weights ``p_{i,c'}`` (the Fisher's weights are ``probs / N``)."""

    v: torch.Tensor
    labels: torch.Tensor
    probs: torch.Tensor


@dataclass(frozen=True)
class ExtendedGradients:
    """Extended gradients of MLR in factored form: ``g_{i,c'} = x_i (x) (p_i - e_{c'})`` is held
    as ``X`` (N x D), ``probs`` (N x C) and the classes ``labels`` (N,); nothing of size
    ``N x C x DC`` is stored."""

    X: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    num_classes: int

    @property
    def num_samples(self) -> int:
        return self.X.shape[0]

    @property
    def size(self) -> int:
        """Length ``DC`` of one extended gradient."""
        return self.X.shape[1] * self.num_classes

    def batches(
        self, batch_size: int = 256, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> Iterator[ExtendedGradientBatch]:
        """Yield ``ExtendedGradientBatch`` es of at most ``batch_size`` examples, in order."""
        batch_size = check_int("batch_size", batch_size, 1)
        dtype = torch_dtype(dtype)
        C, D = self.num_classes, self.X.shape[1]
        eye = torch.eye(C, dtype=dtype, device=device)
        for start in range(0, self.num_samples, batch_size):
            X = torch.as_tensor(self.X[start : start + batch_size]).to(device=device, dtype=dtype)
            P = torch.as_tensor(self.probs[start : start + batch_size]).to(device=device, dtype=dtype)
            E = P[:, None, :] - eye  # E[i, c', :] = p_i - e_{c'}
            v = (X[:, None, :, None] * E[:, :, None, :]).reshape(X.shape[0], C, D * C)
            y = torch.as_tensor(self.labels[start : start + batch_size]).to(device=device)
            yield ExtendedGradientBatch(v, y, P)

    def fisher(self, **operator_kwargs: Any) -> MLRFisher:
        """``G = sum_{i,c'} (p_{i,c'}/N) g_{i,c'} g_{i,c'}^T`` as an operator (see :class:`MLRFisher`)."""
        return MLRFisher(self.X, self.probs, **operator_kwargs)


def mlr_extended_gradients(X: Any, W: Any, labels: Any, b: Any = None) -> ExtendedGradients:
    """The extended gradients ``g_{i,c'} = x_i (x) (p_i - e_{c'})``, ``p_i = softmax(W x_i + b)``, of
    MLR on ``(X, labels)`` in factored form (ordering ``d*C + c`` as in :func:`mlr_fisher`)."""
    X_arr, P = _check_model(X, W, b)
    y = check_labels(labels.cpu().numpy() if torch.is_tensor(labels) else labels, X_arr.shape[0], P.shape[1])
    return ExtendedGradients(X_arr, P, y, P.shape[1])


def mlr_fisher_dense(X: Any, W: Any, b: Any = None, *, batch_size: int = 256, max_size: int = 20_000) -> np.ndarray:
    """``G`` (CD x CD, float64) built from the extended gradients:
    ``G = sum_{i,c'} (p_{i,c'}/N) g_{i,c'} g_{i,c'}^T``, a reference for small sizes."""
    X_arr, P = _check_model(X, W, b)
    size = X_arr.shape[1] * P.shape[1]
    if size > max_size:
        raise ValueError(f"max_size: G has size {size} > max_size={max_size}; use mlr_fisher for an operator")
    ext = ExtendedGradients(X_arr, P, np.zeros(X_arr.shape[0], dtype=np.int64), P.shape[1])
    G = torch.zeros(size, size, dtype=torch.float64)
    for v, _, probs in ext.batches(batch_size):
        rows = (v * probs.sqrt()[:, :, None]).reshape(-1, size)
        G.addmm_(rows.T, rows)
    return (G / X_arr.shape[0]).numpy()
