"""K-FAC factors of Linear and Conv2d layers and the class-aware correction
(Papyan 2020, Sec. 7, Figs. 11-12; docs/math.md#k-fac-and-its-correction, docs/kfac.md).

For a layer ``z = W h + b`` (weight ``d_out x d_in``, torch's out-major flattening) the
block ``G^l`` of the Gauss-Newton matrix is ``(1/N) sum_i sum_{c'} p_{i,c'} (delta_{i,c'}
(x) h_i)(delta_{i,c'} (x) h_i)^T`` with ``delta_{i,c'} = dCE(f(x_i), c') / dz`` (the error
of the cross-class label ``c'``) and ``h_i`` the layer input, extended by a final 1 when
the layer has a bias (``vec([W, b])``; the gradient of ``b`` is ``delta``). K-FAC
replaces the average of Kronecker products by the product of averages,

    G^l ~ Delta (x) H,   H = Ave_i h_i h_i^T,   Delta = Ave_i sum_{c'} p_{i,c'} delta_{i,c'} delta_{i,c'}^T

(the true Fisher; ``fisher="mc"``: ``sum_{c'} p_{i,c'}`` replaced by the mean over
``mc_samples`` labels drawn from ``p_i``; ``fisher="empirical"``: the true label only).
With class weights ``pi_c = n_c / N`` and the class-conditional factors ``H_c``,
``Delta_c`` (the same averages over the examples of class ``c``), ``sum_c pi_c H_c = H``
and ``sum_c pi_c Delta_c = Delta``, and the class-aware form is
``sum_c pi_c Delta_c (x) H_c`` (the paper's ``Ave_c H_c (x) Delta_c``), exactly
``K-FAC + sum_c pi_c (Delta_c - Delta) (x) (H_c - H)``.

Conv2d, the "expand" convention: every position ``t`` of the ``T`` output positions
is an example of its own, with input the unfolded patch ``a_{i,t}`` (``in * kh * kw``,
the weight's flattening order, plus the 1 of the bias) and error ``g_{i,c',t}``:
``H = Ave_i (1/T) sum_t a_{i,t} a_{i,t}^T`` (averaged over positions) and ``Delta =
Ave_i sum_t sum_{c'} p_{i,c'} g_{i,c',t} g_{i,c',t}^T`` (summed over positions), so that
``Delta (x) H = sum_t E[g g^T] (x) E[a a^T]`` for positions that are alike and
uncorrelated; a Linear layer applied to a sequence is treated the same way (``T = 1``
for the plain Linear layer). The passes are those of :mod:`deepnet.passes`: one forward
and ``C`` backward passes (batched over ``c'``) per class batch down to the layer
outputs (:class:`deepnet.passes.LayerTaps`), for all layers at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from theory.checks import ArgumentError, check_choice, check_flag, check_int
from theory.kronecker_sum import KroneckerSum
from theory.operators import SymmetricOperator
from theory.parameters import PermutedOperator
from theory.results import to_jsonable

from .layers import select_layers
from .operators import EmpiricalRisk
from .passes import LayerTaps, class_batches, output_gradients

__all__ = ["FISHER_TYPES", "KFACFactors", "LayerFactors", "kfac_factors"]

FISHER_TYPES = ("true", "mc", "empirical")


@dataclass(frozen=True)
class LayerFactors:
    """The K-FAC factors of one layer ``name`` (``kind`` "linear" or "conv2d") over its
    parameters ``params`` (weight, then bias if ``bias``), in torch's flattening
    ``[vec(W) out-major, b]``: class-conditional input factors ``H_c`` (C, d_in, d_in) with
    ``d_in`` the weight's input width plus 1 for the bias, error factors ``Delta_c`` (C,
    d_out, d_out), class weights ``pi_c = n_c / N`` and ``num_positions`` ``T``."""

    name: str
    kind: str
    params: tuple[str, ...]
    bias: bool
    weight_shape: tuple[int, ...]
    num_positions: int
    counts: np.ndarray
    class_weights: np.ndarray
    class_features: torch.Tensor = field(metadata={"json": False}, repr=False)
    class_errors: torch.Tensor = field(metadata={"json": False}, repr=False)

    @property
    def size(self) -> int:
        """``P_l = d_out * d_in`` (the layer's number of parameters)."""
        return self.class_errors.shape[1] * self.class_features.shape[1]

    def _pi(self) -> torch.Tensor:
        return torch.as_tensor(self.class_weights, dtype=self.class_features.dtype, device=self.class_features.device)

    @property
    def features(self) -> torch.Tensor:
        """``H = sum_c pi_c H_c`` (d_in, d_in)."""
        return torch.einsum("c,cij->ij", self._pi(), self.class_features)

    @property
    def errors(self) -> torch.Tensor:
        """``Delta = sum_c pi_c Delta_c`` (d_out, d_out)."""
        return torch.einsum("c,cij->ij", self._pi(), self.class_errors)

    def _present(self) -> np.ndarray:
        return np.flatnonzero(self.counts > 0)

    def permutation(self) -> torch.Tensor:
        """``perm`` with ``v_layer = v_aug[perm]``: the layer's parameter vector ``[vec(W), b]``
        from the out-major ``vec([W, b])`` of the Kronecker factors."""
        d_out, d_in = self.class_errors.shape[1], self.class_features.shape[1]
        grid = torch.arange(d_out * d_in).reshape(d_out, d_in)
        return torch.cat([grid[:, : d_in - 1].reshape(-1), grid[:, -1]]) if self.bias else grid.reshape(-1)

    def _in_layer_order(self, op: KroneckerSum) -> SymmetricOperator:
        return PermutedOperator(op, self.permutation()) if self.bias else op

    def kronecker(self, which: str = "kfac") -> KroneckerSum:
        """The Kronecker sum in the factors' order ``vec([W, b])``: ``"kfac"`` ``Delta (x) H``,
        ``"corrected"`` ``sum_c pi_c Delta_c (x) H_c``, ``"correction"`` ``sum_c pi_c
        (Delta_c - Delta) (x) (H_c - H)`` (so corrected = kfac + correction)."""
        check_choice("which", which, ("kfac", "corrected", "correction"))
        if which == "kfac":
            return KroneckerSum([self.features], [self.errors])
        keep = self._present()
        H, D = self.class_features[keep], self.class_errors[keep]
        if which == "correction":
            H, D = H - self.features, D - self.errors
        return KroneckerSum(list(H), list(D), self.class_weights[keep])

    def operator(self, which: str = "kfac") -> SymmetricOperator:
        """:meth:`kronecker` of ``which`` as an operator on the layer's parameter vector (the
        order of ``G^l`` from ``GaussNewtonOperator`` restricted to ``params``)."""
        return self._in_layer_order(self.kronecker(which))

    def kfac_eigenpairs(self, k: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """K-FAC's exact top-``k`` eigenvalues (descending) and eigenvectors in the layer's
        order, from the eigenpairs of ``H`` and ``Delta`` (their products)."""
        values, vectors = self.kronecker("kfac").eigenpairs(k)
        return values, vectors[self.permutation().to(vectors.device)]


@dataclass(frozen=True)
class KFACFactors:
    """:class:`LayerFactors` of every tapped layer from one set of passes; ``fisher`` the
    weighting of the errors (``"true"``, ``"mc"`` with ``mc_samples`` draws, or ``"empirical"``)."""

    num_classes: int
    num_examples: int
    fisher: str
    mc_samples: int
    layers: dict[str, LayerFactors]

    def to_json(self) -> dict:
        return to_jsonable(self)


def _patches(module: nn.Module, a: torch.Tensor, bias: bool) -> torch.Tensor:
    """The layer input ``a`` (b, ...) as per-position inputs (b, T, d_in), a 1 appended for the bias."""
    if isinstance(module, nn.Conv2d):
        a = F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride).transpose(1, 2)
    else:
        a = a.reshape(a.shape[0], -1, a.shape[-1])
    return torch.cat([a, torch.ones_like(a[..., :1])], dim=-1) if bias else a


def _position_errors(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """Output gradients ``g`` (k, b, *out) as per-position errors (k, b, T, d_out)."""
    if isinstance(module, nn.Conv2d):
        return g.flatten(3).transpose(2, 3)
    return g.reshape(g.shape[0], g.shape[1], -1, g.shape[-1])


def _cotangents(probs: torch.Tensor, label: int, fisher: str, samples: int, gen: torch.Generator) -> torch.Tensor:
    """Output gradients (k, b, C) whose errors ``g`` give ``sum_k g g^T`` = the weighted sum of
    ``delta delta^T`` of the Fisher type: ``sqrt(p_{c'}) (p - e_{c'})`` for all ``c'`` (true),
    ``(p - e_y) / sqrt(S)`` for ``S`` labels ``y ~ p`` (mc), ``p - e_label`` (empirical)."""
    eye = torch.eye(probs.shape[1], dtype=probs.dtype, device=probs.device)
    if fisher == "true":
        return output_gradients(probs, weighted=False)
    if fisher == "empirical":
        return (probs - eye[label])[None]
    draws = torch.multinomial(probs.detach().to("cpu", torch.float64), samples, replacement=True, generator=gen)  # (b, S)
    return (probs[None] - eye[draws.T.to(probs.device)]) / np.sqrt(samples)


def kfac_factors(
    risk: EmpiricalRisk,
    layers: Sequence[str] | str | None = None,
    *,
    fisher: str = "true",
    mc_samples: int = 1,
    seed: int = 0,
    vectorize: bool = True,
) -> KFACFactors:
    """The class-conditional K-FAC factors of the Linear / Conv2d ``layers`` of ``risk.model``
    (:func:`deepnet.layers.select_layers`; default all) over ``risk``'s data (module
    docstring): one forward and ``C`` backward passes (``fisher="true"``; ``mc_samples``
    for ``"mc"``, 1 for ``"empirical"``) per class batch, batched over the rows when
    ``vectorize``. The layer outputs must depend on the parameters ``risk`` differentiates
    (default: all). ``seed``: the Monte Carlo labels (drawn on the CPU)."""
    if not isinstance(risk, EmpiricalRisk):
        raise TypeError(f"risk: expected an EmpiricalRisk, got {type(risk).__name__}")
    fisher = check_choice("fisher", fisher, FISHER_TYPES)
    mc_samples = check_int("mc_samples", mc_samples, 1)
    seed = check_int("seed", seed, 0)
    vectorize = check_flag("vectorize", vectorize)
    modules = select_layers(risk.model, layers)
    for name, module in modules.items():
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str)):
            raise ArgumentError(f"layers: {name!r} needs groups=1 and zero padding given as numbers for the unfolded patches")
    C = risk.num_classes
    gen = torch.Generator().manual_seed(seed)
    sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    positions: dict[str, int] = {}
    counts = np.zeros(C, dtype=np.int64)
    with LayerTaps(modules) as taps:
        for batch in class_batches(risk):
            c = batch.label
            grads = taps.errors(batch, _cotangents(batch.probs, c, fisher, mc_samples, gen), vectorize=vectorize)
            for name, module in modules.items():
                if grads.get(name) is None:
                    raise ValueError(f"layers: the output of {name!r} does not reach the logits through the differentiated parameters")
                a = _patches(module, taps.inputs[name], module.bias is not None)
                g = _position_errors(module, grads[name])
                if name not in sums:
                    kw = {"dtype": risk.dtype, "device": risk.device}
                    sums[name] = (torch.zeros(C, a.shape[2], a.shape[2], **kw), torch.zeros(C, g.shape[3], g.shape[3], **kw))
                    positions[name] = a.shape[1]
                a2, g2 = a.reshape(-1, a.shape[2]), g.reshape(-1, g.shape[3])  # rows: (example, position), (row, example, position)
                sums[name][0][c].addmm_(a2.T, a2, alpha=1.0 / a.shape[1])
                sums[name][1][c].addmm_(g2.T, g2)
            counts[c] += batch.probs.shape[0]
            taps.clear()
    n = torch.as_tensor(np.maximum(counts, 1), dtype=risk.dtype, device=risk.device)[:, None, None]
    pi = counts / counts.sum()
    names = {m: tuple(n for n, _ in mod.named_parameters(prefix=m, recurse=False)) for m, mod in modules.items()}
    out = {
        name: LayerFactors(
            name=name,
            kind="conv2d" if isinstance(module, nn.Conv2d) else "linear",
            params=names[name],
            bias=module.bias is not None,
            weight_shape=tuple(module.weight.shape),
            num_positions=positions[name],
            counts=counts.copy(),
            class_weights=pi,
            class_features=sums[name][0] / n,
            class_errors=sums[name][1] / n,
        )
        for name, module in modules.items()
    }
    return KFACFactors(C, int(counts.sum()), fisher, mc_samples if fisher == "mc" else 1, out)
