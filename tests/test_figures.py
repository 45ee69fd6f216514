"""Figures are made one way (theory.figures): no pyplot, saved atomically; every figure of
the toolkit has labelled axes, a legend and finite data; log-spectrum panels draw the
outliers at their eigenvalues and report the null space as a share."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from theory.density import DensitySettings
from theory.figures import (
    COLORS,
    log_spectrum_curve,
    matrix_color,
    new_figure,
    outlier_markers,
    spectrum_panel,
    write_figure,
)
from theory.operators import DenseOperator
from theory.runs import RunFolder
from theory.spectrum import spectrum

from figure_checks import check_panels, lines_labelled

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"

SCRIPT = """
import sys
from theory.figures import new_figure
from theory.runs import RunFolder
import theory.attribution, theory.synthetic, simulate.theorem, simulate.study, deepnet.train, deepnet.spectrum
fig, axes = new_figure(2, 3, figsize=(6, 3), sharey=True, squeeze=False)
axes[1, 2].plot([0, 1], [1, 0])
fig.suptitle("title")
RunFolder(sys.argv[1]).save_figure("figure.png", fig)
print("pyplot" if "matplotlib.pyplot" in sys.modules else "no pyplot")
"""


def test_creating_and_saving_a_figure_does_not_import_pyplot(tmp_path):
    """In a fresh interpreter (other tests may have imported pyplot here), importing
    every figure-making module, making a figure and saving it leaves pyplot unimported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "module://nonexistent"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "no pyplot"
    assert (tmp_path / "figure.png").read_bytes().startswith(PNG)


def test_save_figure_writes_a_png_atomically(tmp_path):
    fig, ax = new_figure(figsize=(3, 2))
    ax.plot([0, 1, 2], [0, 1, 4])
    folder = RunFolder(tmp_path)
    path = folder.save_figure("curve.png", fig)
    assert path == tmp_path / "curve.png" and path.read_bytes().startswith(PNG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]  # no temporary file left

    # a figure that fails to draw leaves the previous file intact and no temporary file
    class Broken:
        def savefig(self, handle, **kwargs):
            handle.write(b"partial")
            raise RuntimeError("drawing failed")

    with pytest.raises(RuntimeError, match="drawing failed"):
        folder.save_figure("curve.png", Broken())
    assert path.read_bytes().startswith(PNG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]


def test_new_figure_axes_follow_subplots():
    fig, ax = new_figure(figsize=(2, 2))
    assert len(fig.axes) == 1 and ax is fig.axes[0]
    fig, axes = new_figure(1, 3, figsize=(6, 2))
    assert axes.shape == (3,)
    fig, axes = new_figure(1, 1, figsize=(2, 2), squeeze=False)
    assert axes.shape == (1, 1)


