"""K-FAC and its class-aware correction as preconditioners of the gradient
(Papyan 2020, Sec. 7; docs/kfac.md#as-a-preconditioner).

For one layer with factors ``H``, ``Delta`` and class factors ``H_c``, ``Delta_c``
(:class:`deepnet.kfac.LayerFactors`, the order ``vec([W, b])`` out-major of
:class:`theory.kronecker_sum.KroneckerSum`), the damped directions are

    K-FAC:      d = (Delta (x) H + lambda I)^{-1} g
                  = vec(U [(U^T G V) / (delta_o h_i + lambda)] V^T)      (exact, from the eigenpairs)
    corrected:  d = (sum_c pi_c Delta_c (x) H_c + lambda I)^{-1} g       (PCG, no closed form)

with ``Delta = U diag(delta) U^T``, ``H = V diag(h) V^T`` and ``G`` the gradient as a
``d_out x d_in`` matrix. The corrected system is solved by conjugate gradients
(:func:`pcg`) preconditioned by the K-FAC inverse (:func:`solve_corrected`), whose first
iterate is the K-FAC direction at its best scale. :class:`KFACOptimizer` refreshes the factors every ``T``
steps on the current batch and moves every Linear / Conv2d layer along ``-lr d``
(with heavy-ball momentum, as ``torch.optim.SGD``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from theory.checks import ArgumentError, check_choice, check_int, check_real
from theory.kronecker_sum import KroneckerSum
from theory.operators import SymmetricOperator
from theory.parameters import PermutedOperator

from .kfac import FISHER_TYPES, LayerFactors, kfac_factors
from .layers import select_layers
from .operators import _BATCH_NORM, _DROPOUT, EmpiricalRisk

__all__ = ["FORMS", "KFACInverse", "KFACOptimizer", "PCGResult", "kfac_inverse", "pcg", "solve_corrected"]

FORMS = ("kfac", "corrected")

Map = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PCGResult:
    """A preconditioned conjugate-gradient solve of ``A X = B`` for ``k`` columns:
    ``solution`` (shape of ``B``), ``iterations`` (k,) products with ``A`` until each column
    met ``||b - A x|| <= tol ||b||`` (or ``maxiter``), ``residual_norms`` (iterations + 1, k)
    the recursive residual norms ``||r_j||`` from the start, ``converged`` (k,)."""

    solution: torch.Tensor = field(metadata={"json": False}, repr=False)
    iterations: np.ndarray
    residual_norms: np.ndarray
    converged: np.ndarray
    tol: float

    @property
    def max_iterations(self) -> int:
        return int(self.iterations.max()) if self.iterations.size else 0


def _as_map(name: str, value: object) -> Map:
    if isinstance(value, SymmetricOperator):
        return value.matmat
    if callable(value):
        return value  # type: ignore[return-value]
    raise ArgumentError(f"{name}: expected a SymmetricOperator or a function V -> A V on (P, k) tensors, got {type(value).__name__}")


def pcg(
    apply_A: SymmetricOperator | Map,
    b: torch.Tensor,
    apply_M: SymmetricOperator | Map | None = None,
    tol: float = 1e-6,
    maxiter: int | None = None,
    x0: torch.Tensor | None = None,
) -> PCGResult:
    """Solve ``A X = B`` for symmetric positive definite ``A`` by conjugate gradients,
    preconditioned by ``M ~ A^{-1}`` (``apply_M``, SPD; default none), all ``k`` columns of
    ``b`` (P, k) or (P,) at once, from ``x0`` (default 0). Per column: ``r = b - A x``,
    ``z = M r``, ``p = z + beta p``, ``alpha = <r, z> / <p, A p>``; a column stops moving once
    ``||r|| <= tol ||b||``; at most ``maxiter`` (default ``P``) products with ``A``."""
    A, M = _as_map("apply_A", apply_A), (None if apply_M is None else _as_map("apply_M", apply_M))
    if not torch.is_tensor(b) or b.ndim not in (1, 2) or not b.is_floating_point():
        raise ArgumentError(f"b: expected a floating tensor of shape (P, k) or (P,), got {type(b).__name__} {tuple(getattr(b, 'shape', ()))}")
    tol = check_real("tol", tol, 0.0, 1.0, low_open=True, high_open=True)
    vector = b.ndim == 1
    B = b[:, None] if vector else b
    maxiter = B.shape[0] if maxiter is None else check_int("maxiter", maxiter, 0)
    if x0 is not None and (not torch.is_tensor(x0) or x0.shape != b.shape):
        raise ArgumentError(f"x0: expected a tensor of the shape of b {tuple(b.shape)}, got {tuple(getattr(x0, 'shape', ()))}")
    X = torch.zeros_like(B) if x0 is None else (x0[:, None] if vector else x0).to(B).clone()
    R = B - A(X) if x0 is not None else B.clone()
    threshold = tol * B.norm(dim=0)
    norms = [R.norm(dim=0)]
    active = norms[0] > threshold
    iterations = torch.zeros(B.shape[1], dtype=torch.int64)
    Z = R if M is None else M(R)
    P = Z.clone()
    rz = (R * Z).sum(0)
    for _ in range(maxiter):
        if not bool(active.any()):
            break
        AP = A(P)
        pAp = (P * AP).sum(0)
        alpha = torch.where(active, rz / torch.where(active, pAp, torch.ones_like(pAp)), torch.zeros_like(rz))
        X.add_(alpha * P)
        R.sub_(alpha * AP)
        iterations += active.cpu()
        norms.append(R.norm(dim=0))
        active = active & (norms[-1] > threshold)
        Z = R if M is None else M(R)
        rz_new = (R * Z).sum(0)
        beta = torch.where(active, rz_new / torch.where(active, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        P = Z + beta * P
        rz = rz_new
    return PCGResult(
        solution=X[:, 0] if vector else X,
        iterations=iterations.numpy(),
        residual_norms=torch.stack(norms).cpu().numpy(),
        converged=(norms[-1] <= threshold).cpu().numpy(),
        tol=tol,
    )


def _matrices(V: torch.Tensor, d_out: int, d_in: int) -> torch.Tensor:
    """Columns ``vec(X_j)`` (out-major, as :class:`KroneckerSum`) as matrices (k, d_out, d_in)."""
    return V.T.reshape(V.shape[1], d_out, d_in)


def _eigh(factor: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` of ``factor`` scaled to entries of at most 1 (tiny error factors of
    deep layers stay well within range), in the factor's dtype; where that fails to converge
    (many equal eigenvalues, e.g. the zeros of dead ReLU units), in float64 with ``1e-12`` added
    to the diagonal. A non-finite factor is a ``FloatingPointError``."""
    if not bool(torch.isfinite(factor).all()):
        raise FloatingPointError(f"kron: the {name} factor is not finite (the training diverged)")
    scale = float(factor.abs().max()) or 1.0
    scaled = factor / scale
    try:
        values, vectors = torch.linalg.eigh(scaled)
    except torch.linalg.LinAlgError:
        eye = torch.eye(scaled.shape[0], dtype=torch.float64, device=scaled.device)
        values, vectors = torch.linalg.eigh(scaled.to(torch.float64) + 1e-12 * eye)
    return (values * scale).to(factor.dtype), vectors.to(factor.dtype)


