"""K-FAC and its class-aware correction (theory.kronecker_sum, deepnet.kfac) against dense
float64 references: Kronecker sums formed by torch.kron, the layer block of G from
per-example Jacobians, and factors rebuilt from per-example Jacobians of the logits."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from deepnet.kfac import kfac_factors
from deepnet.operators import EmpiricalRisk
from theory.checks import ArgumentError
from theory.kronecker_sum import KroneckerSum

pytestmark = pytest.mark.usefixtures("one_thread")


def _spd(d: int, gen: torch.Generator) -> torch.Tensor:
    X = torch.randn(d, d + 2, generator=gen, dtype=torch.float64)
    return X @ X.T / d


def _layer_jacobians(model: nn.Module, X: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Per-example Jacobians of the logits with respect to the parameters ``names`` (N, C, P_l)."""
    params = dict(model.named_parameters())
    fixed = {n: p.detach() for n, p in params.items() if n not in names}
    fixed.update(dict(model.named_buffers()))
    shapes = [params[n].shape for n in names]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def logits(flat: torch.Tensor) -> torch.Tensor:
        theta = {n: t.view(s) for n, t, s in zip(names, flat.split([s.numel() for s in shapes]), shapes)}
        return torch.func.functional_call(model, {**fixed, **theta}, (X,))

    return torch.func.jacrev(logits)(flat0), torch.softmax(logits(flat0), dim=-1)


def _dense_layer_G(model: nn.Module, X: torch.Tensor, names: list[str]) -> torch.Tensor:
    J, p = _layer_jacobians(model, X, names)
    A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("ncp,ncd,ndq->pq", J, A, J) / X.shape[0]


def _risk(model, X, Y, C=None):
    return EmpiricalRisk(model, (X, Y), batch_size=7, num_classes=C)


