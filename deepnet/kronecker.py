"""How close the gradient means of a layer are to Kronecker products of the feature
and error means (Papyan 2020, Sec. 2-3, claim C3).

For a Linear layer ``z = W h + b`` the extended gradient of example ``i`` for the
cross-class ``c'`` is ``dW = delta_{i,c'} h_i^T`` and ``db = delta_{i,c'}``; torch
flattens ``W`` (out, in) out-major, so ``vec(dW) = delta (x) h`` in that order, and the
layer's block of the gradient is ``[delta (x) h, delta]`` = ``delta (x) [h; 1]`` up to
the order of the entries. Averaging over the examples of a cell ``(c, c')`` with the
weights of :mod:`deepnet.passes` (``p_{i,c'}``, or ``sqrt(p)`` scaling),

    g^l_{c,c'}  vs  [mu^{delta,l}_{c,c'} (x) mu^{h,l-1}_c, mu^{delta,l}_{c,c'}],

with ``mu^h_c = Ave_{i in c} h_i`` (features) and ``mu^delta_{c,c'}`` the weighted
cross-class error mean (:mod:`deepnet.layers`); the same for the class means
(``c' != c`` pooled with weights ``P_{c,c'}``). The two agree exactly when every cell
has one example (or the features are constant within a class); their cosine measures
the approximation. For a Conv2d layer the features must be the mean unfolded patches
(``conv="patches"``) and the errors are summed over positions, so
``sum_t delta_t p_t^T`` is compared with ``(sum_t delta_t)(mean_t p_t)^T``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from theory.checks import ArgumentError
from theory.results import to_jsonable

from .layers import LayerMoments, LayerStatistics
from .passes import GradientSums

__all__ = ["KroneckerLayer", "KroneckerStructure", "kronecker_structure", "predicted_means"]


@dataclass(frozen=True)
class KroneckerLayer:
    """Cosines per cell ``cell_cosines[c, c']`` (C, C) and per class ``class_cosines[c]``
    (C,) between the gradient means of layer ``name`` (parameters ``params``) and their
    Kronecker predictions; ``mean_cell_cosine`` weighs the cells by ``P_{c,c'}``,
    ``mean_class_cosine`` the classes by ``P_c``."""

    name: str
    params: tuple[str, ...]
    cell_cosines: np.ndarray
    class_cosines: np.ndarray
    mean_cell_cosine: float
    mean_class_cosine: float


@dataclass(frozen=True)
class KroneckerStructure:
    """:class:`KroneckerLayer` of every layer, in forward order."""

    num_classes: int
    weighted: bool
    layers: dict[str, KroneckerLayer]

    def to_json(self) -> dict:
        return to_jsonable(self)


def _cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise cosines of ``a`` and ``b`` (..., P) in float64 (NaN for a zero row)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    num = (a * b).sum(-1)
    den = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), torch.nan).cpu().numpy()


def predicted_means(layer: LayerMoments, errors: torch.Tensor, features: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """``[errors (x) features, errors]`` per row (..., P_l) in the order of the layer's
    parameters: ``errors`` (..., d_out) and ``features`` (..., d_in) broadcast together;
    the weight block is ``vec(e f^T)`` flattened out-major like torch's (out, in, ...)."""
    blocks = []
    for name in layer.params:
        param = model.get_parameter(name)
        attr = name.rpartition(".")[2]
        if attr == "weight":
            if param.shape[0] != errors.shape[-1] or param[0].numel() != features.shape[-1]:
                hint = "; a conv layer needs conv='patches'" if layer.kind == "conv2d" else ""
                raise ArgumentError(
                    f"stats: layer {layer.name!r} has features of size {features.shape[-1]} and errors of size "
                    f"{errors.shape[-1]}, its weight {tuple(param.shape)}{hint}"
                )
            blocks.append((errors[..., :, None] * features[..., None, :]).flatten(-2))
        elif attr == "bias":
            blocks.append(errors.expand(*torch.broadcast_shapes(errors.shape[:-1], features.shape[:-1]), -1))
        else:
            raise ArgumentError(f"stats: layer {layer.name!r} has a parameter {attr!r} that is neither weight nor bias")
    return torch.cat(blocks, dim=-1)


def kronecker_structure(
    stats: LayerStatistics, sums: GradientSums, model: torch.nn.Module, layers: Sequence[str] | None = None
) -> KroneckerStructure:
    """Per layer of ``stats`` (or of its subset ``layers``) the cosines between the gradient means (``sums``, from
    :func:`deepnet.passes.gradient_sums` over the same data and with the same
    weighting, restricted to the layer's parameters) and the Kronecker products of
    the feature and error means; ``model``: the risk's model (parameter shapes)."""
    if not isinstance(stats, LayerStatistics):
        raise TypeError(f"stats: expected LayerStatistics, got {type(stats).__name__}")
    if not isinstance(sums, GradientSums):
        raise TypeError(f"sums: expected GradientSums, got {type(sums).__name__}")
    if sums.weighted != stats.weighted or sums.num_classes != stats.num_classes or sums.num_examples != stats.num_examples:
        raise ArgumentError(
            f"sums: computed with weighted={sums.weighted} for {sums.num_classes} classes and {sums.num_examples} "
            f"examples; stats has weighted={stats.weighted}, {stats.num_classes} classes, {stats.num_examples} examples"
        )
    C = stats.num_classes
    off = ~np.eye(C, dtype=bool)
    out = {}
    for name in stats.select(layers):
        layer = stats.layers[name]
        if not layer.params:
            raise ArgumentError(f"stats: layer {name!r} has no parameters among those of the risk")
        if not np.allclose(sums.cell_weights, layer.errors.cell_weights, rtol=1e-6, atol=1e-8):
            raise ArgumentError("sums: its cell weights differ from those of the errors (different data or model)")
        part = sums.restrict(layer.params)
        W = torch.as_tensor(np.where(off, part.cell_weights, 0.0), dtype=part.sums.dtype, device=part.sums.device)
        cells = part.cross_means()  # (C, C, P_l)
        classes = (W[:, :, None] * cells).sum(1) / W.sum(1)[:, None]
        mu_h = layer.features.class_means  # (C, d_in)
        cell_pred = predicted_means(layer, layer.errors.cross_means, mu_h[:, None, :], model)
        class_pred = predicted_means(layer, layer.errors.class_means, mu_h, model)
        cell_cos, class_cos = _cosines(cells, cell_pred), _cosines(classes, class_pred)
        Pcc = np.asarray(part.cell_weights, dtype=np.float64)
        Pc = np.where(off, Pcc, 0.0).sum(1)
        ok = np.isfinite(cell_cos)
        out[name] = KroneckerLayer(
            name=name,
            params=layer.params,
            cell_cosines=cell_cos,
            class_cosines=class_cos,
            mean_cell_cosine=float(np.sum(Pcc[ok] * cell_cos[ok]) / np.sum(Pcc[ok])),
            mean_class_cosine=float(np.sum(Pc * class_cos) / np.sum(Pc)),
        )
    return KroneckerStructure(C, stats.weighted, out)