class KFACInverse(SymmetricOperator):
    """``(w B (x) A + lambda I)^{-1}`` of a one-term :class:`KroneckerSum` ``kron`` in its
    out-major order, applied exactly from ``B = U diag(beta) U^T``, ``A = V diag(a) V^T``:
    ``vec(X) -> vec(U [(U^T X V) / (w beta_o a_i + lambda)] V^T)``; ``damping`` ``lambda > 0``.
    Eigenvalues below 0 (round-off of PSD factors) are set to 0; all in the factors' dtype."""

    def __init__(self, kron: KroneckerSum, damping: float):
        if not isinstance(kron, KroneckerSum) or kron.num_terms != 1:
            raise ArgumentError(f"kron: expected a KroneckerSum of one term (K-FAC), got {getattr(kron, 'num_terms', type(kron).__name__)!r} terms")
        self.damping = check_real("damping", damping, 0.0, low_open=True)
        super().__init__(kron.size, kron.dtype, kron.device)
        (a, self.in_vectors), (b, self.out_vectors) = _eigh(kron.inputs[0], "inputs"), _eigh(kron.outputs[0], "outputs")
        w = float(kron.weights[0])
        self.denominator = (w * b.clamp(min=0)[:, None] * a.clamp(min=0)[None, :] + self.damping).to(self.dtype)
        self.in_vectors, self.out_vectors = self.in_vectors.to(self.dtype), self.out_vectors.to(self.dtype)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        U, W = self.out_vectors, self.in_vectors
        X = _matrices(V, U.shape[0], W.shape[0])
        Y = U @ ((U.T @ X @ W) / self.denominator) @ W.T
        return Y.reshape(V.shape[1], -1).T


