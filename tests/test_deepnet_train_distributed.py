"""Data-parallel training (deepnet.train under torchrun's environment) with 2 Gloo
ranks on loopback, each a ``python -m deepnet train`` process given RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT as torchrun gives them, on a
small MLP and real Fashion-MNIST (10 examples per class, 3 epochs): only rank 0
writes, its evaluation equals one process's of the checkpoint, a run whose rank 1
hangs (then is killed) or dies after the first epoch fails on rank 0 with a clear
error within the group's timeout and resumes to the very weights of an
uninterrupted run, ranks with other settings are refused, and 2 ranks train the
weights of one process (same global batches) to float32 round-off. The slow tests
(``--run-slow``) add the dying rank and the README's torchrun commands."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deepnet.data import DEBIAN_FASHION_MNIST, dataset_from_config
from deepnet.models import build_model
from deepnet.train import CHECKPOINT, TrainConfig, _check_micro_batches, evaluate, load_checkpoint, train

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(),
                       reason=f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_FASHION_MNIST})"),
]

ROOT = Path(__file__).resolve().parents[1]
# 100 training images in batches of 25: each rank gets 12 or 13 of every batch (unequal micro-batches)
ARGS = ["train", "--dataset", "fashion-mnist", "--per-class", "10", "--data-seed", "1", "--depth", "1", "--width", "32",
        "--epochs", "3", "--batch-size", "25", "--lr", "0.05", "--seed", "3", "--device", "cpu", "--quiet"]
# A rank as torchrun starts it (python -m deepnet ...), with one hook: TEST_SIGNAL_BEFORE_EPOCH="E SIG" makes
# the rank send itself SIGSIG (KILL: it dies; STOP: it hangs) when epoch E (from 0) starts, after epoch E-1
# was evaluated (its last collective), so that rank 0 writes that epoch's checkpoint and then loses its peer.
RANK_MAIN = """
import os, signal, sys
import torch
torch.set_num_threads(1)
import deepnet.train
from deepnet.__main__ import main
hook = os.environ.get("TEST_SIGNAL_BEFORE_EPOCH")
if hook is not None:
    at, name = hook.split()
    schedule = deepnet.train.learning_rate
    def learning_rate(config, epoch):
        if epoch == int(at):
            os.kill(os.getpid(), getattr(signal, "SIG" + name))
        return schedule(config, epoch)
    deepnet.train.learning_rate = learning_rate
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(outs, extra=(), signals=None, timeout_s=30, wait=150, rank_extra=None):
    """Run ``len(outs)`` ranks of ``python -m deepnet train ARGS extra rank_extra[r] --out outs[r]`` with collectives
    timing out after ``timeout_s``; ``signals``: ``{rank: "E SIG"}`` (see RANK_MAIN). ``[(rc, stdout, stderr)]`` by
    rank; a rank stopped by the hook is killed once the others have ended."""
    world, port = len(outs), free_port()
    signals = signals or {}
    procs = []
    for rank, out in enumerate(outs):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "DEEPNET_DIST_TIMEOUT": str(timeout_s), **({"TEST_SIGNAL_BEFORE_EPOCH": signals[rank]} if rank in signals else {})}
        procs.append(subprocess.Popen([sys.executable, "-c", RANK_MAIN, *ARGS, *extra, *(rank_extra or {}).get(rank, ()),
                                       "--out", str(out)], cwd=ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    stopped = [r for r, s in signals.items() if s.endswith("STOP")]
    results = {}
    try:
        for rank in [r for r in range(world) if r not in stopped] + stopped:
            if rank in stopped:
                procs[rank].kill()
            stdout, stderr = procs[rank].communicate(timeout=wait)
            results[rank] = (procs[rank].returncode, stdout, stderr)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [results[r] for r in range(world)]


def config(batch_norm=True):
    return TrainConfig(dataset="fashion-mnist", per_class=10, data_seed=1, model="mlp",
                       model_kwargs={"depth": 1, "width": 32, **({} if batch_norm else {"batch_norm": False})},
                       epochs=3, lr=0.05, batch_size=25, seed=3)


def states(folder):
    return torch.load(Path(folder) / CHECKPOINT, weights_only=True)


def without_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-rank run of the MLP with batch norm; rank 1 is given its own --out."""
    tmp = tmp_path_factory.mktemp("reference")
    results = launch([tmp / "run", tmp / "rank1"])
    assert [rc for rc, _, _ in results] == [0, 0], results
    return tmp, results


def test_two_ranks_train_and_only_rank_0_writes(reference):
    tmp, ((_, out0, _), (_, out1, err1)) = reference
    assert not (tmp / "rank1").exists()  # rank 1 wrote nothing, not even its folder
    assert out1 == "" and "final test error" in out0
    for name in ("run.json", "results.json", "report.md", "log.json", CHECKPOINT):
        assert (tmp / "run" / name).is_file()
    results = json.loads((tmp / "run" / "results.json").read_text())["training"]
    assert results["world_size"] == 2 and results["finished"] and len(results["epoch"]) == 3
    assert "x 2 data-parallel ranks" in (tmp / "run" / "report.md").read_text()


def test_the_all_reduced_evaluation_is_that_of_one_process(reference):
    # the logged losses and errors of the 2 ranks' shards (rank 1 with rank 0's batch-norm statistics) equal one
    # process's evaluation of rank 0's checkpoint over the whole splits; float64 sums in another order and float32
    # logits of other batch compositions (measured: equal to 1e-16), where a missing all-reduce gives a factor 2 and
    # rank 1's own batch-norm statistics a relative 1e-3
    tmp, _ = reference
    model, cfg, extra = load_checkpoint(tmp / "run", device="cpu")
    data = dataset_from_config(cfg, "cpu")
    last = extra["history"][-1]
    for split, name in ((data.train, "train"), (data.test, "test")):
        loss, error = evaluate(model, split, 1000, torch.device("cpu"))
        assert last[f"{name}_loss"] == pytest.approx(loss, rel=1e-6)
        assert last[f"{name}_error"] == pytest.approx(error, abs=0.5 / len(split))


@pytest.mark.parametrize("how", [
    pytest.param("STOP", id="hung-then-killed"),  # alive, its connection open: rank 0 waits the group's timeout
    pytest.param("KILL", id="killed", marks=pytest.mark.slow),  # dead: rank 0 sees its connection close at once
])
def test_a_lost_rank_stops_the_other_and_the_run_resumes_to_the_same_weights(reference, tmp_path, how):
    tmp, _ = reference
    began = time.perf_counter()
    (rc0, _, err0), (rc1, _, _) = launch([tmp_path / "run", tmp_path / "rank1"], signals={1: f"1 {how}"}, timeout_s=12)
    assert rc1 == -signal.SIGKILL  # killed by its hook, or by launch once rank 0 has given up on it
    assert rc0 == 1, err0  # the dispatcher's status for a lost peer, with the message and no traceback
    assert "rank 0 of 2 stopped in epoch 2: a peer rank exited or did not answer within 12 s" in err0
    assert f"rank 0's checkpoint after epoch 1 is kept in {tmp_path / 'run' / CHECKPOINT}" in err0
    assert "Traceback" not in err0
    assert time.perf_counter() - began < 100  # start-up, one epoch, at most 12 s of waiting: not the default 300 s
    assert len(states(tmp_path / "run")["history"]) == 1
    # the same command again: rank 0 reads its checkpoint and broadcasts it (rank 1's folder holds none)
    resumed = launch([tmp_path / "run", tmp_path / "rank1"])
    assert [rc for rc, _, _ in resumed] == [0, 0], resumed
    assert not (tmp_path / "rank1").exists()
    a, b = states(tmp_path / "run"), states(tmp / "run")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # bitwise: Gloo's sums are ordered
    assert without_seconds(a["history"]) == without_seconds(b["history"])


def test_two_ranks_train_the_weights_of_one_process(tmp_path):
    # without batch norm the global batch of 25 (12 + 13 on the ranks) and its mean gradient are those of one
    # process: the weights agree to float32 round-off of reordered sums after 12 steps (measured 4.5e-8; a
    # gradient averaged per rank instead of per example moves them by 1.9e-3)
    results = launch([tmp_path / "two", tmp_path / "two-rank1"], extra=["--no-batch-norm"])
    assert [rc for rc, _, _ in results] == [0, 0], results
    one = train(config(batch_norm=False), tmp_path / "one", show_progress=False, device="cpu")
    two = states(tmp_path / "two")["model"]
    for name, p in one.model.state_dict().items():
        torch.testing.assert_close(two[name], p, rtol=0, atol=1e-6)


def test_ranks_with_other_settings_are_refused_before_training(tmp_path):
    (rc0, _, err0), (rc1, _, err1) = launch([tmp_path / "run", tmp_path / "rank1"], rank_extra={1: ["--lr", "0.1"]})
    assert rc0 == rc1 == 2, (err0, err1)  # bad input on every rank: the message, no traceback
    for err in (err0, err1):
        assert "training settings (configuration, resume, stop_after, deterministic, save_epochs): the ranks disagree" in err
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_batches_too_small_for_the_ranks_are_refused():
    mlp = build_model("mlp", 10, (1, 28, 28), depth=1, width=8)
    _check_micro_batches(100, 25, mlp, 12)  # 12 ranks: 2 examples each of a batch of 25
    with pytest.raises(ValueError, match=r"batch_size: 25 over 13 ranks leaves a rank 1 examples .* at least 2 \(batch norm\)"):
        _check_micro_batches(100, 25, mlp, 13)
    plain = build_model("mlp", 10, (1, 28, 28), depth=1, width=8, batch_norm=False)
    _check_micro_batches(100, 25, plain, 25)
    with pytest.raises(ValueError, match="use at most 25 ranks"):
        _check_micro_batches(100, 25, plain, 26)


@pytest.mark.slow
def test_torchrun_trains_stops_and_resumes_to_the_reference_weights(reference, tmp_path):
    """The README's commands: ``torchrun --nproc-per-node 2 -m deepnet train ... --stop-after 1``, then the same
    command without it (a resume), end with the weights of the 2-rank reference, bitwise."""
    tmp, _ = reference
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEEPNET_DIST_TIMEOUT": "60",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for stop in (["--stop-after", "1"], []):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                   "--master-port", str(free_port()), "-m", "deepnet", *ARGS, *stop, "--out", str(tmp_path / "run")]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("final test error") == 1, done.stdout  # rank 1 prints nothing
    a, b = states(tmp_path / "run"), states(tmp / "run")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert without_seconds(a["history"]) == without_seconds(b["history"])


def test_only_failed_collectives_are_reported_as_lost_peers():
    from deepnet.distributed import DistributedContext, PeerFailureError
    from deepnet.train import _peer_failures

    ctx = DistributedContext(1, 2, "gloo", torch.device("cpu"), 7.0)
    with pytest.raises(PeerFailureError, match=r"rank 1 of 2 stopped in epoch 3: a peer rank exited or did not answer "
                                               r"within 7 s \(Application timeout caused pair closure\); resume"):
        with _peer_failures(ctx, "epoch 3", "resume"):
            raise RuntimeError("Application timeout caused pair closure")  # Gloo's words from DDP's buffer broadcast
    with pytest.raises(RuntimeError, match="^mat1 and mat2 shapes cannot be multiplied$"):  # the model's own error
        with _peer_failures(ctx, "epoch 3"):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
