"""Features, errors, separation, Kronecker structure and weights layer by layer
(deepnet.layers, deepnet.kronecker, deepnet.weights) against brute force: per-example
features by slicing nn.Sequential models and errors by torch.func.jacrev of the
network's tail at the layer output, dense second moments, float64."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacrev

from deepnet.kronecker import kronecker_structure
from deepnet.layers import (
    error_class_view,
    layer_attribution,
    layer_passes,
    layer_separation,
    layer_statistics,
    select_layers,
)
from deepnet.models import MLP
from deepnet.operators import EmpiricalRisk
from deepnet.passes import gradient_sums
from deepnet.weights import weight_structure
from theory.checks import ArgumentError

C = 3
TOL = 1e-11


def _randomise_batch_norm(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=gen, dtype=torch.float64))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen, dtype=torch.float64))
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen, dtype=torch.float64))
            m.bias.data.copy_(0.2 * torch.randn(m.bias.shape, generator=gen, dtype=torch.float64))


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 3, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(12, C),
    )


def _setup(kind: str, n: int = 14, width: int = 4):
    """A float64 eval-mode nn.Sequential, its data and its risk (batches mixing classes)."""
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(3)
    if kind == "mlp":
        model, shape = MLP((6,), C, depth=2, width=width).layers, (6,)
    else:
        model, shape = _cnn(), (1, 5, 5)
    model = model.double().eval()
    _randomise_batch_norm(model, gen)
    X = torch.randn(n, *shape, generator=gen, dtype=torch.float64)
    Y = torch.cat([torch.arange(C), torch.randint(0, C, (n - C,), generator=gen)])[torch.randperm(n, generator=gen)]
    return model, X, Y, EmpiricalRisk(model, (X, Y), batch_size=5)


def _brute(model: nn.Sequential, k: int, x: torch.Tensor, conv: str):
    """Features (d_in,) and errors delta_{c'} (C, d_out) of layer ``model[k]`` for one example."""
    a = model[:k](x[None])
    z = model[: k + 1](x[None])[0]
    J = jacrev(lambda z: model[k + 1 :](z[None])[0])(z)  # (C, *z.shape)
    p = torch.softmax(model(x[None])[0], -1)
    delta = torch.einsum("ko,o...->k...", p[None] - torch.eye(C, dtype=p.dtype), J)  # (C, *z.shape)
    layer = model[k]
    if isinstance(layer, nn.Linear):
        return a[0], delta, p
    h = F.unfold(a, layer.kernel_size, layer.dilation, layer.padding, layer.stride)[0].mean(1) if conv == "patches" else a[0].mean((1, 2))
    return h, delta.sum((2, 3)), p


def _brute_all(model, X, Y, conv="mean"):
    """name -> (features (N, d), errors (N, C, d)) and probabilities (N, C), in data order."""
    out = {}
    for k, m in enumerate(model):
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            rows = [_brute(model, k, x, conv) for x in X]
            out[str(k)] = (torch.stack([r[0] for r in rows]).detach(), torch.stack([r[1] for r in rows]).detach())
            P = torch.stack([r[2] for r in rows]).detach()
    return out, P


@pytest.mark.parametrize("conv", ["mean", "patches"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_features_and_errors_equal_brute_force_per_example(kind, conv):
    model, X, _Y, risk = _setup(kind)
    modules = select_layers(model)
    assert list(modules) == [str(k) for k, m in enumerate(model) if isinstance(m, (nn.Linear, nn.Conv2d))]
    seen = 0
    for vectorize in (True, False):
        passes = list(layer_passes(risk, modules, conv=conv, vectorize=vectorize))  # hooks live while it runs
        for batch, out in passes:
            assert set(out) == set(modules)
            for name, (h, d) in out.items():
                for i, x in enumerate(batch.inputs):
                    hb, db, pb = _brute(model, int(name), x, conv)
                    assert (h[i] - hb).abs().max().item() < TOL
                    assert (d[i] - db).abs().max().item() < TOL
                    assert (batch.probs[i] - pb).abs().max().item() < TOL
                    seen += 1
    assert seen == 2 * len(modules) * X.shape[0]


def _feature_reference(h, Y):
    N = h.shape[0]
    mu = torch.stack([h[Y == c].mean(0) for c in range(C)])
    pi = torch.bincount(Y, minlength=C).double() / N
    mu_G = pi @ mu
    SB = torch.einsum("c,cp,cq->pq", pi, mu - mu_G, mu - mu_G)
    R = h - mu[Y]
    return mu, mu_G, SB, R.T @ R / N, h.T @ h / N


def _error_reference(d, Y, p, weighted):
    """Weighted cross means, class means and P_c, within-cell part, total M = (1/N) sum p d d^T."""
    N = d.shape[0]
    y, w = (d, p) if weighted else (p.sqrt()[:, :, None] * d, torch.ones_like(p))
    off = ~torch.eye(C, dtype=torch.bool)
    cross = torch.stack([torch.einsum("ik,ikp->kp", w[Y == c], y[Y == c]) / w[Y == c].sum(0)[:, None] for c in range(C)])
    Wc = torch.stack([w[Y == c].sum(0) for c in range(C)])
    Pc = (Wc * off).sum(1)
    cls = torch.einsum("ck,ckp->cp", Wc * off, cross) / Pc[:, None]
    r = y - cross[Y]
    within = torch.einsum("ik,ikp,ikq->pq", w, r, r) / N
    total = torch.einsum("ik,ikp,ikq->pq", p, d, d) / N
    return cross, cls, Pc, within, total


def _dense(part):
    return part.as_operator().to_dense()


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_accumulated_parts_sum_to_the_dense_second_moments(kind, weighted):
    model, X, Y, risk = _setup(kind)
    ref, p = _brute_all(model, X, Y)
    dense = layer_statistics(risk, weighted=weighted)
    streamed = layer_statistics(risk, weighted=weighted, dense_limit=1)  # within parts re-run the passes
    for stats in (dense, streamed):
        assert stats.num_examples == X.shape[0]
        for name, layer in stats.layers.items():
            h, d = ref[name]
            mu, _mu_G, SB, SW, H = _feature_reference(h, Y)
            f = layer.features
            assert (f.class_means - mu).abs().max().item() < TOL
            assert (_dense(f.between_part) - SB).abs().max().item() < TOL
            assert (_dense(f.within_part) - SW).abs().max().item() < TOL
            assert (sum(_dense(part) for part in f.parts.values()) - H).abs().max().item() < TOL
            assert (f.total_operator().to_dense() - H).abs().max().item() < TOL
            cross, cls, _Pc, within, M = _error_reference(d, Y, p, weighted)
            e = layer.errors
            assert (e.cross_means - cross).abs().max().item() < TOL
            assert (e.class_means - cls).abs().max().item() < TOL
            assert (_dense(e.within_part) - within).abs().max().item() < TOL
            assert (sum(_dense(part) for part in e.parts.values()) - M).abs().max().item() < TOL
            assert abs(e.total_trace - torch.trace(M).item()) < TOL
            true = torch.stack([d[Y == c, c].mean(0) for c in range(C)])
            assert (layer.true_error_means - true).abs().max().item() < TOL
            assert layer.params == (f"{name}.weight", f"{name}.bias")


def _separation_reference(mu, pi, SB, SW, total, class_part):
    lam = torch.linalg.eigvalsh(total).flip(0).numpy()
    cl = torch.linalg.eigvalsh(class_part).flip(0).numpy()
    c = mu - pi @ mu
    cos = (c @ c.T) / torch.outer(c.norm(dim=1), c.norm(dim=1))
    return {
        "outlier_to_bulk": lam[C - 1] / lam[C] if lam.size > C else np.nan,
        "class_eigenvalue_ratio": cl[1] / cl[C - 1],
        "trace_ratio": (torch.trace(SB) / torch.trace(SW)).item(),
        "within_over_between": torch.trace(SW @ torch.linalg.pinv(SB, hermitian=True, rtol=1e-10)).item() / C,
        "mean_abs_cosine": cos[~torch.eye(C, dtype=torch.bool)].abs().mean().item(),
        "eigenvalues": lam,
    }


@pytest.mark.parametrize("dense_limit", [3000, 1])
def test_separation_measures_equal_dense_computation(dense_limit):
    model, X, Y, risk = _setup("mlp", n=40, width=8)
    ref, p = _brute_all(model, X, Y)
    sep = layer_separation(layer_statistics(risk, dense_limit=dense_limit))
    assert list(sep.layers) == ["1", "4", "7"]
    for name, layer in sep.layers.items():
        h, d = ref[name]
        mu, mu_G, SB, SW, H = _feature_reference(h, Y)
        pi = torch.bincount(Y, minlength=C).double() / len(Y)
        fref = _separation_reference(mu, pi, SB, SW, H, torch.einsum("c,cp,cq->pq", pi, mu, mu))
        _cross, cls, Pc, within, M = _error_reference(d, Y, p, True)
        q = Pc / Pc.sum()
        s = Pc.sum() / len(Y)
        cb = cls - q @ cls
        eref = _separation_reference(
            cls, q, s * torch.einsum("c,cp,cq->pq", q, cb, cb), within, M, torch.einsum("c,cp,cq->pq", Pc / len(Y), cls, cls)
        )
        for got, want in ((layer.features, fref), (layer.errors, eref)):
            assert got.method == ("dense" if dense_limit > 1 else "matrix-free")
            for key in ("outlier_to_bulk", "class_eigenvalue_ratio", "trace_ratio", "within_over_between", "mean_abs_cosine"):
                if getattr(got, key) == np.inf:  # rank of the class part below C (last layer's errors)
                    assert abs(want[key]) > 1e8, (name, key)
                    continue
                np.testing.assert_allclose(getattr(got, key), want[key], rtol=1e-7, err_msg=f"{name} {key}")
            k = got.eigenvalues.size
            np.testing.assert_allclose(got.eigenvalues, want["eigenvalues"][:k], rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(layer.global_mean_share, (mu_G @ mu_G / torch.trace(H)).item(), rtol=1e-12)
    js = sep.to_json()
    assert js["layers"]["4"]["errors"]["method"] == sep.layers["4"].errors.method
    assert sep.series("features", "trace_ratio").shape == (3,)


def test_error_class_view_class_part_is_the_error_class_part():
    _model, _X, _Y, risk = _setup("mlp")
    e = layer_statistics(risk).layers["4"].errors
    view = error_class_view(e)
    assert (_dense(view.class_part) - _dense(e.class_part)).abs().max().item() < TOL
    assert (_dense(view.global_part) + _dense(view.between_part) - _dense(e.class_part)).abs().max().item() < TOL


@pytest.mark.parametrize("bias", [True, False])
def test_kronecker_identity_is_exact_with_one_example_per_cell(bias):
    """A single Linear layer and one example per class: every cell (c, c') holds one
    example, so g_{c,c'} = delta_{c,c'} (x) [h_c; 1] exactly."""
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, C, bias=bias)).double().eval()
    X, Y = torch.randn(C, 5, generator=gen, dtype=torch.float64), torch.tensor([2, 0, 1])
    risk = EmpiricalRisk(model, (X, Y))
    for weighted in (True, False):
        stats = layer_statistics(risk, weighted=weighted)
        kron = kronecker_structure(stats, gradient_sums(risk, weighted=weighted), model)
        layer = kron.layers["0"]
        assert layer.params == (("0.weight", "0.bias") if bias else ("0.weight",))
        np.testing.assert_allclose(layer.cell_cosines, 1.0, rtol=0, atol=1e-12)
        np.testing.assert_allclose(layer.class_cosines, 1.0, rtol=0, atol=1e-12)
        assert abs(layer.mean_cell_cosine - 1) < 1e-12


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_kronecker_cosines_equal_brute_force(kind):
    model, X, Y, risk = _setup(kind, n=20)
    ref, p = _brute_all(model, X, Y, conv="patches")
    stats = layer_statistics(risk, conv="patches")
    kron = kronecker_structure(stats, gradient_sums(risk), model)
    for name, layer in kron.layers.items():
        h, d = ref[name]  # conv: mean patches and errors summed over positions
        w = model[int(name)].weight
        # per-example gradient of the layer from the brute-force errors, weight (out-major) then bias
        if isinstance(model[int(name)], nn.Linear):
            g = torch.cat([torch.einsum("iko,id->ikod", d, h).flatten(2), d], dim=2)
        else:
            x = torch.stack([model[: int(name)](xi[None])[0] for xi in X])
            patches = F.unfold(x, w.shape[2:], padding=model[int(name)].padding, stride=model[int(name)].stride)
            z = model[: int(name) + 1](X)
            tail = model[int(name) + 1 :]
            J = torch.stack([jacrev(lambda z, tail=tail: tail(z[None])[0])(zi) for zi in z])
            full = torch.einsum("iko,io...->ik...", p[:, None, :] - torch.eye(C, dtype=p.dtype)[None], J.detach()).flatten(3)
            g = torch.cat([torch.einsum("ikot,idt->ikod", full, patches).flatten(2), full.sum(3)], dim=2)
        for c in range(C):
            idx = Y == c
            for k in range(C):
                wts = p[idx, k]
                gm = (wts[:, None] * g[idx, k]).sum(0) / wts.sum()
                mh = h[idx].mean(0)
                md = (wts[:, None] * d[idx, k]).sum(0) / wts.sum()
                want = torch.cat([torch.outer(md, mh).flatten(), md])
                cos = (gm @ want / (gm.norm() * want.norm())).item()
                assert abs(layer.cell_cosines[c, k] - cos) < 1e-10, (name, c, k)
        if name == "0" or name == "1":  # the first layer's features (the inputs) vary within a class: not exact
            assert np.all(layer.cell_cosines < 1 - 1e-6)


def _train_to_stationarity(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, eta: float) -> None:
    """Minimise the mean cross-entropy + (eta / 2)|theta|^2 by L-BFGS (convex for a linear model)."""
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=0, history_size=20)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(X), Y) + eta / 2 * sum(q.square().sum() for q in model.parameters())
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    model.eval()