# ------------------------------------------------------------------ the operator
def test_kronecker_sum_matches_dense_kron():
    gen = torch.Generator().manual_seed(0)
    d_in, d_out = 4, 3
    A = [_spd(d_in, gen) for _ in range(3)]
    B = [_spd(d_out, gen) for _ in range(3)]
    w = [0.2, 0.5, 0.3]
    V = torch.randn(d_in * d_out, 5, generator=gen, dtype=torch.float64)
    for op, dense in (
        (KroneckerSum(A[:1], B[:1]), torch.kron(B[0], A[0])),
        (KroneckerSum(A, B, w), sum(wj * torch.kron(Bj, Aj) for wj, Aj, Bj in zip(w, A, B))),
    ):
        assert op.size == d_in * d_out
        torch.testing.assert_close(op.matmat(V), dense @ V, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(op.matvec(V[:, 0]), dense @ V[:, 0], rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(op.to_dense(), dense, rtol=1e-13, atol=1e-13)
        assert op.trace() == pytest.approx(float(torch.trace(dense)), rel=1e-12)
    # the out-major convention: K vec(V) = vec(sum_j w_j B_j V A_j) with V (d_out, d_in)
    Vm = V[:, 0].reshape(d_out, d_in)
    expected = sum(wj * Bj @ Vm @ Aj for wj, Aj, Bj in zip(w, A, B)).reshape(-1)
    torch.testing.assert_close(KroneckerSum(A, B, w).matvec(V[:, 0]), expected, rtol=1e-13, atol=1e-13)


def test_kronecker_eigenpairs_from_factors_equal_dense_eigh():
    gen = torch.Generator().manual_seed(1)
    op = KroneckerSum([_spd(5, gen)], [_spd(3, gen)], [0.7])
    values, _ = op.eigenpairs()
    dense = torch.linalg.eigvalsh(op.to_dense()).flip(0).numpy()
    np.testing.assert_allclose(values, dense, rtol=1e-12, atol=1e-14)
    top, Q = op.eigenpairs(4)
    np.testing.assert_allclose(top, dense[:4], rtol=1e-12)
    torch.testing.assert_close(op.matmat(Q), Q * torch.as_tensor(top), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(Q.T @ Q, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="one Kronecker term"):
        KroneckerSum([_spd(2, gen)] * 2, [_spd(2, gen)] * 2).eigenpairs()
    with pytest.raises(ArgumentError, match="weights"):
        KroneckerSum([_spd(2, gen)] * 2, [_spd(2, gen)] * 2, [1.0])


# -------------------------------------------------------------------- the factors
def _reference_factors(model, X, Y, layer, C, fisher="true"):
    """H_c and Delta_c of a plain Linear layer with bias from per-example Jacobians: the
    bias block of J_i is d f / d z (so Delta = J_b^T W(p) J_b) and the input is captured."""
    inputs = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, a, out: inputs.append(a[0].detach()))
    J, p = _layer_jacobians(model, X, [f"{layer}.weight", f"{layer}.bias"])
    handle.remove()
    h = torch.cat([inputs[-1], torch.ones(X.shape[0], 1, dtype=X.dtype)], dim=1)
    d_out = model.get_submodule(layer).bias.shape[0]
    Jb = J[:, :, -d_out:]
    if fisher == "true":
        W = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    else:
        r = p - torch.eye(C, dtype=p.dtype)[Y]
        W = r[:, :, None] * r[:, None, :]
    D = torch.einsum("nco,ncd,ndq->noq", Jb, W, Jb)
    Hc = torch.stack([(h[Y == c].T @ h[Y == c]) / (Y == c).sum() for c in range(C)])
    Dc = torch.stack([D[Y == c].mean(0) for c in range(C)])
    return Hc, Dc


@pytest.mark.parametrize("fisher", ["true", "empirical"])
def test_factors_match_per_example_jacobians(make_mlp, fisher):
    model, X, Y = make_mlp()
    factors = kfac_factors(_risk(model, X, Y), fisher=fisher)
    assert list(factors.layers) == ["fc1", "fc2", "fc3"]
    for layer in ("fc1", "fc2", "fc3"):
        f = factors.layers[layer]
        Hc, Dc = _reference_factors(model, X, Y, layer, 3, fisher)
        torch.testing.assert_close(f.class_features, Hc, rtol=1e-11, atol=1e-13)
        torch.testing.assert_close(f.class_errors, Dc, rtol=1e-11, atol=1e-13)
        pi = torch.as_tensor(np.bincount(Y.numpy(), minlength=3) / len(Y))
        torch.testing.assert_close(f.features, torch.einsum("c,cij->ij", pi, Hc), rtol=1e-11, atol=1e-13)
        torch.testing.assert_close(f.errors, torch.einsum("c,cij->ij", pi, Dc), rtol=1e-11, atol=1e-13)
        assert f.params == (f"{layer}.weight", f"{layer}.bias") and f.num_positions == 1


def test_monte_carlo_factors_approach_the_true_fisher(make_mlp):
    model, X, Y = make_mlp()
    risk = _risk(model, X, Y)
    true = kfac_factors(risk).layers["fc2"].errors
    mc = kfac_factors(risk, fisher="mc", mc_samples=4000, seed=3).layers["fc2"].errors
    few = kfac_factors(risk, fisher="mc", mc_samples=1, seed=3).layers["fc2"].errors
    rel = lambda M: float((M - true).norm() / true.norm())
    assert rel(mc) < 0.05 < rel(few)


def test_kfac_operator_in_layer_order_and_its_exact_spectrum(make_mlp):
    """The operator on [vec(W), b] equals the dense Kronecker product permuted, and its
    eigenpairs from the factor eigenpairs equal a dense eigh."""
    model, X, Y = make_mlp()
    f = kfac_factors(_risk(model, X, Y), ["fc2"]).layers["fc2"]
    H, D = f.features, f.errors
    d_in, d_out = H.shape[0], D.shape[0]
    # the dense K-FAC block by blocks: W-W is Delta (x) H_xx, W-b is Delta (x) H_x1, b-b is Delta H_11
    Hx, hx, h1 = H[:-1, :-1], H[:-1, -1:], H[-1, -1]
    dense = torch.cat([
        torch.cat([torch.kron(D, Hx), torch.kron(D, hx)], 1),
        torch.cat([torch.kron(D, hx.T), D * h1], 1),
    ])
    op = f.operator("kfac")
    assert op.size == d_out * d_in == sum(p.numel() for p in model.fc2.parameters())
    torch.testing.assert_close(op.to_dense(), dense, rtol=1e-12, atol=1e-14)
    values, _ = f.kfac_eigenpairs()
    np.testing.assert_allclose(values, torch.linalg.eigvalsh(dense).flip(0).numpy(), rtol=1e-10, atol=1e-14)
    top, Q = f.kfac_eigenpairs(5)
    torch.testing.assert_close(op.matmat(Q), Q * torch.as_tensor(top), rtol=1e-10, atol=1e-12)


def test_correction_identity(make_mlp, make_cnn):
    """corrected = K-FAC + Ave_c (Delta_c - Delta) (x) (H_c - H), exactly, for linear and conv layers."""
    for model, X, Y in (make_mlp(), make_cnn()):
        for f in kfac_factors(_risk(model, X, Y)).layers.values():
            corrected, kfac, correction = (f.operator(w).to_dense() for w in ("corrected", "kfac", "correction"))
            torch.testing.assert_close(corrected, kfac + correction, rtol=1e-12, atol=1e-14)
            assert float((corrected - kfac).norm()) > 1e-6 * float(kfac.norm())  # not trivially zero


def test_corrected_form_is_exact_with_one_example_per_class(make_mlp):
    """With one example per class, ``G^l = sum_c pi_c sum_{c'} p (delta (x) h)(delta (x) h)^T``
    has one feature ``h_c`` per class, so each class's average of Kronecker products is
    the product of its averages: the corrected form equals ``G^l`` for every Linear layer,
    while K-FAC (which mixes the classes' features and errors) does not."""
    model, X, Y = make_mlp()
    pick = torch.stack([torch.nonzero(Y == c)[0, 0] for c in range(3)])
    X1, Y1 = X[pick], Y[pick]
    factors = kfac_factors(_risk(model, X1, Y1))
    for name, f in factors.layers.items():
        G = _dense_layer_G(model, X1, list(f.params))
        torch.testing.assert_close(f.operator("corrected").to_dense(), G, rtol=1e-10, atol=1e-13)
        assert float((f.operator("kfac").to_dense() - G).norm()) > 1e-3 * float(G.norm()), name


def test_corrected_form_is_exact_when_errors_are_constant_within_classes():
    """Several examples per class whose features are uncorrelated with the errors within
    each class: a single Linear layer ``f = W x + b`` with ``x = m_c + s z`` for ``z`` in the
    null space of ``W``. The logits, hence ``p_i`` and the errors ``p_i - e_{c'}``, are the
    same for every example of a class while the features vary, so within a class the
    average of ``(sum_{c'} p delta delta^T) (x) h h^T`` factorises: corrected = G exactly,
    K-FAC not (the class means of the features and errors differ)."""
    gen = torch.Generator().manual_seed(5)
    C, d, per = 3, 5, 4
    model = nn.Sequential(OrderedDict(fc=nn.Linear(d, C))).double().eval()
    with torch.no_grad():
        model.fc.weight.copy_(torch.randn(C, d, generator=gen, dtype=torch.float64))
    null = torch.linalg.svd(model.fc.weight.detach(), full_matrices=True).Vh[C:]  # (d - C, d)
    means = 2 * torch.randn(C, d, generator=gen, dtype=torch.float64)
    X = torch.cat([means[c] + torch.randn(per, d - C, generator=gen, dtype=torch.float64) @ null for c in range(C)])
    Y = torch.arange(C).repeat_interleave(per)
    f = kfac_factors(_risk(model, X, Y)).layers["fc"]
    G = _dense_layer_G(model, X, ["fc.weight", "fc.bias"])
    torch.testing.assert_close(f.operator("corrected").to_dense(), G, rtol=1e-10, atol=1e-13)
    assert float((f.operator("kfac").to_dense() - G).norm()) > 1e-2 * float(G.norm())


def test_conv_expand_with_one_position_is_the_linear_layer():
    """A Conv2d whose kernel covers its whole input has T = 1 and is the Linear layer on the
    flattened input: its factors (patches in the weight's flattening order) must agree."""
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    conv = nn.Sequential(OrderedDict(conv=nn.Conv2d(2, 4, 3), act=nn.Tanh(), flat=nn.Flatten(), fc=nn.Linear(4, 3))).double().eval()
    lin = nn.Sequential(OrderedDict(flat=nn.Flatten(), conv=nn.Linear(18, 4), act=nn.Tanh(), fc=nn.Linear(4, 3))).double().eval()
    with torch.no_grad():
        lin.conv.weight.copy_(conv.conv.weight.reshape(4, -1))
        lin.conv.bias.copy_(conv.conv.bias)
        lin.fc.load_state_dict(conv.fc.state_dict())
    X = torch.randn(11, 2, 3, 3, generator=gen, dtype=torch.float64)
    Y = torch.randint(0, 3, (11,), generator=gen)
    fc, fl = kfac_factors(_risk(conv, X, Y), ["conv"]).layers["conv"], kfac_factors(_risk(lin, X, Y), ["conv"]).layers["conv"]
    assert fc.kind == "conv2d" and fc.num_positions == 1
    torch.testing.assert_close(fc.class_features, fl.class_features, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fc.class_errors, fl.class_errors, rtol=1e-12, atol=1e-14)
    # and the conv layer's one-example-per-class exactness holds with T = 1
    pick = torch.stack([torch.nonzero(Y == c)[0, 0] for c in range(3)])
    f1 = kfac_factors(_risk(conv, X[pick], Y[pick]), ["conv"]).layers["conv"]
    torch.testing.assert_close(f1.operator("corrected").to_dense(), _dense_layer_G(conv, X[pick], ["conv.weight", "conv.bias"]),
                               rtol=1e-10, atol=1e-13)


def test_conv_expand_normalisation(make_cnn):
    """Expand: H averages the patches over the T positions (its bias entry is 1) and Delta
    sums the errors over positions (its trace is Ave_i sum_t sum_c' p |g_t|^2, checked via
    the bias gradient when T = 1 above); here the shapes and the bias entry for T > 1."""
    model, X, Y = make_cnn()
    factors = kfac_factors(_risk(model, X, Y), ["conv1", "conv2"])
    f1, f2 = factors.layers["conv1"], factors.layers["conv2"]
    assert (f1.num_positions, f2.num_positions) == (64, 4)
    assert f1.class_features.shape[1:] == (1 * 9 + 1, 1 * 9 + 1) and f2.class_errors.shape[1:] == (4, 4)
    torch.testing.assert_close(f1.features[-1, -1], torch.tensor(1.0, dtype=torch.float64))
    assert f1.size == sum(p.numel() for p in model.conv1.parameters())


def test_arguments_are_checked(make_mlp):
    model, X, Y = make_mlp()
    risk = _risk(model, X, Y)
    with pytest.raises(ArgumentError, match="fisher"):
        kfac_factors(risk, fisher="exact")
    with pytest.raises(ArgumentError, match="mc_samples"):
        kfac_factors(risk, fisher="mc", mc_samples=0)
    with pytest.raises(ArgumentError, match="layers"):
        kfac_factors(risk, ["bn1"])
    with pytest.raises(ArgumentError, match="which"):
        kfac_factors(risk, ["fc3"]).layers["fc3"].operator("inverse")


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_factors_match_curvlinops(make_mlp, make_cnn, net):
    """K-FAC (true Fisher, expand, weight and bias jointly) against curvlinops'
    KFACLinearOperator on every layer, product by product (skipped where curvlinops is
    not installed; checked with curvlinops-for-pytorch 3.0.1)."""
    curvlinops = pytest.importorskip("curvlinops")
    model, X, Y = make_mlp() if net == "mlp" else make_cnn()
    gen = torch.Generator().manual_seed(0)
    for name, f in kfac_factors(_risk(model, X, Y)).layers.items():
        params = list(model.get_submodule(name).parameters())
        other = curvlinops.KFACLinearOperator(model, nn.CrossEntropyLoss(), params, [(X, Y)], fisher_type="type-2",
                                              kfac_approx="expand", separate_weight_and_bias=False, check_deterministic=False)
        V = torch.randn(f.size, 3, generator=gen, dtype=torch.float64)
        theirs = other.torch_matmat(V) if hasattr(other, "torch_matmat") else other @ V  # scipy- or torch-based releases
        torch.testing.assert_close(f.operator("kfac").matmat(V), torch.as_tensor(np.asarray(theirs)), rtol=1e-8, atol=1e-10,
                                   msg=lambda m, name=name: f"{name}: {m}")


# ------------------------------------------------------------- the comparison
def test_comparison_measures_on_known_cases():
    from deepnet.kfac_cli import principal_angles, relative_frobenius, wasserstein_log
    from theory.density import DensitySettings
    from theory.operators import DenseOperator
    from theory.spectrum import spectrum

    gen = torch.Generator().manual_seed(11)
    M = _spd(40, gen) + 0.1 * torch.eye(40, dtype=torch.float64)
    settings = DensitySettings(num_steps=40, num_repeats=2, seed=0, eps=1e-12)
    a, b = spectrum(M, 3, settings), spectrum(10 * M, 3, settings)
    assert wasserstein_log(a, a) == pytest.approx(0.0, abs=1e-12)
    assert wasserstein_log(a, b) == pytest.approx(1.0, abs=1e-2)  # x 10 shifts the log axis by one decade
    Q = torch.linalg.qr(torch.randn(10, 3, generator=gen, dtype=torch.float64)).Q
    R = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64)).Q
    np.testing.assert_allclose(principal_angles(Q, Q @ R), 0.0, atol=1e-5)
    P = torch.linalg.qr(torch.cat([Q, torch.randn(10, 3, generator=gen, dtype=torch.float64)], 1)).Q
    np.testing.assert_allclose(principal_angles(P[:, :3], P[:, 3:]), 90.0, atol=1e-8)
    A = M + 0.3 * _spd(40, gen)
    Z = (torch.randint(0, 2, (40, 4000), generator=gen) * 2 - 1).to(torch.float64)
    exact = float((A - M).norm() / M.norm())
    assert relative_frobenius(DenseOperator(A), DenseOperator(M), M @ Z, Z) == pytest.approx(exact, rel=0.05)


