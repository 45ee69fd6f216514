"""``spectra.png`` of ``python -m deepnet kfac`` (:func:`deepnet.kfac_cli.kfac_figure`) in
the toolkit's log-spectrum style: one panel per layer on log axes, labelled, finite; each
operator's top-k ticks at exactly its record's outliers on a row of its own; the null-space
shares in the titles those of :func:`theory.figures.spectrum_shares`; one legend below the
panels, over no data. And ``--eps`` is checked before any pass."""

from __future__ import annotations

import numpy as np
import pytest

from deepnet.kfac import kfac_factors
from deepnet.kfac_cli import LABELS, UNRESOLVED, compare_layer, kfac_figure
from deepnet.operators import EmpiricalRisk, GaussNewtonOperator
from theory.density import DensitySettings
from theory.figures import spectrum_shares

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:log density not resolved")]


@pytest.fixture(scope="module")
def comparison(make_mlp):
    """Every Linear layer of the small MLP (P = 48, 54, 21; 3 classes, 23 examples), k = 4;
    16 Lanczos steps leave some densities unresolved towards zero (titles say so)."""
    model, X, Y = make_mlp()
    factors = kfac_factors(EmpiricalRisk(model, (X, Y), batch_size=7), None)
    settings = DensitySettings(num_steps=16, num_repeats=2, seed=0)
    layers = {}
    for name, layer in factors.layers.items():
        G = GaussNewtonOperator(EmpiricalRisk(model, (X, Y), batch_size=7, params=list(layer.params)))
        layers[name] = compare_layer(G, layer, settings, k=4, num_probes=2, tol=1e-10)
    return layers


def _data_points(ax):
    """Display coordinates of every plotted vertex of ``ax`` inside its frame (lines, fills)."""
    points = [line.get_transform().transform(np.column_stack([line.get_xdata(), line.get_ydata()]).astype(float))
              for line in ax.get_lines() if len(line.get_xdata())]
    points += [c.get_transform().transform(path.vertices) for c in ax.collections for path in c.get_paths()]
    xy = np.concatenate(points)
    frame = ax.bbox
    return xy[(xy[:, 0] >= frame.x0) & (xy[:, 0] <= frame.x1) & (xy[:, 1] >= frame.y0) & (xy[:, 1] <= frame.y1)]


def _ticks(ax, which):
    """The top-k ticks of operator ``which`` on ``ax`` (found by their legend label)."""
    (line,) = [ln for ln in ax.get_lines() if str(ln.get_label()).startswith(f"{LABELS[which]}: top ")]
    return line


def test_one_labelled_log_panel_per_layer_with_finite_data(comparison):
    fig = kfac_figure(comparison, "mlp on test data")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(comparison) == 3
    for ax, name in zip(panels, comparison):
        assert ax.get_title().startswith(f"{name} (P = {comparison[name].size:,}, k = 4)")
        assert "eigenvalue magnitude" in ax.get_xlabel() and "density per decade" in ax.get_ylabel()
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        for line in ax.get_lines():
            assert np.isfinite(np.asarray(line.get_xdata(), dtype=float)).all()
            assert np.isfinite(np.asarray(line.get_ydata(), dtype=float)).all()
        for c in ax.collections:
            assert all(np.isfinite(path.vertices).all() for path in c.get_paths())
        assert np.isfinite(ax.get_xlim()).all() and 0 < ax.get_xlim()[0] < ax.get_xlim()[1]
        assert len(ax.collections) == 1  # G^l's shaded bulk; K-FAC and class-aware are curves
        styles = {str(line.get_label()): line.get_linestyle() for line in ax.get_lines()}
        assert styles.get("K-FAC bulk", "--") == "--" and styles.get("class-aware bulk", "-") == "-"  # where drawn
    assert "mlp on test data" in fig.get_suptitle() and ", ".join(comparison) in fig.get_suptitle().replace("\n", " ")


def test_ticks_at_each_operators_outliers_on_rows_of_their_own(comparison):
    fig = kfac_figure(comparison)
    for ax, layer in zip(fig.axes, comparison.values()):
        rows = set()
        for which, record in layer.spectra.items():
            line = _ticks(ax, which)
            zero_tol = spectrum_shares(record).zero_tol
            expected = record.outliers[np.abs(record.outliers) > zero_tol]
            assert expected.size > 0
            np.testing.assert_array_equal(np.asarray(line.get_xdata()), expected)
            y = set(np.asarray(line.get_ydata()).tolist())
            assert len(y) == 1
            rows |= y
        assert len(rows) == 3  # three rows: no operator's ticks overprint another's


def test_null_space_shares_in_the_titles(comparison):
    fig = kfac_figure(comparison)
    for ax, layer in zip(fig.axes, comparison.values()):
        title = ax.get_title().replace("\n", " ")
        assert "null space:" in title
        for which, record in layer.spectra.items():
            shares = spectrum_shares(record)
            text = f"{LABELS[which]} {shares.null_share:.1%}"
            assert text in title, (which, title)
            assert (f"{text}{UNRESOLVED}" in title) == (shares.unresolved_below is not None), (which, title)
    assert f"{UNRESOLVED}: null space or not resolved" in fig.get_suptitle().replace("\n", " ")  # fc1 is unresolved
    # fc3 (6 inputs + bias, 3 classes): K-FAC = (7 x 7) (x) Delta with Delta of rank C - 1 = 2,
    # so at least a third of its spectrum is null, and the title says so
    kfac = spectrum_shares(comparison["fc3"].spectra["kfac"]).null_share
    assert kfac >= 1 / 3 - 1e-9


def test_one_legend_below_the_panels_over_no_data(comparison):
    fig = kfac_figure(comparison)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in panels)
    fig.canvas.draw()
    box = fig.legends[0].get_window_extent()
    assert box.y1 <= min(ax.get_window_extent().y0 for ax in panels)
    for ax in panels:
        xy = _data_points(ax)
        inside = (xy[:, 0] > box.x0) & (xy[:, 0] < box.x1) & (xy[:, 1] > box.y0) & (xy[:, 1] < box.y1)
        assert not inside.any()
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert labels == {f"{LABELS[w]} bulk" for w in LABELS} | {f"{LABELS[w]}: top 4 ($1/P$ each)" for w in LABELS}


@pytest.mark.parametrize("eps", ["0", "-1e-6", "nan"])
def test_eps_is_checked_before_any_pass(tmp_path, capsys, eps):
    """``--eps=-1e-6``: with a space argparse would take the value for an option and refuse it itself."""
    from deepnet.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["kfac", "--checkpoint", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "never"), f"--eps={eps}"])
    assert stop.value.code == 2 and "--eps: expected a finite number > 0" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
