"""deepnet.spectrum: top eigenvalues and deflated densities of H, G, E against dense
eigenvalues, and the ``python -m deepnet spectrum`` command on a real (tiny) checkpoint."""

import json

import numpy as np
import pytest

from deepnet.__main__ import main
from deepnet.spectrum import compute_spectra, spectra_report

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compute_spectra_matches_dense_eigenvalues(make_mlp, dense_references):
    model, X, Y = make_mlp()
    names = [n for n, _ in model.named_parameters()]
    dense = dict(zip(("hessian", "G", "E"), dense_references(model, X, Y, names)))
    spectra = compute_spectra(model, (X, Y), num_steps=24, num_repeats=2, tol=1e-7, seed=3)  # batching: see test_deepnet_operators
    assert spectra.num_parameters == len(dense["G"]) and spectra.num_classes == 3 and spectra.num_data == X.shape[0]
    assert [s.name for s in spectra.spectra] == ["hessian", "G", "E"]
    for s in spectra.spectra:
        exact = np.linalg.eigvalsh(dense[s.name].numpy())[::-1]
        assert s.top.converged and s.point_mass is None
        np.testing.assert_allclose(s.top.eigenvalues, exact[:3], rtol=1e-6)
        np.testing.assert_array_equal(s.outliers, s.top.eigenvalues)
        assert s.outlier_weight == 1 / spectra.num_parameters and s.size == spectra.num_parameters
        for part in (s.density, s.log_density):
            np.testing.assert_allclose(np.trapezoid(part.density, part.grid), 1.0, atol=1e-3)
        # the deflated bulk lies within the remaining eigenvalues (up to the bounds' margin)
        b = s.density.bounds
        width = exact[3] - exact[-1]
        assert exact[-1] - 0.2 * width <= b.lower and b.upper <= exact[3] + 0.2 * width
        assert s.settings.num_steps == 24 and s.settings.seed == 3 and s.num_products > 2 * 24
    # G is positive semidefinite: no mass below zero beyond rounding; the Hessian has some
    G, H = spectra["G"].density, spectra["hessian"].density
    assert G.nodes.min() > -1e-8 * spectra["G"].top.eigenvalues[0]
    assert (np.linalg.eigvalsh(dense["hessian"].numpy()) < -1e-10).any() and H.nodes.min() < 0
    report = spectra_report(spectra)
    assert "| Hessian |" in report and "| G |" in report and "| E |" in report


def test_compute_spectra_per_layer_and_bad_settings(make_mlp, dense_references):
    model, X, Y = make_mlp()
    spectra = compute_spectra(model, (X, Y), operators=["G"], params="fc2", num_outliers=2, num_steps=10, num_repeats=1, tol=1e-8)
    names = ["fc2.weight", "fc2.bias"]
    G = dense_references(model, X, Y, names)[1]
    assert spectra.params == tuple(names) and spectra.num_parameters == 54
    np.testing.assert_allclose(spectra["G"].top.eigenvalues, np.linalg.eigvalsh(G.numpy())[::-1][:2], rtol=1e-6)
    with pytest.raises(ValueError, match="operators: expected distinct names"):
        compute_spectra(model, (X, Y), operators=["hessian", "fisher"])
    with pytest.raises(ValueError, match="num_steps: expected an integer >= 2"):
        compute_spectra(model, (X, Y), num_steps=1)
    with pytest.raises(ValueError, match="kappa: expected a finite number > 1"):
        compute_spectra(model, (X, Y), kappa=1.0)
    with pytest.raises(ValueError, match="unexpected density settings"):
        compute_spectra(model, (X, Y), num_step=10)
    with pytest.raises(ValueError, match=r"num_outliers \+ num_steps: 3 \+ 128 exceeds the 54 selected parameters"):
        compute_spectra(model, (X, Y), params="fc2")
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        compute_spectra(model, (X, Y))