def test_compare_layer_finds_the_exact_corrected_form(make_mlp):
    """End to end on the one-example-per-class case: the corrected form's spectrum is G's
    (zero distance, angles and Frobenius error), K-FAC's is not."""
    from deepnet.kfac_cli import compare_layer
    from theory.density import DensitySettings
    from theory.operators import DenseOperator

    model, X, Y = make_mlp()
    pick = torch.stack([torch.nonzero(Y == c)[0, 0] for c in range(3)])
    f = kfac_factors(_risk(model, X[pick], Y[pick]), ["fc2"]).layers["fc2"]
    G = DenseOperator(_dense_layer_G(model, X[pick], list(f.params)))
    result = compare_layer(G, f, DensitySettings(num_steps=20, num_repeats=2, seed=0), k=4, num_probes=8, tol=1e-10)
    good, bad = result.agreement["corrected"], result.agreement["kfac"]
    assert good.wasserstein < 1e-6 and good.frobenius < 1e-8 and np.all(good.top_relative_error < 1e-6)
    assert bad.wasserstein > 1e-2 and bad.frobenius > 1e-2 and bad.mean_top_relative_error > 1e-3
    np.testing.assert_allclose(result.kfac_exact, result.spectra["kfac"].outliers, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:log density not resolved")
def test_command_line_writes_run_folder(tmp_path, capsys):
    import json

    from deepnet.__main__ import main
    from deepnet.train import TrainConfig, train

    config = TrainConfig(dataset="mnist-5k", per_class=3, model="mlp", model_kwargs={"depth": 2, "width": 12},
                         epochs=2, lr=0.05, batch_size=20, seed=1, data_seed=1)
    train(config, tmp_path / "run", device="cpu", show_progress=False)
    out = tmp_path / "kfac"
    assert main(["kfac", "--checkpoint", str(tmp_path / "run"), "--out", str(out), "--device", "cpu", "--float64",
                 "--layers", "layers.4", "layers.7", "--outliers", "4", "--num-steps", "16", "--num-repeats", "1",
                 "--probes", "4", "--batch-size", "7", "--eps", "1e-9"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "results.json", "spectra.png"]
    results = json.loads((out / "results.json").read_text())
    assert list(results["layers"]) == ["layers.4", "layers.7"]
    layer = results["layers"]["layers.7"]
    assert layer["size"] == 130 and layer["k"] == 4 and len(layer["spectra"]["G"]["outliers"]) == 4
    assert set(layer["agreement"]) == {"kfac", "corrected"} and layer["agreement"]["kfac"]["frobenius"] > 0
    assert results["settings"]["density"]["eps"] == 1e-9  # --eps reaches every log density
    assert {s["log_density"]["eps"] for s in layer["spectra"].values()} == {1e-9}
    assert "| layers.4 | 156 | 4 |" in (out / "report.md").read_text()
    with pytest.raises(SystemExit) as stop:
        main(["kfac", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "never"), "--probes", "0"])
    assert stop.value.code == 2 and "--probes: expected an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
