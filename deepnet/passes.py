"""The cell sums of a classifier's extended gradients from one forward and ``C``
backward passes per class batch (Papyan 2020, Sec. 3 and 6; arXiv 1901.08244).

For example ``i`` of class ``c`` with Jacobian ``J_i = df(x_i)/dtheta`` (C x P) and
probabilities ``p_i = softmax(f(x_i))``, the extended gradient for the cross-class
``c'`` is the gradient of its loss as if its label were ``c'``,

    v_{i,c'} = J_i^T (p_i - e_{c'})                              (P,),

and since ``A(p) = diag(p) - p p^T = sum_{c'} p_{c'} (p - e_{c'})(p - e_{c'})^T``,
``G = (1/N) sum_i J_i^T A(p_i) J_i = (1/N) sum_{i,c'} p_{i,c'} v_{i,c'} v_{i,c'}^T``.
The decomposition of ``G`` (``theory.structure``) needs per cell ``(c, c')`` only

* the sum ``S[c, c'] = sum_{i in c} s_{i,c'} v_{i,c'}`` with ``s = p_{i,c'}``
  (weighted) or ``s = sqrt(p_{i,c'})`` (unweighted, 1901.08244): by linearity it is
  ONE backward pass through a batch of class ``c`` with the output gradient
  ``s_{i,c'} (p_i - e_{c'})`` per example, so all ``C^2`` cells cost ``C`` backward
  passes per example (batched over ``c'`` with ``is_grads_batched``, or a loop);
* the weights ``P_{c,c'} = sum_{i in c} p_{i,c'}`` (weighted) or ``n_c`` (unweighted);
* for the traces, ``Q[c, c', t] = sum_{i in c} p_{i,c'} |v^{(t)}_{i,c'}|^2`` per
  parameter tensor ``t``, whose sum over cells is ``N tr(G)`` (the per-example squared
  norms of ``A(p_i)^{1/2} J_i``), from ``C`` more backward passes with output gradients
  ``sqrt(p_{i,c'}) (p_i - e_{c'})``. ``"layers"``: those passes stop at the outputs
  of the Linear / Conv2d / BatchNorm layers, whose per-example parameter gradients have
  closed-form norms from the layer's input ``a`` and output gradient ``g`` (Goodfellow
  2015): ``|g a^T|^2 = |g|^2 |a|^2`` for a Linear layer, the Gram form
  ``sum_{t,s} (a_t . a_s)(g_t . g_s)`` over positions (unfolded patches) for Linear on
  sequences and Conv2d, ``|sum_t g_t xhat_t|^2`` and ``|sum_t g_t|^2`` for batch norm;
  nothing of size ``b x P`` is formed. ``"per-example"``: per-example gradients by
  ``torch.func.vjp`` under ``vmap`` over chunks of examples, for any module but
  memory-bound (hundreds of gradient passes on an MLP, ``bench/gradient_means.py``).

Batches that mix classes are split by label, so each forward runs once per example
(on a class sub-batch); data sorted by class keeps the sub-batches large. Memory:
the ``C^2 P`` sums plus one sub-batch's graph and its gradients (times ``C`` when
batched over ``c'``) and, for ``"per-example"`` squared norms, ``example_chunk x C x P``
numbers; nothing of size ``N x C x P`` is ever held.

:func:`class_batches` is the one forward of the passes (forward hooks on
``risk.model`` see every example once), :func:`cross_class_backward` the ``C``
backward passes to the parameters and :class:`LayerTaps` the per-layer inputs
(features) and the ``C`` backward passes that stop at the layer outputs (errors):
the building blocks of every per-layer measurement.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext as _nothing
from dataclasses import dataclass, field
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vjp, vmap

from theory.checks import check_choice, check_flag, check_int

from .operators import EmpiricalRisk, select_parameters

__all__ = [
    "NORM_METHODS",
    "ClassBatch",
    "GradientSums",
    "LayerTaps",
    "SharedLayerError",
    "class_batches",
    "cross_class_backward",
    "cross_class_residuals",
    "gradient_sums",
    "num_class_batches",
    "output_gradients",
    "parameter_groups",
]

_NORM_BUDGET = 1 << 25
"""Numbers of the per-example gradients held at once for the ``"per-example"`` squared norms (default chunk)."""

NORM_METHODS = ("auto", "layers", "per-example", "none")
_BATCH_NORM = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class ClassBatch:
    """One forward of a batch of a single class ``label``: ``inputs`` (b, ...), the
    autograd leaves ``theta`` it was run with, ``logits`` (b, C) with their graph and
    ``probs = softmax(logits)`` (b, C), detached."""

    label: int
    inputs: torch.Tensor
    theta: tuple[torch.Tensor, ...] = field(repr=False)
    logits: torch.Tensor = field(repr=False)
    probs: torch.Tensor = field(repr=False)


@dataclass(frozen=True)
class GradientSums:
    """Cell sums of the extended gradients ``v_{i,c'} = J_i^T (p_i - e_{c'})`` (module docstring).

    ``sums`` (C, C, P): ``S[c, c'] = sum_{i in c} s_{i,c'} v_{i,c'}`` in the layout of
    ``EmpiricalRisk.flatten`` over the parameter tensors ``names`` (sizes ``numels``);
    ``cell_weights`` (C, C) float64; ``counts`` (C,) ``n_c``; ``squared_norms``
    (C, C, len(names)) float64 ``sum_{i in c} p_{i,c'} |v^{(t)}_{i,c'}|^2`` per tensor, or
    None when not computed. Cross-class means: ``S[c, c'] / cell_weights[c, c']``.
    """

    num_classes: int
    weighted: bool
    names: tuple[str, ...]
    numels: tuple[int, ...]
    counts: np.ndarray
    cell_weights: np.ndarray
    squared_norms: np.ndarray | None = field(repr=False)
    sums: torch.Tensor = field(repr=False)

    @property
    def num_examples(self) -> int:
        return int(self.counts.sum())

    @property
    def size(self) -> int:
        """``P``, the number of parameters the sums cover."""
        return int(self.sums.shape[2])

    def cross_means(self) -> torch.Tensor:
        """``g_{c,c'} = S[c, c'] / P_{c,c'}`` (C, C, P); a zero-weight cell gives zeros."""
        W = torch.as_tensor(self.cell_weights, dtype=self.sums.dtype, device=self.sums.device)
        return self.sums / torch.where(W > 0, W, torch.ones_like(W))[:, :, None]

    def restrict(self, names: Sequence[str]) -> GradientSums:
        """The sums of a subset of the parameter tensors (a layer), in this object's order:
        the block of ``v`` belonging to those tensors (so ``G`` restricted to its diagonal block)."""
        wanted = list(names)
        unknown = [n for n in wanted if n not in self.names]
        if unknown or not wanted:
            raise ValueError(f"names: expected a non-empty subset of the summed parameters {list(self.names)}, got unknown {unknown or wanted}")
        keep = [t for t, n in enumerate(self.names) if n in wanted]
        starts = np.concatenate([[0], np.cumsum(self.numels)])
        index = torch.cat([torch.arange(int(starts[t]), int(starts[t + 1])) for t in keep]).to(self.sums.device)
        return GradientSums(
            num_classes=self.num_classes,
            weighted=self.weighted,
            names=tuple(self.names[t] for t in keep),
            numels=tuple(self.numels[t] for t in keep),
            counts=self.counts,
            cell_weights=self.cell_weights,
            squared_norms=None if self.squared_norms is None else self.squared_norms[:, :, keep],
            sums=self.sums.index_select(2, index),
        )


def class_batches(risk: EmpiricalRisk) -> Iterator[ClassBatch]:
    """The examples of ``risk`` as single-class batches, each with one forward recorded
    for backward passes (a batch mixing classes is split by label, in class order)."""
    for x, y in risk.batches():
        for c in torch.unique(y).tolist():
            xc = x[y == c]
            theta = risk.leaves()
            with torch.enable_grad():
                logits = risk.forward(theta, xc)
            yield ClassBatch(int(c), xc, theta, logits, torch.softmax(logits.detach(), dim=-1))


def num_class_batches(risk: EmpiricalRisk) -> int:
    """How many batches :func:`class_batches` yields (the classes present in each batch), from the labels alone."""
    return sum(len(torch.unique(y)) for _x, y in risk._raw_batches())


def output_gradients(probs: torch.Tensor, weighted: bool) -> torch.Tensor:
    """``U[c', i] = s_{i,c'} (p_i - e_{c'})`` (C, b, C) with ``s = p_{i,c'}`` (weighted) or
    ``sqrt(p_{i,c'})`` (unweighted): the output gradients whose backward passes give the cells."""
    scale = probs.T if weighted else probs.T.sqrt()
    return scale[:, :, None] * cross_class_residuals(probs)


def cross_class_residuals(probs: torch.Tensor) -> torch.Tensor:
    """``R[c', i] = p_i - e_{c'}`` (C, b, C): the output gradients of the loss of every cross-class label."""
    return probs[None, :, :] - torch.eye(probs.shape[1], dtype=probs.dtype, device=probs.device)[:, None, :]


def _backward(
    outputs: torch.Tensor, inputs: Sequence[torch.Tensor], cotangents: torch.Tensor, vectorize: bool, retain: bool
) -> list[torch.Tensor | None]:
    """``d <outputs, cotangents[k]> / d inputs`` for every row ``k``, stacked (k, *input.shape):
    one ``is_grads_batched`` call or a loop (the graph kept after the last iff ``retain``)."""
    k = cotangents.shape[0]
    if vectorize:
        return list(torch.autograd.grad(outputs, inputs, cotangents, retain_graph=retain, is_grads_batched=True, allow_unused=True))
    rows = [
        torch.autograd.grad(outputs, inputs, cotangents[j], retain_graph=retain or j < k - 1, allow_unused=True)
        for j in range(k)
    ]
    return [None if col[0] is None else torch.stack(col) for col in zip(*rows)]


def cross_class_backward(
    risk: EmpiricalRisk, batch: ClassBatch, cotangents: torch.Tensor, *, vectorize: bool = True, retain_graph: bool = False
) -> torch.Tensor:
    """Rows ``sum_i J_i^T cotangents[k, i]`` (k, P) of one class batch: one backward pass
    per row through its recorded forward (freed after the last unless ``retain_graph``),
    all at once with ``is_grads_batched`` (``vectorize``) or one row at a time."""
    parts = _backward(batch.logits, batch.theta, cotangents, vectorize, retain_graph)
    return risk.flatten(parts, lead=(cotangents.shape[0],))


# --------------------------------------------------------------------------- squared norms
def _layer_kind(module: nn.Module) -> str | None:
    """How the per-example gradient norms of ``module``'s own parameters are taken in closed form."""
    if type(module) is nn.Linear:
        return "linear"
    if type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str):
        return "conv2d"
    if isinstance(module, _BATCH_NORM) and module.affine and module.track_running_stats:
        return "batchnorm"
    return None


class SharedLayerError(ValueError):
    """A tapped module ran more than once in one forward."""


class LayerTaps:
    """Forward hooks on chosen modules (name -> module): during each forward inside the
    ``with`` block, every module's input ``inputs[name]`` (detached; the features
    ``h^{l-1}``) and output ``outputs[name]`` (with its graph; for Linear / Conv layers the
    pre-activations). :meth:`errors` then back-propagates output gradients only down to
    those outputs: the errors ``delta^l`` of every tapped layer, for all rows of the
    cotangents at once. A module that runs twice in one forward (shared weights) is an
    error. Reused by every pass that needs per-layer quantities; :meth:`clear` between
    forwards."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = dict(modules)
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._versions: dict[str, int] = {}
        self._handles: list = []

    def __enter__(self) -> Self:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(lambda m, a, out, name=name: self._record(name, a, out)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()
        self._versions.clear()

    def _record(self, name: str, a: tuple, out: torch.Tensor) -> None:
        if not a or not torch.is_tensor(a[0]) or not torch.is_tensor(out):
            raise ValueError(f"layers: {name!r} was called without a tensor input or output, so it has no features or errors")
        a = a[0]
        if name in self.outputs:
            raise SharedLayerError(
                f"layers: {name!r} runs more than once per forward (shared weights), so its per-example "
                "quantities are sums over calls"
            )
        self.inputs[name], self.outputs[name] = a.detach(), out
        self._versions[name] = out._version

    def errors(self, batch: ClassBatch, cotangents: torch.Tensor, *, vectorize: bool = True) -> dict[str, torch.Tensor | None]:
        """``d <f(x_i), cotangents[k, i]> / d out^l_i`` (k, b, *out.shape[1:]) for every tapped
        layer of ``batch``'s forward (None where the output does not reach the logits); the
        graph is kept for later passes."""
        names = list(self.outputs)
        changed = [n for n in names if self.outputs[n]._version != self._versions[n]]
        if changed:
            raise ValueError(
                f"layers: the outputs of {changed} were modified in place after the layer (e.g. ReLU(inplace=True)), "
                "so gradients with respect to them would be taken after that operation; use out-of-place operations"
            )
        grads = _backward(batch.logits, [self.outputs[n] for n in names], cotangents, vectorize, retain=True)
        return dict(zip(names, grads))


def _norm_layers(risk: EmpiricalRisk) -> tuple[dict[str, tuple[nn.Module, str, list[tuple[int, str]]]], list[str]]:
    """The layers owning the selected parameters: name -> (module, kind, [(tensor index, attr)]),
    and the parameters whose layer has no closed-form per-example norms."""
    layers: dict[str, tuple[nn.Module, str, list[tuple[int, str]]]] = {}
    unsupported = []
    for t, name in enumerate(risk.names):
        prefix, _, attr = name.rpartition(".")
        module = risk.model.get_submodule(prefix)
        kind = _layer_kind(module)
        if kind is None or attr not in ("weight", "bias"):
            unsupported.append(f"{name} ({type(module).__name__})")
            continue
        layers.setdefault(prefix, (module, kind, []))[2].append((t, attr))
    return layers, unsupported


def _layer_squared_norms(
    risk: EmpiricalRisk, taps: LayerTaps, layers: dict, batch: ClassBatch, cotangents: torch.Tensor, vectorize: bool
) -> torch.Tensor:
    """``sum_i |d <f(x_i), cotangents[k, i]> / d theta_t|^2`` (k, T) over ``batch``, in closed
    form from the tapped inputs and the errors at the layer outputs."""
    out = torch.zeros(cotangents.shape[0], len(risk.names), dtype=torch.float64, device=cotangents.device)
    for name, g in taps.errors(batch, cotangents, vectorize=vectorize).items():
        if g is None:
            continue
        module, kind, tensors = layers[name]
        a = taps.inputs[name]
        if kind == "batchnorm":  # eval mode: xhat from the running statistics
            shape = (1, -1) + (1,) * (a.ndim - 2)
            a = (a - module.running_mean.view(shape)) / torch.sqrt(module.running_var.view(shape) + module.eps)
        for t, attr in tensors:
            out[:, t] = _example_norms(module, kind, attr, a, g).sum(1).to(torch.float64)
    taps.clear()
    return out


def _gram_norms(A: torch.Tensor, Gr: torch.Tensor) -> torch.Tensor:
    """``|Gr_{k,i}^T A_i|_F^2`` (k, b) for ``A`` (b, T, m) and ``Gr`` (k, b, T, n): the cheaper of
    the Gram form ``sum_{t,s} (A A^T)_{ts} (Gr Gr^T)_{ts}`` and forming the (n x m) products."""
    T, m, n = A.shape[1], A.shape[2], Gr.shape[3]
    if T == 1:
        return Gr[:, :, 0].square().sum(-1) * A[:, 0].square().sum(-1)
    if T * T <= m * n:
        return (torch.einsum("bti,bsi->bts", A, A)[None] * torch.einsum("kbto,kbso->kbts", Gr, Gr)).sum((2, 3))
    return torch.einsum("kbto,bti->kboi", Gr, A).square().sum((2, 3))


def _example_norms(module: nn.Module, kind: str, attr: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-example squared norms (k, b) of the gradient of ``module.<attr>`` from its input
    ``a`` (b, ...; ``xhat`` for batch norm) and output gradients ``g`` (k, b, ...)."""
    k, b = g.shape[:2]
    if kind == "linear":
        Gr = g.reshape(k, b, -1, g.shape[-1])  # positions t of a (b, *, in) input
        if attr == "bias":
            return Gr.sum(2).square().sum(-1)
        return _gram_norms(a.reshape(b, -1, a.shape[-1]), Gr)
    if kind == "conv2d":
        Gr = g.flatten(3).transpose(2, 3)  # (k, b, T, out)
        if attr == "bias":
            return Gr.sum(2).square().sum(-1)
        patches = F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)  # (b, in*kk, T)
        return _gram_norms(patches.transpose(1, 2), Gr)
    gc = g.reshape(k, b, g.shape[2], -1)  # batch norm: (k, b, channels, positions)
    if attr == "bias":
        return gc.sum(-1).square().sum(-1)
    return (gc * a.reshape(1, b, a.shape[1], -1)).sum(-1).square().sum(-1)