def test_E_of_the_last_layer_is_a_point_mass_at_zero(make_mlp):
    """E = sum_i sum_c (dl/dz_c) d^2 z_c / dtheta^2 vanishes for the parameters of the
    last linear layer (z is linear in them): its spectrum is a point mass at zero."""
    model, X, Y = make_mlp()
    spectra = compute_spectra(model, (X, Y), operators=["E"], params="fc3", num_outliers=2, num_steps=10, num_repeats=2)
    e = spectra["E"]
    assert e.size == 21 and e.point_mass == 0.0 and np.all(e.outliers == 0.0)
    for d in (e.density, e.log_density):
        assert np.isfinite(d.density).all() and abs(np.trapezoid(d.density, d.grid) - 1) < 1e-6
    assert "E: the deflated bulk has zero width, a point mass at 0" in spectra_report(spectra)


def test_command_line_writes_run_folder(tmp_path, capsys):
    from deepnet.train import TrainConfig, train

    config = TrainConfig(dataset="mnist-5k", per_class=6, model="mlp", model_kwargs={"depth": 1, "width": 6},
                         epochs=2, lr=0.05, batch_size=20, seed=1, data_seed=1)
    train(config, tmp_path / "run", device="cpu", show_progress=False)
    out = tmp_path / "spectrum"
    argv = ["spectrum", "--checkpoint", str(tmp_path / "run"), "--out", str(out), "--device", "cpu", "--float64",
            "--batch-size", "40", "--num-outliers", "3", "--num-steps", "12", "--num-repeats", "2", "--max-iterations", "10"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["report.md", "results.json", "run.json", "spectra.png"]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["dataset"] == "mnist-5k" and results["split"] == "train"
    spectra = results["spectra"]
    assert spectra["num_data"] == 60 and spectra["num_classes"] == 10 and spectra["dtype"] == "torch.float64"
    assert [s["name"] for s in spectra["spectra"]] == ["hessian", "G", "E"]
    for s in spectra["spectra"]:
        assert len(s["top"]["eigenvalues"]) == 3 and "eigenvectors" not in s["top"]
        assert len(s["log_density"]["grid"]) == 1024 and s["settings"]["num_steps"] == 12
    g_top = spectra["spectra"][1]["top"]["eigenvalues"]  # not converged in 10 iterations, but sorted and positive
    assert g_top == sorted(g_top, reverse=True) and g_top[-1] > 0
    assert "# Hessian / G / E spectra" in (out / "report.md").read_text()
    # bad input fails before any work and leaves nothing behind
    with pytest.raises(SystemExit) as stop:
        main(["spectrum", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "never")])
    assert stop.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["spectrum", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "never"), "--kappa", "0.5"])
    assert "kappa: expected a finite number > 1" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_estimate_line_before_the_computation(make_mlp, capsys):
    """With progress on, each operator first prints 'about N products x T s = ~M min', N the
    density's steps x repeats plus the eigenpairs' estimate, T one measured product; the
    count is of the same order as the products then used."""
    from deepnet.spectrum import expected_products
    from theory.density import DensitySettings

    model, X, Y = make_mlp()
    spectra = compute_spectra(model, (X, Y), operators=["G"], num_steps=10, num_repeats=2, tol=1e-6, show_progress=True)
    err = capsys.readouterr().err
    count = expected_products(3, DensitySettings(num_steps=10, num_repeats=2))
    assert count == 10 * 2 + 22 + 4 * 19
    line = next(l for l in err.splitlines() if l.startswith("spectrum G: about"))
    assert f"about {count} products x " in line and line.endswith(" min")
    assert 0.25 * count <= spectra["G"].num_products <= 4 * count


def test_announced_time_is_per_column_of_a_block_after_a_warm_up(capsys):
    """The announced T is the time of a block of ``width`` columns over ``width``, measured
    after one warm-up product: an operator whose first call takes 0.4 s and every later
    call 0.05 s (whatever its width) announces 0.05 / width, not 0.4."""
    import time

    import torch

    from deepnet.spectrum import announce_products
    from theory.operators import DenseOperator

    class SlowStart(DenseOperator):
        calls = 0

        def _matmat(self, V):
            time.sleep(0.4 if self.calls == 0 else 0.05)
            self.calls += 1
            return super()._matmat(V)

    op = SlowStart(torch.eye(6, dtype=torch.float64))
    per = announce_products(op, 1000, "test", width=5)
    assert op.calls == 2 and 0.05 / 5 <= per < 0.6 * 0.05  # undivided by the width it would be >= 0.05
    assert capsys.readouterr().err.startswith(f"test: about 1000 products x {per:.3g} s = ~")
