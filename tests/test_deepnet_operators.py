"""Hessian / G / E operators of deepnet.operators against dense float64 references:
``torch.func.hessian`` of the data-set loss and an explicit ``J^T A(p) J`` from
``torch.func.jacrev``, for a small MLP and a small CNN with batch norm in eval mode."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepnet.operators import (
    METHODS,
    EmpiricalRisk,
    GaussNewtonOperator,
    HessianOperator,
    ResidualOperator,
    curvature_operator,
    select_parameters,
)
from theory.operators import check_symmetric

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["cnn", "mlp"])
def problem(request, dense_references):
    model, X, Y = request.getfixturevalue(f"make_{request.param}")()
    names = [n for n, _ in model.named_parameters()]
    H, G, E = dense_references(model, X, Y, names)
    return request.param, model, X, Y, {"hessian": H, "G": G, "E": E}


def _close(A: torch.Tensor, B: torch.Tensor, rtol: float = 1e-10) -> None:
    scale = max(float(B.abs().max()), 1e-300)
    assert float((A - B).abs().max()) <= rtol * scale, float((A - B).abs().max()) / scale


def test_sizes_are_a_few_hundred(problem):
    _, model, _, _, dense = problem
    P = sum(p.numel() for p in model.parameters())
    assert 100 <= P <= 400 and dense["hessian"].shape == (P, P)
    # the references are not degenerate: E is a sizeable part of H, G is PSD and not zero
    assert float(dense["E"].abs().max()) > 0.05 * float(dense["hessian"].abs().max())
    assert float(torch.linalg.eigvalsh(dense["G"]).min()) > -1e-12 * float(dense["G"].abs().max())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["hessian", "E"])
def test_second_order_operators_match_dense(problem, kind, method):
    _, model, X, Y, dense = problem
    risk = EmpiricalRisk(model, (X, Y), batch_size=8)
    op = curvature_operator(kind, risk, method=method, max_columns=16)
    M = op.to_dense()
    _close(M, dense[kind])
    _close(M, M.T, rtol=1e-12)


def test_gauss_newton_matches_jacobian_reference(problem):
    _, model, X, Y, dense = problem
    op = GaussNewtonOperator(EmpiricalRisk(model, (X, Y), batch_size=8), max_columns=16)
    M = op.to_dense()
    _close(M, dense["G"])
    _close(M, M.T, rtol=1e-12)


def test_hessian_is_G_plus_E_on_random_block(problem):
    _, model, X, Y, _ = problem
    risk = EmpiricalRisk(model, (X, Y), batch_size=6)
    V = torch.randn(risk.size, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    H, G, E = (curvature_operator(k, risk).matmat(V) for k in ("hessian", "G", "E"))
    _close(H, G + E, rtol=1e-11)
    for op in (HessianOperator(risk), GaussNewtonOperator(risk), ResidualOperator(risk)):
        assert check_symmetric(op) < 1e-10


def test_independent_of_batch_size_and_batch_layout(problem):
    _, model, X, Y, _ = problem
    P = sum(p.numel() for p in model.parameters())
    V = torch.randn(P, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    uneven = [(X[:4], Y[:4]), (X[4:5], Y[4:5]), (X[5:], Y[5:]), (X[:0], Y[:0])]  # an empty batch is skipped
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=10)
    sources = [dict(data=(X, Y), batch_size=b) for b in (1, 7, X.shape[0], 1000)] + [dict(data=uneven), dict(data=loader)]
    for kind in ("hessian", "G", "E"):
        results = []
        for src in sources:
            risk = EmpiricalRisk(model, src["data"], batch_size=src.get("batch_size"))
            assert risk.num_data == X.shape[0]
            results.append(curvature_operator(kind, risk).matmat(V))
        for r in results[1:]:
            _close(r, results[0], rtol=1e-12)


def test_columns_in_chunks_equal_single_columns(problem):
    _, model, X, Y, _ = problem
    risk = EmpiricalRisk(model, (X, Y), batch_size=8)
    V = torch.randn(risk.size, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for kind in ("hessian", "G", "E"):
        block = curvature_operator(kind, risk, max_columns=2).matmat(V)
        single = torch.stack([curvature_operator(kind, risk).matvec(V[:, j]) for j in range(5)], dim=1)
        _close(block, single, rtol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_second_order_methods_agree_on_blocks_and_single_columns(problem, method):
    """Every method's one-column path (a Lanczos step) and vectorised chunks give the
    double-backward product of each column."""
    _, model, X, Y, _ = problem
    risk = EmpiricalRisk(model, (X, Y), batch_size=8)
    V = torch.randn(risk.size, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    for kind in ("hessian", "E"):
        reference = curvature_operator(kind, risk, method="double-backward").matmat(V)
        op = curvature_operator(kind, risk, method=method, max_columns=2)  # a chunk of 2 and one of 1
        _close(op.matmat(V), reference, rtol=1e-12)
        _close(op.matvec(V[:, 2])[:, None], reference[:, 2:], rtol=1e-12)


def test_per_layer_operator_is_diagonal_block(problem):
    name, model, X, Y, dense = problem
    layer = "fc2" if name == "mlp" else "conv2"
    by_name = select_parameters(model, [f"{layer}.weight", f"{layer}.bias"])
    assert by_name == select_parameters(model, layer) == [f"{layer}.weight", f"{layer}.bias"]
    offsets = {}
    start = 0
    for n, p in model.named_parameters():
        offsets[n] = (start, start + p.numel())
        start += p.numel()
    idx = torch.cat([torch.arange(*offsets[n]) for n in by_name])
    risk = EmpiricalRisk(model, (X, Y), batch_size=9, params=[f"{layer}.bias", f"{layer}.weight"])  # order given does not matter
    assert risk.names == tuple(by_name) and risk.size == idx.numel() < dense["hessian"].shape[0]
    for kind in ("hessian", "G", "E"):
        _close(curvature_operator(kind, risk).to_dense(), dense[kind][idx][:, idx])
    # two non-adjacent layers: the two diagonal blocks and their cross blocks
    first = "fc1" if name == "mlp" else "conv1"
    risk2 = EmpiricalRisk(model, (X, Y), params=[first, layer])
    idx2 = torch.cat([torch.arange(*offsets[n]) for n in select_parameters(model, [first, layer])])
    _close(HessianOperator(risk2).to_dense(), dense["hessian"][idx2][:, idx2])


def test_logits_probabilities_loss_and_gradient(problem):
    _, model, X, Y, _ = problem
    risk = EmpiricalRisk(model, (X, Y), batch_size=4)
    with torch.no_grad():
        reference = model(X)
    _close(risk.logits(), reference, rtol=1e-14)
    _close(risk.probabilities(), torch.softmax(reference, -1), rtol=1e-14)
    assert torch.equal(risk.labels(), Y)
    params = [p for p in model.parameters()]
    loss = F.cross_entropy(model(X), Y)
    grads = torch.autograd.grad(loss, params)
    value, grad = risk.loss_and_gradient()
    assert abs(value - loss.item()) < 1e-13
    _close(grad, torch.cat([g.reshape(-1) for g in grads]), rtol=1e-13)


def test_float64_copy_of_float32_model(make_mlp):
    model, X, Y = make_mlp()
    H64 = HessianOperator(EmpiricalRisk(model, (X, Y))).to_dense()
    model32 = model.float()
    risk = EmpiricalRisk(model32, (X.float(), Y), dtype=torch.float64)
    assert risk.dtype == torch.float64 and next(model32.parameters()).dtype == torch.float32  # the model is not touched
    op = HessianOperator(risk)
    assert op.dtype == torch.float64
    # float32 weights cast exactly to float64: the same matrix up to float32 rounding of weights only
    _close(op.to_dense(), H64, rtol=1e-6)
    op32 = HessianOperator(EmpiricalRisk(model32, (X, Y)))
    assert op32.dtype == torch.float32
    _close(op32.to_dense().double(), H64, rtol=1e-4)


def test_model_in_training_mode_is_refused(make_mlp):
    model, X, Y = make_mlp()
    model.train()
    with pytest.raises(ValueError, match=r"bn1 \(BatchNorm1d\) is in training mode.*deterministic function of the data.*model.eval\(\)"):
        EmpiricalRisk(model, (X, Y))
    model.eval()
    model.drop.train()
    with pytest.raises(ValueError, match=r"dropout layer drop \(Dropout\) is in training mode.*random mask"):
        EmpiricalRisk(model, (X, Y))
    no_stats = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3, track_running_stats=False)).double().eval()
    with pytest.raises(ValueError, match="no running statistics"):
        EmpiricalRisk(no_stats, (X, Y))
    plain = nn.Sequential(nn.Linear(5, 3)).double().train()  # training mode changes nothing here
    assert EmpiricalRisk(plain, (X, Y)).num_data == X.shape[0]


def test_bad_inputs_are_named(make_mlp):
    model, X, Y = make_mlp()
    with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, 3\).*to 3"):
        EmpiricalRisk(model, (X, torch.where(Y == 0, 3, Y)))
    with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, 3\).*from -1"):
        EmpiricalRisk(model, (X, torch.where(Y == 0, -1, Y)))
    with pytest.raises(ValueError, match="output has width 3 but num_classes=10"):
        EmpiricalRisk(model, (X, Y), num_classes=10)
    with pytest.raises(ValueError, match="labels: expected integer class indices"):
        EmpiricalRisk(model, (X, Y.double()))
    with pytest.raises(ValueError, match="data: no examples"):
        EmpiricalRisk(model, (X[:0], Y[:0]))
    with pytest.raises(ValueError, match="data: no examples"):
        EmpiricalRisk(model, [])
    with pytest.raises(ValueError, match=r"data: expected inputs X \(N, ...\) and labels Y \(N,\)"):
        EmpiricalRisk(model, (X, Y[:-1]))
    with pytest.raises(ValueError, match="data: batch 1 has 3 inputs but 2 labels"):
        EmpiricalRisk(model, [(X[:4], Y[:4]), (X[4:7], Y[4:6])])
    with pytest.raises(TypeError, match="one-shot iterators"):
        EmpiricalRisk(model, iter([(X, Y)]))
    with pytest.raises(ValueError, match="batch_size: only for data given as tensors"):
        EmpiricalRisk(model, [(X, Y)], batch_size=4)
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1"):
        EmpiricalRisk(model, (X, Y), batch_size=0)
    with pytest.raises(ValueError, match=r"params: 'fc9' is neither a parameter nor a module.*fc1.weight"):
        EmpiricalRisk(model, (X, Y), params=["fc9"])
    with pytest.raises(ValueError, match="dtype: expected torch.float32 or torch.float64"):
        EmpiricalRisk(model, (X, Y), dtype=torch.float16)
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        EmpiricalRisk(lambda x: x, (X, Y))
    risk = EmpiricalRisk(model, (X, Y))
    with pytest.raises(ValueError, match="method: expected one of"):
        HessianOperator(risk, method="finite-differences")
    with pytest.raises(ValueError, match="max_columns: expected an integer >= 1"):
        GaussNewtonOperator(risk, max_columns=0)
    with pytest.raises(ValueError, match=r"operator: expected one of \('hessian', 'G', 'E'\)"):
        curvature_operator("fisher", risk)
    with pytest.raises(ValueError, match=r"V: expected shape"):
        HessianOperator(risk).matmat(torch.zeros(risk.size + 1, 2))


def test_spectral_core_runs_unchanged_on_the_operators(make_mlp, dense_references):
    from theory.spectral import top_eigenpairs

    model, X, Y = make_mlp()
    risk = EmpiricalRisk(model, (X, Y), batch_size=10)
    _, G, _ = dense_references(model, X, Y, list(risk.names))
    pairs = top_eigenpairs(GaussNewtonOperator(risk), 3, tol=1e-10, seed=0)
    expected = torch.linalg.eigvalsh(G).flip(0)[:3].numpy()
    assert abs(pairs.eigenvalues - expected).max() <= 1e-8 * expected[0]


@pytest.mark.gpu
def test_float32_products_on_gpu_match_float64_cpu(make_cnn):
    model, X, Y = make_cnn()
    V = torch.randn(sum(p.numel() for p in model.parameters()), 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    cpu = EmpiricalRisk(model, (X, Y), batch_size=8)
    gpu = EmpiricalRisk(copy.deepcopy(model).float().cuda(), (X.float(), Y), batch_size=8)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    for kind in ("hessian", "G", "E"):
        ref = curvature_operator(kind, cpu).matmat(V)
        out = curvature_operator(kind, gpu).matmat(V).cpu().double()
        _close(out, ref, rtol=1e-4)


@pytest.mark.parametrize("name", ["mlp", "vgg11", "resnet18"])
def test_the_papers_networks_work_with_the_operators(name, randomize_batch_norm):
    """Tiny versions of the project's networks (BN everywhere, residual blocks, padding):
    both Hessian methods agree, H = G + E, and each operator is symmetric."""
    from deepnet.models import build_model

    kwargs = {"mlp": dict(depth=2, width=6), "vgg11": dict(width=2, hidden=6), "resnet18": dict(width=2)}[name]
    torch.manual_seed(0)
    model = build_model(name, 3, (1, 8, 8), **kwargs).double()
    randomize_batch_norm(model, torch.Generator().manual_seed(7))
    model.eval()
    gen = torch.Generator().manual_seed(8)
    X = torch.randn(6, 1, 8, 8, generator=gen, dtype=torch.float64)
    Y = torch.tensor([0, 1, 2, 0, 1, 2])
    risk = EmpiricalRisk(model, (X, Y), batch_size=4)
    V = torch.randn(risk.size, 2, generator=gen, dtype=torch.float64)
    H = HessianOperator(risk).matmat(V)
    for method in METHODS[1:]:
        _close(HessianOperator(risk, method=method).matmat(V), H, rtol=1e-11)
    _close(GaussNewtonOperator(risk).matmat(V) + ResidualOperator(risk).matmat(V), H, rtol=1e-11)
    for kind in ("hessian", "G", "E"):
        assert check_symmetric(curvature_operator(kind, risk)) < 1e-10
