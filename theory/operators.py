"""Symmetric linear operators on torch tensors: the one contract of the toolkit.

An operator ``A`` of size ``p`` exposes ``shape == (p, p)``, ``dtype``, ``device`` and
``matmat(V)``, which maps a tensor ``V`` of shape ``(p, k)`` to ``A V`` of shape
``(p, k)`` (a vector is the case ``k = 1``; a 1-D tensor is accepted too).
Adapters wrap a dense torch tensor or numpy array, a ``scipy.sparse.linalg.LinearOperator``
(or a scipy sparse matrix) and a plain callable; composition (sums, scalings,
symmetric low-rank updates ``A + U diag(s) U^T`` and projections
``(I - Q Q^T) A (I - Q Q^T)``) never forms a ``p x p`` matrix.

Contract of a product: ``matmat(V)`` returns a new tensor and never changes
``V``. Subclasses implement ``_matmat``, which must not write into its input; a
result that shares memory with the input (an identity map, say) is copied by
``matmat``, so composites may update a product in place.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch

__all__ = [
    "CallableOperator",
    "CountedOperator",
    "DenseOperator",
    "LinearCombination",
    "LowRankUpdate",
    "ProjectedOperator",
    "ScipyOperator",
    "SymmetricOperator",
    "as_operator",
    "check_symmetric",
    "orthonormal_basis",
    "torch_dtype",
]

_NUMPY_TO_TORCH = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
}


def torch_dtype(dtype: Any) -> torch.dtype:
    """The torch floating dtype for a torch or numpy dtype (float32 or float64 only)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
        return dtype
    try:
        return _NUMPY_TO_TORCH[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}") from None


class SymmetricOperator(abc.ABC):
    """A symmetric linear map ``V -> A V`` on ``(p, k)`` torch tensors.

    Subclasses implement ``_matmat`` on a tensor already checked for shape and
    cast to ``dtype`` and ``device``; it must not modify that tensor.
    Composites also override ``_product``, which returns ``A V`` with the column
    norms of the terms that make it up (the scale of its round-off).
    """

    def __init__(self, size: int, dtype: torch.dtype, device: torch.device | str):
        if int(size) < 1:
            raise ValueError(f"size: expected a positive dimension, got {size}")
        self._size = int(size)
        self._dtype = torch_dtype(dtype)
        self._device = torch.device(device)

    @property
    def shape(self) -> tuple[int, int]:
        return (self._size, self._size)

    @property
    def size(self) -> int:
        """The dimension ``p``."""
        return self._size

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @abc.abstractmethod
    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``A V`` for ``V`` of shape ``(p, k)`` with the operator's dtype and device."""

    def _product(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A V, s)`` with ``s_j`` the sum of the norms of the terms that make up
        column ``j`` of ``A V`` (for a single operator ``|A v_j|``)."""
        out = self._matmat(V)
        return out, out.norm(dim=0)

    def _block(self, V: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, bool]:
        V = torch.as_tensor(V)
        if V.ndim not in (1, 2) or V.shape[0] != self._size:
            raise ValueError(
                f"V: expected shape ({self._size}, k) or ({self._size},), got {tuple(V.shape)}"
            )
        vector = V.ndim == 1
        V = V.to(device=self._device, dtype=self._dtype)
        return (V[:, None] if vector else V), vector

    def _fresh(self, out: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """``out`` checked for shape, copied when it shares memory with the input ``V``."""
        if out.shape != V.shape:
            raise RuntimeError(
                f"{type(self).__name__}: the product returned shape {tuple(out.shape)} "
                f"for an input of shape {tuple(V.shape)}"
            )
        if out.untyped_storage().data_ptr() == V.untyped_storage().data_ptr():
            out = out.clone()
        return out

    def matmat(self, V: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``A V`` for ``V`` of shape ``(p, k)`` or ``(p,)``; returns the same shape,
        as a new tensor, leaving ``V`` unchanged."""
        V, vector = self._block(V)
        out = self._fresh(self._matmat(V), V)
        return out[:, 0] if vector else out

    def matmat_with_scale(self, V: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A V, s)`` for ``V`` of shape ``(p, k)``: ``s`` (length ``k``) sums the
        column norms of the terms of a composite (``|B v| + |U diag(s) U^T v|`` for a
        low-rank update of ``B``), the scale against which round-off is judged."""
        V, _ = self._block(V)
        out, scale = self._product(V)
        return self._fresh(out, V), scale

    def matvec(self, v: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``A v`` for a vector of shape ``(p,)``."""
        return self.matmat(torch.as_tensor(v).reshape(self._size))

    def __matmul__(self, V: torch.Tensor) -> torch.Tensor:
        return self.matmat(V)

    # -- composition -------------------------------------------------------
    def __add__(self, other: SymmetricOperator) -> LinearCombination:
        return LinearCombination([(1.0, self), (1.0, as_operator(other))])

    def __sub__(self, other: SymmetricOperator) -> LinearCombination:
        return LinearCombination([(1.0, self), (-1.0, as_operator(other))])

    def __mul__(self, scale: float) -> LinearCombination:
        if not np.isscalar(scale):
            raise TypeError(f"scale: expected a real number, got {type(scale).__name__}")
        return LinearCombination([(float(scale), self)])

    __rmul__ = __mul__

    def __truediv__(self, scale: float) -> LinearCombination:
        return self * (1.0 / float(scale))

    def __neg__(self) -> LinearCombination:
        return self * -1.0

    def low_rank_update(self, U: torch.Tensor | np.ndarray, s: Sequence[float] | torch.Tensor | np.ndarray) -> LowRankUpdate:
        """``A + U diag(s) U^T``."""
        return LowRankUpdate(self, U, s)

    def project_out(self, Q: torch.Tensor | np.ndarray, orthonormalize: bool = True) -> ProjectedOperator:
        """``(I - Q Q^T) A (I - Q Q^T)``."""
        return ProjectedOperator(self, Q, orthonormalize=orthonormalize)

    # -- conversions -------------------------------------------------------
    def to_dense(self, max_size: int = 20_000) -> torch.Tensor:
        """The ``p x p`` matrix ``A I`` (a reference for small sizes only)."""
        if self._size > max_size:
            raise ValueError(
                f"to_dense: the operator has size {self._size} > max_size={max_size}; "
                "pass a larger max_size if you really want a dense matrix"
            )
        return self.matmat(torch.eye(self._size, dtype=self._dtype, device=self._device))

    def to_scipy(self) -> scipy.sparse.linalg.LinearOperator:
        """A ``scipy.sparse.linalg.LinearOperator`` on numpy arrays (CPU copies on GPU)."""
        np_dtype = np.float32 if self._dtype == torch.float32 else np.float64

        def matmat(X: np.ndarray) -> np.ndarray:
            return self.matmat(torch.as_tensor(np.asarray(X, dtype=np_dtype))).cpu().numpy()

        def matvec(x: np.ndarray) -> np.ndarray:
            return matmat(np.reshape(x, (-1, 1)))[:, 0]

        return scipy.sparse.linalg.LinearOperator(
            self.shape, matvec=matvec, rmatvec=matvec, matmat=matmat, dtype=np_dtype
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self._size}, dtype={self._dtype}, device={self._device})"


