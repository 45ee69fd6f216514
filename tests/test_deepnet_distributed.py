"""Data parallelism (deepnet.distributed) against one process, with 2 Gloo ranks on loopback.

A small MLP on real Fashion-MNIST (5 examples per class, images average-pooled to 7 x 7,
a few steps of gradient descent so that the probabilities are not uniform) in float64.
Each rank holds its class-balanced shard (30 and 20 examples); the products of H, G and E, the
top eigenvalues and the bulk density of a spectrum (same seed), the gradient sums
(class / cross-class means, weights, counts, squared norms) and the within part of
the structure decomposition and the K-FAC factors must equal the single-process numbers.

Tolerance: the data-parallel result is ``(N_0 A_0 V + N_1 A_1 V) / N`` with
``A_r V`` the average over a shard, the same terms as one process but summed in another
order (per shard, and batches cut differently), so the two differ only by round-off:
a few ulps of float64 per summed term, ~1e-15 relative for a product. Products are
compared at 1e-12 relative to their largest entry, and the spectra, whose Lanczos and
subspace iterations amplify round-off a little over their ~100 products, at 1e-9; a
wrong shard (a dropped example, a missing division by N or by the local count) changes
them by more than 1e-2.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from deepnet.data import load_subset
from deepnet.distributed import (
    DistributedContext,
    DistributedOperator,
    InconsistentRanksError,
    PeerFailureError,
    check_consistent,
    distributed_decomposition,
    init_distributed,
    reduce_gradient_sums,
    reduce_kfac_factors,
    shard_dataset,
    shard_indices,
)
from deepnet.kfac import kfac_factors
from deepnet.models import MLP
from deepnet.operators import EmpiricalRisk, GaussNewtonOperator, curvature_operator
from deepnet.passes import gradient_sums
from deepnet.spectrum import compute_spectra
from deepnet.structure import decompose_gradients

pytestmark = pytest.mark.usefixtures("one_thread")

PER_CLASS = 5  # odd: rank 0 holds 3 of each class, rank 1 holds 2, so the shards weigh 30 : 20
BATCH = 7  # not a divisor of the shard size: batches are cut differently than in one process
KINDS = ("hessian", "G", "E")
FISHERS = ("true", "empirical")  # "mc" draws labels per rank: another sample, not the same numbers
SPECTRUM = {"operators": ("G",), "num_outliers": 3, "num_steps": 16, "num_repeats": 2, "seed": 3, "batch_size": BATCH}
PRODUCT_RTOL, SPECTRUM_RTOL = 1e-12, 1e-9


def _problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model (float64, eval mode) and data every test uses."""
    bundle = load_subset("fashion-mnist", per_class=PER_CLASS, seed=0)
    X = F.avg_pool2d(bundle.train.images, 4).to(torch.float64)  # (50, 1, 7, 7)
    Y = bundle.train.labels
    torch.manual_seed(0)
    model = MLP((1, 7, 7), bundle.num_classes, depth=1, width=12, batch_norm=False).to(torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(20):  # full-batch steps: non-uniform probabilities, a Hessian unlike G
        opt.zero_grad()
        F.cross_entropy(model(X), Y).backward()
        opt.step()
    return model.eval(), X, Y


def _vectors(size: int, k: int = 4) -> torch.Tensor:
    return torch.randn(size, k, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _close(a, b, rtol: float) -> None:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.abs(b).max()), 1e-300)
    assert a.shape == b.shape and float(np.abs(a - b).max()) <= rtol * scale, float(np.abs(a - b).max()) / scale


# ------------------------------------------------------------------ the ranks' work
def _equal(ctx: DistributedContext, model, X, Y) -> dict:
    """Everything compared with one process, on this rank's shard."""
    Xs, Ys = shard_dataset(X, Y, ctx)
    risk = EmpiricalRisk(model, (Xs, Ys), batch_size=BATCH)
    V = _vectors(risk.size)
    products = {kind: DistributedOperator(curvature_operator(kind, risk), ctx).matmat(V) for kind in KINDS}
    spectra = compute_spectra(model, (Xs, Ys), ctx=ctx, **SPECTRUM)
    local_sums = gradient_sums(risk)
    sums = reduce_gradient_sums(local_sums, ctx)
    within = distributed_decomposition(risk, sums, ctx).within_part.as_operator().matmat(V)
    local_kfac = {fisher: kfac_factors(risk, fisher=fisher) for fisher in FISHERS}
    kfac = {fisher: reduce_kfac_factors(factors, ctx) for fisher, factors in local_kfac.items()}
    shard_counts = [local_sums.counts, local_sums.cell_weights.sum(1)] + [
        f.counts for factors in local_kfac.values() for f in factors.layers.values()]
    return {"labels": Ys, "products": products, "spectra": spectra, "sums": sums, "within": within, "kfac": kfac,
            "num_data": spectra.num_data, "shard_counts": shard_counts}


