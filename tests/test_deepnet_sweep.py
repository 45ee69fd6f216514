"""python -m deepnet sweep: the structure of G over saved epochs and training-set sizes."""

import json
import shutil

import numpy as np
import pytest
import torch

from deepnet.__main__ import main
from deepnet.sweep import measure_point
from deepnet.train import load_checkpoint

ARGS = ["--sizes", "4,8", "--save-epochs", "1,2", "--epochs", "2", "--width", "12", "--quiet"]


def test_sweep_runs_and_resumes_without_recomputing_finished_points(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--out", str(out), *ARGS]) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["computed"]) == ["epoch-001", "epoch-002", "size-0004", "size-0008"]
    assert list(results["sizes"]) == ["4", "8"] and list(results["epochs"]) == ["1", "2"]
    assert (out / "sweep.png").stat().st_size > 0
    # the last saved epoch of the largest size is its final checkpoint: the same measures
    np.testing.assert_allclose(results["epochs"]["2"]["outliers"], results["sizes"]["8"]["outliers"], rtol=1e-10)
    assert results["sizes"]["8"]["num_examples"] == 80
    # G's top eigenvalue is at most the sum of the parts' tops and at least the largest class outlier
    for point in results["sizes"].values():
        assert point["outliers"][0] <= point["G_top"][0] * (1 + 1e-8)
        assert point["G_top"][0] <= sum(point["outliers"]) + point["bump_edge"] * 90 + point["bulk_edge"] + 1e-8
    capsys.readouterr()
    # a partial sweep (a point lost, as after a kill before its point.json was written) redoes that point only
    shutil.rmtree(out / "point-size-0004")
    assert main(["sweep", "--out", str(out), *ARGS]) == 0
    assert json.loads((out / "results.json").read_text())["computed"] == ["size-0004"]
    assert "1 points measured, 3 read back" in capsys.readouterr().out
    assert main(["sweep", "--out", str(out), *ARGS]) == 0
    assert json.loads((out / "results.json").read_text())["computed"] == []


def test_measure_point_outliers_are_the_class_means_eigenvalues(tmp_path):
    """The class-part outliers against a dense computation of (1/N) sum_c N_c g_c g_c^T from
    per-example cross-class gradients (float64, torch.func)."""
    main(["sweep", "--out", str(tmp_path / "s"), "--sizes", "3", "--save-epochs", "1", "--epochs", "1", "--width", "4",
          "--depth", "1", "--quiet"])
    ckpt = tmp_path / "s" / "size-0003" / "checkpoint.pt"
    got = measure_point(ckpt, device="cpu")
    from deepnet.analysis import load_analysis

    model, (X, Y), C, _ = load_analysis(ckpt, "train", "cpu")
    model = model.double()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, c):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (x[None].double(),)), c[None])

    grad = torch.func.grad(loss)
    N = X.shape[0]
    # the class mean over the off-diagonal cells: v_c = sum_{i in c} sum_{c' != c} p_{i,c'} g_{i,c'} / P_c,
    # P_c = sum_{i in c} sum_{c' != c} p_{i,c'}; the class part is (1/N) sum_c P_c v_c v_c^T
    means, Pc = [], []
    for c in range(C):
        total, weight = 0.0, 0.0
        for x in X[Y == c]:
            p = torch.softmax(model(x[None].double())[0], -1).detach()
            for k in range(C):
                if k != c:
                    total = total + p[k] * torch.cat([g.flatten() for g in grad(params, x, torch.tensor(k)).values()])
                    weight += p[k].item()
        means.append(total / weight)
        Pc.append(weight)
    M = torch.stack(means)
    dense = (M.T * (torch.tensor(Pc, dtype=torch.float64) / N)) @ M
    want = torch.linalg.eigvalsh(dense).flip(0)[:C].numpy()
    np.testing.assert_allclose(got["outliers"], want, rtol=1e-6, atol=1e-12)
    assert got["num_parameters"] == sum(v.numel() for v in params.values())


@pytest.mark.parametrize("bad, message", [
    (["--sizes", "8,4"], "--sizes: expected strictly increasing per-class sizes, got [8, 4]"),
    (["--sizes", "0,4"], "--sizes: expected an integer"),
    (["--sizes", "a"], "--sizes: expected comma-separated per-class sizes"),
    (["--save-epochs", "1,9", "--epochs", "4"], "--save-epochs: expected an integer in [1, 4]"),
    (["--save-epochs", "2,1"], "--save-epochs: expected increasing epochs"),
])
def test_bad_input_is_named_before_any_work(tmp_path, capsys, bad, message):
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "--out", str(tmp_path / "never"), *bad])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_train_save_epochs_keeps_the_checkpoints_of_those_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "mnist-5k", "--per-class", "3", "--depth", "1", "--width", "4", "--epochs", "3",
                 "--batch-size", "10", "--save-epochs", "1,3", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("*.pt")) == ["checkpoint.pt", "epoch_001.pt", "epoch_003.pt"]
    first, last = load_checkpoint(out / "epoch_001.pt", "cpu"), load_checkpoint(out / "checkpoint.pt", "cpu")
    assert first.extra["epochs_done"] == 1 and load_checkpoint(out / "epoch_003.pt", "cpu").extra["epochs_done"] == 3
    w1, w3 = first.model.state_dict(), last.model.state_dict()
    assert any(not torch.equal(w1[k], w3[k]) for k in w1)
    assert all(torch.equal(v, load_checkpoint(out / "epoch_003.pt", "cpu").model.state_dict()[k]) for k, v in w3.items())
    with pytest.raises(SystemExit) as stop:
        main(["train", "--dataset", "mnist-5k", "--epochs", "3", "--save-epochs", "2,4", "--out", str(tmp_path / "never")])
    assert stop.value.code == 2 and "--save-epochs: expected an integer in [1, 3]" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