class DenseOperator(SymmetricOperator):
    """A dense symmetric matrix ``M`` (p x p): ``V -> M V``."""

    def __init__(self, matrix: torch.Tensor | np.ndarray):
        matrix = torch.as_tensor(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix: expected a square 2-D array, got shape {tuple(matrix.shape)}")
        if matrix.is_complex():  # casting would drop the imaginary part silently
            raise TypeError(f"matrix: expected a real symmetric matrix, got dtype {matrix.dtype} (pass .real if it is real)")
        if not matrix.is_floating_point():
            matrix = matrix.to(torch.float64)
        super().__init__(matrix.shape[0], matrix.dtype, matrix.device)
        self.matrix = matrix

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.matrix @ V


class CallableOperator(SymmetricOperator):
    """A plain function ``fn(V) -> A V``.

    With ``vectorized=True`` ``fn`` receives the whole ``(p, k)`` block; otherwise
    it receives one ``(p,)`` column at a time.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        size: int,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
        vectorized: bool = True,
    ):
        if not callable(fn):
            raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
        super().__init__(size, dtype, device)
        self.fn = fn
        self.vectorized = vectorized

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        if self.vectorized:
            return torch.as_tensor(self.fn(V)).to(dtype=self.dtype, device=self.device)
        cols = [torch.as_tensor(self.fn(V[:, j])).reshape(self.size) for j in range(V.shape[1])]
        return torch.stack(cols, dim=1).to(dtype=self.dtype, device=self.device)


class ScipyOperator(SymmetricOperator):
    """A ``scipy.sparse.linalg.LinearOperator`` (or sparse matrix) on CPU numpy arrays."""

    def __init__(self, linop: Any, device: torch.device | str = "cpu"):
        linop = scipy.sparse.linalg.aslinearoperator(linop)
        if len(linop.shape) != 2 or linop.shape[0] != linop.shape[1]:
            raise ValueError(f"linop: expected a square operator, got shape {linop.shape}")
        dtype = linop.dtype if linop.dtype in (np.float32, np.float64) else np.float64
        super().__init__(linop.shape[0], torch_dtype(dtype), device)
        self.linop = linop

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        out = np.asarray(self.linop.matmat(V.cpu().numpy()))
        return torch.as_tensor(out.reshape(V.shape)).to(dtype=self.dtype, device=self.device)


def _check_compatible(ops: Sequence[SymmetricOperator], what: str) -> None:
    first = ops[0]
    for op in ops[1:]:
        if op.size != first.size:
            raise ValueError(f"{what}: operator sizes differ ({first.size} and {op.size})")
        if op.dtype != first.dtype or op.device != first.device:
            raise ValueError(
                f"{what}: operators must share dtype and device, got "
                f"({first.dtype}, {first.device}) and ({op.dtype}, {op.device})"
            )


class LinearCombination(SymmetricOperator):
    """``sum_i a_i A_i`` for real scalars ``a_i`` (sums, differences and scalings)."""

    def __init__(self, terms: Sequence[tuple[float, SymmetricOperator]]):
        flat: list[tuple[float, SymmetricOperator]] = []
        for coef, op in terms:
            if isinstance(op, LinearCombination):
                flat.extend((coef * c, o) for c, o in op.terms)
            else:
                flat.append((float(coef), op))
        if not flat:
            raise ValueError("terms: expected at least one (coefficient, operator) pair")
        _check_compatible([op for _, op in flat], "LinearCombination")
        super().__init__(flat[0][1].size, flat[0][1].dtype, flat[0][1].device)
        self.terms = tuple(flat)

    def _product(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, scale = None, None
        for coef, op in self.terms:
            term, term_scale = op.matmat_with_scale(V)
            out = coef * term if out is None else out.add_(term, alpha=coef)
            scale = abs(coef) * term_scale if scale is None else scale + abs(coef) * term_scale
        return out, scale

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._product(V)[0]


def _as_matrix(X: torch.Tensor | np.ndarray, op: SymmetricOperator, name: str) -> torch.Tensor:
    X = torch.as_tensor(X)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[0] != op.size:
        raise ValueError(f"{name}: expected shape ({op.size}, r), got {tuple(X.shape)}")
    return X.to(dtype=op.dtype, device=op.device)


class LowRankUpdate(SymmetricOperator):
    """``A + U diag(s) U^T`` with ``U`` of shape ``(p, r)`` and ``s`` of length ``r``.

    Deflation (``s = -lambda``) and subtraction knockouts of a low-rank part use it.
    """

    def __init__(self, base: SymmetricOperator, U: torch.Tensor | np.ndarray, s: Sequence[float] | torch.Tensor | np.ndarray):
        base = as_operator(base)
        U = _as_matrix(U, base, "U")
        s = torch.as_tensor(np.asarray(s, dtype=np.float64) if not torch.is_tensor(s) else s)
        s = s.reshape(-1).to(dtype=base.dtype, device=base.device)
        if s.shape[0] != U.shape[1]:
            raise ValueError(f"s: expected {U.shape[1]} values (one per column of U), got {s.shape[0]}")
        super().__init__(base.size, base.dtype, base.device)
        self.base, self.U, self.s = base, U, s

    def _product(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, scale = self.base.matmat_with_scale(V)  # a new tensor by the contract
        update = self.U @ (self.s[:, None] * (self.U.T @ V))
        return out.add_(update), scale + update.norm(dim=0)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._product(V)[0]


class ProjectedOperator(SymmetricOperator):
    """``(I - Q Q^T) A (I - Q Q^T)`` for ``Q`` of shape ``(p, r)`` with orthonormal columns.

    With ``orthonormalize=True`` the columns of ``Q`` are first replaced by an
    orthonormal basis of their span (so any spanning set may be passed).
    """

    def __init__(self, base: SymmetricOperator, Q: torch.Tensor | np.ndarray, orthonormalize: bool = True):
        base = as_operator(base)
        Q = _as_matrix(Q, base, "Q")
        if orthonormalize:
            Q = orthonormal_basis(Q)
        super().__init__(base.size, base.dtype, base.device)
        self.base, self.Q = base, Q

    def _project(self, V: torch.Tensor) -> torch.Tensor:
        return V - self.Q @ (self.Q.T @ V)

    def _product(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scale adds that of ``A v`` to that of ``A (I - Q Q^T) v``: when ``range(Q)``
        holds all of ``A``, the second is round-off of size ``eps |A| |v|`` and only the
        first shows the operator's scale (one product of ``2k`` columns, used by
        :func:`check_symmetric` only)."""
        k = V.shape[1]
        both, scales = self.base.matmat_with_scale(torch.cat([self._project(V), V], dim=1))
        return self._project(both[:, :k]), scales[:k] + scales[k:]

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._project(self.base.matmat(self._project(V)))


class CountedOperator(SymmetricOperator):
    """``A`` itself, counting its products: ``columns`` (columns of ``V``), ``calls`` and the
    ``seconds`` spent in them (``reset()`` zeroes them). Products keep the scale of
    ``A``'s terms, so the symmetry probe judges a wrapped composite as it judges ``A``."""

    def __init__(self, base: SymmetricOperator):
        super().__init__(base.size, base.dtype, base.device)
        self.base = base
        self.reset()

    def reset(self) -> None:
        self.columns, self.calls, self.seconds = 0, 0, 0.0

    def _product(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start = time.perf_counter()
        out, scale = self.base.matmat_with_scale(V)
        self.columns += V.shape[1]
        self.calls += 1
        self.seconds += time.perf_counter() - start
        return out, scale

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._product(V)[0]


def orthonormal_basis(X: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """Orthonormal basis (p x r') of the column span of ``X`` (p x r), dropping
    directions whose singular value is below ``rtol`` times the largest."""
    if X.shape[1] == 0:
        return X
    U, S, _ = torch.linalg.svd(X.to(torch.float64), full_matrices=False)
    if rtol is None:
        rtol = max(X.shape) * torch.finfo(X.dtype).eps
    keep = S > rtol * S[0] if S[0] > 0 else torch.zeros_like(S, dtype=torch.bool)
    return U[:, keep].to(X.dtype)


def as_operator(
    obj: Any,
    *,
    size: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    vectorized: bool = True,
) -> SymmetricOperator:
    """Wrap ``obj`` in the operator contract.

    Accepts a ``SymmetricOperator`` (returned as is), a dense torch tensor or numpy
    array (p x p), a ``scipy.sparse.linalg.LinearOperator`` or scipy sparse matrix,
    or a callable ``V -> A V`` (then ``size`` is required; ``dtype`` defaults to
    float64 and ``device`` to CPU).
    """
    if isinstance(obj, SymmetricOperator):
        return obj
    if device is not None:
        from .devices import check_device

        device = check_device("device", device)
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        op = DenseOperator(obj)
        if dtype is not None or device is not None:
            op = DenseOperator(op.matrix.to(dtype=dtype or op.dtype, device=device or op.device))
        return op
    if isinstance(obj, scipy.sparse.linalg.LinearOperator) or scipy.sparse.issparse(obj):
        return ScipyOperator(obj, device=device or "cpu")
    if callable(obj):
        if size is None:
            raise ValueError("size: required to wrap a callable (the dimension p of the operator)")
        return CallableOperator(obj, size, dtype or torch.float64, device or "cpu", vectorized=vectorized)
    raise TypeError(
        "obj: expected a SymmetricOperator, a square torch tensor or numpy array, a "
        f"scipy LinearOperator or sparse matrix, or a callable; got {type(obj).__name__}"
    )


def check_symmetric(op: SymmetricOperator, *, seed: int = 0, rtol: float | None = None) -> float:
    """Probe symmetry with two random vectors ``u, v`` (one product of a ``(p, 2)`` block).

    Computes ``r = sqrt(p) |u^T A v - v^T A u| / (|u| s_v + |v| s_u)`` with ``s_v``
    the scale of the product ``A v``: ``|A v|`` for a single operator, the sum of
    the norms of its terms for a composite (:meth:`SymmetricOperator.matmat_with_scale`),
    so that round-off is judged against the operator's scale, not the product's:
    a fully deflated ``U U^T - Q diag(lambda) Q^T``, whose products are round-off,
    passes. ``r`` is of order ``eps`` for a symmetric operator and of order
    ``|K|_F / |A|_F`` when ``A`` has a skew part ``K``. Raises ``ValueError`` when
    ``r > rtol`` (default ``10 sqrt(eps)`` of the operator's dtype) and returns ``r``.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    UV = torch.randn(op.size, 2, generator=gen, dtype=torch.float64).to(dtype=op.dtype, device=op.device)
    AUV, scales = op.matmat_with_scale(UV)
    AUV, scales, UV = AUV.to(torch.float64), scales.to(torch.float64), UV.to(torch.float64)
    uAv, vAu = float(UV[:, 0] @ AUV[:, 1]), float(UV[:, 1] @ AUV[:, 0])
    norms = UV.norm(dim=0)
    scale = float(norms[0] * scales[1] + norms[1] * scales[0])
    if not np.isfinite(uAv) or not np.isfinite(vAu):
        raise FloatingPointError("the operator returned NaN or Inf on a random probe vector")
    ratio = 0.0 if scale == 0.0 else np.sqrt(op.size) * abs(uAv - vAu) / scale
    if rtol is None:
        rtol = 10.0 * float(np.sqrt(torch.finfo(op.dtype).eps))
    if ratio > rtol:
        raise ValueError(
            f"the operator is not symmetric: u^T A v = {uAv:.6g} but v^T A u = {vAu:.6g} "
            f"(relative asymmetry {ratio:.3g} > {rtol:.3g}); pass check_symmetry=False to skip this probe"
        )
    return ratio
