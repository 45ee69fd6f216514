"""The studies of ``python -m simulate``: the theorem checks and the main study in quick
mode end to end, their finite-sample formulas, and the command line's argument errors."""

import json
import math

import numpy as np
import pytest

from simulate.__main__ import main
from simulate.study import (
    effective_aspect_ratio,
    finite_sample_ratio,
    snr_from_finite_sample_ratio,
    study_settings,
    symmetric_point,
)
from simulate.theorem import eigen_grid_point, fisher_convergence, monte_carlo_fisher
from theory.mlr import expected_fisher, logit_hessian, symmetric_probabilities


# --------------------------------------------------------------------------- theorem study
def test_theorem_grid_point_at_round_off_and_detects_a_wrong_theorem(monkeypatch):
    assert eigen_grid_point(4, 9, 4.0, 0.3).max_error < 1e-13
    import simulate.theorem as th
    from theory.mlr import theorem_eigenvalues

    def wrong(C, D, s, a):  # bulk multiplicity off by one: the sorted spectra must disagree
        t = theorem_eigenvalues(C, D, s, a)
        return type(t)(**{**t.__dict__, "bulk_multiplicity": t.bulk_multiplicity - 1, "zero_multiplicity": t.zero_multiplicity + 1})

    monkeypatch.setattr(th, "theorem_eigenvalues", wrong)
    assert th.eigen_grid_point(4, 9, 4.0, 0.3).max_error > 0.1


def test_monte_carlo_fisher_is_the_empirical_fisher_and_unbiased():
    C, D, s, a, n = 3, 5, 4.0, 0.3, 50
    G = monte_carlo_fisher(C, D, s, a, n, seed=3)
    # the same matrix from its definition (1/N) sum_i (x_i x_i^T) (x) A(p_{c_i}), vec(W) in D blocks of C
    from simulate.mixtures import canonical_mixture

    data = canonical_mixture(C, D, s).sample(n, 3)
    U = logit_hessian(symmetric_probabilities(C, a))
    ref = sum(np.kron(np.outer(x, x), U[y]) for x, y in zip(data.X, data.labels)) / data.num_samples
    np.testing.assert_allclose(G, ref, rtol=1e-12, atol=1e-14)
    # average of many draws approaches Lemma 8.1 (bias would survive the average)
    mean = np.mean([monte_carlo_fisher(C, D, s, a, 40, seed=k) for k in range(200)], axis=0)
    assert np.linalg.norm(mean - expected_fisher(C, D, s, a)) / np.linalg.norm(expected_fisher(C, D, s, a)) < 0.03


def test_convergence_slope_is_minus_one_half():
    conv = fisher_convergence(3, 4, 4.0, 0.3, (16, 64, 256, 1024), repeats=16, seed=0)
    assert -0.6 < conv.slope < -0.4
    assert np.all(np.diff(conv.rms) < 0)


