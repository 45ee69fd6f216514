"""deepnet.structure_report / structure_cli: the eigenvalue hierarchy, the overlaps and
principal angles against dense eigh on a tiny model, and the ``python -m deepnet
structure`` command on a tiny trained checkpoint (files written, bad input refused
before any pass over the data)."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from deepnet.__main__ import main
from deepnet.operators import EmpiricalRisk, curvature_operator
from deepnet.structure import decompose_gradients
from deepnet.structure_report import (
    combined_part,
    eigenvalue_hierarchy,
    gram_eigenvalues,
    hessian_structure,
    principal_cosines,
    subspace_overlaps,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _dense(op) -> np.ndarray:
    M = op.matmat(torch.eye(op.size, dtype=op.dtype)).numpy()
    return (M + M.T) / 2


@pytest.fixture(scope="module")
def tiny(make_mlp):
    model, X, Y = make_mlp()
    risk = EmpiricalRisk(model, (X, Y), batch_size=7)
    dec = decompose_gradients(risk)
    return risk, dec


def test_gram_eigenvalues_and_hierarchy_match_dense(tiny):
    _, dec = tiny
    C = dec.num_classes
    parts = {n: _dense(p.as_operator()) for n, p in dec.parts.items()}
    G = _dense(dec.total_operator())
    np.testing.assert_allclose(sum(parts.values()), G, atol=1e-10 * np.abs(G).max())
    cc = np.linalg.eigvalsh(parts["class"] + parts["cross"])[::-1]
    grams = gram_eigenvalues(dec)
    np.testing.assert_allclose(grams["class+cross"], cc[: grams["class+cross"].size], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(grams["class"], np.linalg.eigvalsh(parts["class"])[::-1][:C], rtol=1e-8, atol=1e-12)
    means = np.linalg.eigvalsh(parts["class"] + parts["cross"] + parts["diag"])[::-1]
    np.testing.assert_allclose(grams["means"], means[: grams["means"].size], rtol=1e-8, atol=1e-12)
    assert combined_part(dec, ("class", "cross")).rank == grams["class+cross"].size <= C * (C - 1)
    # the theorem on exact eigenvalues of G: lambda_c(G) >= lambda_c(class+cross) >= lambda_c(class)
    g = np.linalg.eigvalsh(G)[::-1][: C * C]
    h = eigenvalue_hierarchy(dec, g, np.zeros_like(g))
    assert h.holds and h.violation <= 0
    assert np.all(g >= h.class_cross - 1e-12) and np.all(h.class_cross >= h.class_only - 1e-12)
    assert np.all(h.class_cross[:C] > h.class_only[:C])  # strict here: the cross part is not zero
    # and it bites: G's eigenvalues lowered below those of class + cross are caught
    bad = eigenvalue_hierarchy(dec, 0.5 * h.class_cross[:C], np.zeros(C))
    assert not bad.holds and bad.violation > 0


def test_overlaps_and_principal_angles_match_dense_eigh(tiny):
    risk, dec = tiny
    C = dec.num_classes
    H = curvature_operator("hessian", risk)
    Hd, Gd = _dense(H), _dense(dec.total_operator())
    hv, hU = np.linalg.eigh(Hd)
    gv, gU = np.linalg.eigh(Gd)
    hU, gU = hU[:, ::-1][:, :C], gU[:, ::-1][:, :C]
    hs = hessian_structure(dec, H, tol=1e-9, max_iterations=2000, seed=1)
    np.testing.assert_allclose(hs.h, hv[::-1][:C], rtol=1e-7)
    np.testing.assert_allclose(hs.g, gv[::-1][:C], rtol=1e-7)
    # references from dense eigh: |U_G^T u_j|^2, |Q^T u_j|^2 and the principal angles
    np.testing.assert_allclose(hs.overlap_g, ((gU.T @ hU) ** 2).sum(0), atol=1e-6)
    class_dense = _dense(dec.class_part.as_operator())
    w, V = np.linalg.eigh(class_dense)
    Q = V[:, w > 1e-10 * w.max()]
    np.testing.assert_allclose(hs.overlap_class, ((Q.T @ hU) ** 2).sum(0), atol=1e-6)
    means = dec.class_means.numpy().T
    angles = scipy.linalg.subspace_angles(means, hU)
    np.testing.assert_allclose(np.sort(hs.class_mean_cosines), np.sort(np.cos(angles)), atol=1e-6)
    assert hs.hierarchy.holds and hs.h_products > 0
    # helpers on a known case: e1 half in span{e1 + e2}; span{e1} vs span{e1, e2}
    e = torch.eye(3, dtype=torch.float64)
    np.testing.assert_allclose(subspace_overlaps(e[:, :1], (e[:, :1] + e[:, 1:2]) / 2**0.5), [0.5])
    np.testing.assert_allclose(principal_cosines(e[:, :1], e[:, :2]), [1.0])


def test_one_resolution_warning_per_attribution(tiny):
    """Unresolved log densities warn once for the whole attribution, naming the spectra,
    not once per knockout; every record keeps its own message."""
    import warnings

    from theory.attribution import attribute_decomposition
    from theory.density import DensitySettings

    _, dec = tiny
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = attribute_decomposition(dec, num_top=12, density=DensitySettings(num_steps=12, num_repeats=2, seed=3), seed=3)
    unresolved = [s.name for s in report.spectra if s.log_density.resolution.warning]
    assert len(unresolved) >= 2  # the case the summary is for
    said = [str(w.message) for w in caught if "not resolved below" in str(w.message)]
    assert len(said) == 1 and said[0].startswith(f"{len(unresolved)} of the {len(report.spectra)} spectra")
    assert all(name in said[0] for name in unresolved)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from deepnet.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("structure") / "run"
    config = TrainConfig(dataset="mnist-5k", per_class=4, model="mlp", model_kwargs={"depth": 1, "width": 5},
                         epochs=2, lr=0.05, batch_size=20, seed=1, data_seed=1)
    train(config, folder, device="cpu", show_progress=False)
    return folder


def test_command_writes_results_report_and_figures(checkpoint, tmp_path, capsys):
    out = tmp_path / "structure"
    argv = ["structure", "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu", "--float64",
            "--batch-size", "16", "--num-top", "12", "--num-steps", "10", "--num-repeats", "1", "--max-iterations", "8",
            "--layers", "layers.4"]
    assert main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["attribution-layers.4.png", "attribution.png", "hessian.png",
                     "report.md", "results.json"]
    results = json.loads((out / "results.json").read_text())
    assert results["num_classes"] == 10 and results["num_data"] == 40 and results["num_top"] == 12
    assert results["settings"]["weighting"] == "weighted" and results["config"]["dataset"] == "mnist-5k"
    network = results["network"]
    assert len(network["report"]["eigenvalues"]) == 12
    assert {f["feature"] for f in network["report"]["features"]} >= {"outliers", "bump", "bulk"}
    assert sorted(results["layers"]) == ["layers.4"] and results["layers"]["layers.4"]["size"] == 5 * 10 + 10
    hs = results["hessian"]
    assert len(hs["h"]) == 10 and len(hs["class_mean_angles"]) == 10 and hs["hierarchy"]["holds"]
    assert all(0 <= x <= 1 + 1e-9 for x in hs["overlap_g"] + hs["overlap_class"])
    t = results["traces"]
    assert t["G"] == pytest.approx(t["class"] + t["cross"] + t["within"] + t["diag"], rel=1e-9)
    report = (out / "report.md").read_text()
    assert "## Attribution of G" in report and "## The Hessian" in report and "| layers.4 |" in report
    err = capsys.readouterr().err
    assert "gradient means" in err and "eta" in err
    # only H, unweighted
    out2 = tmp_path / "h-only"
    assert main(argv[:4] + [str(out2)] + argv[5:-2] + ["--operator", "H", "--weighting", "unweighted"]) == 0
    assert sorted(p.name for p in out2.iterdir()) == ["hessian.png", "report.md", "results.json"]
    assert json.loads((out2 / "results.json").read_text())["weighted"] is False


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layers", "layers.7"], "layers"),
        (["--num-top", "0"], "--num-top"),
        (["--max-iterations", "0"], "--max-iterations"),
        (["--kappa", "0.5"], "kappa"),
    ],
)
def test_bad_input_is_refused_before_any_pass(checkpoint, tmp_path, capsys, monkeypatch, extra, message):
    import deepnet.structure_cli as cli

    def never(*args, **kwargs):
        raise AssertionError("a pass over the data started")

    monkeypatch.setattr(cli, "gradient_sums", never)
    with pytest.raises(SystemExit) as stop:
        main(["structure", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "never"), "--device", "cpu", *extra])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_missing_checkpoint_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["structure", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "never")])
    assert stop.value.code == 2 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
