"""Matrix-free Hessian, G and E of a classifier's average cross-entropy over a data set.

For a classifier ``f(x; theta)`` with ``C`` outputs, probabilities ``p = softmax(f)`` and
the training loss ``L(theta) = (1/N) sum_i CE(f(x_i), y_i)`` over all ``N`` examples:

* Hessian ``H = (1/N) sum_i d^2 CE(f(x_i), y_i) / dtheta^2``;
* ``G = (1/N) sum_i J_i^T A(p_i) J_i`` with ``J_i = df(x_i)/dtheta`` (C x P) and
  ``A(p) = diag(p) - p p^T`` (the Gauss-Newton matrix = the Fisher for softmax
  cross-entropy);
* ``E = H - G = (1/N) sum_i sum_k (p_i - e_{y_i})_k d^2 f_k(x_i) / dtheta^2``.

:class:`EmpiricalRisk` binds a model, a selection of its parameters (``P`` numbers,
flattened in ``named_parameters()`` order) and the data; it holds the one
per-batch forward (``torch.func.functional_call`` with the other parameters and
the buffers held fixed) and gives the per-example logits / probabilities and the
plain gradient pass. :class:`HessianOperator`, :class:`GaussNewtonOperator` and
:class:`ResidualOperator` are ``theory.operators.SymmetricOperator`` s of size ``P``:
their ``matmat(V)`` (``V`` of shape ``(P, k)``) loops once over the data, sums each
batch's contribution and divides by ``N``, so results do not depend on the batch
size. Products with ``H`` and ``E`` differentiate the gradient map
``theta -> J(theta)^T r`` with ``r = p - e_y`` (``H``) or ``r`` held fixed (``E``);
``G`` applies ``J`` by ``torch.func.jvp``, ``A(p)`` in closed form and ``J^T`` by a
backward pass.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp, vjp, vmap

from theory.checks import check_int
from theory.operators import SymmetricOperator

__all__ = [
    "EmpiricalRisk",
    "CurvatureOperator",
    "HessianOperator",
    "GaussNewtonOperator",
    "ResidualOperator",
    "OPERATORS",
    "METHODS",
    "curvature_operator",
    "check_eval_mode",
    "select_parameters",
]

Method = Literal["double-backward", "forward-over-reverse", "reverse-over-forward"]
METHODS = ("double-backward", "forward-over-reverse", "reverse-over-forward")

_BATCH_NORM = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)
_DROPOUT = (nn.modules.dropout._DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout)


def check_eval_mode(model: nn.Module) -> None:
    """Raise ``ValueError`` when ``model`` has a batch-norm layer that normalises with
    batch statistics (training mode, or no running statistics) or a dropout layer in
    training mode: the loss would then depend on how the data is cut into batches or
    on random masks, and the operators would not be deterministic functions of the data."""
    for name, module in model.named_modules():
        label = f"{name or '<model>'} ({type(module).__name__})"
        if isinstance(module, _BATCH_NORM):
            if module.training:
                raise ValueError(
                    f"model: batch-norm layer {label} is in training mode: it would normalise with the "
                    "statistics of each batch (and update its running statistics), so the curvature "
                    "would depend on how the data is split into batches and would not be a deterministic "
                    "function of the data; call model.eval() first"
                )
            if module.running_mean is None:
                raise ValueError(
                    f"model: batch-norm layer {label} has no running statistics (track_running_stats=False), "
                    "so it normalises with batch statistics even in eval mode and the curvature would "
                    "depend on how the data is split into batches"
                )
        elif isinstance(module, _DROPOUT) and module.training and module.p > 0:
            raise ValueError(
                f"model: dropout layer {label} is in training mode: it would draw a new random mask in "
                "every pass, so the curvature would not be a deterministic function of the data; "
                "call model.eval() first"
            )


def select_parameters(model: nn.Module, params: Sequence[str] | str | None = None) -> list[str]:
    """Names of the selected parameters, in ``named_parameters()`` order.

    ``None`` selects every parameter that requires a gradient; otherwise each entry
    is a parameter name (``"fc1.weight"``) or a module name selecting all the
    parameters under it (``"fc1"``, ``"features.3"``; ``""`` is the whole model).
    """
    named = [name for name, _ in model.named_parameters()]
    if params is None:
        chosen = [name for name, p in model.named_parameters() if p.requires_grad]
        if not chosen:
            raise ValueError("params: the model has no parameter that requires a gradient; name the ones to use")
        return chosen
    if isinstance(params, str):
        params = [params]
    wanted: set[str] = set()
    for item in params:
        if not isinstance(item, str):
            raise TypeError(f"params: expected parameter or module names (str), got {type(item).__name__}")
        hits = [n for n in named if n == item or item == "" or n.startswith(item + ".")]
        if not hits:
            modules = sorted({n.rsplit(".", 1)[0] for n in named if "." in n})
            raise ValueError(
                f"params: {item!r} is neither a parameter nor a module with parameters; parameters are "
                f"{_preview(named)}; modules are {_preview(modules)}"
            )
        wanted.update(hits)
    return [n for n in named if n in wanted]


def _preview(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} in all)"


class EmpiricalRisk:
    """``L(theta) = (1/N) sum_i CE(f(x_i; theta), y_i)`` of ``model`` over a data set.

    ``data`` is either a pair ``(X, Y)`` of tensors (inputs with the examples along
    the first axis, integer labels of shape ``(N,)``), cut into batches of
    ``batch_size`` (default 1000), or a re-iterable collection of ``(x, y)`` batches (a list, a
    ``DataLoader``; then ``batch_size`` must be left out). ``params`` selects the
    differentiated parameters (see :func:`select_parameters`); all others and the
    buffers are held fixed. ``dtype`` (e.g. ``torch.float64`` for checks) or
    ``device`` different from the model's work on a converted copy of the model;
    otherwise the model's current weights are read at every pass. Batches are moved
    to ``device`` and floating inputs cast to ``dtype`` one at a time.

    Checked here, before any long work: eval mode (:func:`check_eval_mode`), the
    data is not empty, labels are integers in ``[0, C)`` with ``C`` the model's output
    width, and ``C == num_classes`` when that is given.
    """

    def __init__(
        self,
        model: nn.Module,
        data: tuple[torch.Tensor, torch.Tensor] | Iterable[tuple[torch.Tensor, torch.Tensor]],
        *,
        batch_size: int | None = None,
        params: Sequence[str] | str | None = None,
        num_classes: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        check_eval_mode(model)
        first = next(iter(model.parameters()), None)
        if first is None:
            raise ValueError("model: it has no parameters")
        dtype = first.dtype if dtype is None else dtype
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
        device = first.device if device is None else torch.device(device)
        if first.dtype != dtype or first.device != device:
            model = copy.deepcopy(model).to(device=device, dtype=dtype)
        self.model = model
        self.dtype, self.device = dtype, device
        self.names = tuple(select_parameters(model, params))
        named = dict(model.named_parameters())
        self._params = tuple(named[n].detach() for n in self.names)
        self.shapes = tuple(p.shape for p in self._params)
        self.numels = tuple(p.numel() for p in self._params)
        self.size = sum(self.numels)
        # everything not differentiated is passed as a constant
        chosen = set(self.names)
        self._fixed = {n: p.detach() for n, p in named.items() if n not in chosen}
        self._fixed.update({n: b for n, b in model.named_buffers()})

        if isinstance(data, tuple) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
            X, Y = data
            if X.ndim < 1 or Y.ndim != 1 or X.shape[0] != Y.shape[0]:
                raise ValueError(
                    f"data: expected inputs X (N, ...) and labels Y (N,), got shapes {tuple(X.shape)} and {tuple(Y.shape)}"
                )
            self._tensors: tuple[torch.Tensor, torch.Tensor] | None = (X, Y)
            self.batch_size = check_int("batch_size", 1000 if batch_size is None else batch_size, 1)
            self._batches = None
        else:
            if batch_size is not None:
                raise ValueError("batch_size: only for data given as tensors (X, Y); these batches are already cut")
            if not isinstance(data, Iterable) or iter(data) is data:
                raise TypeError(
                    "data: expected tensors (X, Y) or a re-iterable collection of (x, y) batches "
                    f"(a list or a DataLoader), got {type(data).__name__} (one-shot iterators cannot be reused)"
                )
            self._tensors, self.batch_size, self._batches = None, None, data
        self.num_data, self.num_classes = self._validate(num_classes)

    # ----------------------------------------------------------------------- data
    def _raw_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._tensors is not None:
            X, Y = self._tensors
            for start in range(0, X.shape[0], self.batch_size):
                yield X[start : start + self.batch_size], Y[start : start + self.batch_size]
        else:
            for i, batch in enumerate(self._batches):
                if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                    raise ValueError(f"data: batch {i} is not an (x, y) pair")
                yield batch[0], batch[1]

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The ``(x, y)`` batches on ``device``, floating inputs cast to ``dtype``, labels int64."""
        for x, y in self._raw_batches():
            x = x.to(device=self.device, dtype=self.dtype) if x.is_floating_point() else x.to(self.device)
            yield x, y.to(device=self.device, dtype=torch.long)

    def _validate(self, num_classes: int | None) -> tuple[int, int]:
        """One pass over the labels (and one forward of the first batch): ``(N, C)``."""
        if num_classes is not None:
            check_int("num_classes", num_classes, 1)
        count, low, high, width = 0, None, None, None
        for i, (x, y) in enumerate(self._raw_batches()):
            if not torch.is_tensor(x) or not torch.is_tensor(y):
                raise TypeError(f"data: batch {i} must hold tensors, got ({type(x).__name__}, {type(y).__name__})")
            if y.ndim != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
                raise ValueError(f"labels: expected integer class indices of shape (batch,), got {y.dtype} of shape {tuple(y.shape)} in batch {i}")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"data: batch {i} has {x.shape[0]} inputs but {y.shape[0]} labels")
            if y.numel() == 0:
                continue
            if width is None:
                with torch.no_grad():
                    out = self.forward(self._params, x[:2].to(device=self.device, dtype=self.dtype) if x.is_floating_point() else x[:2].to(self.device))
                if out.ndim != 2:
                    raise ValueError(f"model: expected logits of shape (batch, classes), got shape {tuple(out.shape)}")
                width = out.shape[1]
                if num_classes is not None and width != num_classes:
                    raise ValueError(f"model: its output has width {width} but num_classes={num_classes}")
            lo, hi = int(y.min()), int(y.max())
            low = lo if low is None else min(low, lo)
            high = hi if high is None else max(high, hi)
            count += y.shape[0]
        if count == 0:
            raise ValueError("data: no examples (the data set is empty)")
        if low < 0 or high >= width:
            raise ValueError(
                f"labels: expected class indices in [0, {width}) for a model with {width} outputs, "
                f"got labels from {low} to {high}"
            )
        return count, width

    # ------------------------------------------------------------------ the model
    def parameters(self) -> tuple[torch.Tensor, ...]:
        """The selected parameters (detached, current values)."""
        return self._params

    def leaves(self) -> tuple[torch.Tensor, ...]:
        """Fresh autograd leaves sharing storage with the selected parameters."""
        return tuple(p.detach().requires_grad_(True) for p in self._params)

    def forward(self, theta: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits ``f(x; theta)`` (batch, C) with the selected parameters set to ``theta``."""
        return functional_call(self.model, {**self._fixed, **dict(zip(self.names, theta))}, (x,))

    @staticmethod
    def residual(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``dCE/df = softmax(f) - e_y`` (batch, C)."""
        return torch.softmax(logits, dim=-1) - F.one_hot(y, logits.shape[-1]).to(logits.dtype)

    def split(self, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A flat ``(P,)`` vector (or ``(k, P)`` block) as views shaped like the parameters."""
        lead = tuple(v.shape[:-1])
        return tuple(t.view(*lead, *s) for t, s in zip(v.split(self.numels, dim=-1), self.shapes))

    def flatten(self, tensors: Sequence[torch.Tensor | None], lead: tuple[int, ...] = ()) -> torch.Tensor:
        """The inverse of :meth:`split` (``None`` entries are zeros)."""
        return torch.cat([
            (t if t is not None else torch.zeros(*lead, *s, dtype=self.dtype, device=self.device)).reshape(*lead, -1)
            for t, s in zip(tensors, self.shapes)
        ], dim=-1)

    # ------------------------------------------------------------ per-example data
    @torch.no_grad()
    def logits(self) -> torch.Tensor:
        """Per-example logits ``f(x_i)`` (N, C), in data order."""
        return torch.cat([self.forward(self._params, x) for x, _ in self.batches()])

    def probabilities(self) -> torch.Tensor:
        """Per-example probabilities ``softmax(f(x_i))`` (N, C), in data order."""
        return torch.softmax(self.logits(), dim=-1)

    def labels(self) -> torch.Tensor:
        """The labels (N,) in data order."""
        return torch.cat([y for _, y in self.batches()])

    def loss_and_gradient(self) -> tuple[float, torch.Tensor]:
        """``L(theta)`` and its gradient ``(1/N) sum_i J_i^T (p_i - e_{y_i})`` (P,): one plain
        forward and backward pass per batch (the reference cost of a product)."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        grad = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        for x, y in self.batches():
            theta = self.leaves()
            with torch.enable_grad():
                loss = F.cross_entropy(self.forward(theta, x), y, reduction="sum")
                parts = torch.autograd.grad(loss, theta, allow_unused=True)
            total += loss.detach().to(torch.float64)
            grad += self.flatten(parts)
        return float(total) / self.num_data, grad / self.num_data

    def gradient(self) -> torch.Tensor:
        """The gradient ``dL/dtheta`` (P,)."""
        return self.loss_and_gradient()[1]

    def __repr__(self) -> str:
        return (
            f"EmpiricalRisk(P={self.size}, N={self.num_data}, C={self.num_classes}, "
            f"params={len(self.names)} tensors, dtype={self.dtype}, device={self.device})"
        )


class CurvatureOperator(SymmetricOperator):
    """A ``(1/N) sum_batches`` curvature operator of an :class:`EmpiricalRisk`.

    ``matmat(V)`` makes one pass over the data: per batch one forward (with its
    autograd graph) shared by all ``k`` columns. Vectorised steps (``torch.func``
    transforms under ``vmap``, first-order backward passes with
    ``is_grads_batched``) take chunks of at most ``max_columns`` columns, which
    bounds their memory (about ``max_columns`` times that of one column);
    ``max_columns=1`` loops over the columns.
    """

    kind: str = ""

    def __init__(self, risk: EmpiricalRisk, *, max_columns: int = 8):
        if not isinstance(risk, EmpiricalRisk):
            raise TypeError(f"risk: expected an EmpiricalRisk, got {type(risk).__name__}")
        super().__init__(risk.size, risk.dtype, risk.device)
        self.risk = risk
        self.max_columns = check_int("max_columns", max_columns, 1)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        Vt = V.T.contiguous()  # (k, P): each column a contiguous row
        out = torch.zeros_like(Vt)
        for x, y in self.risk.batches():
            out += self._batch_matmat(x, y, Vt)
        return (out / self.risk.num_data).T

    def _vmap_columns(self, fn: Callable[..., tuple[torch.Tensor, ...]], Vt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``vmap(fn)`` over the rows of ``Vt`` (split like the parameters) in chunks of
        ``max_columns`` rows; ``fn`` returns a tuple, whose parts are concatenated."""
        parts = [vmap(fn)(self.risk.split(chunk)) for chunk in Vt.split(self.max_columns)]
        return tuple(torch.cat(group) for group in zip(*parts))

    def _logits_and_tangents(
        self, x: torch.Tensor, theta: Sequence[torch.Tensor], chunk: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``f(x; theta)`` (batch, C) and ``J v`` (k, batch, C) for the rows ``v`` of
        ``chunk`` (k, P), from one forward by ``torch.func.jvp`` (under ``vmap`` for
        ``k > 1``: the primal runs once); both keep their autograd graph to ``theta``."""
        risk = self.risk

        def push(v: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
            return jvp(lambda t: risk.forward(t, x), (tuple(theta),), (v,))

        with torch.enable_grad():
            if chunk.shape[0] == 1:  # no vmap for one column (a Lanczos step): 20% faster on the MLP
                logits, Jv = push(risk.split(chunk[0]))
                return logits, Jv[None]
            return vmap(push, out_dims=(None, 0))(risk.split(chunk))

    def _backward_columns(
        self, outputs: Sequence[torch.Tensor], theta: Sequence[torch.Tensor], cotangents: Sequence[torch.Tensor], width: int
    ) -> torch.Tensor:
        """Rows ``sum_o <d outputs_o / d theta, cotangents_o[j]>`` (k, P) for cotangents of
        shape ``(k, *output.shape)``: backward passes through the recorded graph (freed
        after the last) for chunks of ``width`` columns (``is_grads_batched``) or, with
        ``width=1``, one column at a time."""
        k = cotangents[0].shape[0]
        rows = []
        for start in range(0, k, width):
            chunk = [c[start : start + width] for c in cotangents]
            last = start + width >= k
            if chunk[0].shape[0] == 1:
                parts = torch.autograd.grad(outputs, theta, [c[0] for c in chunk], retain_graph=not last, allow_unused=True)
                rows.append(self.risk.flatten(parts)[None])
            else:
                parts = torch.autograd.grad(
                    outputs, theta, chunk, retain_graph=not last, is_grads_batched=True, allow_unused=True
                )
                rows.append(self.risk.flatten(parts, lead=(chunk[0].shape[0],)))
        return torch.cat(rows)

    def _batch_matmat(self, x: torch.Tensor, y: torch.Tensor, Vt: torch.Tensor) -> torch.Tensor:
        """The batch's sum-reduced product, ``(k, P) -> (k, P)``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.risk!r})"


class _GradientMapOperator(CurvatureOperator):
    """Derivative of the gradient map ``theta -> J(theta)^T r`` along ``v``, with
    ``r = softmax(f) - e_y`` differentiated (Hessian) or held fixed (E).

    ``method="double-backward"`` differentiates the recorded backward pass again
    with autograd (all columns through one graph per batch);
    ``"forward-over-reverse"`` takes ``torch.func.jvp`` of the ``torch.func.vjp``
    gradient map under ``vmap`` over the columns; ``"reverse-over-forward"``
    takes ``J v`` by ``torch.func.jvp`` (one forward per column) and
    the gradient of ``s = r^T J v = <J^T r, v>`` by a backward pass through it.
    Which is fastest depends on the network and the block (``bench/products.py``):
    double backward on the MLP and on blocks of columns, reverse-over-forward for
    one column on the CNN.
    """

    freeze_residual = False

    def __init__(self, risk: EmpiricalRisk, *, method: Method = "double-backward", max_columns: int = 8):
        if method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
        super().__init__(risk, max_columns=max_columns)
        self.method = method

    def _residual(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r = self.risk.residual(logits, y)
        return r.detach() if self.freeze_residual else r

    def _batch_matmat(self, x: torch.Tensor, y: torch.Tensor, Vt: torch.Tensor) -> torch.Tensor:
        risk = self.risk
        if self.method == "forward-over-reverse":
            def gradient_map(theta: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
                logits, pullback = vjp(lambda t: risk.forward(t, x), theta)
                return pullback(self._residual(logits, y))[0]

            def product(v: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
                return jvp(gradient_map, (risk.parameters(),), (v,))[1]

            return risk.flatten(self._vmap_columns(product, Vt), lead=(Vt.shape[0],))

        theta = risk.leaves()
        if self.method == "reverse-over-forward":
            rows = []
            # one column per forward: under vmap the backward through k batched tangents
            # cost 6-7 gradient passes per column on VGG11 against 2.7 for one (bench/products.py)
            for v in Vt.split(1):
                logits, Jv = self._logits_and_tangents(x, theta, v)
                with torch.enable_grad():  # s = r^T J v = <J^T r, v>, whose gradient is H v (E v for r fixed)
                    s = (self._residual(logits, y) * Jv).sum()
                rows.append(self._backward_columns([s], theta, [torch.ones_like(s)[None]], width=1))
            return torch.cat(rows)
        with torch.enable_grad():
            logits = risk.forward(theta, x)
            grad = torch.autograd.grad(logits, theta, self._residual(logits, y), create_graph=True)
            live = [i for i, g in enumerate(grad) if g.requires_grad]  # the others are constant in theta
            if not live:
                return torch.zeros_like(Vt)
            V = risk.split(Vt)
            # one column at a time: faster than is_grads_batched here (2.0 vs 2.5 gradient
            # passes per column on CPU, bench/products.py)
            return self._backward_columns([grad[i] for i in live], theta, [V[i] for i in live], width=1)


class HessianOperator(_GradientMapOperator):
    """``H = (1/N) sum_i d^2 CE(f(x_i), y_i)/dtheta^2`` (P x P), matrix-free.

    ``H v`` is the derivative along ``v`` of the gradient ``J^T (softmax(f) - e_y)``
    (double backward by default; ``method="forward-over-reverse"`` for
    ``torch.func.jvp`` of the gradient)."""

    kind = "hessian"


class ResidualOperator(_GradientMapOperator):
    """``E = H - G = (1/N) sum_i sum_k r_{ik} d^2 f_k(x_i)/dtheta^2`` with ``r_i = p_i - e_{y_i}``.

    ``E v`` is the derivative along ``v`` of ``J(theta)^T r`` with ``r`` held fixed:
    one second-order pass, not the difference of two products."""

    kind = "E"
    freeze_residual = True


class GaussNewtonOperator(CurvatureOperator):
    """``G = (1/N) sum_i J_i^T A(p_i) J_i``, ``A(p) = diag(p) - p p^T`` (the Fisher for
    softmax cross-entropy; positive semidefinite).

    Per batch and chunk of at most ``max_columns`` columns: one forward by
    ``torch.func.jvp`` under ``vmap`` gives the logits (recorded for autograd, shared
    by the chunk's columns) and ``J v`` for each column, ``u = A(p) J v = p * Jv - p (p . Jv)``
    in closed form, and ``J^T u`` by backward passes through that forward.
    """

    kind = "G"

    def _batch_matmat(self, x: torch.Tensor, y: torch.Tensor, Vt: torch.Tensor) -> torch.Tensor:
        theta = self.risk.leaves()
        rows = []
        for chunk in Vt.split(self.max_columns):  # the primal logits keep their graph; the tangents are not differentiated
            logits, Jv = self._logits_and_tangents(x, theta, chunk)
            Jv = Jv.detach()
            p = torch.softmax(logits.detach(), dim=-1)
            U = p * Jv - p * (p * Jv).sum(dim=-1, keepdim=True)
            rows.append(self._backward_columns([logits], theta, [U], width=chunk.shape[0]))
        return torch.cat(rows)


OPERATORS: dict[str, type[CurvatureOperator]] = {
    "hessian": HessianOperator,
    "G": GaussNewtonOperator,
    "E": ResidualOperator,
}


def curvature_operator(kind: str, risk: EmpiricalRisk, **kwargs: object) -> CurvatureOperator:
    """The operator named ``kind`` (``"hessian"``, ``"G"`` or ``"E"``) of ``risk``;
    ``kwargs`` go to its constructor (``max_columns``; ``method`` for hessian / E)."""
    if kind not in OPERATORS:
        raise ValueError(f"operator: expected one of {tuple(OPERATORS)}, got {kind!r}")
    cls = OPERATORS[kind]
    if cls is GaussNewtonOperator:
        kwargs.pop("method", None)
    return cls(risk, **kwargs)
