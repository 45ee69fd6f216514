"""The class/cross-class decomposition of a network's Gauss-Newton matrix ``G``, for
the whole network and per layer, every part an operator of size ``P``
(Papyan 2020, Sec. 3 and 6; arXiv 1901.08244 for the unweighted form).

``G = (1/N) sum_{i,c'} p_{i,c'} v_{i,c'} v_{i,c'}^T`` with the extended gradients
``v_{i,c'} = J_i^T (p_i - e_{c'})`` splits exactly as
``G = G_class + G_cross + G_within + G_diag`` (``theory.structure``). The three
mean parts come from the cell sums of :mod:`deepnet.passes` (rank ``<= C^2``,
spectra and traces from their ``C^2 x C^2`` Gram matrix); the within part is
``G - class - cross - diag`` with ``G`` the matrix-free
:class:`deepnet.operators.GaussNewtonOperator`, and ``tr G`` is exact from the
per-example squared norms the passes collect.

A layer is a set of parameter tensors; its ``G^l`` is the diagonal block of ``G``
for those parameters (the Gauss-Newton matrix of the loss in them, the others held
fixed), and its extended gradients are the blocks of ``v``. So one set of passes
(:func:`deepnet.passes.gradient_sums` over all parameters) serves the whole network
and every layer: :func:`layer_decompositions` only slices the sums.

Typical use::

    risk = EmpiricalRisk(model.eval(), (X, Y), batch_size=500)
    sums = gradient_sums(risk, weighted=True)          # 1 forward + 2C backward passes per example
    whole = decompose_gradients(risk, sums)            # CrossClassDecomposition of size P
    layers = layer_decompositions(risk, sums)          # {"layers.1": ..., "layers.2": ...}
    knockout = whole.within_part.as_operator()         # G - class - cross - diag
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from theory.checks import check_int
from theory.operators import SymmetricOperator
from theory.structure import CrossClassAccumulator, CrossClassDecomposition

from .operators import EmpiricalRisk, GaussNewtonOperator, select_parameters
from .passes import GradientSums, gradient_sums, parameter_groups

__all__ = ["decompose_gradients", "layer_decompositions", "layer_parameters", "restricted_risk"]

Layers = Mapping[str, Sequence[str] | str] | Sequence[str]


class _Batches:
    """A re-iterable view of an :class:`EmpiricalRisk`'s batches (already on its device and dtype)."""

    def __init__(self, risk: EmpiricalRisk):
        self.risk = risk

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.risk.batches()


def restricted_risk(risk: EmpiricalRisk, params: Sequence[str] | str) -> EmpiricalRisk:
    """The same model and data as ``risk`` with only ``params`` (names of parameters or
    modules, a subset of ``risk.names``) differentiated; its ``G`` is the diagonal block."""
    names = select_parameters(risk.model, params)
    outside = [n for n in names if n not in risk.names]
    if outside:
        raise ValueError(f"params: {outside} are not among the parameters of the risk ({len(risk.names)} tensors)")
    return EmpiricalRisk(risk.model, _Batches(risk), params=names, num_classes=risk.num_classes)


def layer_parameters(risk: EmpiricalRisk, layers: Layers | None = None) -> dict[str, tuple[str, ...]]:
    """Layer name -> its parameter names, checked against ``risk`` (before any pass).

    ``layers``: None (every module owning parameters among ``risk.names``, see
    :func:`deepnet.passes.parameter_groups`), a sequence of module or parameter names
    (each its own layer), or a mapping name -> module/parameter names.
    """
    if layers is None:
        groups = parameter_groups(risk.model, list(risk.names))
    else:
        if isinstance(layers, str):
            layers = [layers]
        items = layers.items() if isinstance(layers, Mapping) else ((name, name) for name in layers)
        groups = {}
        for label, spec in items:
            names = tuple(select_parameters(risk.model, spec))
            outside = [n for n in names if n not in risk.names]
            if outside:
                raise ValueError(f"layers: {label!r} has parameters {outside} outside those of the risk")
            groups[str(label)] = names
    if not groups:
        raise ValueError("layers: no layer selected")
    return groups


def decompose_gradients(
    risk: EmpiricalRisk,
    sums: GradientSums | None = None,
    *,
    weighted: bool = True,
    vectorize: bool = True,
    max_columns: int = 8,
    total: SymmetricOperator | None = None,
) -> CrossClassDecomposition:
    """``G = class + cross + within + diag`` of ``risk``'s selected parameters.

    ``sums``: cell sums over at least those parameters (from :func:`gradient_sums`, with
    squared norms); computed here (``weighted``, ``vectorize``) when None. The within
    part is ``total - (class + cross + diag)``, ``total`` by default
    ``GaussNewtonOperator(risk, max_columns=max_columns)`` (the data-parallel G of
    :func:`deepnet.distributed.distributed_decomposition` otherwise).
    """
    max_columns = check_int("max_columns", max_columns, 1)
    if sums is None:
        sums = gradient_sums(risk, weighted=weighted, vectorize=vectorize)
    if not isinstance(sums, GradientSums):
        raise TypeError(f"sums: expected GradientSums, got {type(sums).__name__}")
    if sums.num_classes != risk.num_classes:
        raise ValueError(f"sums: computed for {sums.num_classes} classes, the risk has {risk.num_classes}")
    if sums.squared_norms is None:
        raise ValueError("sums: computed with squared_norms='none'; the traces (tr G, within) need them")
    if sums.names != tuple(risk.names):
        sums = sums.restrict(risk.names)
    if sums.names != tuple(risk.names) or sums.sums.dtype != risk.dtype:
        raise ValueError(f"sums: parameters/dtype do not match the risk's ({len(risk.names)} tensors, {risk.dtype})")
    acc = CrossClassAccumulator.from_sums(
        sums.sums, sums.cell_weights, sums.squared_norms.sum(axis=2), sums.counts, sums.weighted
    )
    return acc.finalize(total=GaussNewtonOperator(risk, max_columns=max_columns) if total is None else total)


def layer_decompositions(
    risk: EmpiricalRisk,
    sums: GradientSums | None = None,
    layers: Layers | None = None,
    *,
    weighted: bool = True,
    vectorize: bool = True,
    max_columns: int = 8,
) -> dict[str, CrossClassDecomposition]:
    """:func:`decompose_gradients` of every layer (see :func:`layer_parameters`), each on
    its diagonal block ``G^l``, from one set of sums over ``risk`` (computed when None)."""
    groups = layer_parameters(risk, layers)
    max_columns = check_int("max_columns", max_columns, 1)
    if sums is None:
        sums = gradient_sums(risk, weighted=weighted, vectorize=vectorize)
    return {
        label: decompose_gradients(restricted_risk(risk, list(names)), sums.restrict(names), max_columns=max_columns)
        for label, names in groups.items()
    }