def _per_example_squared_norms(risk: EmpiricalRisk, x: torch.Tensor, probs: torch.Tensor, chunk: int) -> torch.Tensor:
    """``sum_i p_{i,c'} |v^{(t)}_{i,c'}|^2`` (C, T) over the examples ``x`` (b, ...) of one
    class: per-example gradients for output gradients ``sqrt(p_{i,c'}) (p_i - e_{c'})`` by
    ``vjp`` under ``vmap`` (over ``c'`` and over chunks of ``chunk`` examples)."""
    params = risk.parameters()
    U = output_gradients(probs, weighted=False).transpose(0, 1)  # (b, C, C): example, c', output

    def example(xi: torch.Tensor, ui: torch.Tensor) -> torch.Tensor:
        _, pullback = vjp(lambda t: risk.forward(t, xi[None]), params)
        grads = vmap(lambda u: pullback(u[None])[0])(ui)  # each (C, *shape)
        return torch.stack([g.reshape(g.shape[0], -1).square().sum(1) for g in grads], dim=-1)  # (C, T)

    total = torch.zeros(probs.shape[1], len(params), dtype=torch.float64, device=probs.device)
    for start in range(0, x.shape[0], chunk):
        total += vmap(example)(x[start : start + chunk], U[start : start + chunk]).sum(0).to(torch.float64)
    return total


