"""The parameter order between the two sources (docs/math.md#parameter-order):
the Gauss-Newton matrix of a bias-free ``nn.Linear`` from ``deepnet`` is the MLR
Fisher of ``simulate`` on the same data and weights after ``paper_order``."""

import numpy as np
import pytest
import torch
from torch import nn

from deepnet.operators import EmpiricalRisk, GaussNewtonOperator
from simulate.fisher import mlr_fisher, mlr_fisher_dense
from theory.checks import ArgumentError
from theory.parameters import PermutedOperator, paper_order, torch_order

C, D, N = 4, 6, 37


@pytest.fixture(scope="module")
def model_and_data():
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(D, C, bias=False).double().eval()
    with torch.no_grad():
        model.weight.copy_(torch.randn(C, D, generator=gen, dtype=torch.float64))
    X = torch.randn(N, D, generator=gen, dtype=torch.float64)
    Y = torch.randint(0, C, (N,), generator=gen)
    return model, X, Y


def test_permutation_maps_torch_vectors_to_the_paper_order():
    W = torch.arange(C * D, dtype=torch.float64).reshape(C, D)
    perm = paper_order(C, D)
    torch.testing.assert_close(W.reshape(-1)[perm], W.T.reshape(-1), rtol=0, atol=0)
    torch.testing.assert_close(W.T.reshape(-1)[torch_order(C, D)], W.reshape(-1), rtol=0, atol=0)
    with pytest.raises(ArgumentError, match="dim"):
        paper_order(C, 0)


def test_linear_gauss_newton_is_the_mlr_fisher_after_the_permutation(model_and_data):
    model, X, Y = model_and_data
    G_torch = GaussNewtonOperator(EmpiricalRisk(model, (X, Y), batch_size=10))
    W = model.weight.detach()
    fisher = mlr_fisher(X, W).to_dense()
    reference = torch.as_tensor(mlr_fisher_dense(X, W))
    scale = float(reference.abs().max())
    perm = paper_order(C, D)
    dense_torch = G_torch.to_dense()
    permuted = PermutedOperator(G_torch, perm).to_dense()
    torch.testing.assert_close(dense_torch[perm][:, perm], reference, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(permuted, reference, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(fisher, reference, rtol=0, atol=1e-12 * scale)
    # the orders do differ: without the permutation the matrices disagree
    assert float((dense_torch - reference).abs().max()) > 1e-3 * scale
    # and back: the MLR Fisher in torch's order is deepnet's G
    back = PermutedOperator(mlr_fisher(X, W), torch_order(C, D)).to_dense()
    torch.testing.assert_close(back, dense_torch, rtol=0, atol=1e-12 * scale)


def test_permuted_operator_refuses_a_non_permutation():
    op = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="perm: expected a permutation"):
        PermutedOperator(op, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match=r"perm: expected an integer tensor of shape \(3,\)"):
        PermutedOperator(op, torch.tensor([0, 1]))
    np.testing.assert_array_equal(PermutedOperator(op, torch.tensor([2, 0, 1])).to_dense().numpy(), np.eye(3))
