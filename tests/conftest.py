"""Shared test options and fixtures: ``--run-slow`` enables tests marked ``slow``;
tests marked ``gpu`` are skipped (with a reason) when no CUDA device is present.
``one_thread`` runs a test with one torch thread; ``make_mlp``, ``make_cnn``,
``dense_references`` and ``randomize_batch_norm`` are the small networks (eval
mode, batch norm with non-trivial statistics) and dense float64 curvature
references shared by the deep-network tests.

OpenMP threads of torch and of Numba wait passively between parallel regions,
so that the two thread pools do not spin against each other on small machines
(set before torch loads its OpenMP runtime)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections import OrderedDict  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow")
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: pass --run-slow to run"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="gpu: no CUDA device present"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add overhead (and contention on shared
    machines), and one thread gives the same numbers on any core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------- small networks
N = 23  # examples of the small networks' data: not a multiple of any batch size the tests use


def _randomize_batch_norm(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters, as after training."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen, dtype=torch.float64) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=torch.float64) + 0.5)
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=gen, dtype=torch.float64))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen, dtype=torch.float64))


def _make_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        fc1=nn.Linear(5, 8), bn1=nn.BatchNorm1d(8), act1=nn.Tanh(),
        fc2=nn.Linear(8, 6), act2=nn.Tanh(), drop=nn.Dropout(0.5), fc3=nn.Linear(6, 3),
    )).double()
    gen = torch.Generator().manual_seed(1)
    _randomize_batch_norm(model, gen)
    X = torch.randn(N, 5, generator=gen, dtype=torch.float64) * 1.5
    Y = torch.randint(0, 3, (N,), generator=gen)
    return model.eval(), X, Y


def _make_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 3, 3, padding=1), bn1=nn.BatchNorm2d(3), act1=nn.ReLU(inplace=True),
        pool=nn.MaxPool2d(2), conv2=nn.Conv2d(3, 4, 3), bn2=nn.BatchNorm2d(4), act2=nn.Softplus(),
        flat=nn.Flatten(), fc=nn.Linear(16, 4),
    )).double()
    gen = torch.Generator().manual_seed(2)
    _randomize_batch_norm(model, gen)
    X = torch.randn(N, 1, 8, 8, generator=gen, dtype=torch.float64)
    Y = torch.randint(0, 4, (N,), generator=gen)
    return model.eval(), X, Y


def _dense_references(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, names: list[str]):
    """Dense H (torch.func.hessian of the mean loss), G = Ave J^T A(p) J (jacrev) and E = H - G."""
    params = dict(model.named_parameters())
    fixed = {n: p.detach() for n, p in params.items() if n not in names}
    fixed.update(dict(model.named_buffers()))
    shapes = [params[n].shape for n in names]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def logits(flat: torch.Tensor) -> torch.Tensor:
        parts = flat.split([s.numel() for s in shapes])
        theta = {n: t.view(s) for n, t, s in zip(names, parts, shapes)}
        return torch.func.functional_call(model, {**fixed, **theta}, (X,))

    H = torch.func.hessian(lambda f: F.cross_entropy(logits(f), Y))(flat0)
    J = torch.func.jacrev(logits)(flat0)  # (N, C, P)
    p = torch.softmax(logits(flat0), dim=-1)
    A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    G = torch.einsum("ncp,ncd,ndq->pq", J, A, J) / X.shape[0]
    return H, G, H - G


@pytest.fixture(scope="session")
def randomize_batch_norm():
    return _randomize_batch_norm


@pytest.fixture(scope="session")
def make_mlp():
    """``make_mlp() -> (model, X, Y)``: an MLP with batch norm and dropout in eval mode, 3 classes."""
    return _make_mlp


@pytest.fixture(scope="session")
def make_cnn():
    """``make_cnn() -> (model, X, Y)``: a CNN with batch norm in eval mode, 4 classes."""
    return _make_cnn


@pytest.fixture(scope="session")
def dense_references():
    """``dense_references(model, X, Y, names) -> (H, G, E)`` as dense float64 matrices."""
    return _dense_references