def kfac_inverse(layer: LayerFactors, damping: float) -> SymmetricOperator:
    """``(Delta (x) H + lambda I)^{-1}`` of ``layer`` on its parameter vector ``[vec(W), b]``
    (the order of :meth:`LayerFactors.operator`)."""
    inverse = KFACInverse(layer.kronecker("kfac"), damping)
    return PermutedOperator(inverse, layer.permutation()) if layer.bias else inverse


def _damped(op: SymmetricOperator, damping: float) -> Map:
    return lambda V: op.matmat(V).add_(V, alpha=damping)


def solve_corrected(
    corrected: KroneckerSum,
    rhs: torch.Tensor,
    damping: float,
    kfac: SymmetricOperator | None = None,
    *,
    precondition: bool = True,
    warm_start: bool = False,
    tol: float = 1e-4,
    maxiter: int | None = None,
) -> PCGResult:
    """``(sum_c pi_c Delta_c (x) H_c + lambda I)^{-1} rhs`` (``corrected``: the class-aware
    :class:`KroneckerSum`, ``rhs`` (P, k) or (P,) in its order) by :func:`pcg`, with ``kfac``
    ``M`` the :class:`KFACInverse` of the same layer and damping: preconditioned by ``M``
    when ``precondition``, started from ``M rhs`` when ``warm_start`` (else from 0). From 0,
    the first PCG iterate is already the K-FAC direction ``t M rhs`` at its best scale
    ``t = <rhs, M rhs> / <M rhs, A M rhs>``, so ``warm_start`` is meant for plain CG."""
    damping = check_real("damping", damping, 0.0, low_open=True)
    if (precondition or warm_start) and kfac is None:
        raise ArgumentError("kfac: the K-FAC inverse is needed to precondition or warm-start; pass it, or set precondition=False")
    if kfac is not None and kfac.size != corrected.size:
        raise ArgumentError(f"kfac: expected size {corrected.size} (the layer's), got {kfac.size}")
    x0 = kfac.matmat(rhs) if warm_start else None
    return pcg(_damped(corrected, damping), rhs, kfac if precondition else None, tol=tol, maxiter=maxiter, x0=x0)


