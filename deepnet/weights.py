"""The class structure of the weights (Papyan 2020, Sec. 7, Fig. 13).

At a stationary point of ``L(theta) + (eta / 2) |theta|^2`` every weight is
``W^l = -(1/eta) dL/dW^l``, and for a Linear layer ``dL/dW^l = Ave_i delta^l_i
(h^{l-1}_i)^T`` with ``delta_i`` the error of the true label (the gradient identity;
for a Conv2d layer summed over positions). Replacing each example by its class
means gives the rank-``<= C`` class prediction

    W^l_class = -(1/eta) sum_c pi_c mu^{delta}_c (mu^h_c)^T,

``mu^delta_c = Ave_{i in c} delta_{i,c,c}`` (true-label errors), ``mu^h_c`` the
feature class means (:mod:`deepnet.layers`). The paper's claim: the top ``C``
singular values of ``W^l`` come from ``W_class``. Measured per layer: the singular
values, how well ``-(1/eta) dL/dW`` and ``W_class`` reproduce ``W`` (relative
error, cosine), and the share of the top-``C`` singular pairs ``u_k v_k^T`` in the
span ``A (x) B`` of the class-mean outer products ``a b^T`` (``a`` in the span of
the ``mu^delta_c``, ``b`` in that of the ``mu^h_c``):
``(1/C) sum_{k <= C} |P_A u_k|^2 |P_B v_k|^2`` (1 when the subspace lies in the span).

The gradient here is that of the eval-mode loss (batch norm with its running
statistics). A network trained with batch norm is stationary for the training-mode
loss (batch statistics), in which a layer followed by batch norm is scale-invariant,
so for such layers ``W_stat`` tests a different condition; the prediction is exact
for layers not followed by normalisation at a stationary point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from theory.checks import ArgumentError, check_real
from theory.results import to_jsonable

from .layers import LayerStatistics
from .operators import EmpiricalRisk

__all__ = ["LayerWeights", "WeightStructure", "weight_structure"]


@dataclass(frozen=True)
class LayerWeights:
    """Weight ``W`` (reshaped to (out, rest)) of one layer: ``singular_values`` (descending);
    ``stationarity_error = |W - W_stat| / |W|`` and ``stationarity_cosine`` for
    ``W_stat = -(1/eta) dL/dW``; ``class_cosine`` between ``W`` and ``W_class``,
    ``class_singular_values`` (the top ``C`` of ``W_class``); ``top_share``,
    ``left_share = (1/C) sum |P_A u_k|^2``, ``right_share = (1/C) sum |P_B v_k|^2`` over the
    top ``C`` singular pairs; ``top_energy``: the share of ``|W|_F^2`` in them. At the last
    layer the true-label errors ``p_i - e_{y_i}`` sum to zero over the outputs, so their
    span has dimension ``C - 1`` and ``left_share <= (C - 1) / C`` there."""

    name: str
    shape: tuple[int, ...]
    singular_values: np.ndarray
    stationarity_error: float
    stationarity_cosine: float
    class_cosine: float
    class_singular_values: np.ndarray
    top_share: float
    left_share: float
    right_share: float
    top_energy: float


@dataclass(frozen=True)
class WeightStructure:
    """:class:`LayerWeights` of every layer with a weight, for weight decay ``weight_decay``."""

    weight_decay: float
    layers: dict[str, LayerWeights]

    def to_json(self) -> dict:
        return to_jsonable(self)


def _basis(vectors: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (d, r) of the span of the rows of ``vectors`` (C, d), float64."""
    U, s, _ = torch.linalg.svd(vectors.to(torch.float64).T, full_matrices=False)
    tol = max(vectors.shape) * torch.finfo(torch.float64).eps * (float(s[0]) if s.numel() else 0.0)
    return U[:, s > tol]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.reshape(-1).to(torch.float64), b.reshape(-1).to(torch.float64)
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else float("nan")


def weight_structure(
    risk: EmpiricalRisk, stats: LayerStatistics, weight_decay: float, layers: Sequence[str] | None = None
) -> WeightStructure:
    """Per layer of ``stats`` (or of its subset ``layers``) whose weight is among ``risk``'s parameters: the measures of
    :class:`LayerWeights` with ``eta = weight_decay`` (one gradient pass over ``risk``
    for ``dL/dW``; ``stats`` from the same risk)."""
    if not isinstance(risk, EmpiricalRisk):
        raise TypeError(f"risk: expected an EmpiricalRisk, got {type(risk).__name__}")
    if not isinstance(stats, LayerStatistics):
        raise TypeError(f"stats: expected LayerStatistics, got {type(stats).__name__}")
    eta = check_real("weight_decay", weight_decay, 0.0, low_open=True)
    if stats.num_examples != risk.num_data or stats.num_classes != risk.num_classes:
        raise ArgumentError(f"stats: computed on {stats.num_examples} examples and {stats.num_classes} classes, the risk has {risk.num_data} and {risk.num_classes}")
    chosen = stats.select(layers)
    wanted = {name: f"{name}.weight" for name in chosen if f"{name}.weight" in stats.layers[name].params}
    if not wanted:
        raise ArgumentError("stats: no layer has its weight among the risk's parameters")
    grads = dict(zip(risk.names, risk.split(risk.gradient())))
    params = dict(zip(risk.names, risk.parameters()))
    C = stats.num_classes
    out = {}
    for name, pname in wanted.items():
        layer = stats.layers[name]
        W = params[pname].reshape(params[pname].shape[0], -1).to(torch.float64)
        mu_d, mu_h = layer.true_error_means.to(torch.float64), layer.features.class_means.to(torch.float64)
        if mu_h.shape[1] != W.shape[1]:
            raise ArgumentError(
                f"stats: layer {name!r} has features of size {mu_h.shape[1]}, its weight {tuple(params[pname].shape)}; "
                "a conv layer needs conv='patches'"
            )
        stat = -grads[pname].reshape(W.shape).to(torch.float64) / eta
        pi = torch.as_tensor(layer.features.class_weights, dtype=torch.float64, device=W.device)
        W_class = -torch.einsum("c,co,ci->oi", pi, mu_d, mu_h) / eta
        U, s, Vh = torch.linalg.svd(W, full_matrices=False)
        k = min(C, s.numel())
        A, B = _basis(mu_d), _basis(mu_h)
        left = (A.T @ U[:, :k]).square().sum(0)
        right = (B.T @ Vh[:k].T).square().sum(0)
        out[name] = LayerWeights(
            name=name,
            shape=tuple(params[pname].shape),
            singular_values=s.cpu().numpy(),
            stationarity_error=float((W - stat).norm() / W.norm()),
            stationarity_cosine=_cosine(W, stat),
            class_cosine=_cosine(W, W_class),
            class_singular_values=torch.linalg.svdvals(W_class)[:k].cpu().numpy(),
            top_share=float((left * right).mean()),
            left_share=float(left.mean()),
            right_share=float(right.mean()),
            top_energy=float(s[:k].square().sum() / s.square().sum()),
        )
    return WeightStructure(eta, out)
