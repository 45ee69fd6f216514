"""Cell sums of extended gradients from backward passes (deepnet.passes) and the
decomposition of G built from them (deepnet.structure), against brute-force
per-example Jacobians (torch.func.jacrev) and dense matrices, in float64."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import jacrev

from deepnet.models import MLP
from deepnet.operators import EmpiricalRisk, GaussNewtonOperator
from deepnet.passes import (
    LayerTaps,
    class_batches,
    cross_class_backward,
    gradient_sums,
    output_gradients,
    parameter_groups,
)
from deepnet.structure import decompose_gradients, layer_decompositions, restricted_risk
from simulate.fisher import mlr_extended_gradients
from simulate.mixtures import canonical_mixture
from theory.structure import CrossClassAccumulator

C = 3
TOL = 1e-10


def _randomise_batch_norm(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=gen, dtype=torch.float64))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen, dtype=torch.float64))
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen, dtype=torch.float64))
            m.bias.data.copy_(0.2 * torch.randn(m.bias.shape, generator=gen, dtype=torch.float64))


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 3 * 3, C)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


def _setup(kind: str, n: int = 13):
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(3)
    if kind == "mlp":
        model, shape = MLP((6,), C, depth=2, width=4), (6,)
    else:
        model, shape = TinyCNN(), (1, 5, 5)
    model = model.double().eval()
    _randomise_batch_norm(model, gen)
    X = torch.randn(n, *shape, generator=gen, dtype=torch.float64)
    Y = torch.cat([torch.arange(C), torch.randint(0, C, (n - C,), generator=gen)])[torch.randperm(n, generator=gen)]
    return model, X, Y


def _brute_force(risk: EmpiricalRisk, X, Y):
    """Per-example extended gradients v[i, c'] = J_i^T (p_i - e_{c'}) (N, C, P) and p (N, C)."""
    theta = risk.parameters()
    vs, ps = [], []
    for x in X:
        J = jacrev(lambda t, x=x: risk.forward(t, x[None])[0])(theta)  # tuple of (C, *shape)
        J = risk.flatten(J, lead=(C,))  # (C, P)
        p = torch.softmax(risk.forward(theta, x[None])[0], -1).detach()
        vs.append((p[None, :] - torch.eye(C, dtype=p.dtype)) @ J)
        ps.append(p)
    return torch.stack(vs), torch.stack(ps)


def _reference_parts(v, Y, p, weighted):
    """Dense class / cross / within / diag (Papyan 2020, Sec. 3) and the cross-class means."""
    N, _, P = v.shape
    y, w = (v, p) if weighted else (p.sqrt()[:, :, None] * v, torch.ones_like(p))
    parts = {k: torch.zeros(P, P, dtype=v.dtype) for k in ("class", "cross", "within", "diag")}
    means = torch.zeros(C, C, P, dtype=v.dtype)
    off = ~torch.eye(C, dtype=torch.bool)
    for c in range(C):
        idx = Y == c
        Wc = w[idx].sum(0)
        x = torch.einsum("ik,ikp->kp", w[idx], y[idx]) / Wc[:, None]
        means[c] = x
        r = y[idx] - x[None]
        parts["within"] += torch.einsum("ik,ikp,ikq->pq", w[idx], r, r) / N
        Pc = Wc[off[c]].sum()
        vc = (Wc[off[c], None] * x[off[c]]).sum(0) / Pc
        parts["class"] += Pc * torch.outer(vc, vc) / N
        d = x[off[c]] - vc
        parts["cross"] += torch.einsum("k,kp,kq->pq", Wc[off[c]], d, d) / N
        parts["diag"] += Wc[c] * torch.outer(x[c], x[c]) / N
    return parts, means


def _dense(part):
    return part.as_operator().to_dense()


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_decomposition_matches_brute_force(kind, weighted):
    model, X, Y = _setup(kind)
    risk = EmpiricalRisk(model, (X, Y), batch_size=5)  # batches mix classes: split by label
    v, p = _brute_force(risk, X, Y)
    ref, ref_means = _reference_parts(v, Y, p, weighted)
    sums = gradient_sums(risk, weighted=weighted)
    assert (sums.cross_means() - ref_means).abs().max().item() < TOL
    dec = decompose_gradients(risk, sums)
    assert (dec.cross_means - ref_means).abs().max().item() < TOL
    G = GaussNewtonOperator(risk).to_dense()
    total = torch.einsum("ik,ikp,ikq->pq", p, v, v) / X.shape[0]
    assert (G - total).abs().max().item() < TOL  # the identity A(p) = sum_c' p_c' (p - e_c')(...)^T
    for name, part in dec.parts.items():
        assert (_dense(part) - ref[name]).abs().max().item() < TOL, name
    assert (sum(_dense(part) for part in dec.parts.values()) - G).abs().max().item() < TOL
    within = _dense(dec.within_part)
    assert torch.linalg.eigvalsh((within + within.T) / 2).min().item() > -TOL * torch.linalg.matrix_norm(G, 2).item()
    # traces: the mean parts from their Gram matrices, tr G from the per-example squared norms
    for name in ("class", "cross", "diag"):
        assert abs(dec.parts[name].trace - torch.trace(ref[name]).item()) < TOL
    assert abs(dec.total_trace - torch.trace(G).item()) < TOL
    assert abs(dec.within_part.trace - torch.trace(ref["within"]).item()) < TOL


@pytest.mark.parametrize("weighted", [True, False])
def test_layers_are_diagonal_blocks(weighted):
    model, X, Y = _setup("cnn")
    risk = EmpiricalRisk(model, (X, Y), batch_size=4)
    v, p = _brute_force(risk, X, Y)
    sums = gradient_sums(risk, weighted=weighted, vectorize=False, example_chunk=2)
    layers = layer_decompositions(risk, sums)
    assert list(layers) == ["conv", "bn", "fc"]
    G = GaussNewtonOperator(risk).to_dense()
    start = 0
    for name, dec in layers.items():
        sub = restricted_risk(risk, name)
        block = slice(start, start + sub.size)
        start += sub.size
        ref, ref_means = _reference_parts(v[:, :, block], Y, p, weighted)
        assert (dec.cross_means - ref_means).abs().max().item() < TOL, name
        for part_name, part in dec.parts.items():
            assert (_dense(part) - ref[part_name]).abs().max().item() < TOL, (name, part_name)
        assert abs(dec.total_trace - torch.trace(G[block, block]).item()) < TOL, name
    assert start == risk.size
    # a subset given by name, and the whole network from the same sums
    (fc,) = layer_decompositions(risk, sums, ["fc.weight"]).values()
    assert fc.dim == 3 * 18


def test_vectorised_and_looped_passes_agree():
    model, X, Y = _setup("mlp")
    risk = EmpiricalRisk(model, (X, Y), batch_size=13)
    a = gradient_sums(risk, weighted=True, vectorize=True)
    b = gradient_sums(risk, weighted=True, vectorize=False, squared_norms="none", example_chunk=1)
    assert (a.sums - b.sums).abs().max().item() < 1e-13
    np.testing.assert_allclose(a.cell_weights, b.cell_weights, rtol=1e-14)
    assert b.squared_norms is None
    np.testing.assert_array_equal(a.counts, np.bincount(Y.numpy(), minlength=C))


class SequenceModel(nn.Module):
    """Strided padded conv + BN2d, then a Linear on each of the T = 4 positions (a
    sequence input) and a Linear to the logits; ``scale`` optional (no closed form)."""

    def __init__(self, with_scale: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)
        self.bn = nn.BatchNorm2d(4)
        self.token = nn.Linear(4, 5)
        self.fc = nn.Linear(20, C)
        self.scale = nn.Parameter(torch.tensor([1.5, 0.5, 1.0])) if with_scale else None

    def forward(self, x):
        h = torch.tanh(self.bn(self.conv(x))).flatten(2).transpose(1, 2)  # (b, T=4, 4)
        out = self.fc(torch.tanh(self.token(h)).flatten(1))
        return out if self.scale is None else out * self.scale


class SharedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 4)
        self.fc = nn.Linear(4, C)

    def forward(self, x):
        return self.fc(torch.tanh(self.hidden(torch.tanh(self.hidden(x)))))


@pytest.mark.parametrize("kind", ["mlp", "cnn", "sequence", "sequence-scale"])
def test_squared_norms_layers_and_per_example_agree_with_brute_force(kind):
    if kind.startswith("sequence"):
        gen = torch.Generator().manual_seed(5)
        torch.manual_seed(2)
        model = SequenceModel(with_scale=kind.endswith("scale")).double().eval()
        _randomise_batch_norm(model, gen)
        X = torch.randn(9, 3, 4, 4, generator=gen, dtype=torch.float64)
        Y = torch.arange(9) % C
    else:
        model, X, Y = _setup(kind)
    risk = EmpiricalRisk(model, (X, Y), batch_size=4)
    v, p = _brute_force(risk, X, Y)
    starts = np.concatenate([[0], np.cumsum(risk.numels)])
    ref = np.zeros((C, C, len(risk.names)))
    for t in range(len(risk.names)):
        q = (p * v[:, :, starts[t] : starts[t + 1]].square().sum(-1)).numpy()  # (N, C)
        for c in range(C):
            ref[c, :, t] = q[Y.numpy() == c].sum(0)
    methods = ["per-example"] if kind.endswith("scale") else ["layers", "per-example"]
    for method in methods:
        for vectorize in (True, False):
            sums = gradient_sums(risk, squared_norms=method, vectorize=vectorize, example_chunk=3)
            np.testing.assert_allclose(sums.squared_norms, ref, rtol=1e-10, atol=1e-13, err_msg=method)
    auto = gradient_sums(risk)  # "auto" falls back to per-example for the scale parameter
    np.testing.assert_allclose(auto.squared_norms, ref, rtol=1e-10, atol=1e-13)
    if kind.endswith("scale"):
        with pytest.raises(ValueError, match="scale"):
            gradient_sums(risk, squared_norms="layers")


def test_shared_layer_is_refused_for_layer_norms():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    risk = EmpiricalRisk(SharedModel().double().eval(), (X, torch.arange(6) % C))
    with pytest.raises(ValueError, match="more than once.*per-example"):
        gradient_sums(risk, squared_norms="layers")
    np.testing.assert_allclose(  # the per-example route is exact for shared weights too
        gradient_sums(risk, squared_norms="per-example").squared_norms.sum(),
        6 * torch.trace(GaussNewtonOperator(risk).to_dense()).item(),
        rtol=1e-10,
    )


def test_in_place_activation_after_a_tapped_layer_is_refused():
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, C)).double().eval()
    risk = EmpiricalRisk(model, (torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.arange(6) % C))
    with pytest.raises(ValueError, match="in place"):
        gradient_sums(risk, squared_norms="layers")


def test_layer_taps_features_and_errors_give_the_weight_gradients():
    """For a Linear layer, sum_i delta_{i,c'} h_i^T (taps) is the weight block of the cell
    sums (backward passes to the parameters)."""
    model, X, Y = _setup("mlp")
    risk = EmpiricalRisk(model, (X, Y), batch_size=13)
    names = ["layers.1", "layers.4", "layers.7"]
    taps = LayerTaps({n: model.get_submodule(n) for n in names})
    starts = dict(zip(risk.names, np.concatenate([[0], np.cumsum(risk.numels)])))
    with taps:
        for batch in class_batches(risk):
            U = output_gradients(batch.probs, weighted=True)
            errors = taps.errors(batch, U)
            assert torch.equal(errors["layers.7"], U)  # the last layer's output is the logits
            rows = cross_class_backward(risk, batch, U)
            for n in names:
                w = model.get_submodule(n).weight
                grad = torch.einsum("kbo,bi->koi", errors[n], taps.inputs[n]).reshape(C, -1)
                block = rows[:, starts[f"{n}.weight"] : starts[f"{n}.weight"] + w.numel()]
                assert (grad - block).abs().max().item() < 1e-12
            taps.clear()


def test_output_gradients():
    p = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], dtype=torch.float64)
    for weighted, s in ((True, p), (False, p.sqrt())):
        U = output_gradients(p, weighted)
        for k in range(C):
            expected = s[:, k, None] * (p - torch.eye(C, dtype=p.dtype)[k])
            assert torch.equal(U[k], expected)


def test_bias_free_linear_model_matches_simulate_mlr():
    """Canonical mixture, nn.Linear(D, C, bias=False): deepnet flattens W[c, d] at c*D + d,
    simulate at d*C + c."""
    D, n = 5, 6
    data = canonical_mixture(C, D, snr=2.0).sample(n, seed=11)
    X = torch.as_tensor(data.X)
    Y = torch.as_tensor(data.labels)
    torch.manual_seed(0)
    model = nn.Linear(D, C, bias=False).double().eval()
    W = model.weight.detach().clone()
    ext = mlr_extended_gradients(data.X, W.numpy(), data.labels)
    acc = CrossClassAccumulator(C)
    for batch in ext.batches(4):
        acc.update(*batch)
    ref = acc.finalize(total=ext.fisher())
    perm = torch.tensor([d * C + c for c in range(C) for d in range(D)])  # deepnet index -> simulate index
    risk = EmpiricalRisk(model, (X, Y), batch_size=7)
    dec = decompose_gradients(risk, weighted=True)
    np.testing.assert_allclose(dec.cell_weights, ref.cell_weights, rtol=1e-13)
    assert (dec.cross_means - ref.cross_means[:, :, perm]).abs().max().item() < TOL
    for name in ("class", "cross", "diag", "within"):
        ours, theirs = _dense(dec.parts[name]), _dense(ref.parts[name])[perm][:, perm]
        assert (ours - theirs).abs().max().item() < TOL, name
        np.testing.assert_allclose(dec.parts[name].trace, ref.parts[name].trace, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dec.class_part.eigenvalues, ref.class_part.eigenvalues, rtol=1e-10, atol=1e-14)
    assert abs(dec.total_trace - ref.total_trace) < TOL


def test_from_sums_equals_streamed_accumulator():
    gen = torch.Generator().manual_seed(1)
    n, P = 20, 7
    v = torch.randn(n, C, P, generator=gen, dtype=torch.float64)
    labels = torch.arange(n) % C
    probs = torch.softmax(torch.randn(n, C, generator=gen, dtype=torch.float64), -1)
    for weighted in (True, False):
        acc = CrossClassAccumulator(C, weighted, second_moment=True)
        acc.update(v, labels, probs)
        ref = acc.finalize()
        sw = probs if weighted else probs.sqrt()  # s w: (1, p) weighted, (sqrt p, 1) unweighted
        w = probs if weighted else torch.ones_like(probs)
        onehot = torch.nn.functional.one_hot(labels, C).double()
        sums = torch.einsum("ic,ik,ikp->ckp", onehot, sw, v)
        weights = onehot.T @ w
        sq = onehot.T @ (probs * v.square().sum(-1))  # w s^2 = p in both forms
        dec = CrossClassAccumulator.from_sums(sums, weights.numpy(), sq.numpy(), labels.bincount().numpy(), weighted).finalize(
            total=ref.total_operator()
        )
        assert (dec.cross_means - ref.cross_means).abs().max().item() < 1e-13
        for name in ("class", "cross", "diag"):
            np.testing.assert_allclose(dec.parts[name].eigenvalues, ref.parts[name].eigenvalues, rtol=1e-12, atol=1e-14)
        assert abs(dec.within_part.trace - ref.within_part.trace) < 1e-12
        assert (_dense(dec.within_part) - _dense(ref.within_part)).abs().max().item() < 1e-12
    with pytest.raises(ValueError, match="cell_weights"):
        CrossClassAccumulator.from_sums(sums, weights.numpy()[:2], sq.numpy(), labels.bincount().numpy())
    with pytest.raises(ValueError, match="sums"):
        CrossClassAccumulator.from_sums(sums[0], weights.numpy(), sq.numpy(), labels.bincount().numpy())


def test_parameter_groups():
    model = MLP((6,), C, depth=1, width=4)
    assert parameter_groups(model) == {
        "layers.1": ("layers.1.weight", "layers.1.bias"),
        "layers.2": ("layers.2.weight", "layers.2.bias"),
        "layers.4": ("layers.4.weight", "layers.4.bias"),
    }


def test_bad_input():
    model, X, Y = _setup("mlp")
    with pytest.raises(ValueError, match="num_classes"):
        EmpiricalRisk(model, (X, Y), num_classes=4)
    with pytest.raises(ValueError, match="labels"):
        EmpiricalRisk(model, (X, torch.full_like(Y, C)))
    with pytest.raises(ValueError, match="training mode"):
        EmpiricalRisk(MLP((6,), C, depth=1, width=4).double().train(), (X, Y))
    risk = EmpiricalRisk(model, (X, Y), batch_size=5)
    with pytest.raises(ValueError, match="nope"):
        layer_decompositions(risk, layers=["nope"])
    with pytest.raises(ValueError, match="example_chunk"):
        gradient_sums(risk, example_chunk=0)
    with pytest.raises(ValueError, match="weighted"):
        gradient_sums(risk, weighted=1)
    sums = gradient_sums(risk, squared_norms="none")
    with pytest.raises(ValueError, match="squared_norms"):
        decompose_gradients(risk, sums)
    with pytest.raises(ValueError, match="names"):
        sums.restrict(["layers.9.weight"])
    part = EmpiricalRisk(model, (X, Y), params="layers.1")
    with pytest.raises(ValueError, match="outside"):
        layer_decompositions(part, layers=["layers.4"])


@pytest.mark.gpu
def test_cuda_sums_match_cpu():
    model, X, Y = _setup("cnn")
    ref = gradient_sums(EmpiricalRisk(model, (X, Y), batch_size=5))
    out = gradient_sums(EmpiricalRisk(model, (X, Y), batch_size=5, device="cuda"))
    assert out.sums.device.type == "cuda"
    assert (out.sums.cpu() - ref.sums).abs().max().item() < TOL
    np.testing.assert_allclose(out.squared_norms, ref.squared_norms, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(out.cell_weights, ref.cell_weights, rtol=1e-12)
