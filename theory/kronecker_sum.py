"""Sums of Kronecker products as matrix-free operators (K-FAC and its class-aware
correction, Papyan 2020, Sec. 7; docs/math.md#k-fac-and-its-correction).

A layer's weight ``V`` (``d_out x d_in``) is flattened out-major, as torch flattens
``nn.Linear.weight``: entry ``V[o, i]`` at index ``o * d_in + i`` (``V.reshape(-1)``).
In that order the operator

    K = sum_j w_j  B_j (x) A_j           (P x P, P = d_out * d_in; torch.kron(B_j, A_j))

with symmetric input-side factors ``A_j`` (``d_in x d_in``, the feature second moments
``H``) and output-side factors ``B_j`` (``d_out x d_out``, the error second moments
``Delta``) acts as ``vec(sum_j w_j B_j V A_j)``, never forming ``K``. It is the
paper's ``sum_j w_j A_j (x) B_j`` written in the in-major order of
docs/math.md#parameter-order. K-FAC is one term ``H (x) Delta``; the class-aware
form ``Ave_c H_c (x) Delta_c`` has ``C`` terms. One term has the exact eigenpairs
``w lambda_o(B) mu_i(A)`` with eigenvectors ``u_o (x) v_i`` (:meth:`KroneckerSum.eigenpairs`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .checks import ArgumentError, check_int
from .operators import SymmetricOperator

__all__ = ["KroneckerSum"]


def _factors(name: str, mats: Sequence[torch.Tensor | np.ndarray]) -> torch.Tensor:
    """The factors stacked (J, d, d), each square and of one size."""
    stacked = [torch.as_tensor(m) for m in mats]
    if not stacked:
        raise ArgumentError(f"{name}: expected at least one factor")
    shape = stacked[0].shape
    if len(shape) != 2 or shape[0] != shape[1] or any(m.shape != shape for m in stacked):
        raise ArgumentError(f"{name}: expected square factors of one size, got shapes {[tuple(m.shape) for m in stacked]}")
    return torch.stack(stacked)


class KroneckerSum(SymmetricOperator):
    """``K = sum_j w_j B_j (x) A_j`` in out-major order (module docstring): ``inputs``
    ``A_j`` (d_in x d_in), ``outputs`` ``B_j`` (d_out x d_out), ``weights`` ``w_j``
    (default 1), all symmetric; ``K vec(V) = vec(sum_j w_j B_j V A_j)``. The factors
    take the dtype and device of ``outputs[0]``."""

    def __init__(
        self,
        inputs: Sequence[torch.Tensor | np.ndarray],
        outputs: Sequence[torch.Tensor | np.ndarray],
        weights: Sequence[float] | np.ndarray | None = None,
    ):
        B = _factors("outputs", outputs)
        if not B.is_floating_point():
            B = B.to(torch.float64)
        A = _factors("inputs", inputs).to(dtype=B.dtype, device=B.device)
        if A.shape[0] != B.shape[0]:
            raise ArgumentError(f"inputs, outputs: expected as many input factors as output factors, got {A.shape[0]} and {B.shape[0]}")
        w = np.ones(A.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (A.shape[0],) or not np.all(np.isfinite(w)):
            raise ArgumentError(f"weights: expected {A.shape[0]} finite numbers (one per term), got {weights!r}")
        super().__init__(A.shape[1] * B.shape[1], B.dtype, B.device)
        self.inputs, self.outputs = A, B
        self.weights = torch.as_tensor(w, dtype=B.dtype, device=B.device)

    @property
    def input_dim(self) -> int:
        return int(self.inputs.shape[1])

    @property
    def output_dim(self) -> int:
        return int(self.outputs.shape[1])

    @property
    def num_terms(self) -> int:
        return int(self.inputs.shape[0])

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        k = V.shape[1]
        X = V.T.reshape(k, self.output_dim, self.input_dim)  # row j of V^T is vec(X_j), out-major
        out = torch.zeros_like(X)
        for w, A, B in zip(self.weights, self.inputs, self.outputs):
            out.add_(B @ X @ A, alpha=float(w))
        return out.reshape(k, -1).T

    def to_dense_kron(self) -> torch.Tensor:
        """``sum_j w_j torch.kron(B_j, A_j)`` formed densely (a reference for tiny sizes)."""
        return sum(w * torch.kron(B, A) for w, A, B in zip(self.weights, self.inputs, self.outputs))

    def trace(self) -> float:
        """``tr K = sum_j w_j tr(A_j) tr(B_j)``."""
        tA = torch.diagonal(self.inputs, dim1=1, dim2=2).sum(1)
        tB = torch.diagonal(self.outputs, dim1=1, dim2=2).sum(1)
        return float((self.weights * tA * tB).sum())

    def eigenpairs(self, k: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """The exact top-``k`` (default all ``P``) eigenvalues (float64, descending) and
        eigenvectors (P, k) of a ONE-term sum from the factor eigenpairs: ``w lambda_o(B)
        mu_i(A)`` with eigenvector ``u_o (x) v_i`` (out-major)."""
        if self.num_terms != 1:
            raise ValueError(
                f"eigenpairs: the exact spectrum from the factors needs one Kronecker term, this sum has {self.num_terms}; "
                "use theory.spectral on the operator"
            )
        k = self.size if k is None else check_int("k", k, 1, self.size, what="(the operator's dimension)")
        la, va = torch.linalg.eigh(self.inputs[0].to(torch.float64))
        lb, vb = torch.linalg.eigh(self.outputs[0].to(torch.float64))
        values = float(self.weights[0]) * (lb[:, None] * la[None, :]).reshape(-1)  # index o * d_in + i
        order = torch.argsort(values, descending=True, stable=True)[:k]
        o, i = order // self.input_dim, order % self.input_dim
        vectors = (vb[:, o][:, None, :] * va[:, i][None, :, :]).reshape(self.size, k)  # (u_o (x) v_i)[o' d_in + i']
        return values[order].cpu().numpy(), vectors.to(self.dtype)