def test_weights_at_stationarity_under_weight_decay():
    """A linear model trained to a stationary point of L + (eta/2)|theta|^2 (convex, L-BFGS):
    W = -(1/eta) Ave delta h^T exactly; with one example per class the class prediction
    is exact too, and W's top singular pairs lie in the class span (C - 1 of them: the
    true-label errors p - e_c of the last layer sum to zero over the outputs)."""
    eta = 0.05
    for n in (C, 12):
        gen = torch.Generator().manual_seed(4)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, C)).double()
        X = torch.randn(n, 6, generator=gen, dtype=torch.float64)
        Y = torch.arange(n) % C
        _train_to_stationarity(model, X, Y, eta)
        risk = EmpiricalRisk(model, (X, Y))
        ws = weight_structure(risk, layer_statistics(risk), eta)
        layer = ws.layers["0"]
        assert layer.stationarity_error < 1e-9
        np.testing.assert_allclose(layer.singular_values, torch.linalg.svdvals(model[0].weight).detach().numpy(), rtol=1e-12)
        if n == C:
            assert abs(layer.class_cosine - 1) < 1e-12
            np.testing.assert_allclose(layer.class_singular_values, layer.singular_values, rtol=1e-8, atol=1e-9)
            assert abs(layer.top_share - (C - 1) / C) < 1e-9
        else:
            assert layer.class_cosine < 1 - 1e-6
        assert ws.to_json()["layers"]["0"]["shape"] == [C, 6]
    # far from stationarity the prediction fails
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Linear(6, C)).double().eval()
    risk = EmpiricalRisk(fresh, (X, Y))
    assert weight_structure(risk, layer_statistics(risk), eta).layers["0"].stationarity_error > 0.1


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, C)
        self.spare = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x)