def _mismatch(ctx: DistributedContext, model, X, Y) -> dict:
    """Rank 1 holds other labels, then other weights, then another product input."""
    messages = {}
    Y1 = Y.clone()
    if ctx.rank == 1:  # two labels exchanged: the class counts (and so the shards' sizes) are unchanged
        i, j = 0, int(torch.nonzero(Y != Y[0])[0])
        Y1[i], Y1[j] = Y[j], Y[i]
    try:
        shard_dataset(X, Y1, ctx)
    except InconsistentRanksError as error:
        messages["data"] = str(error)
    Xs, Ys = shard_dataset(X, Y, ctx)
    other = MLP((1, 7, 7), 10, depth=1, width=12, batch_norm=False).to(torch.float64).eval()
    other.load_state_dict(model.state_dict())
    if ctx.rank == 1:
        with torch.no_grad():
            other.layers[1].weight[0, 0] += 1e-12
    try:
        DistributedOperator(GaussNewtonOperator(EmpiricalRisk(other, (Xs, Ys))), ctx)
    except InconsistentRanksError as error:
        messages["model"] = str(error)
    op = DistributedOperator(GaussNewtonOperator(EmpiricalRisk(model, (Xs, Ys))), ctx)
    V = _vectors(op.size) + (ctx.rank == 1)  # as if rank 1 had drawn its start vectors from another seed
    try:
        op.matmat(V)
    except InconsistentRanksError as error:
        messages["vectors"] = str(error)
    return messages


class _Batches:
    """The shard as a re-iterable of batches; on rank 1 the process exits in the middle
    (second batch) of pass ``die_at`` (pass 1 is EmpiricalRisk's label check)."""

    def __init__(self, X, Y, rank: int, die_at: int):
        self.X, self.Y, self.rank, self.die_at, self.passes = X, Y, rank, die_at, 0

    def __iter__(self):
        self.passes += 1
        for b, start in enumerate(range(0, self.X.shape[0], BATCH)):
            if self.rank == 1 and self.passes == self.die_at and b == 1:
                os._exit(3)
            yield self.X[start : start + BATCH], self.Y[start : start + BATCH]


def _dies(ctx: DistributedContext, model, X, Y) -> dict:
    """Rank 1 exits in the middle of the second product; rank 0 must fail, not hang."""
    Xs, Ys = shard_dataset(X, Y, ctx)
    op = DistributedOperator(GaussNewtonOperator(EmpiricalRisk(model, _Batches(Xs, Ys, ctx.rank, die_at=3))), ctx)
    V = _vectors(op.size)
    op.matmat(V)
    start = time.perf_counter()
    try:
        op.matmat(V)
    except PeerFailureError as error:
        return {"error": str(error), "seconds": time.perf_counter() - start}
    return {"error": None}


SCENARIOS = {"equal": _equal, "mismatch": _mismatch, "dies": _dies}  # in this order: "dies" ends rank 1
TIMEOUT_S = 15.0


def _worker(rank: int, world_size: int, port: int, folder: str) -> None:
    """One rank: every scenario in turn, each one's result saved as ``<scenario>-rank<r>.pt``
    (one start-up for all: starting a process that imports torch takes seconds)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = init_distributed("cpu", timeout_s=TIMEOUT_S)
    model, X, Y = torch.load(Path(folder) / "problem.pt", weights_only=False)
    for name, scenario in SCENARIOS.items():
        result = scenario(ctx, model, X, Y)
        torch.save({"ctx": ctx, **result}, Path(folder) / f"{name}-rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(problem, folder: Path, world_size: int = 2) -> tuple[list, dict]:
    """Run the scenarios on ``world_size`` spawned ranks: their exit codes and, per scenario,
    the ranks' results (None for a rank that saved none)."""
    torch.save(problem, folder / "problem.pt")
    spawn = mp.get_context("spawn")
    port = _free_port()
    procs = [spawn.Process(target=_worker, args=(r, world_size, port, str(folder))) for r in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0.1))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    codes = [p.exitcode for p in procs]
    results = {
        name: [torch.load(f, weights_only=False) if (f := folder / f"{name}-rank{r}.pt").exists() else None
               for r in range(world_size)]
        for name in SCENARIOS
    }
    return codes, results


