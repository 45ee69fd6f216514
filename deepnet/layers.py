"""Features, back-propagated errors and their class structure layer by layer
(Papyan 2020, Sec. 2, 3 and 7, Figs. 7-10).

For every tapped layer ``l`` (an ``nn.Linear`` or ``nn.Conv2d`` module) and example
``i`` of class ``c``:

* the features ``h^{l-1}_{i,c}`` are the layer's input, the K-FAC input (two
  indices). In the MLP of :mod:`deepnet.models` the input of Linear layer ``k + 1``
  is the post-activation output ``relu(BN(W_k h + b_k))`` of block ``k``, so the
  default selection (every Linear / Conv2d layer) covers the input ``vec(x)``, the
  post-activation output of every block and nothing twice;
* the errors ``delta^l_{i,c,c'} = d CE(f(x_i), c') / d z^l`` are the gradients of the
  loss of the cross-class label ``c'`` at the layer's output ``z^l`` (the
  pre-activation; before batch norm where there is one), for all ``C`` labels
  ``c'``: one forward and ``C`` backward passes per class batch that stop at the
  layer outputs (:class:`deepnet.passes.LayerTaps`, batched over ``c'``).

Positions. A Linear layer applied to a sequence and a Conv2d layer see several
positions ``t`` per example. The gradient of a layer's bias is ``sum_t delta_t``, so
the errors are summed over positions (``d = out`` features / channels). The
features are averaged over positions: ``conv="mean"`` (default) averages the
input channels (``d = in_channels``), ``conv="patches"`` averages the unfolded
receptive-field patches (``d = in_channels * kh * kw``, in the weight's flattening
order). The default is the mean because it is the per-channel representation the
separation measures are about, and it keeps ``d`` at most 512 on VGG11 so that its
second moments are dense (the patches reach 4608 there); the Kronecker and
weight analyses of a conv layer need ``"patches"`` (its weight's input side).

Everything streams: per layer the features go into a
:class:`theory.structure.FeatureAccumulator` and the errors, with weights
``p_{i,c'}`` (or the unweighted form of 1901.08244), into a
:class:`theory.structure.CrossClassAccumulator`; when ``d_l <= dense_limit`` the
accumulators also keep the dense ``d_l x d_l`` second moments (their spectra by a
dense ``eigh``), otherwise the within parts re-run the passes for that layer per
product (matrix-free, ``theory.spectral``). Nothing of size ``N x C x d`` is held.

:func:`layer_separation` gives per layer the separation measures of the paper's
Figs. 7-10 for features and errors (:class:`Separation`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from theory.attribution import AttributionReport, attribute_decomposition
from theory.checks import ArgumentError, check_choice, check_flag, check_int
from theory.progress import progress
from theory.results import to_jsonable
from theory.spectral import top_eigenpairs
from theory.structure import (
    CrossClassAccumulator,
    CrossClassDecomposition,
    FeatureAccumulator,
    FeatureDecomposition,
    LowRankPart,
)

from .operators import EmpiricalRisk
from .passes import (
    ClassBatch,
    LayerTaps,
    class_batches,
    cross_class_residuals,
    num_class_batches,
    parameter_groups,
)

__all__ = [
    "CONV_FEATURES",
    "LayerMoments",
    "LayerSeparation",
    "LayerStatistics",
    "Separation",
    "SeparationWithDepth",
    "error_class_view",
    "global_mean_share",
    "layer_attribution",
    "layer_passes",
    "layer_separation",
    "layer_statistics",
    "select_layers",
]

CONV_FEATURES = ("mean", "patches")
_KINDS = ((nn.Linear, "linear"), (nn.Conv2d, "conv2d"))


def _kind(module: nn.Module) -> str | None:
    return next((kind for cls, kind in _KINDS if type(module) is cls), None)


def select_layers(model: nn.Module, layers: Sequence[str] | str | None = None) -> dict[str, nn.Module]:
    """The tapped layers, name -> module in ``named_modules()`` order: ``None`` selects
    every ``nn.Linear`` and ``nn.Conv2d`` module; otherwise module names, each one of
    those kinds (a module without parameters, or with parameters of another kind, is
    an :class:`ArgumentError` naming ``layers``)."""
    named = dict(model.named_modules())
    tappable = [n for n, m in named.items() if _kind(m) is not None]
    if layers is None:
        if not tappable:
            raise ArgumentError("layers: the model has no nn.Linear or nn.Conv2d module to tap")
        return {n: named[n] for n in tappable}
    wanted = [layers] if isinstance(layers, str) else list(layers)
    if not wanted or not all(isinstance(n, str) for n in wanted):
        raise ArgumentError(f"layers: expected a non-empty list of module names, got {layers!r}")
    for name in wanted:
        if name not in named:
            raise ArgumentError(f"layers: unknown module {name!r}; the Linear / Conv2d modules are {tappable}")
        module = named[name]
        if next(module.parameters(recurse=False), None) is None:
            raise ArgumentError(
                f"layers: {name!r} ({type(module).__name__}) has no parameters of its own; tap the Linear / Conv2d "
                f"layer whose input or output it is, one of {tappable}"
            )
        if _kind(module) is None:
            raise ArgumentError(
                f"layers: {name!r} is a {type(module).__name__}; features and errors are defined for nn.Linear and "
                f"nn.Conv2d layers, here {tappable}"
            )
    if len(set(wanted)) != len(wanted):
        raise ArgumentError(f"layers: names repeated in {wanted}")
    return {n: named[n] for n in tappable if n in wanted}


def _features(module: nn.Module, a: torch.Tensor, conv: str) -> torch.Tensor:
    """The layer input ``a`` (b, ...) as features (b, d), averaged over positions."""
    if isinstance(module, nn.Linear):
        return a.reshape(a.shape[0], -1, a.shape[-1]).mean(1)
    if conv == "patches":
        return F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride).mean(2)
    return a.flatten(2).mean(2)


def _errors(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """Output gradients ``g`` (C, b, *out) as errors (b, C, d), summed over positions."""
    if isinstance(module, nn.Linear):
        return g.reshape(g.shape[0], g.shape[1], -1, g.shape[-1]).sum(2).transpose(0, 1)
    return g.flatten(3).sum(3).transpose(0, 1)


def _check_patches(modules: dict[str, nn.Module], conv: str) -> None:
    if conv != "patches":
        return
    for name, m in modules.items():
        if isinstance(m, nn.Conv2d) and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
            raise ArgumentError(
                f"conv: 'patches' needs zero padding given as numbers; {name!r} has padding {m.padding!r} "
                f"({m.padding_mode}); use conv='mean'"
            )


def layer_passes(
    risk: EmpiricalRisk, modules: dict[str, nn.Module], *, conv: str = "mean", vectorize: bool = True, errors: bool = True
) -> Iterator[tuple[ClassBatch, dict[str, tuple[torch.Tensor, torch.Tensor | None]]]]:
    """Per class batch of ``risk`` (one forward, ``C`` backward passes to the layer
    outputs): the batch and, per tapped layer, its features (b, d_in) and its unweighted
    errors ``delta_{i,c'}`` (b, C, d_out) for the output gradients ``p_i - e_{c'}`` (None
    without ``errors``: the forward only). The hooks stay on the modules until the
    iteration ends: run no other forward of the model inside the loop."""
    conv = check_choice("conv", conv, CONV_FEATURES)
    vectorize = check_flag("vectorize", vectorize)
    errors = check_flag("errors", errors)
    others = [f"{n} ({type(m).__name__})" for n, m in modules.items() if _kind(m) is None]
    if others or not modules:
        raise ArgumentError(f"modules: expected nn.Linear / nn.Conv2d modules (see select_layers), got {others or 'none'}")
    _check_patches(modules, conv)
    with LayerTaps(modules) as taps:
        for batch in class_batches(risk):
            missing = [n for n in modules if n not in taps.inputs]
            if missing:
                raise ValueError(
                    f"layers: {missing} saw no tensor in the model's forward (never called); choose layers the forward runs"
                )
            if not errors:
                out = {n: (_features(m, taps.inputs[n], conv), None) for n, m in modules.items()}
                taps.clear()
                yield batch, out
                continue
            grads = taps.errors(batch, cross_class_residuals(batch.probs), vectorize=vectorize)
            dead = [n for n, g in grads.items() if g is None]
            if dead:
                raise ValueError(f"layers: the outputs of {dead} do not reach the logits, so they have no errors")
            out = {n: (_features(m, taps.inputs[n], conv), _errors(m, grads[n])) for n, m in modules.items()}
            taps.clear()
            yield batch, out


# --------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class LayerMoments:
    """The streamed class structure of one layer: ``features`` (two-index, ``d_in``) and
    ``errors`` (three-index, ``d_out``) decompositions, the names of the layer's
    parameters in the risk (``params``, empty when none is selected), and the
    true-label error class means ``Ave_{i in c} delta_{i,c,c}`` (C, d_out). ``dense_features``
    / ``dense_errors``: whether the dense second moments were kept."""

    name: str
    kind: str
    params: tuple[str, ...]
    dense_features: bool
    dense_errors: bool
    features: FeatureDecomposition = field(metadata={"json": False}, repr=False)
    errors: CrossClassDecomposition = field(metadata={"json": False}, repr=False)
    true_error_means: torch.Tensor = field(metadata={"json": False}, repr=False)

    @property
    def feature_dim(self) -> int:
        return self.features.dim

    @property
    def error_dim(self) -> int:
        return self.errors.dim


@dataclass(frozen=True)
class LayerStatistics:
    """:class:`LayerMoments` of every tapped layer from one set of passes."""

    num_classes: int
    num_examples: int
    weighted: bool
    conv: str
    dense_limit: int
    layers: dict[str, LayerMoments]

    def to_json(self) -> dict:
        return to_jsonable(self)

    def select(self, layers: Sequence[str] | str | None = None) -> list[str]:
        """The names of ``layers`` (default: all) among those held here, in forward order."""
        if layers is None:
            return list(self.layers)
        wanted = [layers] if isinstance(layers, str) else list(layers)
        unknown = [n for n in wanted if n not in self.layers]
        if unknown or not wanted:
            raise ArgumentError(f"layers: expected a non-empty subset of the analysed layers {list(self.layers)}, got {wanted}")
        return [n for n in self.layers if n in wanted]


def _restream(risk: EmpiricalRisk, name: str, module: nn.Module, conv: str, vectorize: bool, errors: bool):
    """A batch source re-running the passes for one layer (matrix-free within parts)."""

    def batches():
        for batch, out in layer_passes(risk, {name: module}, conv=conv, vectorize=vectorize, errors=errors):
            h, d = out[name]
            labels = torch.full((h.shape[0],), batch.label, dtype=torch.int64, device=h.device)
            yield (d, labels, batch.probs) if errors else (h, labels)

    return batches


def layer_statistics(
    risk: EmpiricalRisk,
    layers: Sequence[str] | str | None = None,
    *,
    conv: str = "mean",
    weighted: bool = True,
    vectorize: bool = True,
    dense_limit: int = 3072,
    show_progress: bool = False,
) -> LayerStatistics:
    """Features and errors of every layer of ``risk.model`` (:func:`select_layers`),
    streamed into accumulators: one forward and ``C`` backward passes per example.

    ``weighted``: errors weighted by ``p_{i,c'}`` (else 1901.08244's ``sqrt(p)`` scaling
    with unit weights). ``dense_limit``: layers with ``d <= dense_limit`` keep the dense
    second moments (``d x d``; the default covers a 32 x 32 x 3 input), wider ones re-run
    the passes per within-part product (the forward only for the features).
    ``show_progress``: a progress bar over the class batches on standard error.
    """
    if not isinstance(risk, EmpiricalRisk):
        raise TypeError(f"risk: expected an EmpiricalRisk, got {type(risk).__name__}")
    conv = check_choice("conv", conv, CONV_FEATURES)
    weighted = check_flag("weighted", weighted)
    vectorize = check_flag("vectorize", vectorize)
    dense_limit = check_int("dense_limit", dense_limit, 1)
    show_progress = check_flag("show_progress", show_progress)
    modules = select_layers(risk.model, layers)
    groups = parameter_groups(risk.model, list(risk.names))
    C = risk.num_classes
    feats: dict[str, FeatureAccumulator] = {}
    errs: dict[str, CrossClassAccumulator] = {}
    true: dict[str, torch.Tensor] = {}
    dense: dict[str, tuple[bool, bool]] = {}
    passes = layer_passes(risk, modules, conv=conv, vectorize=vectorize)
    if show_progress:  # one item per class batch
        passes = progress(passes, total=num_class_batches(risk), desc=f"features and errors of {len(modules)} layers (1 forward + {C} backward per batch)")
    for batch, out in passes:
        labels = torch.full((batch.probs.shape[0],), batch.label, dtype=torch.int64, device=batch.probs.device)
        for name, (h, d) in out.items():
            if name not in feats:
                acc = {"dtype": risk.dtype, "device": risk.device}
                dense[name] = (h.shape[1] <= dense_limit, d.shape[2] <= dense_limit)
                feats[name] = FeatureAccumulator(C, second_moment=dense[name][0], **acc)
                errs[name] = CrossClassAccumulator(C, weighted, second_moment=dense[name][1], **acc)
                true[name] = torch.zeros(C, d.shape[2], dtype=risk.dtype, device=risk.device)
            feats[name].update(h, labels)
            errs[name].update(d, labels, batch.probs)
            true[name][batch.label] += d[:, batch.label].sum(0)
    result = {}
    for name, module in modules.items():
        fdense, edense = dense[name]
        features = feats[name].finalize(batches=None if fdense else _restream(risk, name, module, conv, vectorize, False))
        errors = errs[name].finalize(batches=None if edense else _restream(risk, name, module, conv, vectorize, True))
        counts = torch.as_tensor(features.counts, dtype=risk.dtype, device=risk.device)
        result[name] = LayerMoments(
            name=name,
            kind=_kind(module),
            params=groups.get(name, ()),
            dense_features=fdense,
            dense_errors=edense,
            features=features,
            errors=errors,
            true_error_means=true[name] / counts[:, None],
        )
    return LayerStatistics(C, risk.num_data, weighted, conv, dense_limit, result)


# --------------------------------------------------------------------------- separation
@dataclass(frozen=True)
class Separation:
    """Separation of class means from class variability in one second moment ``M``.

    ``outlier_to_bulk = lambda_C(M) / lambda_{C+1}(M)`` (the smallest of the ``C``
    class outliers over the top of the bulk; NaN when ``d <= C``); ``class_eigenvalue_ratio = lambda_2 /
    lambda_C`` of the class part (towards 1 as the class means become orthogonal and
    equally long); ``trace_ratio = tr Sigma_B / tr Sigma_W``; ``within_over_between
    = tr(Sigma_W Sigma_B^+) / C``; ``mean_abs_cosine``: mean ``|cos|`` between the
    centred class means (off the diagonal). ``eigenvalues``: of ``M``, descending (all
    of them when ``method == "dense"``, the top ``C + 1`` otherwise); ``traces``: of
    ``M`` and its parts.
    """

    outlier_to_bulk: float
    class_eigenvalue_ratio: float
    trace_ratio: float
    within_over_between: float
    mean_abs_cosine: float
    cosines: np.ndarray
    traces: dict[str, float]
    eigenvalues: np.ndarray
    method: str


@dataclass(frozen=True)
class LayerSeparation:
    """:class:`Separation` of one layer's features ``H^l`` and errors ``Delta^l``;
    ``global_mean_share = |mu_G|^2 / tr H^l`` (the share of the global mean)."""

    name: str
    kind: str
    feature_dim: int
    error_dim: int
    global_mean_share: float
    features: Separation
    errors: Separation


@dataclass(frozen=True)
class SeparationWithDepth:
    """:class:`LayerSeparation` of every layer, in forward order."""

    num_classes: int
    weighted: bool
    conv: str
    layers: dict[str, LayerSeparation]

    def to_json(self) -> dict:
        return to_jsonable(self)

    def series(self, which: str, measure: str) -> np.ndarray:
        """One measure of ``"features"`` or ``"errors"`` against depth (one value per layer)."""
        check_choice("which", which, ("features", "errors"))
        check_choice("measure", measure, [f for f in Separation.__dataclass_fields__ if f not in ("cosines", "traces", "eigenvalues", "method")])
        return np.array([getattr(getattr(layer, which), measure) for layer in self.layers.values()])


def error_class_view(errors: CrossClassDecomposition) -> FeatureDecomposition:
    """The class means ``v_c`` of three-index vectors as a two-index decomposition, for the
    separation measures: class weights ``q_c = P_c / sum P``; ``class_part`` is
    ``errors.class_part = (1/N) sum_c P_c v_c v_c^T``, ``between_part`` its centred form
    ``(1/N) sum_c P_c (v_c - v_G)(v_c - v_G)^T`` with ``v_G = sum_c q_c v_c`` and
    ``within_part`` the within-cell part. The cross and diagonal parts are left out, so
    ``global + between + within`` is not the total here."""
    X = errors.class_means
    Pc = np.asarray(errors.class_weights, dtype=np.float64)
    q, s = Pc / Pc.sum(), Pc.sum() / errors.num_examples
    C = errors.num_classes
    Xd = X.to(torch.float64)
    gram = (Xd @ Xd.T).cpu().numpy()
    scale = float(s * q @ np.diag(gram))
    build = lambda name, L: LowRankPart.from_coefficients(name, X, np.sqrt(s) * L, gram, scale)
    return FeatureDecomposition(
        num_classes=C,
        num_examples=errors.num_examples,
        dim=errors.dim,
        counts=errors.counts,
        class_weights=q,
        total_trace=errors.total_trace,
        global_part=build("global", q[None, :]),
        between_part=build("between", np.sqrt(q)[:, None] * (np.eye(C) - q[None, :])),
        class_part=build("class", np.diag(np.sqrt(q))),
        within_part=errors.within_part,
        global_mean=torch.as_tensor(q, dtype=X.dtype, device=X.device) @ X,
        class_means=X,
    )


def _spectrum(dec: FeatureDecomposition | CrossClassDecomposition, dense: bool, k: int, seed: int) -> tuple[np.ndarray, str]:
    """Eigenvalues of the total second moment, descending: all (dense) or the top ``k``."""
    op = dec.total_operator()
    if dense:
        return np.linalg.eigvalsh(op.to_dense().to(torch.float64).cpu().numpy())[::-1].copy(), "dense"
    return top_eigenpairs(op, min(k, op.size), seed=seed).eigenvalues, "matrix-free"


def _separation(view: FeatureDecomposition, total: FeatureDecomposition | CrossClassDecomposition, dense: bool, seed: int) -> Separation:
    C = view.num_classes
    stats = view.separation()
    lam, method = _spectrum(total, dense, C + 1, seed)
    ratio = float("nan") if lam.size <= C else float(lam[C - 1] / lam[C]) if lam[C] > 0 else float("inf")
    traces = {"total": total.total_trace, **{name: part.trace for name, part in total.parts.items()}}
    return Separation(
        outlier_to_bulk=ratio,
        class_eigenvalue_ratio=stats.class_eigenvalue_ratio,
        trace_ratio=stats.trace_ratio,
        within_over_between=stats.within_over_between,
        mean_abs_cosine=stats.mean_abs_cosine,
        cosines=stats.cosines,
        traces=traces,
        eigenvalues=lam,
        method=method,
    )


def global_mean_share(features: FeatureDecomposition) -> float:
    """``|mu_G|^2 / tr H^l``: the share of the feature second moment carried by the global mean."""
    return features.global_part.trace / features.total_trace if features.total_trace > 0 else float("nan")


def layer_separation(stats: LayerStatistics, *, seed: int = 0, show_progress: bool = False) -> SeparationWithDepth:
    """Per layer the :class:`Separation` of the features (``Sigma_B``, ``Sigma_W`` of
    ``theory.structure``) and of the errors (:func:`error_class_view`: between = the
    centred error class means, within = the within-cell part). ``seed``: for the
    matrix-free spectra of layers wider than ``stats.dense_limit``. ``show_progress``: a
    progress bar over the layers on standard error."""
    if not isinstance(stats, LayerStatistics):
        raise TypeError(f"stats: expected LayerStatistics, got {type(stats).__name__}")
    seed = check_int("seed", seed, 0)
    show_progress = check_flag("show_progress", show_progress)
    out = {}
    bar = progress(stats.layers.items(), total=len(stats.layers), desc="separation measures and spectra per layer", enabled=show_progress)
    for name, layer in bar:
        f, e = layer.features, layer.errors
        out[name] = LayerSeparation(
            name=name,
            kind=layer.kind,
            feature_dim=f.dim,
            error_dim=e.dim,
            global_mean_share=global_mean_share(f),
            features=_separation(f, f, layer.dense_features, seed),
            errors=_separation(error_class_view(e), e, layer.dense_errors, seed),
        )
    return SeparationWithDepth(stats.num_classes, stats.weighted, stats.conv, out)


def layer_attribution(
    stats: LayerStatistics,
    layers: Sequence[str] | str | None = None,
    which: Sequence[str] = ("features", "errors"),
    **kwargs: object,
) -> dict[str, dict[str, AttributionReport]]:
    """Per layer (of ``stats`` or its subset ``layers``) and per entry of ``which`` the spectral attribution
    (:func:`theory.attribution.attribute_decomposition`) of the features (outliers by
    the span of the class means, global mean included; bulk: within) and of the errors
    (outliers: class, bump: cross; bulk: within). ``kwargs`` go to
    :func:`theory.attribution.attribute`; the eigensolver defaults to ``"dense"`` for
    layers whose dense second moments were kept; the Lanczos steps of the densities
    (``density["num_steps"]``, default 128) are capped at ``d``."""
    if not isinstance(stats, LayerStatistics):
        raise TypeError(f"stats: expected LayerStatistics, got {type(stats).__name__}")
    parts = [check_choice("which", w, ("features", "errors")) for w in which]
    density = dict(kwargs.pop("density", None) or {})
    out = {}
    for name in stats.select(layers):
        layer = stats.layers[name]
        out[name] = {}
        for part in parts:
            dec, dense = (layer.features, layer.dense_features) if part == "features" else (layer.errors, layer.dense_errors)
            settings = {"eigensolver": "dense" if dense else "subspace", **kwargs}
            settings["density"] = {**density, "num_steps": min(int(density.get("num_steps", 128)), dec.dim)}
            out[name][part] = attribute_decomposition(dec, **settings)
    return out