class KeywordCall(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, C)

    def forward(self, x):
        return self.fc(input=x)


def test_bad_input():
    model, X, Y, risk = _setup("mlp")
    with pytest.raises(ArgumentError, match="layers: unknown module 'nope'"):
        layer_statistics(risk, layers=["nope"])
    with pytest.raises(ArgumentError, match="layers: '3' .ReLU. has no parameters"):
        layer_statistics(risk, layers=["3"])
    with pytest.raises(ArgumentError, match="layers: '2' is a BatchNorm1d"):
        layer_statistics(risk, layers="2")
    with pytest.raises(ArgumentError, match="layers"):
        layer_statistics(risk, layers=[])
    with pytest.raises(ArgumentError, match="conv"):
        layer_statistics(risk, conv="unfold")
    with pytest.raises(ArgumentError, match="dense_limit"):
        layer_statistics(risk, dense_limit=0)
    with pytest.raises(ArgumentError, match="weighted"):
        layer_statistics(risk, weighted=1)
    gen = torch.Generator().manual_seed(0)
    x4, y4 = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.arange(6) % C
    with pytest.raises(ValueError, match=r"layers: \['spare'\] saw no tensor"):
        layer_statistics(EmpiricalRisk(Unused().double().eval(), (x4, y4)))
    with pytest.raises(ValueError, match="layers: 'fc' was called without a tensor input"):
        layer_statistics(EmpiricalRisk(KeywordCall().double().eval(), (x4, y4)))
    with pytest.raises(ArgumentError, match="layers"):
        select_layers(nn.Sequential(nn.ReLU()))
    with pytest.raises(ArgumentError, match=r"modules: expected nn.Linear / nn.Conv2d modules .* \['2 \(BatchNorm1d\)'\]"):
        next(layer_passes(risk, {"2": model[2]}))
    stats = layer_statistics(risk)
    with pytest.raises(ArgumentError, match="sums"):
        kronecker_structure(stats, gradient_sums(risk, weighted=False), model)
    with pytest.raises(ArgumentError, match="weight_decay"):
        weight_structure(risk, stats, 0.0)
    cnn, _Xc, _Yc, crisk = _setup("cnn")
    cstats = layer_statistics(crisk)  # conv="mean": the weight's input side is not there
    with pytest.raises(ArgumentError, match="patches"):
        kronecker_structure(cstats, gradient_sums(crisk), cnn)
    with pytest.raises(ArgumentError, match="patches"):
        weight_structure(crisk, cstats, 1e-3)
    part = EmpiricalRisk(model, (X, Y), params="1")  # only layer 1 differentiated
    with pytest.raises(ArgumentError, match="no parameters among"):
        kronecker_structure(layer_statistics(part), gradient_sums(part), model)