@pytest.fixture(scope="module")
def problem():
    return _problem()


@pytest.fixture(scope="module")
def runs(problem, tmp_path_factory):
    """Exit codes and results of the two ranks (rank 1 exits with status 3 in the last scenario)."""
    return _launch(problem, tmp_path_factory.mktemp("ranks"))


@pytest.fixture(scope="module")
def equal_runs(runs):
    results = runs[1]["equal"]
    assert all(r is not None for r in results), runs[0]
    return results


# ------------------------------------------------------------------ tests
def test_shards_partition_the_data_class_balanced(problem):
    _, _, Y = problem
    shards = [shard_indices(Y, r, 4) for r in range(4)]
    assert torch.equal(torch.sort(torch.cat(shards)).values, torch.arange(Y.numel()))
    for s in shards:  # 5 per class over 4 ranks: 1 or 2 of every class on each rank
        counts = torch.bincount(Y[s], minlength=10)
        assert int(counts.min()) >= 1 and int(counts.max()) <= 2 and torch.equal(s, torch.sort(s).values)
    assert torch.equal(shard_indices(Y, 3, 4), shards[3])  # deterministic


def test_world_size_above_examples_per_class_is_refused(problem):
    _, X, Y = problem
    with pytest.raises(ValueError, match=rf"world_size: expected at most {PER_CLASS} ranks .* got {PER_CLASS + 1}"):
        shard_indices(Y, 0, PER_CLASS + 1)
    ctx = DistributedContext(0, PER_CLASS + 1, "gloo", torch.device("cpu"), 1.0)  # refused before any collective
    with pytest.raises(ValueError, match="world_size"):
        shard_dataset(X, Y, ctx)
    with pytest.raises(ValueError, match="rank"):
        shard_indices(Y, 2, 2)


