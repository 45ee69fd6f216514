"""K-FAC and the class-aware form as preconditioners (deepnet.preconditioner) against dense
float64 references: inv(kron + lambda I), np.linalg.solve on dense Kronecker sums, and one
optimiser step against W - lr * reshape(inv(A + lambda I) vec(grad))."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepnet.kfac import kfac_factors
from deepnet.models import MLP
from deepnet.operators import EmpiricalRisk
from deepnet.preconditioner import (
    KFACInverse,
    KFACOptimizer,
    kfac_inverse,
    pcg,
    solve_corrected,
)
from theory.checks import ArgumentError
from theory.kronecker_sum import KroneckerSum

pytestmark = pytest.mark.usefixtures("one_thread")


def _spd(d: int, gen: torch.Generator, rank: int | None = None) -> torch.Tensor:
    X = torch.randn(d, rank or d + 2, generator=gen, dtype=torch.float64)
    return X @ X.T / X.shape[1]


def _tiny(seed: int = 0, n: int = 12):
    """A float64 MLP without batch norm (5 -> 4 -> 3) and n examples of 3 classes."""
    torch.manual_seed(seed)
    model = MLP((5,), 3, depth=1, width=4, batch_norm=False).double()
    gen = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    Y = torch.arange(n) % 3
    return model, X, Y


def test_kfac_inverse_matches_dense_inverse():
    gen = torch.Generator().manual_seed(0)
    H, D = _spd(4, gen, rank=2), _spd(3, gen)  # a singular H: the damping alone keeps it invertible
    for w, lam in ((1.0, 1e-3), (0.7, 0.5)):
        dense = torch.linalg.inv(w * torch.kron(D, H) + lam * torch.eye(12, dtype=torch.float64))
        got = KFACInverse(KroneckerSum([H], [D], [w]), lam).to_dense()
        assert torch.allclose(got, dense, rtol=0, atol=1e-9 * dense.abs().max())
    # on a layer's parameter vector [vec(W), b], against the inverse of the K-FAC operator there
    model, X, Y = _tiny()
    factors = kfac_factors(EmpiricalRisk(model.eval(), (X, Y), batch_size=5))
    for layer in factors.layers.values():
        A = layer.operator("kfac").to_dense()
        dense = torch.linalg.inv(A + 0.01 * torch.eye(A.shape[0], dtype=A.dtype))
        assert torch.allclose(kfac_inverse(layer, 0.01).to_dense(), dense, rtol=0, atol=1e-9 * dense.abs().max())


def _class_sum(num_classes: int, d_in: int, d_out: int, seed: int, shared: bool = False) -> KroneckerSum:
    """``sum_c pi_c Delta_c (x) H_c`` as ``LayerFactors.kronecker("corrected")`` builds it, with
    class factors ``H_c = H_0 + s u_c u_c^T``, ``Delta_c = Delta_0 + s v_c v_c^T`` around common
    factors whose eigenvalues span three decades (all equal, ``s = 0``, when ``shared``)."""
    gen = torch.Generator().manual_seed(seed)

    def common(d: int) -> torch.Tensor:
        Q = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
        return Q @ torch.diag(torch.logspace(0, -3, d, dtype=torch.float64)) @ Q.T

    H0, D0 = common(d_in), common(d_out)
    s = 0.0 if shared else 1.0
    H = [H0 + s * _spd(d_in, gen, rank=1) for _ in range(num_classes)]
    D = [D0 + s * _spd(d_out, gen, rank=1) for _ in range(num_classes)]
    return KroneckerSum(H, D, np.full(num_classes, 1.0 / num_classes))


def _kfac_of(corrected: KroneckerSum) -> KroneckerSum:
    w = corrected.weights
    return KroneckerSum([torch.einsum("c,cij->ij", w, corrected.inputs)], [torch.einsum("c,cij->ij", w, corrected.outputs)])


def test_pcg_matches_dense_solve():
    K = _class_sum(4, 5, 3, seed=1)
    lam = 1e-2
    A = K.to_dense_kron() + lam * torch.eye(K.size, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    B = torch.randn(K.size, 3, generator=gen, dtype=torch.float64)
    expected = np.linalg.solve(A.numpy(), B.numpy())
    M = KFACInverse(_kfac_of(K), lam)
    for result in (
        pcg(lambda V: K.matmat(V) + lam * V, B, tol=1e-13, maxiter=200),
        pcg(lambda V: K.matmat(V) + lam * V, B, M, tol=1e-13),
        solve_corrected(K, B, lam, M, tol=1e-13),
        solve_corrected(K, B, lam, M, precondition=False, warm_start=True, tol=1e-13, maxiter=200),
        solve_corrected(K, B, lam, precondition=False, tol=1e-13, maxiter=200),
    ):
        assert result.converged.all() and result.solution.shape == B.shape
        assert np.abs(result.solution.numpy() - expected).max() < 1e-9 * np.abs(expected).max()
        assert result.residual_norms.shape == (result.max_iterations + 1, 3)
    one = pcg(lambda V: A @ V, B[:, 0], tol=1e-13, maxiter=200)  # a vector in, a vector out
    assert one.solution.shape == (K.size,) and np.allclose(one.solution.numpy(), expected[:, 0], atol=1e-9)
    zero = pcg(lambda V: A @ V, torch.zeros(K.size, 2, dtype=torch.float64))
    assert zero.max_iterations == 0 and zero.converged.all() and not zero.solution.any()


def test_kfac_preconditioner_saves_iterations_where_the_classes_matter():
    K = _class_sum(5, 8, 6, seed=3)
    kfac = _kfac_of(K)
    dense, dense_kfac = K.to_dense_kron(), kfac.to_dense_kron()
    assert torch.linalg.norm(dense - dense_kfac) > 0.3 * torch.linalg.norm(dense)  # the class structure matters
    lam = 1e-3
    b = torch.randn(K.size, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    M = KFACInverse(kfac, lam)
    plain = solve_corrected(K, b, lam, precondition=False, tol=1e-8, maxiter=500)
    preconditioned = solve_corrected(K, b, lam, M, tol=1e-8, maxiter=500)
    assert plain.converged.all() and preconditioned.converged.all()
    assert preconditioned.max_iterations < 0.5 * plain.max_iterations
    # the first PCG iterate is the K-FAC direction at its best scale <b, M b> / <M b, A M b>
    first = solve_corrected(K, b, lam, M, maxiter=1).solution
    Mb = M.matmat(b)
    t = (b * Mb).sum() / (Mb * (K.matmat(Mb) + lam * Mb)).sum()
    assert torch.allclose(first, t * Mb, rtol=1e-12, atol=0)
    # without class structure the K-FAC inverse is the exact inverse: the warm start solves it
    S = _class_sum(5, 8, 6, seed=3, shared=True)
    exact = solve_corrected(S, b, lam, KFACInverse(_kfac_of(S), lam), precondition=False, warm_start=True, tol=1e-8)
    assert exact.max_iterations == 0


def _dense_step(model: nn.Module, X, Y, form: str, lr: float, lam: float) -> dict[str, torch.Tensor]:
    """``theta_l - lr * inv(A_l + lam I) g_l`` per layer, ``A_l`` the dense K-FAC / corrected
    matrix on ``[vec(W), b]`` and ``g_l`` the gradient of the mean cross-entropy."""
    params = dict(model.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(F.cross_entropy(model(X), Y), list(params.values()))))
    factors = kfac_factors(EmpiricalRisk(model, (X, Y), batch_size=len(Y)))
    new = {}
    for layer in factors.layers.values():
        A = layer.operator(form).to_dense()
        g = torch.cat([grads[n].reshape(-1) for n in layer.params])
        d = torch.linalg.solve(A + lam * torch.eye(len(g), dtype=g.dtype), g)
        for n, part in zip(layer.params, d.split([params[n].numel() for n in layer.params])):
            new[n] = params[n].detach() - lr * part.reshape(params[n].shape)
    return new


@pytest.mark.parametrize("form", ["kfac", "corrected"])
def test_one_optimiser_step_matches_dense_reference(form):
    model, X, Y = _tiny(seed=5)
    lr, lam = 0.3, 0.05
    expected = _dense_step(model, X, Y, form, lr, lam)
    opt = KFACOptimizer(model, lr=lr, damping=lam, form=form, cg_tol=1e-14, cg_maxiter=200)
    F.cross_entropy(model(X), Y).backward()
    opt.step(batch=(X, Y))
    for name, p in model.named_parameters():
        assert torch.allclose(p.detach(), expected[name], rtol=0, atol=1e-11), name
    assert (opt.last_iterations > 0) == (form == "corrected")


@pytest.mark.parametrize("form", ["kfac", "corrected"])
def test_one_optimiser_step_on_conv_layers(form):
    """Conv2d layers (with and without bias, stride 2): the "expand" factors, the weight as
    ``out x (in kh kw)``, against the same dense reference."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 2, stride=2, bias=False), nn.Flatten(),
                          nn.Linear(8, 3)).double()
    X = torch.randn(9, 2, 4, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    Y = torch.arange(9) % 3
    expected = _dense_step(model, X, Y, form, 0.3, 0.05)
    opt = KFACOptimizer(model, lr=0.3, damping=0.05, form=form, cg_tol=1e-14, cg_maxiter=500)
    F.cross_entropy(model(X), Y).backward()
    opt.step(batch=(X, Y))
    for name, p in model.named_parameters():
        assert torch.allclose(p.detach(), expected[name], rtol=0, atol=1e-11), name


def test_momentum_and_refresh_period():
    """Two steps with momentum m and refresh T = 5: the second direction uses the first step's
    factors and the buffer ``m d_1 + d_2``; a step that refreshes needs the batch."""
    model, X, Y = _tiny(seed=6)
    ref, _, _ = _tiny(seed=6)
    lr, lam, m = 0.2, 0.1, 0.9
    opt = KFACOptimizer(model, lr=lr, damping=lam, momentum=m, refresh=5)
    F.cross_entropy(model(X), Y).backward()
    opt.step(batch=(X, Y))
    model.zero_grad()
    F.cross_entropy(model(X[:6]), Y[:6]).backward()
    opt.step()  # no refresh on step 1
    # the reference: factors of the initial weights and batch, gradients at both points
    factors = kfac_factors(EmpiricalRisk(ref, (X, Y), batch_size=len(Y)))
    params = dict(ref.named_parameters())
    theta0 = {n: p.detach().clone() for n, p in params.items()}

    def direction(x, y):
        grads = dict(zip(params, torch.autograd.grad(F.cross_entropy(ref(x), y), list(params.values()))))
        d = {}
        for layer in factors.layers.values():
            v = kfac_inverse(layer, lam).matmat(torch.cat([grads[n].reshape(-1) for n in layer.params]))
            d.update({n: part.reshape(params[n].shape) for n, part in zip(layer.params, v.split([params[n].numel() for n in layer.params]))})
        return d

    d1 = direction(X, Y)
    with torch.no_grad():
        for n, p in params.items():
            p.sub_(lr * d1[n])
    d2 = direction(X[:6], Y[:6])
    for name, p in model.named_parameters():
        expected = theta0[name] - lr * d1[name] - lr * (m * d1[name] + d2[name])
        assert torch.allclose(p.detach(), expected, rtol=0, atol=1e-11), name
    opt.step()
    opt.step()
    opt.step()
    with pytest.raises(ArgumentError, match="batch: step 5 refreshes"):
        opt.step()


def test_bad_input_is_named():
    model = _tiny()[0]
    with pytest.raises(ArgumentError, match="model: .*BatchNorm1d"):
        KFACOptimizer(MLP((5,), 3, depth=1, width=4), lr=0.1, damping=0.1)
    with pytest.raises(ArgumentError, match="damping"):
        KFACOptimizer(model, lr=0.1, damping=0.0)
    with pytest.raises(ArgumentError, match="form"):
        KFACOptimizer(model, lr=0.1, damping=0.1, form="dense")
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ArgumentError, match="kron: expected a KroneckerSum of one term"):
        KFACInverse(KroneckerSum([_spd(2, gen)] * 2, [_spd(2, gen)] * 2), 0.1)
    with pytest.raises(ArgumentError, match="tol"):
        pcg(lambda V: V, torch.ones(3), tol=0.0)
    with pytest.raises(ArgumentError, match="x0"):
        pcg(lambda V: V, torch.ones(3), x0=torch.ones(4))


def test_kfac_inverse_survives_an_eigh_that_fails_to_converge(monkeypatch):
    """Where eigh of a factor fails (it does on float32 factors with many zero eigenvalues from
    dead units), the float64 retry gives the same exact inverse."""
    gen = torch.Generator().manual_seed(7)
    H, D = _spd(4, gen, rank=2).float(), (_spd(3, gen) * 1e-6).float()
    eigh, failed = torch.linalg.eigh, []

    def flaky(A):
        if A.dtype == torch.float32:
            failed.append(A.shape)
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return eigh(A)

    monkeypatch.setattr(torch.linalg, "eigh", flaky)
    got = KFACInverse(KroneckerSum([H], [D]), 1e-7).to_dense().double()
    monkeypatch.undo()
    dense = torch.linalg.inv(torch.kron(D.double(), H.double()) + 1e-7 * torch.eye(12, dtype=torch.float64))
    assert len(failed) == 2 and got.dtype == torch.float64
    assert torch.allclose(got, dense, rtol=0, atol=1e-5 * dense.abs().max())  # float32 factors