def test_layer_subsets():
    cnn, _, _, crisk = _setup("cnn")
    stats = layer_statistics(crisk)  # conv="mean": Kronecker and weights for the Linear layer only
    assert stats.select() == ["0", "3", "6"] and stats.select(["6", "0"]) == ["0", "6"]
    assert list(kronecker_structure(stats, gradient_sums(crisk), cnn, layers=["6"]).layers) == ["6"]
    assert list(weight_structure(crisk, stats, 1e-3, layers="6").layers) == ["6"]
    with pytest.raises(ArgumentError, match="layers: expected a non-empty subset"):
        stats.select(["9"])
    feats = [out for _, out in layer_passes(crisk, select_layers(cnn, "3"), errors=False)]
    assert all(out["3"][1] is None for out in feats) and sum(out["3"][0].shape[0] for out in feats) == 14


def test_command_line_writes_run_folder(tmp_path, capsys):
    import json

    from deepnet.__main__ import main
    from deepnet.train import TrainConfig, train

    config = TrainConfig(dataset="mnist-5k", per_class=6, model="mlp", model_kwargs={"depth": 2, "width": 12},
                         epochs=2, lr=0.05, batch_size=20, seed=1, data_seed=1)
    train(config, tmp_path / "run", device="cpu", show_progress=False)
    out = tmp_path / "layers"
    assert main(["layers", "--checkpoint", str(tmp_path / "run"), "--out", str(out), "--device", "cpu", "--float64",
                 "--batch-size", "25", "--dense-limit", "100"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["kronecker.png", "report.md", "results.json", "separation.png",
                                                     "spectra.png", "weights.png"]
    results = json.loads((out / "results.json").read_text())
    names = ["layers.1", "layers.4", "layers.7"]
    assert list(results["separation"]["layers"]) == names and list(results["kronecker"]["layers"]) == names
    first = results["separation"]["layers"]["layers.1"]
    assert first["feature_dim"] == 784 and first["features"]["method"] == "matrix-free" and len(first["features"]["eigenvalues"]) == 11
    assert results["separation"]["layers"]["layers.4"]["features"]["method"] == "dense"
    assert results["weights"]["weight_decay"] == config.weight_decay
    assert "| layers.4 | 12 | 12 | errors |" in (out / "report.md").read_text()
    err = capsys.readouterr().err  # progress bars name what they compute and end at their totals
    assert "features and errors of 3 layers (1 forward + 10 backward per batch)" in err and "] 12/12 " in err  # 60 class-sorted examples in batches of 25
    assert "separation measures and spectra per layer" in err and "] 3/3 " in err
    # --compare: both runs' global-mean shares and top Hessian eigenvalues (here the same run twice)
    assert main(["layers", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "cmp"), "--device", "cpu", "--float64",
                 "--compare", str(tmp_path / "run"), "--batch-size", "25"]) == 0
    compare = json.loads((tmp_path / "cmp" / "results.json").read_text())["compare"]
    assert list(compare) == ["checkpoint", "compare"] and compare["checkpoint"] == compare["compare"]
    shares = results["separation"]["layers"]
    assert compare["checkpoint"]["global_mean_share"] == pytest.approx({n: v["global_mean_share"] for n, v in shares.items()}, rel=1e-10)
    top = compare["checkpoint"]["hessian_outliers"]
    assert len(top) == 10 and top == sorted(top, reverse=True) and top[0] > 0
    assert "Global mean and Hessian outliers of both runs" in (tmp_path / "cmp" / "report.md").read_text()
    assert main(["layers", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "attr"), "--device", "cpu",
                 "--layers", "layers.1", "layers.4", "--attribution", "--num-steps", "16", "--num-repeats", "1"]) == 0
    report = (tmp_path / "attr" / "report.md").read_text()
    assert "| layers.1 | features | outliers |" in report and "* layers.4 errors: not attributed (eigenvalues: too few bulk" in report
    assert (tmp_path / "attr" / "attribution-layers.1-features.json").exists()
    with pytest.raises(SystemExit) as stop:
        main(["layers", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "never"), "--layers", "layers.3"])
    assert stop.value.code == 2 and "layers: 'layers.3' (ReLU) has no parameters" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["layers", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "never"), "--dense-limit", "0"])
    assert "--dense-limit: expected an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_layer_attribution_and_conv_weights():
    model, X, Y, risk = _setup("mlp", n=60, width=32)
    stats = layer_statistics(risk)
    reports = layer_attribution(stats, layers=["4"], density={"num_steps": 16, "num_repeats": 1})
    ref, _ = _brute_all(model, X, Y)
    H = _feature_reference(ref["4"][0], Y)[4]
    rep = reports["4"]["features"]
    np.testing.assert_allclose(rep.eigenvalues, torch.linalg.eigvalsh(H).flip(0).numpy()[: rep.eigenvalues.size], rtol=1e-9, atol=1e-12)
    assert {f.feature for f in rep.features} >= {"outliers", "bulk"}
    assert {f.feature for f in reports["4"]["errors"].features} >= {"outliers", "bump", "bulk"}
    _, _, _, crisk = _setup("cnn")
    ws = weight_structure(crisk, layer_statistics(crisk, conv="patches"), 1e-3)
    assert list(ws.layers) == ["0", "3", "6"] and ws.layers["3"].shape == (3, 2, 3, 3)
    assert ws.layers["3"].singular_values.size == 3 and 0 <= ws.layers["3"].top_share <= 1 + 1e-12