def test_theorem_cli_quick(tmp_path):
    out = tmp_path / "theorem"
    assert main(["theorem", "--quick", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "results.json", "theorem.png"]
    res = json.loads((out / "results.json").read_text())
    assert res["grid_max_error"] < 1e-10
    assert len(res["grid"]) == 36
    assert -0.65 <= res["convergence"]["slope"] <= -0.35
    assert res["symbolic_all_hold"] and set(res["symbolic"]) == {"C=3 identity", "C=3 lemma", "C=3 theorem"}
    assert "slope" in (out / "report.md").read_text()


# --------------------------------------------------------------------------- finite-sample formulas
def test_finite_sample_ratio_inverts_and_tends_to_the_theorem():
    C, a, g = 10, 0.3, 0.2
    b = 2 - a * C / (C - 1)
    for s in (0.6, 2.0, 9.0):
        r = finite_sample_ratio(s, C, a, g)
        s_hat, below = snr_from_finite_sample_ratio(r, C, a, g)
        assert not below and s_hat == pytest.approx(s, rel=1e-10)
    # no finite-sample effect as D/n -> 0: Theorem 8.1's ratio 1 + s (1 - a)/b
    assert finite_sample_ratio(4.0, C, a, 1e-12) == pytest.approx(1 + 4.0 * (1 - a) / b, rel=1e-9)
    # below the transition the ratio is the edge value and the inversion says so
    r0 = finite_sample_ratio(0.1, C, a, g)
    assert r0 == pytest.approx(1 + (1 - a) / b * ((1 + math.sqrt(g)) ** 2 - 1))
    assert snr_from_finite_sample_ratio(r0, C, a, g) == (math.sqrt(g), True)


def test_effective_aspect_ratio_limits():
    N, D, C = 400, 50, 4
    same = np.tile([0.4, 0.3, 0.2, 0.1], (N, 1))  # every A_i equal: gamma = (D - C)/N ... times the anisotropy of A
    A = logit_hessian(same[0])
    ev = np.linalg.eigvalsh(A)[1:]
    aniso = (C - 1) * np.sum(ev**2) / np.sum(ev) ** 2
    assert effective_aspect_ratio(same, D, C) == pytest.approx((D - C) / N * aniso)
    uniform = np.full((N, C), 1 / C)  # A = (I - 11^T/C)/C is isotropic on 1^perp: exactly (D - C)/N
    assert effective_aspect_ratio(uniform, D, C) == pytest.approx((D - C) / N)


def test_symmetric_fisher_bulk_mean_and_edge_match_the_moments():
    st = study_settings(quick=True)
    q = symmetric_point(st, 3, 0.0, 0.4, seed=0)  # no signal: everything is bulk
    from theory.mlr import theorem_eigenvalues

    assert q.bulk == pytest.approx(theorem_eigenvalues(3, st.dim, 0.0, 0.4).bulk, rel=0.06)
    assert q.predicted_bulk_edge == pytest.approx(q.bulk_edge, rel=0.12)
    strong = symmetric_point(st, 3, 16.0, 0.1, seed=0)
    assert strong.num_separated == 3
    assert strong.ratio == pytest.approx(strong.finite_sample_ratio, rel=0.15)


# --------------------------------------------------------------------------- the main study
@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "run"
    assert main(["study", "--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_study_writes_every_output(quick_study):
    out, res = quick_study
    names = {p.name for p in out.iterdir()}
    assert {"results.json", "report.md", "spectra_attribution.png", "ratio_vs_error.png",
            "predicted_vs_measured.png", "finite_samples.png", "attribution"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    st = study_settings(quick=True)
    assert len(list((out / "attribution").glob("*.md"))) == len(st.attribution_snrs) * len(st.classes)
    assert set(res) >= {"settings", "points", "symmetric", "asymmetric", "attribution", "summary", "seconds"}
    assert len(res["points"]) == len(st.classes) * len(st.snrs) * st.seeds
    point = res["points"][0]
    for key in ("alpha", "ratio", "predicted_error", "predicted_error_bbp", "test_error", "bayes_error", "theorem_ratio", "spectrum"):
        assert key in point
    assert set(point["spectrum"]) >= {"outliers", "bulk", "mini_bulk", "bulk_edge", "gamma_eff", "num_separated"}
    report = (out / "report.md").read_text()
    assert "largest gap" in report.lower() and "## Every point" in report
    assert report.count("\n| 3 |") >= len(res["points"])


def test_study_numbers_are_sane(quick_study):
    _, res = quick_study
    pts = res["points"]
    pred = np.array([p["predicted_error"] for p in pts])
    test = np.array([p["test_error"] for p in pts])
    bayes = np.array([p["bayes_error"] for p in pts])
    assert np.corrcoef(pred, test)[0, 1] > 0.8
    assert np.all(test >= bayes - 0.05)  # a trained rule does not beat the optimal one (up to test noise)
    assert all(p["fit_converged"] for p in pts)
    top = max(p["snr"] for p in pts)
    for p in pts:
        C = p["num_classes"]
        assert 0 < p["alpha"] < 1 - 1 / C + 1e-9
        assert p["spectrum"]["bulk"] > 0 and p["ratio"] >= 1
        if p["snr"] == top:  # well separated: C outliers above the bulk, in the signal space
            assert p["spectrum"]["num_separated"] == C
            assert p["spectrum"]["signal_overlap"] > 0.8
            assert p["ratio"] > 3
    low = [p["ratio"] for p in pts if p["snr"] == min(x["snr"] for x in pts)]
    high = [p["ratio"] for p in pts if p["snr"] == top]
    assert min(high) > max(low)
    gap = res["summary"]["largest_gap"]
    assert abs(gap["predicted_minus_test"]) == pytest.approx(np.max(np.abs(pred - test)))
    for a in res["attribution"]:
        assert a["verdicts"]["bulk"]["verdict"] in ("attributable", "not attributable")


def test_study_is_reproducible(tmp_path):
    from simulate.study import configure, measure_point

    st = configure(True, {"classes": (3,), "snrs": (4.0,)})
    a, _ = measure_point(st, 3, 4.0, seed=5)
    b, _ = measure_point(st, 3, 4.0, seed=5)
    assert a.test_error == b.test_error and a.ratio == b.ratio
    np.testing.assert_array_equal(a.spectrum.outliers, b.spectrum.outliers)


# --------------------------------------------------------------------------- argument errors
@pytest.mark.parametrize(
    "argv, message",
    [
        (["study", "--classes", "1"], "--classes: expected an integer >= 2 (the number of classes C), got 1"),
        (["study", "--classes", "3", "--dim", "2"], "--dim: expected an integer >= 3 (D >= C for every C in [3]), got 2"),
        (["study", "--classes", "3", "--dim", "3"], "--dim: expected D > C"),
        (["study", "--n-per-class", "0"], "--n-per-class: expected an integer >= 1, got 0"),
        (["study", "--n-test", "-5"], "--n-test: expected an integer >= 1, got -5"),
        (["study", "--snrs", "1", "-0.5"], "--snrs: expected a finite number >= 0 (SNR s = t^2), got -0.5"),
        (["study", "--snrs", "1", "nan"], "--snrs: expected a finite number >= 0 (SNR s = t^2), got nan"),
        (["study", "--seeds", "0"], "--seeds: expected an integer >= 1, got 0"),
        (["study", "--attribution-snrs", "7.5"], "--attribution-snrs: expected values of --snrs"),
        (["theorem", "--alpha", "0"], "(alpha in (0, 1 - 1/C] for every C in"),
        (["theorem", "--alpha", "0.8"], "(alpha in (0, 1 - 1/C] for every C in"),
        (["theorem", "--classes", "3", "1"], "--classes: expected an integer >= 2 (the number of classes C), got 1"),
        (["theorem", "--dim", "3"], "(D >= C for every C in"),
        (["theorem", "--snrs", "-1"], "--snrs: expected a finite number >= 0 (SNR s = t^2), got -1"),
        (["theorem", "--n-per-class", "0"], "--n-per-class: expected an integer >= 1, got 0"),
    ],
)
def test_cli_rejects_bad_arguments_before_work(argv, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert main([*argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_requires_a_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def test_paul_overlap_formula_and_half_point():
    from simulate.study import half_overlap_snr, predicted_overlap

    g = 0.2
    assert predicted_overlap(0.9 * math.sqrt(g), g) == 0.0
    assert predicted_overlap(half_overlap_snr(g), g) == pytest.approx(0.5, rel=1e-12)
    assert predicted_overlap(1e6, g) == pytest.approx(1.0, abs=1e-6)


def test_symmetric_fisher_overlaps_follow_paul():
    st = study_settings(quick=True)
    gamma = st.dim / st.n_per_class
    for s in (4 * math.sqrt(gamma), 16.0):
        q = symmetric_point(st, 3, s, 0.3, seed=1)
        assert q.signal_overlap == pytest.approx(q.predicted_overlap, abs=0.08)
    low = symmetric_point(st, 3, 0.05, 0.3, seed=1)  # far below sqrt(D/n): no more than a random subspace would get
    assert low.signal_overlap < 0.35


def test_parallel_workers_give_the_same_numbers():
    from simulate.study import configure, run_study

    st = configure(True, {"classes": (3,), "snrs": (1.0, 8.0), "seeds": 1, "asymmetry": (0.0,), "attribution_snrs": ()})
    serial = run_study(st, show_progress=False, workers=1)
    parallel = run_study(st, show_progress=False, workers=2)
    assert [p.test_error for p in serial.points] == [p.test_error for p in parallel.points]
    # same numbers up to the reduction order of BLAS (this process may run more threads than the workers)
    np.testing.assert_allclose([p.ratio for p in serial.points], [p.ratio for p in parallel.points], rtol=1e-12)
    np.testing.assert_allclose([p.predicted_error for p in serial.points], [p.predicted_error for p in parallel.points], rtol=1e-9)
