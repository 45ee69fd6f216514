"""The MLR empirical Fisher operator and its extended gradients against dense autograd
references in float64 (torch.func)."""

import numpy as np
import pytest
import torch

from simulate.fisher import (
    MLRFisher,
    mlr_extended_gradients,
    mlr_fisher,
    mlr_fisher_dense,
)
from simulate.mixtures import canonical_mixture
from simulate.solver import fit_mlr
from theory.operators import check_symmetric
from theory.structure import CrossClassAccumulator

C, D = 3, 5


def _model(n=70, seed=0, bias=True):
    """Data with several chunks (N = 210 > 128) and a generic (W, b)."""
    data = canonical_mixture(C, D, 1.0).sample(n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    return data, rng.standard_normal((C, D)), (rng.standard_normal(C) if bias else None)


def _logits_fn(X, b):
    """Logits as a function of vec(W) ordered d*C + c: vec(W).reshape(D, C) is W^T."""
    Xt = torch.tensor(X)
    bt = torch.zeros(C, dtype=torch.float64) if b is None else torch.tensor(b)
    return lambda w: Xt @ w.reshape(D, C) + bt


def _vec(W):
    return torch.tensor(np.asarray(W).T.reshape(-1))


def _autograd_fisher(X, W, b):
    """(1/N) sum_i J_i^T A(p_i) J_i with J_i = d logits_i / d vec(W) from jacrev."""
    f = _logits_fn(X, b)
    w = _vec(W)
    J = torch.func.jacrev(f)(w)  # N x C x CD
    p = torch.softmax(f(w), 1)
    A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("icp,icd,idq->pq", J, A, J) / X.shape[0]


@pytest.mark.parametrize("backend", ["numba", "torch", "auto"])
@pytest.mark.parametrize("k", [1, 2, 7])
def test_operator_matches_autograd_fisher(backend, k):
    data, W, b = _model()
    G_ref = _autograd_fisher(data.X, W, b)
    op = mlr_fisher(data.X, W, b, backend=backend)
    assert op.shape == (C * D, C * D) and op.dtype == torch.float64
    V = torch.randn(C * D, k, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    scale = G_ref.abs().max().item()
    assert (op.matmat(V) - G_ref @ V).abs().max().item() < 1e-14 * scale * V.abs().sum(0).max().item()
    assert (op.to_dense() - G_ref).abs().max().item() < 1e-14 * scale
    check_symmetric(op)


def test_fisher_is_the_gauss_newton_and_the_hessian_of_cross_entropy():
    data, W, b = _model(bias=False)
    f = _logits_fn(data.X, b)
    y = torch.tensor(data.labels)

    def loss(w):
        return torch.nn.functional.cross_entropy(f(w), y)

    w = _vec(W)
    # Gauss-Newton: J^T (d^2 loss / d logits^2) J with the logit Hessian from autograd too
    J = torch.func.jacrev(f)(w)  # N x C x CD
    H_logits = torch.func.hessian(lambda z: torch.nn.functional.cross_entropy(z, y))(f(w))  # N x C x N x C
    GN = torch.einsum("icp,icjd,jdq->pq", J, H_logits, J)
    H = torch.func.hessian(loss)(w)
    G = torch.as_tensor(mlr_fisher_dense(data.X, W))
    scale = G.abs().max().item()
    assert (GN - G).abs().max().item() < 1e-14 * scale
    assert (H - G).abs().max().item() < 1e-14 * scale
    # at the solver's solution G is PSD and its null space is exactly the softmax shift {u (x) 1}
    fit = fit_mlr(data.X, data.labels, C, penalty=1e-2, tol=1e-10)
    evals = np.linalg.eigvalsh(mlr_fisher(data.X, fit.W).to_dense().numpy())
    assert evals.min() > -1e-14 and np.sum(evals < 1e-12) == D  # null space: the softmax shift 1 (x) x


@pytest.mark.parametrize("num_classes, dim, snr, alpha", [(3, 5, 4.0, 0.3), (4, 9, 4.0, 0.3), (5, 6, 0.7, 0.8)])
def test_symmetric_probabilities_give_lemma_8_1_exactly(num_classes, dim, snr, alpha):
    """On a design whose class moments are exactly those of the canonical model
    (x = t e_c +- sqrt(D) e_d: mean t e_c, second moment t^2 e_c e_c^T + I) and with the
    symmetric probabilities, the empirical Fisher is Lemma 8.1's expectation exactly,
    in the same parameter ordering as theory.mlr."""
    from theory.mlr import expected_fisher, symmetric_probabilities

    t, Cn, Dn = np.sqrt(snr), num_classes, dim
    signs = np.vstack([np.sqrt(Dn) * np.eye(Dn), -np.sqrt(Dn) * np.eye(Dn)])  # 2D x D
    X = np.vstack([t * np.eye(Cn, Dn)[c] + signs for c in range(Cn)])
    labels = np.repeat(np.arange(Cn), 2 * Dn)
    probs = symmetric_probabilities(Cn, alpha)[labels]
    G = MLRFisher(X, probs).to_dense().numpy()
    np.testing.assert_allclose(G, expected_fisher(Cn, Dn, snr, alpha), rtol=0, atol=1e-14 * (1 + snr))


def test_extended_gradients_are_the_gradients_for_every_label():
    data, W, b = _model(n=10)
    f = _logits_fn(data.X, b)
    w = _vec(W)
    ext = mlr_extended_gradients(data.X, W, data.labels, b)
    batches = list(ext.batches(batch_size=7))
    assert [bt.v.shape[0] for bt in batches] == [7, 7, 7, 7, 2]
    v = torch.cat([bt.v for bt in batches])
    probs = torch.cat([bt.probs for bt in batches])
    np.testing.assert_array_equal(torch.cat([bt.labels for bt in batches]).numpy(), data.labels)
    assert v.shape == (data.num_samples, C, D * C)
    for c_prime in range(C):
        for i in (0, 13, 29):
            g = torch.func.grad(
                lambda w_: torch.nn.functional.cross_entropy(f(w_)[i : i + 1], torch.tensor([c_prime]))
            )(w)
            assert (v[i, c_prime] - g).abs().max().item() < 1e-15
    # G = sum_{i,c'} (p_{i,c'}/N) g g^T
    G = torch.einsum("ia,iap,iaq->pq", probs, v, v) / data.num_samples
    assert (G - _autograd_fisher(data.X, W, b)).abs().max().item() < 1e-15
    assert (ext.fisher().to_dense() - G).abs().max().item() < 1e-15


def test_streams_into_the_structure_decomposition():
    data, W, b = _model(n=15)
    ext = mlr_extended_gradients(data.X, W, data.labels, b)
    G_op = ext.fisher()
    acc = CrossClassAccumulator(C, weighted=True)
    for batch in ext.batches(batch_size=16):
        acc.update(*batch)
    dec = acc.finalize(total=G_op)  # within part = G - mean parts, no N x C x DC array anywhere
    # references from the extended gradients directly: P_{c,c'} = sum_{i in c} p_{i,c'} and
    # v_{c,c'} = sum_{i in c} p_{i,c'} g_{i,c'} / P_{c,c'} (docs/math.md#three-index-decomposition)
    sums, weights = torch.zeros(C, C, D * C, dtype=torch.float64), torch.zeros(C, C, dtype=torch.float64)
    for v, labels, probs in ext.batches(batch_size=8):
        for c in range(C):
            rows = labels == c
            sums[c] += torch.einsum("ia,iap->ap", probs[rows], v[rows])
            weights[c] += probs[rows].sum(0)
    np.testing.assert_allclose(dec.cell_weights, weights.numpy(), rtol=1e-13)
    cross_means = sums / weights[..., None]
    assert (dec.cross_means.double() - cross_means).abs().max().item() < 1e-13
    G = G_op.to_dense()
    total = sum(part.as_operator().to_dense().double() for part in dec.parts.values())
    assert (total - G).abs().max().item() < 1e-13 * G.abs().max().item()


def test_float32_and_deterministic():
    data, W, b = _model()
    op64 = mlr_fisher(data.X, W, b)
    op32 = mlr_fisher(data.X, W, b, dtype=torch.float32)
    V = torch.randn(C * D, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = op64.matmat(V)
    out32 = op32.matmat(V.float())
    assert out32.dtype == torch.float32
    assert (out32.double() - ref).abs().max().item() < 1e-5 * ref.abs().max().item()
    np.testing.assert_array_equal(op64.matvec(V[:, 0]).numpy(), op64.matvec(V[:, 0]).numpy())


@pytest.mark.gpu
def test_cuda_operator_matches_cpu():
    data, W, b = _model()
    V = torch.randn(C * D, 4, dtype=torch.float64)
    ref = mlr_fisher(data.X, W, b).matmat(V)
    out = mlr_fisher(data.X, W, b, device="cuda").matmat(V.cuda())
    assert out.device.type == "cuda"
    assert (out.cpu() - ref).abs().max().item() < 1e-13 * ref.abs().max().item()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda d, W: mlr_fisher(d.X, W[:, :-1]), "W"),
        (lambda d, W: mlr_fisher(d.X, W[:1]), "num_classes"),
        (lambda d, W: mlr_fisher(np.where(d.X > 2, np.nan, d.X), W), "X"),
        (lambda d, W: mlr_fisher(d.X, W, backend="blas"), "backend"),
        (lambda d, W: mlr_fisher(d.X, W, dtype=torch.float32, backend="numba"), "backend"),
        (lambda d, W: MLRFisher(d.X, np.full((d.num_samples, C), 0.5)), "probs"),
        (lambda d, W: mlr_extended_gradients(d.X, W, d.labels + 1), "labels"),
        (lambda d, W: mlr_fisher_dense(d.X, W, max_size=10), "max_size"),
        (lambda d, W: next(mlr_extended_gradients(d.X, W, d.labels).batches(0)), "batch_size"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    data, W, _ = _model(n=5)
    with pytest.raises(ValueError, match=match):
        call(data, W)