def _neural_collapse_numpy(h: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, float]:
    """The neural-collapse measures straight from the raw features ``h`` (N, d), in plain
    numpy: ``Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T``, ``Sigma_B =
    sum_c pi_c (mu_c - mu_G)(mu_c - mu_G)^T``, ``tr(Sigma_W Sigma_B^+) / C`` (NC1) and the
    mean ``|cos|`` between the centred class means, off the diagonal."""
    N = h.shape[0]
    pi = np.array([(y == c).mean() for c in range(num_classes)])
    mu = np.stack([h[y == c].mean(0) for c in range(num_classes)])
    mu_G = h.mean(0)
    r = h - mu[y]
    SW = r.T @ r / N
    cb = mu - mu_G
    SB = (cb * pi[:, None]).T @ cb
    cos = cb @ cb.T / np.outer(np.linalg.norm(cb, axis=1), np.linalg.norm(cb, axis=1))
    return {
        "within_over_between": float(np.trace(SW @ np.linalg.pinv(SB, rcond=1e-10, hermitian=True)) / num_classes),
        "trace_ratio": float(np.trace(SB) / np.trace(SW)),
        "mean_abs_cosine": float(np.abs(cos[~np.eye(num_classes, dtype=bool)]).mean()),
        "global_mean_share": float(mu_G @ mu_G / np.einsum("ij,ij->", h, h) * N),
    }


def test_separation_measures_equal_neural_collapse_reference_in_numpy():
    """The feature separation measures against an independent numpy computation from the
    raw per-example features (forward hooks of plain nn.Sequential slices, no toolkit code)."""
    model, X, Y, risk = _setup("mlp", n=60, width=8)
    sep = layer_separation(layer_statistics(risk))
    y = Y.numpy()
    for name, layer in sep.layers.items():
        k = int(name)
        h = model[:k](X).detach().numpy()
        want = _neural_collapse_numpy(h, y, C)
        for key in ("within_over_between", "trace_ratio", "mean_abs_cosine"):
            np.testing.assert_allclose(getattr(layer.features, key), want[key], rtol=1e-9, err_msg=f"{name} {key}")
        np.testing.assert_allclose(layer.global_mean_share, want["global_mean_share"], rtol=1e-9, err_msg=name)