def test_single_process_context(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cpu", timeout_s=5)
    assert ctx == DistributedContext.single("cpu", 5) and ctx.is_writer and not ctx.active
    check_consistent("anything", b"only one rank", ctx)  # nothing to compare


def test_products_equal_one_process(problem, equal_runs):
    model, X, Y = problem
    risk = EmpiricalRisk(model, (X, Y), batch_size=BATCH)
    V = _vectors(risk.size)
    assert [r["ctx"].rank for r in equal_runs] == [0, 1] and all(r["ctx"].backend == "gloo" for r in equal_runs)
    assert sum(r["labels"].numel() for r in equal_runs) == Y.numel() == equal_runs[0]["num_data"]
    for kind in KINDS:
        reference = curvature_operator(kind, risk).matmat(V)
        for r in equal_runs:  # every rank holds the whole data set's product
            _close(r["products"][kind], reference, PRODUCT_RTOL)


def test_products_are_not_the_shards_own(problem, equal_runs):
    """The data-parallel product differs from either shard's own average by far more than
    the tolerance (so the comparison above would catch a missing reduction)."""
    model, X, Y = problem
    V = _vectors(EmpiricalRisk(model, (X, Y)).size)
    for r in range(2):
        index = shard_indices(Y, r, 2)
        own = GaussNewtonOperator(EmpiricalRisk(model, (X[index], Y[index]), batch_size=BATCH)).matmat(V)
        gap = float((own - equal_runs[0]["products"]["G"]).abs().max() / own.abs().max())
        assert gap > 1e-2, gap


def test_spectrum_equals_one_process(problem, equal_runs):
    model, X, Y = problem
    reference = compute_spectra(model, (X, Y), **SPECTRUM)
    for r in equal_runs:
        spectra = r["spectra"]
        assert spectra.num_data == reference.num_data == Y.numel()
        for kind in SPECTRUM["operators"]:
            ours, ref = spectra[kind], reference[kind]
            _close(ours.top.eigenvalues, ref.top.eigenvalues, SPECTRUM_RTOL)
            _close(ours.log_density.density, ref.log_density.density, SPECTRUM_RTOL)
            _close(ours.density.density, ref.density.density, SPECTRUM_RTOL)
            assert ours.num_products == ref.num_products


def test_gradient_means_equal_one_process(problem, equal_runs):
    model, X, Y = problem
    risk = EmpiricalRisk(model, (X, Y), batch_size=BATCH)
    reference = gradient_sums(risk)
    V = _vectors(risk.size)
    within = decompose_gradients(risk, reference).within_part.as_operator().matmat(V)
    for r in equal_runs:
        sums = r["sums"]
        assert np.array_equal(sums.counts, reference.counts) and sums.counts.sum() == Y.numel()
        _close(sums.cross_means(), reference.cross_means(), PRODUCT_RTOL)
        _close(sums.cell_weights, reference.cell_weights, PRODUCT_RTOL)
        _close(sums.squared_norms, reference.squared_norms, PRODUCT_RTOL)
        _close(r["within"], within, PRODUCT_RTOL)


def test_reductions_leave_the_shard_sums_alone(equal_runs):
    """The shard's own counts are not overwritten by the reduced ones (3, then 2 per class)."""
    for rank, r in enumerate(equal_runs):
        counts, weights, *layers = r["shard_counts"]
        own = (PER_CLASS + 1 - rank) // 2
        assert np.array_equal(counts, np.full(10, own)) and np.allclose(weights, own)
        assert all(np.array_equal(c, counts) for c in layers)


def test_kfac_factors_equal_one_process(problem, equal_runs):
    model, X, Y = problem
    risk = EmpiricalRisk(model, (X, Y), batch_size=BATCH)
    for fisher in FISHERS:
        reference = kfac_factors(risk, fisher=fisher)
        for r in equal_runs:
            ours = r["kfac"][fisher]
            assert ours.num_examples == reference.num_examples == Y.numel() and list(ours.layers) == list(reference.layers)
            for name, ref in reference.layers.items():
                layer = ours.layers[name]
                assert np.array_equal(layer.counts, ref.counts)
                _close(layer.class_weights, ref.class_weights, PRODUCT_RTOL)
                _close(layer.class_features, ref.class_features, PRODUCT_RTOL)
                _close(layer.class_errors, ref.class_errors, PRODUCT_RTOL)


def test_ranks_that_disagree_fail_with_a_clear_error(runs):
    results = runs[1]["mismatch"]
    for r in results:  # every rank raises, naming what differs
        assert set(r) == {"ctx", "data", "model", "vectors"}, r
        assert r["data"].startswith("data labels: the ranks disagree (ranks [0] have ")
        assert r["model"].startswith("model parameters: the ranks disagree")
        assert "product input V (the same seed on every rank?)" in r["vectors"]


def test_a_rank_that_dies_mid_pass_makes_the_other_fail(runs):
    codes, results = runs[0], runs[1]["dies"]
    assert codes == [0, 3], codes
    survivor = results[0]
    assert survivor is not None and survivor["error"] is not None, "the surviving rank did not fail"
    assert "rank 0 of 2 could not complete the all-reduce" in survivor["error"]
    assert "a peer rank has exited or stopped responding" in survivor["error"]
    assert survivor["seconds"] < TIMEOUT_S + 5, survivor["seconds"]


@pytest.mark.slow
def test_torchrun_spectrum_command_equals_one_process(tmp_path):
    """``torchrun --nproc-per-node 2 -m deepnet spectrum`` (Gloo on CPU): rank 0 alone prints
    and writes the run folder, whose numbers are those of ``python -m deepnet spectrum``."""
    import json
    import subprocess
    import sys

    from deepnet.__main__ import main
    from deepnet.train import TrainConfig, train

    config = TrainConfig(dataset="fashion-mnist", per_class=6, model="mlp", model_kwargs={"depth": 1, "width": 6},
                         epochs=2, lr=0.05, batch_size=20, seed=1, data_seed=1)
    with pytest.warns(UserWarning, match="lr_milestones"):
        train(config, tmp_path / "run", device="cpu", show_progress=False)
    options = ["--checkpoint", str(tmp_path / "run"), "--device", "cpu", "--float64", "--batch-size", "40",
               "--num-outliers", "3", "--num-steps", "12", "--num-repeats", "2", "--max-iterations", "10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEEPNET_DIST_TIMEOUT": "60",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(_free_port()), "-m", "deepnet", "spectrum", *options, "--out", str(tmp_path / "two")],
        check=False, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("spectrum: wrote") == 1, done.stdout  # rank 1 prints nothing
    with pytest.warns(RuntimeWarning):
        assert main(["spectrum", *options, "--out", str(tmp_path / "one")]) == 0
    one, two = (json.loads((tmp_path / name / "results.json").read_text())["spectra"] for name in ("one", "two"))
    assert two["num_data"] == one["num_data"] == 60
    for a, b in zip(one["spectra"], two["spectra"]):
        _close(b["top"]["eigenvalues"], a["top"]["eigenvalues"], SPECTRUM_RTOL)
        _close(b["log_density"]["density"], a["log_density"]["density"], SPECTRUM_RTOL)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