def test_write_figure_to_a_path(tmp_path):
    fig, _ = new_figure(figsize=(2, 2))
    write_figure(fig, tmp_path / "f.svg", fmt="svg")
    assert (tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")


# ----------------------------------------------------------------------------- the figure style and its panels

OUTLIERS = np.array([5.0, 4.0, 3.0])
NULL, NEGATIVE, POSITIVE = 300, 50, 200


def diagonal_spectrum(name="G", null=NULL, negative=NEGATIVE, seed=0):
    """A diagonal operator with known parts: three outliers, a positive bulk on
    [0.1, 1] (log-uniform), ``negative`` eigenvalues on [-0.5, -0.1] and ``null`` exact zeros."""
    rng = np.random.default_rng(seed)
    values = np.concatenate([OUTLIERS, 10 ** rng.uniform(-1, 0, POSITIVE), -rng.uniform(0.1, 0.5, negative), np.zeros(null)])
    op = DenseOperator(torch.diag(torch.as_tensor(values)))
    return spectrum(op, 3, DensitySettings(num_steps=48, num_repeats=40, seed=seed), name=name), values


def test_spectrum_panel_reports_the_null_space_and_draws_outliers_at_their_eigenvalues():
    s, values = diagonal_spectrum()
    p = values.size
    _, ax = new_figure(layout="constrained")
    shown = spectrum_panel(ax, s)
    # the outliers are markers at their eigenvalues (x in data units), none elsewhere
    (markers,) = lines_labelled(ax, "top 3")
    np.testing.assert_allclose(markers.get_xdata(), OUTLIERS, rtol=1e-8)
    # the null space (exact zeros) is a number in the title, not a spike: the Gauss nodes
    # weigh it to about 1/sqrt(repeats) of sqrt(2/p) relative
    assert abs(shown.null_share - NULL / p) < 0.015 and abs(shown.negative_share - NEGATIVE / p) < 0.015
    assert f"{shown.null_share:.1%}" in ax.get_title() and "null space" in ax.get_title()
    assert f"{shown.negative_share:.1%}" in ax.get_title()
    # no spike below the bulk's lower end 0.1: the null space is not drawn
    curves = lines_labelled(ax, "bulk")
    assert curves and all(np.max(c.get_ydata()[c.get_xdata() < 0.03], initial=0.0) < 1e-3 * shown.peak for c in curves)
    # the drawn density integrates (per decade) to the bulk's share, null space left out
    positive = next(c for c in curves if c.get_linestyle() == "-")
    x, y = positive.get_xdata(), positive.get_ydata()
    assert abs(np.trapezoid(y, np.log10(x)) - POSITIVE / p) < 0.03
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and matrix_color("G") == COLORS["G"]
    assert markers.get_color() == COLORS["G"]


def test_spectrum_panel_of_a_zero_operator_says_so_and_draws_nothing():
    op = DenseOperator(torch.zeros(30, 30, dtype=torch.float64))
    s = spectrum(op, 2, DensitySettings(num_steps=8, num_repeats=2), name="E")
    assert s.point_mass == 0.0
    _, ax = new_figure()
    shown = spectrum_panel(ax, s)
    assert shown.null_share == 1.0 and shown.lowest is None and "100.0%" in ax.get_title()
    assert not ax.get_lines()  # no kernel at log10(eps), no markers at zero
    assert any("whole spectrum" in t.get_text() for t in ax.texts)


def test_log_spectrum_curve_of_one_isolated_node_keeps_it_in_place():
    """An isolated node is not smeared over decades: the kernel is at most MAX_WIDTH wide."""
    _, ax = new_figure()
    out = log_spectrum_curve(ax, np.array([0.0, 1e-2, 1.0]), np.array([0.5, 0.25, 0.25]), sigma=0.01, num_runs=2, zero_tol=1e-6)
    assert out.null_share == 0.5 and 1e-3 <= out.lowest < 1e-2 and 1.0 < out.highest <= 10.0  # the visible range
    (line,) = ax.get_lines()
    x, y = line.get_xdata(), line.get_ydata()
    assert abs(np.trapezoid(y, np.log10(x)) - 0.5) < 1e-3
    assert y[np.argmin(np.abs(x - 0.1))] < 1e-3 * y.max()  # nothing half-way between the two nodes


def test_outlier_markers_negative_and_null_values():
    _, ax = new_figure()
    ax.set_xscale("log")
    filled = outlier_markers(ax, np.array([3.0, -2.0, 0.0]), color="k", label="top", zero_tol=1e-9, annotate="all")
    np.testing.assert_array_equal(filled.get_xdata(), [3.0])
    (open_,) = lines_labelled(ax, "<0")
    np.testing.assert_array_equal(open_.get_xdata(), [2.0])
    assert open_.get_markerfacecolor() == "none" and {t.get_text() for t in ax.texts} == {"3", "-2"}
    assert outlier_markers(ax, np.zeros(2), color="k", zero_tol=1e-9) is None


def test_matrix_colors_of_knockouts():
    assert matrix_color("A - class") == matrix_color("P⊥ A P⊥ (class)") == COLORS["class"]
    assert matrix_color("H") == matrix_color("hessian") == COLORS["hessian"]
    assert matrix_color("A - class+diag") == COLORS["class+diag"] and matrix_color("unknown") == COLORS["A"]


def test_spectra_figure_one_panel_per_operator_with_shared_axes():
    from deepnet.spectrum import Spectra, spectra_figure, spectra_report

    g, values = diagonal_spectrum("G", negative=0)
    e = spectrum(DenseOperator(torch.zeros(values.size, values.size, dtype=torch.float64)), 3, DensitySettings(num_steps=8, num_repeats=2), name="E")
    spectra = Spectra((g, e), values.size, 100, 3, ("w",), "torch.float64", "cpu", settings={"eps": 1e-6})
    fig = spectra_figure(spectra, "a test model")
    check_panels(fig)
    g_ax, e_ax = fig.axes
    assert g_ax.get_shared_x_axes().joined(g_ax, e_ax) and g_ax.get_shared_y_axes().joined(g_ax, e_ax)
    title = fig.get_suptitle()
    assert "G and E" in title and "Hessian" not in title and "a test model" in title
    assert "100.0%" in e_ax.get_title() and g_ax.get_title().startswith("G\n")
    lo, hi = g_ax.get_ylim()  # the zero operator does not stretch the shared axes
    assert 1e-9 < lo < hi < 1e3
    np.testing.assert_allclose(lines_labelled(g_ax, "top 3")[0].get_xdata(), OUTLIERS, rtol=1e-8)
    # the report gives the figure's shares, and the bulk itself (not the estimator's bounds)
    settings = {"batch_size": 10, "num_outliers": 3, "which": "largest", "tol": 1e-4, "num_repeats": 40, "num_steps": 48, "kappa": 3.0, "seed": 0}
    report = spectra_report(dataclasses.replace(spectra, settings=settings))
    share = spectrum_panel(new_figure()[1], g).null_share
    assert report.startswith("# G / E spectra\n") and f"G {share:.1%}, E 100.0%" in report
    assert "E all in the null space" in report
    lo, hi = (float(v) for v in report.split("G [")[1].split("]")[0].split(","))
    assert 0.1 <= lo < 0.2 and 0.9 < hi <= 1.0  # the positive bulk is log-uniform on [0.1, 1]


def test_attribution_figure_one_log_spectrum_per_knockout():
    from theory.attribution import Component, attribute

    rng = np.random.default_rng(4)
    p = 200
    Z = rng.standard_normal((p, 400))
    W = Z @ Z.T / 400
    F = rng.standard_normal((p, 4)) * 2.0
    A = DenseOperator(torch.as_tensor(W + F @ F.T))
    B = DenseOperator(torch.as_tensor(F @ F.T))
    basis = torch.linalg.qr(torch.as_tensor(F))[0]
    report = attribute(A, {"class": Component("class", 4, True, B, basis), "within": Component("within", None, True, DenseOperator(torch.as_tensor(W)), None)},
                       features={"outliers": "class"}, density={"num_steps": 32, "num_repeats": 4}, eigensolver="dense")
    fig = report.figure()
    check_panels(fig)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(report.spectra)
    assert all(panels[0].get_shared_x_axes().joined(panels[0], ax) for ax in panels)
    titles = [ax.get_title() for ax in panels]
    assert all("?" not in t and "null space" in t for t in titles)
    assert titles[0].startswith("A: 4 outliers")
    sub = titles[[s.name for s in report.spectra].index("A - class")]
    assert sub.startswith("A - class: outliers gone")
    # A's outliers are drawn at their eigenvalues in every panel
    for ax in panels:
        np.testing.assert_allclose(np.sort(lines_labelled(ax, "A's outliers")[0].get_xdata()),
                                   np.sort(report.verdict("outliers").eigenvalues))


def test_attribution_figure_one_log_spectrum_per_knockout_and_the_deflated_bulk(make_mlp):
    from deepnet.operators import EmpiricalRisk
    from deepnet.structure import decompose_gradients
    from deepnet.structure_report import KNOCKOUTS, attribute_gradients, attribution_figure
    from theory.density import DensitySettings

    model, X, Y = make_mlp()
    dec = decompose_gradients(EmpiricalRisk(model, (X, Y), batch_size=7))
    result = attribute_gradients(dec, num_top=12, density=DensitySettings(num_steps=12, num_repeats=2, seed=3), seed=3)
    fig = attribution_figure(result)
    check_panels(fig)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    knockouts = [s for s in result.report.spectra if s.kind == "subtraction"]
    assert len(panels) == 2 + len(knockouts) and all(panels[0].get_shared_x_axes().joined(panels[0], ax) for ax in panels)
    titles = [ax.get_title() for ax in panels]
    assert titles[0].startswith("G: ") and titles[1].startswith("G deflated: its top 12 eigenvectors projected out")
    assert [t.split(":")[0] for t in titles[2:]] == [f"G - {n}" for n in KNOCKOUTS if n in {s.component for s in knockouts}]
    assert all("null space" in t for t in titles)
    # the deflated panel: the removed eigenvalues at their values, the bulk's curve weighted (P - k) / P
    removed = result.report.spectra[0].eigenvalues
    np.testing.assert_allclose(np.sort(lines_labelled(panels[1], "top eigenvalues of G")[0].get_xdata()),
                               np.sort(removed[np.abs(removed) > float(result.report.settings.get("zero_tol") or 0.0)]))
    assert result.deflated.weights.sum() == pytest.approx(1.0)


def test_hessian_figure_markers_at_the_eigenvalues_and_the_legend_off_the_bars(make_mlp):
    from deepnet.operators import EmpiricalRisk, curvature_operator
    from deepnet.structure import decompose_gradients
    from deepnet.structure_report import hessian_figure, hessian_structure

    model, X, Y = make_mlp()
    risk = EmpiricalRisk(model, (X, Y), batch_size=7)
    hs = hessian_structure(decompose_gradients(risk), curvature_operator("hessian", risk), tol=1e-6, seed=1)
    fig = hessian_figure(hs)
    check_panels(fig)
    left, right = fig.axes[:2]
    np.testing.assert_allclose(lines_labelled(left, "H")[-1].get_ydata(), hs.h[hs.h > 0])
    np.testing.assert_allclose([bar.get_height() for bar in right.containers[1]], hs.overlap_class)
    # one legend below the panels (check_panels sees lines and markers, not bars, which an axes legend hid)
    assert fig.legends and left.get_legend() is None and right.get_legend() is None


def test_synthetic_figure_outliers_at_their_values_and_height_one_over_p():
    from theory.synthetic import plot_synthetic_check, run_synthetic_check

    check, exact = run_synthetic_check(size=200, num_steps=24, num_repeats=2, seed=1)
    fig = plot_synthetic_check(check, exact)
    check_panels(fig)
    left, right, twin = fig.axes
    # the outliers are point masses: stems on the right axis of weights, at height 1/p
    (markers,) = lines_labelled(twin, "outliers")
    np.testing.assert_allclose(markers.get_xdata(), check.outliers_estimated)
    np.testing.assert_allclose(markers.get_ydata(), 1.0 / check.size)
    assert "1/p" in markers.get_label().replace("$", "") and "5.0e-03" in markers.get_label()
    assert "weight" in twin.get_ylabel() and twin.get_ylim() == right.get_ylim() and twin.get_yscale() == "log"
    (stems,) = twin.collections
    assert all(np.isclose(path.vertices[:, 1].max(), 1.0 / check.size) for path in stems.get_paths())
    assert {t.get_text() for t in twin.texts} == {f"{v:.3g}" for v in check.outliers_estimated}


def test_theorem_figure_marks_exact_zeros():
    from simulate.theorem import plot_theorem_study, run_theorem_study, theorem_settings

    study = run_theorem_study(theorem_settings(quick=True), show_progress=False)
    grid = [dataclasses.replace(g, max_error=0.0) if i < 2 else g for i, g in enumerate(study.grid)]
    fig = plot_theorem_study(dataclasses.replace(study, grid=grid))
    check_panels(fig)
    right = fig.axes[1]
    (zeros,) = lines_labelled(right, "exactly 0")
    count = sum(g.max_error == 0 for g in grid)
    assert count >= 2 and f"{count} points" in zeros.get_label() and zeros.get_markerfacecolor() == "none"
    assert len(zeros.get_xdata()) == count
    floor = zeros.get_ydata()[0]
    assert right.get_ylim()[0] < floor < min(g.max_error for g in grid if g.max_error > 0)
    # the floor says it is 0: its tick reads 0, and no other tick lies between it and the break
    fig.canvas.draw()
    ticks = {float(t): label.get_text() for t, label in zip(right.get_yticks(), right.get_yticklabels())}
    assert ticks.get(floor) == "0"
    lowest = min(g.max_error for g in grid if g.max_error > 0)
    assert all(t == floor or t >= lowest / 10 for t in ticks if right.get_ylim()[0] <= t <= right.get_ylim()[1])
    assert all(t >= lowest / 10 for t in right.yaxis.get_minorticklocs())


def test_log_spectrum_curve_has_no_comb_where_the_nodes_are_sparse():
    """Nodes 0.2 decades apart under a kernel of 0.01 decades: each kernel widens to the
    nodes' spacing, so a flat measure is drawn flat, not as a comb of spikes."""
    nodes = 10.0 ** np.arange(-2.0, 0.01, 0.2)
    _, ax = new_figure()
    log_spectrum_curve(ax, nodes, np.full(nodes.size, 1.0 / nodes.size), sigma=0.01, num_runs=1, zero_tol=1e-9)
    (line,) = ax.get_lines()
    x, y = line.get_xdata(), line.get_ydata()
    inside = (x > 0.03) & (x < 0.3)
    assert y[inside].max() / y[inside].min() < 1.5
    np.testing.assert_allclose(np.trapezoid(y, np.log10(x)), 1.0, atol=1e-3)


def test_log_spectrum_curve_merges_copies_of_one_eigenvalue():
    """Every eigenvalue found five times (three runs and their ghost copies): the copies are
    one node of five times the weight, so the kernels still reach the neighbouring
    eigenvalues and the flat measure is drawn flat, not as a comb."""
    from theory.figures import merge_coincident

    merged, w = merge_coincident(np.array([2.0, 1.0, 1.0 + 1e-9, 1.0, 3.0]), np.array([0.1, 0.2, 0.3, 0.1, 0.3]))
    np.testing.assert_allclose(merged, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(w, [0.6, 0.1, 0.3])
    values = 10.0 ** np.arange(-2.0, 0.01, 0.2)
    nodes = np.repeat(values, 5) * (1.0 + 1e-9 * np.tile(np.arange(5), values.size))
    _, ax = new_figure()
    log_spectrum_curve(ax, nodes, np.full(nodes.size, 1.0 / nodes.size), sigma=0.01, num_runs=3, zero_tol=1e-9)
    (line,) = ax.get_lines()
    x, y = line.get_xdata(), line.get_ydata()
    inside = (x > 0.03) & (x < 0.3)
    assert y[inside].max() / y[inside].min() < 1.5
    np.testing.assert_allclose(np.trapezoid(y, np.log10(x)), 1.0, atol=1e-3)


# ----------------------------------------------------------------------------- the study's figures
@pytest.fixture(scope="module")
def tiny_study():
    """The main study at a tiny size (about 4 s): C = 3, two SNRs, one attribution at SNR 30."""
    from simulate.study import StudySettings, run_study

    st = StudySettings(classes=(3,), dim=10, n_per_class=40, n_test_per_class=200, snrs=(2.0, 30.0), seeds=1, penalty=1e-3,
                       attribution_snrs=(30.0,), asymmetry=(0.0, 0.8), asymmetry_snr=6.0, asymmetry_classes=3,
                       density_steps=24, density_repeats=2)
    return run_study(st, show_progress=False)


def test_study_attribution_figure_one_log_spectrum_per_knockout(tiny_study, tmp_path):
    from simulate.study import plot_attribution

    fig = plot_attribution(tiny_study)
    check_panels(fig)
    a = tiny_study.attribution[0]
    report = a.trained.report
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 4  # G, G - class, G - cross, G - within
    assert all(panels[0].get_shared_x_axes().joined(panels[0], ax) for ax in panels)
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in panels)
    titles = [ax.get_title() for ax in panels]
    assert titles[0].startswith("C = 3, SNR 30, trained: ") and "positive control:" in titles[0]
    assert [t.split(":")[0] for t in titles[1:]] == ["G - class", "G - cross", "G - within"]
    assert all("null space" in t for t in titles)
    # what vanished, in words, as the verdicts say
    for ax, name in zip(panels[1:], ("A - class", "A - cross", "A - within")):
        gone = [f.feature for f in report.features if f.size and name in f.vanishes_under]
        caption = " ".join(ax.get_title().split("\n")[:-1])  # the caption, wrapped, above the null-space line
        assert (" and ".join(gone) + " gone" if gone else "nothing gone") in caption
    # the null space is not drawn: no curve reaches below the null-space tolerance
    zero_tol = report.settings["zero_tol"]
    assert all(np.min(line.get_xdata(), initial=np.inf) > zero_tol for ax in panels for line in ax.get_lines())
    write_figure(fig, tmp_path / "spectra_attribution.png")
    assert (tmp_path / "spectra_attribution.png").read_bytes().startswith(PNG)


def test_study_finite_samples_figure(tiny_study, tmp_path):
    from simulate.study import plot_finite_samples

    fig = plot_finite_samples(tiny_study)
    check_panels(fig)
    top, bottom = fig.axes
    assert top.get_legend() is not None and bottom.get_legend() is not None  # one legend per row, outside
    assert all(ax.get_legend().get_texts()[0].get_fontsize() >= 8 for ax in (top, bottom))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    for ax in (top, bottom):  # no label clipped off the figure
        for label in (ax.xaxis.label, ax.yaxis.label):
            box = label.get_window_extent(renderer)
            assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, label.get_text()
    write_figure(fig, tmp_path / "finite_samples.png")
    assert (tmp_path / "finite_samples.png").read_bytes().startswith(PNG)


def test_study_predicted_vs_measured_figure(tiny_study, tmp_path):
    from simulate.study import plot_predicted_vs_measured

    fig = plot_predicted_vs_measured(tiny_study)
    check_panels(fig)
    left, right = fig.axes
    assert left.get_title() == "Test error predicted from the spectrum vs measured"  # a title, not a statistic
    assert "fraction" in left.get_xlabel() and "fraction" in right.get_ylabel()
    assert "(" not in right.get_xlabel().split("(")[0] and "2c" not in right.get_xlabel()  # no formula as the x label
    assert "2c/(C-1)" in right.get_title()
    write_figure(fig, tmp_path / "predicted_vs_measured.png")
    assert (tmp_path / "predicted_vs_measured.png").read_bytes().startswith(PNG)
