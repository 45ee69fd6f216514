"""The studies of ``python -m simulate``: the theorem checks and the main study in quick
mode end to end (against the dense Fisher and known answers), thread-count independence,
killed runs, and the command line's argument errors and help. The finite-sample formulas
are tested in ``tests/test_finite_sample.py``."""

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from simulate.__main__ import main
from simulate.study import study_settings, symmetric_point
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
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["report.md", "results.json", "run.json", "theorem.png"]
    res = json.loads((out / "results.json").read_text())
    assert res["grid_max_error"] < 1e-10
    assert len(res["grid"]) == 36
    assert -0.65 <= res["convergence"]["slope"] <= -0.35
    assert res["symbolic_all_hold"] and set(res["symbolic"]) == {"C=3 identity", "C=3 lemma", "C=3 theorem"}
    assert "slope" in (out / "report.md").read_text()


# --------------------------------------------------------------------------- symmetric-probability Fisher
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
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["study", "--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text()), printed.getvalue()


def test_study_writes_every_output(quick_study):
    out, res, _ = quick_study
    names = {p.name for p in out.iterdir()}
    assert {"results.json", "report.md", "spectra_attribution.png", "ratio_vs_error.png",
            "predicted_vs_measured.png", "finite_samples.png", "attribution"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    st = study_settings(quick=True)
    # a trained report and a positive-control report per (C, attribution SNR)
    assert len(list((out / "attribution").glob("*_control.md"))) == len(st.attribution_snrs) * len(st.classes)
    assert len(list((out / "attribution").glob("*.md"))) == 2 * len(st.attribution_snrs) * len(st.classes)
    assert set(res) >= {"settings", "points", "symmetric", "asymmetric", "attribution", "summary", "seconds"}
    assert len(res["points"]) == len(st.classes) * len(st.snrs) * st.seeds
    point = res["points"][0]
    for key in ("alpha", "ratio", "predicted_error", "predicted_error_bbp", "test_error", "bayes_error", "theorem_ratio",
                "spectrum", "measures", "c6_predicted_error"):
        assert key in point
    # the theory Spectrum record, with its convergence, and the study's quantities derived from it
    assert set(point["spectrum"]) >= {"outliers", "top", "density", "log_density", "num_products", "settings"}
    assert set(point["spectrum"]["top"]) >= {"eigenvalues", "residuals", "converged"}
    assert set(point["measures"]) >= {"bulk", "mini_bulk", "bulk_edge", "gamma_eff", "num_separated", "num_class_outliers", "converged"}
    report = (out / "report.md").read_text()
    assert "largest gap" in report.lower() and "## Every point" in report
    assert report.count("\n| 3 |") >= len(res["points"])


def test_study_prints_a_short_summary_and_where_the_report_is(quick_study):
    out, _, printed = quick_study
    report = (out / "report.md").read_text()
    assert "## What held and what did not" in printed and "## Claim C6" not in printed
    assert len(printed.splitlines()) < len(report.splitlines()) / 4
    assert str(out / "report.md") in printed


def test_study_numbers_are_sane(quick_study):
    _, res, _ = quick_study
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
        assert p["measures"]["bulk"] > 0 and p["ratio"] >= 1
        if p["snr"] == top:  # well separated: C outliers above the bulk, in the signal space
            assert p["measures"]["num_separated"] == C
            assert p["measures"]["signal_overlap"] > 0.8
            assert p["ratio"] > 3
    low = [p["ratio"] for p in pts if p["snr"] == min(x["snr"] for x in pts)]
    high = [p["ratio"] for p in pts if p["snr"] == top]
    assert min(high) > max(low)
    gap = res["summary"]["largest_gap"]
    assert abs(gap["predicted_minus_test"]) == pytest.approx(np.max(np.abs(pred - test)))


def test_study_attribution_known_answers(quick_study):
    """Far below the BBP threshold there is no signal: no outliers, and the whole Fisher is the
    within-class part; far above it the outliers of the class means are the class(+diag) part."""
    _, res, _ = quick_study
    by_snr = {a["snr"]: a["trained"]["verdicts"] for a in res["attribution"]}
    low, high = by_snr[min(by_snr)], by_snr[max(by_snr)]
    assert low["outliers"]["verdict"] == "absent"
    assert (low["bulk"]["verdict"], low["bulk"]["component"]) == ("attributable", "within")
    assert high["outliers"]["verdict"] == "attributable" and high["outliers"]["component"] in ("class", "class+diag")
    assert high["outliers"]["size"] >= 2  # C - 1 at least: the common mode may be weak


def test_positive_control_reads_the_theorem_at_the_highest_snr(quick_study):
    """The symmetric-probability Fisher of Theorem 8.1 on the same data: C outliers of the
    class-mean span (class+diag knockout; class alone suffices when alpha is small), C(C-2)
    bump eigenvalues of the cross part, the rest within; its outliers' diag share over
    class+diag is alpha (docs/attribution.md, Sec. 4)."""
    _, res, _ = quick_study
    C = 3
    top = max(res["attribution"], key=lambda a: a["snr"])
    v = top["control"]["verdicts"]
    assert (v["outliers"]["verdict"], v["outliers"]["size"]) == ("attributable", C)
    assert v["outliers"]["component"] in ("class+diag", "class")
    assert (v["bump"]["verdict"], v["bump"]["component"], v["bump"]["size"]) == ("attributable", "cross", C * (C - 2))
    assert (v["bulk"]["verdict"], v["bulk"]["component"]) == ("attributable", "within")
    sh = v["outliers"]["shares"]
    assert sh["diag"] / (sh["class"] + sh["diag"]) == pytest.approx(top["alpha"], rel=0.05, abs=1e-4)
    assert top["expected"] == {"outliers": True, "bump": True, "bulk": True}
    row = res["summary"]["attribution"][str(C)]
    assert row["control_agrees_with_theorem"][-1]
    assert row["rows"][-1]["control"]["reads_paper"] == {"outliers": True, "bump": True, "bulk": True}


def test_c6_no_prediction_below_separation():
    """Far below the BBP threshold sqrt(D/n) no outlier leaves the bulk in the class-mean span:
    no prediction (None), while the flat prediction still gives a number; well above it the
    prediction exists and recovers the SNR."""
    from simulate.study import configure, measure_point

    st = configure(True, {"classes": (3,), "snrs": (0.02, 30.0)})
    low, _ = measure_point(st, 3, 0.02, seed=0)
    assert low.measures.num_class_outliers < 2
    assert low.c6_ratio is None and low.c6_predicted_snr is None and low.c6_predicted_error is None
    assert 0 < low.predicted_error < 1
    high, _ = measure_point(st, 3, 30.0, seed=0)
    assert high.measures.num_class_outliers >= 2
    assert high.c6_predicted_error is not None
    assert high.c6_predicted_snr == pytest.approx(30.0, rel=0.3)


def test_c6_prediction_follows_its_rule():
    """``c6_prediction`` on a point's measures: with the bulk edge moved above the outliers, or
    their eigenvectors moved out of the class-mean span, there is no prediction; with only
    C - 1 qualifying it predicts from their mean."""
    from dataclasses import replace

    from simulate.study import configure, measure_point
    from simulate.study.measure import c6_prediction

    st = configure(True, {"classes": (3,), "snrs": (30.0,)})
    point, _ = measure_point(st, 3, 30.0, seed=0)
    m, vals = point.measures, point.spectrum.top.eigenvalues
    ratio, s_hat, err = c6_prediction(m, vals, 3, point.alpha_used)
    keep = (vals > m.bulk_edge) & (m.class_span_overlaps >= 0.5)
    assert keep.sum() >= 2
    assert ratio == pytest.approx(vals[keep].mean() / m.bulk, rel=1e-12)
    assert c6_prediction(replace(m, class_span_overlaps=np.ones(3)), vals, 3, point.alpha_used)[0] == pytest.approx(vals.mean() / m.bulk, rel=1e-12)
    assert c6_prediction(replace(m, bulk_edge=vals.max() * 1.01), vals, 3, point.alpha_used) is None
    assert c6_prediction(replace(m, class_span_overlaps=np.full(3, 0.4)), vals, 3, point.alpha_used) is None
    two = c6_prediction(replace(m, class_span_overlaps=np.array([0.9, 0.9, 0.1])), vals, 3, point.alpha_used)
    assert two[0] == pytest.approx(vals[:2].mean() / m.bulk, rel=1e-12)


def test_class_span_basis_is_the_range_of_the_class_part():
    """The closed form ``P_c v_c = -sum_{i in c} p_{i,c} x_i (x) (p_i - e_c)`` spans the range of
    the class part of ``theory.structure``'s decomposition of the extended gradients."""
    from simulate.fisher import mlr_extended_gradients
    from simulate.mixtures import canonical_mixture
    from simulate.study.measure import class_span_basis
    from theory.structure import CrossClassAccumulator

    C, D = 4, 7
    data = canonical_mixture(C, D, 3.0).sample(40, 2)
    W = np.random.default_rng(0).standard_normal((C, D))
    grads = mlr_extended_gradients(data.X, W, data.labels)
    acc = CrossClassAccumulator(C)
    for batch in grads.batches(64):
        acc.update(batch.v, batch.labels, batch.probs)
    means = acc.finalize().class_means.numpy()
    Q = class_span_basis(data.X, data.labels, grads.probs).numpy()
    ref = np.linalg.qr(means.reshape(C, -1).T)[0]
    np.testing.assert_allclose(np.linalg.svd(Q.T @ ref, compute_uv=False), 1.0, atol=1e-10)
    # without the -e_c of the cell (x_i (x) p_i) the span is another one
    wrong = np.stack([((data.X[data.labels == c] * grads.probs[data.labels == c, c:c + 1]).T @ grads.probs[data.labels == c]).reshape(-1)
                      for c in range(C)], axis=1)
    assert np.linalg.svd(Q.T @ np.linalg.qr(wrong)[0], compute_uv=False).min() < 0.99


def test_nonconvergence_is_carried_not_silenced(recwarn):
    """An eigensolve stopped after one iteration: ``converged`` is False in the Spectrum record
    and the measures, no warning is printed, the summary counts it and the report says where."""
    from simulate.study import configure, measure_point
    from simulate.study.report import convergence_line
    from simulate.study.summary import convergence_summary

    st = configure(True, {"classes": (3,), "snrs": (0.5,)})
    from dataclasses import replace

    point, _ = measure_point(replace(st, max_iterations=1), 3, 0.5, seed=0)
    assert not point.spectrum.top.converged and not point.measures.converged
    assert not [w for w in recwarn if "not converged" in str(w.message)]
    conv = convergence_summary([point], [], [])
    assert conv["num_unconverged"] >= 1
    line = convergence_line(conv)
    assert "did not converge" in line and "C = 3, SNR 0.5, seed 0" in line
    good, _ = measure_point(st, 3, 8.0, seed=0)
    assert good.measures.converged
    assert "every eigensolve converged" in convergence_line(convergence_summary([good], [], []))


def test_recorded_nonconvergence_reissues_other_warnings():
    import warnings

    from simulate.study.measure import recorded_nonconvergence
    from theory.eigenpairs import ConvergenceWarning

    with pytest.warns(RuntimeWarning, match="something else"):
        with recorded_nonconvergence() as found:
            warnings.warn("top_eigenpairs: not converged after 3 restarts", ConvergenceWarning)
            warnings.warn("something else", RuntimeWarning)
    assert found == ["top_eigenpairs: not converged after 3 restarts"]


def test_report_sentences_follow_the_numbers(quick_study):
    """The C6 and attribution conclusions are computed: change the numbers and the sentence
    changes; a conclusion the numbers do not support does not print."""
    import copy

    from simulate.study.report import attribution_lines, c6_lines, failure_lines, trained_overlap_lines

    _, res, _ = quick_study
    st = study_settings(quick=True)
    c6 = res["summary"]["c6"]
    assert c6["num_predicted"] > 0
    strong = copy.deepcopy(c6)
    strong["pearson"].update(prediction_vs_test=0.99, bayes_vs_test=0.5, train_vs_test=0.4)
    strong["snr_recovery"]["fraction_within_25_percent"] = 0.9
    strong["per_class"]["3"]["snr_within_25_percent_from"] = 6.0
    text = "\n".join(c6_lines(st, strong))
    assert "more than either reference" in text and "so it locates the SNR" in text
    assert "C = 3: every seed's SNR recovered within 25% from SNR 6 on." in text
    assert "Both references" not in text and "does not locate" not in text
    weak = copy.deepcopy(c6)
    weak["pearson"].update(prediction_vs_test=0.3, bayes_vs_test=0.5, train_vs_test=0.4)
    weak["snr_recovery"]["fraction_within_25_percent"] = 0.6
    weak["per_class"]["3"]["snr_within_25_percent_from"] = None
    text = "\n".join(c6_lines(st, weak))
    assert "Both references correlate with the test error at least as well" in text and "does not locate" in text
    assert "more than either reference" not in text and "so it locates the SNR" not in text
    assert "C = 3: at no SNR is every seed's SNR" in text
    none = copy.deepcopy(c6)
    none["num_predicted"] = 0
    assert "makes no C6 prediction" in "\n".join(c6_lines(st, none))

    att = res["summary"]["attribution"]
    text = "\n".join(attribution_lines(st, att))
    assert f"reads Theorem 8.1's expected answer at {sum(att['3']['control_agrees_with_theorem'])} of" in text
    broken = copy.deepcopy(att)
    broken["3"]["control_agrees_with_theorem"][-1] = False
    broken["3"]["trained_full_structure_at"] = None
    broken["3"]["trained_full_bump_at"] = None
    text = "\n".join(attribution_lines(st, broken))
    assert f"(not at SNR {broken['3']['rows'][-1]['snr']:g})" in text
    assert "appears at none of these SNRs" in text and "eigenvalues) at none." in text

    sm = copy.deepcopy(res["summary"])
    sm["largest_gap"]["snr"] = 1e-3
    sm["median_abs_gap_to_bayes"], sm["median_abs_gap"] = 0.01, 0.2
    assert "below the BBP threshold" in failure_lines(st, sm)[0] and "closer to the Bayes error" in failure_lines(st, sm)[0]
    sm["largest_gap"]["snr"] = 100.0
    sm["median_abs_gap_to_bayes"], sm["median_abs_gap"] = 0.2, 0.01
    for C in st.classes:
        sm["per_class"][str(C)]["bulk_vs_theorem_rel"] = [0.1] * len(st.snrs)
    assert failure_lines(st, sm) == []
    for C in st.classes:
        pc = sm["per_class"][str(C)]
        pc["trained_overlap_minus_paul_below"], pc["trained_overlap_minus_paul_above"] = 0.2, -0.1
        pc["bulk_top_over_mean_trained"] = [1.0] * len(st.snrs)
    text = "\n".join(trained_overlap_lines(st, sm))
    assert "more than Paul's formula allows" in text and "overlap it less" in text and "upper tail" not in text
    for C in st.classes:
        sm["per_class"][str(C)]["trained_overlap_minus_paul_below"] = -0.2
        sm["per_class"][str(C)]["trained_overlap_minus_paul_above"] = 0.1
    assert trained_overlap_lines(st, sm) == []


def test_fisher_spectrum_against_the_dense_fisher():
    """Every number of :class:`FisherMeasures` (and the Spectrum record's outliers) recomputed from the dense Fisher (extended
    gradients, ``eigh``) and the class-mean span, independently of the study's code path."""
    from simulate.fisher import mlr_fisher_dense
    from simulate.study import configure, measure_point
    from simulate.study.measure import _mixture
    from simulate.solver import fit_mlr

    st = configure(True, {"classes": (3,), "snrs": (6.0,)})
    C, D, s, seed = 3, st.dim, 6.0, 5
    point, objects = measure_point(st, C, s, seed=seed)
    train, W = objects["train"], objects["W"]
    # the same data and fit as the study's stream for this point
    stream = np.random.SeedSequence([seed, C, int(round(s * 1e6)), 0])
    again, _ = _mixture(C, D, s, 0.0).train_test(st.n_per_class, st.n_test_per_class, stream)
    np.testing.assert_array_equal(again.X, train.X)
    np.testing.assert_allclose(fit_mlr(train.X, train.labels, C, penalty=st.penalty, tol=st.solver_tol).W, W, rtol=0, atol=0)
    G = mlr_fisher_dense(train.X, W)
    evals, vecs = np.linalg.eigh(G)
    spec = point.measures
    assert point.spectrum.top.converged and spec.converged and spec.bulk_edge_converged
    np.testing.assert_allclose(np.sort(point.spectrum.outliers), evals[-C:], rtol=1e-4)
    means = np.stack([train.X[train.labels == c].mean(0) for c in range(C)], 1)
    Q = np.linalg.qr(means)[0]
    Pperp = np.kron(np.eye(D) - Q @ Q.T, np.eye(C))
    compressed = Pperp @ G @ Pperp
    assert spec.bulk == pytest.approx(np.trace(compressed) / ((D - C) * (C - 1)), rel=1e-10)
    assert spec.bulk_edge == pytest.approx(np.linalg.eigvalsh(compressed)[-1], rel=1e-3)
    assert spec.trace == pytest.approx(np.trace(G), rel=1e-10)
    assert spec.deflated_mean == pytest.approx((np.trace(G) - evals[-C:].sum()) / (C * D - C - D), rel=1e-5)
    assert spec.mini_bulk == pytest.approx((np.trace(G - compressed) - evals[-C:].sum()) / (C * (C - 2)), rel=1e-4)
    overlap = (vecs[: C * C, -C:] ** 2).sum() / C  # vec(W) index d*C + c: the first C^2 are d < C
    assert spec.signal_overlap == pytest.approx(overlap, abs=1e-3)
    assert point.ratio == pytest.approx(evals[-C:].mean() / spec.bulk, rel=1e-4)
    # Theorem 8.1 at the true SNR and the clipped alpha, from theory.mlr's closed form
    from theory.mlr import outlier_to_bulk_ratio

    assert point.theorem_ratio == pytest.approx(outlier_to_bulk_ratio(C, s, point.alpha_used), rel=1e-12)


def test_top_c_are_the_top_c_in_a_cluster():
    """C = 10 at SNR 1.991 (default sizes, seed 0): the 10th and 11th eigenvalues are 0.7% apart;
    at ``eig_tol=1e-3`` the Lanczos solver stops "converged" with the 11th in place of the 10th
    (relative error 7e-3); the study's ``eig_tol`` finds the true top 10."""
    from simulate.fisher import mlr_fisher_dense
    from simulate.study import configure, measure_point

    st = configure(False, {"classes": (10,), "snrs": (1.991,)})
    point, objects = measure_point(st, 10, 1.991, seed=0)
    evals = np.linalg.eigvalsh(mlr_fisher_dense(objects["train"].X, objects["W"]))[::-1][:10]
    np.testing.assert_allclose(point.spectrum.outliers, evals, rtol=1e-6)


def test_study_is_reproducible():
    from simulate.study import configure, measure_point

    st = configure(True, {"classes": (3,), "snrs": (4.0,)})
    a, _ = measure_point(st, 3, 4.0, seed=5)
    b, _ = measure_point(st, 3, 4.0, seed=5)
    assert a.test_error == b.test_error and a.ratio == b.ratio
    np.testing.assert_array_equal(a.spectrum.outliers, b.spectrum.outliers)
    assert a.c6_predicted_error == b.c6_predicted_error


# --------------------------------------------------------------------------- argument errors
@pytest.mark.parametrize(
    "argv, message",
    [
        (["study", "--classes", "1"], "--classes: expected an integer >= 2 (the number of classes C), got 1"),
        (["study", "--classes", "3", "--dim", "2"], "--dim: expected an integer >= 3 (D >= C for every C in [3]), got 2"),
        (["study", "--classes", "3", "--dim", "3"], "--dim: expected D > C"),
        (["study", "--n-per-class", "0"], "--n-per-class: expected an integer >= 2"),
        (["study", "--n-test", "-5"], "--n-test: expected an integer >= 1, got -5"),
        (["study", "--snrs", "1", "-0.5"], "--snrs: expected a finite number >= 0 (SNR s = t^2), got -0.5"),
        (["study", "--snrs", "1", "nan"], "--snrs: expected a finite number >= 0 (SNR s = t^2), got nan"),
        (["study", "--seeds", "0"], "--seeds: expected an integer >= 1, got 0"),
        (["study", "--attribution-snrs", "-2"], "--attribution-snrs: expected a finite number >= 0 (SNR s = t^2), got -2"),
        (["study", "--seed", "-1"], "--seed: expected an integer in [0, "),
        (["theorem", "--alpha", "0"], "(alpha in (0, 1 - 1/C] for every C in"),
        (["theorem", "--alpha", "0.8"], "(alpha in (0, 1 - 1/C] for every C in"),
        (["theorem", "--classes", "3", "1"], "--classes: expected an integer >= 2 (the number of classes C), got 1"),
        (["theorem", "--dim", "3"], "(D >= C for every C in"),
        (["theorem", "--snrs", "-1"], "--snrs: expected a finite number >= 0 (SNR s = t^2), got -1"),
        (["theorem", "--n-per-class", "0"], "--n-per-class: expected an integer >= 32"),
    ],
)
def test_cli_rejects_bad_arguments_before_work(argv, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert main([*argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_study_help_states_the_real_defaults(capsys):
    full, quick = study_settings(False), study_settings(True)
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"dimension D > C (default {full.dim}; --quick {quick.dim})" in text
    assert f"training examples per class (default {full.n_per_class}; --quick {quick.n_per_class})" in text
    assert f"seeds per point (default {full.seeds}; --quick {quick.seeds})" in text


def test_cli_requires_a_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def test_symmetric_fisher_overlaps_follow_paul():
    st = study_settings(quick=True)
    gamma = st.dim / st.n_per_class
    for s in (4 * math.sqrt(gamma), 16.0):
        q = symmetric_point(st, 3, s, 0.3, seed=1)
        assert q.signal_overlap == pytest.approx(q.predicted_overlap, abs=0.08)
    low = symmetric_point(st, 3, 0.05, 0.3, seed=1)  # far below sqrt(D/n): no more than a random subspace would get
    assert low.signal_overlap < 0.35


def _numbers(study) -> dict:
    """Every number of a study except its timings."""
    from theory.results import to_jsonable

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k != "seconds"}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(to_jsonable(study))


_TINY = {"classes": (3,), "snrs": (1.0, 8.0), "seeds": 1, "asymmetry": (0.0,), "attribution_snrs": (8.0,)}


@pytest.fixture
def threads_restored():
    from simulate.study import set_threads

    torch_threads = torch.get_num_threads()
    yield set_threads
    set_threads(torch_threads)


def test_numbers_are_bitwise_equal_for_any_number_of_workers(threads_restored):
    """This process at one thread (torch, Numba; BLAS: ``OMP_NUM_THREADS=1`` of the test run)
    and two worker processes of one thread each: the same numbers to the last bit."""
    from simulate.study import configure, run_study

    st = configure(True, _TINY)
    threads_restored(1)
    serial = _numbers(run_study(st, show_progress=False, workers=1))
    parallel = _numbers(run_study(st, show_progress=False, workers=2, threads=1))
    assert serial == parallel


def test_numbers_are_bitwise_equal_for_one_and_two_threads(threads_restored):
    from simulate.study import configure, measure_point

    st = configure(True, _TINY)
    points = []
    for threads in (1, 2):
        threads_restored(threads)
        points.append(_numbers(measure_point(st, 3, 8.0, seed=0)[0]))
    assert points[0] == points[1]


# --------------------------------------------------------------------------- killed runs
def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``, from ``/proc``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
                alive.append(pid)
        except OSError:
            pass
    return alive


def _start_quick_study(out) -> tuple[subprocess.Popen, list[int]]:
    """``python -m simulate study --quick`` in a subprocess, returned once its two workers and
    the resource tracker run (and a second more)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "simulate", "study", "--quick", "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(_children(proc.pid)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    kids = _children(proc.pid)
    assert len(kids) >= 3, "the study did not start its workers"
    return proc, kids


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(pids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_leaves_no_worker(tmp_path):
    proc, kids = _start_quick_study(tmp_path / "run")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = _wait_gone(kids, 5.0)
    for pid in left:  # do not leak them into the rest of the session
        os.kill(pid, signal.SIGKILL)
    assert left == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_promptly_without_results(tmp_path):
    out = tmp_path / "run"
    proc, kids = _start_quick_study(out)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - start < 10
    assert rc == 128 + signal.SIGTERM
    left = _wait_gone(kids, 5.0)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []
    assert not (out / "results.json").exists() and not (out / "report.md").exists()
    assert not list(out.glob("*.png"))