class KFACOptimizer(torch.optim.Optimizer):
    """Damped K-FAC (``form="kfac"``) or class-aware (``"corrected"``) preconditioned SGD.

    Every Linear / Conv2d layer of ``model`` (:func:`deepnet.layers.select_layers`) steps
    along ``d = (A + lambda I)^{-1} vec([g_W + wd W, g_b + wd b])`` with ``A`` the layer's
    K-FAC or corrected Kronecker sum (module docstring; ``damping`` ``lambda``, ``weight_decay``
    ``wd``); any other parameter steps along its plain gradient. Then, per parameter, as
    ``torch.optim.SGD``: ``buf = momentum buf + d``, ``p -= lr buf``. The factors
    (:func:`deepnet.kfac.kfac_factors`, ``fisher``) are recomputed from the ``batch`` given to
    :meth:`step` on steps ``0, T, 2T, ...`` (``refresh`` ``T``); the corrected system is solved
    by :func:`solve_corrected` to ``cg_tol`` within ``cg_maxiter`` products. The factors are
    computed in eval mode, so models with batch norm or dropout are refused. After each
    step ``last_iterations`` holds the PCG products summed over the layers (0 for K-FAC)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float,
        damping: float,
        form: str = "kfac",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        refresh: int = 10,
        fisher: str = "true",
        cg_tol: float = 1e-3,
        cg_maxiter: int = 20,
        seed: int = 0,
    ):
        if not isinstance(model, nn.Module):
            raise ArgumentError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        odd = [f"{n} ({type(m).__name__})" for n, m in model.named_modules() if isinstance(m, (*_BATCH_NORM, *_DROPOUT))]
        if odd:
            raise ArgumentError(
                f"model: {', '.join(odd)} behave differently in training and in eval mode, where the K-FAC factors "
                "are computed; use a model without batch norm or dropout (e.g. MLP(batch_norm=False))"
            )
        self.form = check_choice("form", form, FORMS)
        self.fisher = check_choice("fisher", fisher, FISHER_TYPES)
        self.refresh = check_int("refresh", refresh, 1)
        self.cg_tol = check_real("cg_tol", cg_tol, 0.0, 1.0, low_open=True, high_open=True)
        self.cg_maxiter = check_int("cg_maxiter", cg_maxiter, 1)
        self.seed = check_int("seed", seed, 0)
        defaults = {
            "lr": check_real("lr", lr, 0.0, low_open=True),
            "damping": check_real("damping", damping, 0.0, low_open=True),
            "momentum": check_real("momentum", momentum, 0.0, 1.0, high_open=True),
            "weight_decay": check_real("weight_decay", weight_decay, 0.0),
        }
        super().__init__(model.parameters(), defaults)
        self.model = model
        self.modules = select_layers(model)
        self.num_steps = 0
        self.last_iterations = 0
        self._solvers: dict[str, tuple[KFACInverse, KroneckerSum | None]] = {}

    def refresh_factors(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Recompute the factors (and K-FAC eigenpairs) of every layer on ``batch`` ``(x, y)``."""
        x, y = batch
        risk = EmpiricalRisk(self.model, (x.detach(), y), batch_size=max(int(y.shape[0]), 1))
        factors = kfac_factors(risk, list(self.modules), fisher=self.fisher, seed=self.seed + self.num_steps)
        damping = self.param_groups[0]["damping"]
        self._solvers = {
            name: (KFACInverse(layer.kronecker("kfac"), damping), layer.kronecker("corrected") if self.form == "corrected" else None)
            for name, layer in factors.layers.items()
        }

    def _direction(self, name: str, g: torch.Tensor, damping: float) -> tuple[torch.Tensor, int]:
        """``(A + lambda I)^{-1} g`` for the layer's gradient matrix ``g`` (d_out, d_in) and the PCG products."""
        inverse, corrected = self._solvers[name]
        v = g.reshape(-1, 1).to(inverse.dtype)
        if corrected is None:
            return inverse.matmat(v).reshape(g.shape).to(g.dtype), 0
        result = solve_corrected(corrected, v, damping, inverse, tol=self.cg_tol, maxiter=self.cg_maxiter)
        return result.solution.reshape(g.shape).to(g.dtype), int(result.iterations.sum())

    @torch.no_grad()
    def step(self, closure: None = None, *, batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:  # type: ignore[override]
        """One step from the gradients in ``p.grad`` (after ``loss.backward()``); ``batch``
        ``(x, y)`` is needed on the steps that refresh the factors (every ``refresh``-th from 0)."""
        if closure is not None:
            raise ArgumentError("closure: not supported; call loss.backward() before step(batch=(x, y))")
        if self.num_steps % self.refresh == 0:
            if batch is None:
                raise ArgumentError(f"batch: step {self.num_steps} refreshes the factors (every {self.refresh} steps) and needs the batch (x, y)")
            with torch.enable_grad():
                self.refresh_factors(batch)
        group = self.param_groups[0]
        lr, damping, momentum, wd = group["lr"], group["damping"], group["momentum"], group["weight_decay"]
        directions: dict[int, torch.Tensor] = {}  # by id(parameter)
        iterations = 0
        for name, module in self.modules.items():
            w, b = module.weight, module.bias
            if w.grad is None:
                continue
            parts = [w.grad.reshape(w.shape[0], -1) + wd * w.reshape(w.shape[0], -1)]
            if b is not None:
                parts.append((b.grad + wd * b)[:, None])
            d, its = self._direction(name, torch.cat(parts, dim=1), damping)
            iterations += its
            directions[id(w)] = d[:, : parts[0].shape[1]].reshape(w.shape)
            if b is not None:
                directions[id(b)] = d[:, -1]
        for p in _parameters(self.param_groups):
            if p.grad is None:
                continue
            d = directions.get(id(p))
            d = p.grad + wd * p if d is None else d
            state = self.state[p]
            if momentum > 0:
                buf = state.get("momentum_buffer")
                state["momentum_buffer"] = d.clone() if buf is None else buf.mul_(momentum).add_(d)
                d = state["momentum_buffer"]
            p.add_(d, alpha=-lr)
        self.last_iterations = iterations
        self.num_steps += 1


def _parameters(groups: Iterable[dict]) -> Iterable[torch.Tensor]:
    for group in groups:
        yield from group["params"]