def gradient_sums(
    risk: EmpiricalRisk,
    *,
    weighted: bool = True,
    vectorize: bool = True,
    squared_norms: str = "auto",
    example_chunk: int | None = None,
) -> GradientSums:
    """The cell sums of the extended gradients of ``risk`` (its selected parameters) over
    its data: one forward and ``C`` backward passes per class batch, plus ``C`` for the
    squared norms (the traces).

    ``weighted``: output gradients ``p (p - e_{c'})`` and cell weights ``P_{c,c'}``, or
    ``sqrt(p) (p - e_{c'})`` and counts ``n_c``. ``vectorize``: the ``C`` backward passes
    batched over ``c'`` (``is_grads_batched``) or looped. ``squared_norms`` (module
    docstring): ``"layers"`` (every selected parameter in a Linear, Conv2d or batch-norm
    layer, each run once per forward), ``"per-example"``, ``"auto"`` (layers when
    possible) or ``"none"``. ``example_chunk``: examples per vectorised per-example
    step (default: about ``2^25 / (C P)``).
    """
    if not isinstance(risk, EmpiricalRisk):
        raise TypeError(f"risk: expected an EmpiricalRisk, got {type(risk).__name__}")
    weighted = check_flag("weighted", weighted)
    vectorize = check_flag("vectorize", vectorize)
    method = check_choice("squared_norms", squared_norms, NORM_METHODS)
    C, P = risk.num_classes, risk.size
    chunk = max(1, _NORM_BUDGET // (C * P)) if example_chunk is None else check_int("example_chunk", example_chunk, 1)
    layers, unsupported = _norm_layers(risk) if method in ("auto", "layers") else ({}, [])
    if unsupported:
        if method == "layers":
            raise ValueError(
                f"squared_norms: 'layers' needs every parameter in a Linear, Conv2d (groups=1) or affine "
                f"batch-norm layer; not so for {unsupported}; use 'per-example'"
            )
        method = "per-example"
    taps = LayerTaps({name: module for name, (module, _, _) in layers.items()}) if method in ("auto", "layers") else None
    sums = torch.zeros(C, C, P, dtype=risk.dtype, device=risk.device)
    weights = torch.zeros(C, C, dtype=torch.float64, device=risk.device)
    norms = None if method == "none" else torch.zeros(C, C, len(risk.names), dtype=torch.float64, device=risk.device)
    counts = torch.zeros(C, dtype=torch.int64)
    try:
        with taps if taps is not None else _nothing():
            for batch in class_batches(risk):
                c, p = batch.label, batch.probs
                if taps is not None:
                    norms[c] += _layer_squared_norms(risk, taps, layers, batch, output_gradients(p, weighted=False), vectorize)
                elif norms is not None:
                    norms[c] += _per_example_squared_norms(risk, batch.inputs, p, chunk)
                sums[c] += cross_class_backward(risk, batch, output_gradients(p, weighted), vectorize=vectorize)
                weights[c] += p.sum(0).to(torch.float64) if weighted else p.shape[0]
                counts[c] += p.shape[0]
    except SharedLayerError as err:
        raise ValueError(f"squared_norms: {err}; use squared_norms='per-example'") from None
    return GradientSums(
        num_classes=C,
        weighted=weighted,
        names=tuple(risk.names),
        numels=tuple(risk.numels),
        counts=counts.numpy(),
        cell_weights=weights.cpu().numpy(),
        squared_norms=None if norms is None else norms.cpu().numpy(),
        sums=sums,
    )


def parameter_groups(model: torch.nn.Module, params: Sequence[str] | None = None) -> dict[str, tuple[str, ...]]:
    """The layers of ``model``: every module owning parameters directly, named as in
    ``named_modules()``, with the names of its parameters (among ``params``, default all
    that require a gradient), in ``named_parameters()`` order."""
    chosen = set(select_parameters(model, params))
    groups: dict[str, tuple[str, ...]] = {}
    for name, module in model.named_modules():
        own = tuple(f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False))
        own = tuple(n for n in own if n in chosen)
        if own:
            groups[name] = own
    return groups
