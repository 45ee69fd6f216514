"""The four figures of ``python -m deepnet layers`` (deepnet.layers_cli) in the toolkit's
style (theory/figures.py): every panel labelled on both axes, only finite data drawn,
one legend that covers no plotted point, and each figure shows the numbers it is
drawn from (separation measures against depth, eigenvalues above the numerical
zero with the count below it in the title, Kronecker cosines, singular values)."""

import numpy as np
import pytest

from deepnet.kronecker import kronecker_structure
from deepnet.layers import layer_separation, layer_statistics
from deepnet.layers_cli import (
    ZERO_RTOL,
    kronecker_figure,
    numerical_zero,
    separation_figure,
    spectra_figure,
    weights_figure,
)
from deepnet.operators import EmpiricalRisk
from deepnet.passes import gradient_sums
from deepnet.weights import weight_structure

from figure_checks import check_panels

MEASURES = ("outlier_to_bulk", "class_eigenvalue_ratio", "trace_ratio", "within_over_between", "mean_abs_cosine")


@pytest.fixture(scope="module")
def structures(make_mlp, one_thread):
    """Separation, Kronecker and weight structure of the small MLP (3 classes, float64);
    the last input column is zero, so the first layer's features have an exact zero
    eigenvalue, and the last layer's errors sum to zero over the outputs (rank C - 1)."""
    model, X, Y = make_mlp()
    X = X.clone()
    X[:, -1] = 0.0
    risk = EmpiricalRisk(model, (X, Y), batch_size=10)
    stats = layer_statistics(risk)
    sep = layer_separation(stats, seed=0)
    kron = kronecker_structure(stats, gradient_sums(risk, squared_norms="none"), model)
    weights = weight_structure(risk, stats, 0.05)
    return sep, kron, weights


def _labelled(ax, text):
    lines = [line for line in ax.get_lines() if str(line.get_label()).startswith(text)]
    assert len(lines) == 1, (text, [line.get_label() for line in ax.get_lines()])
    return lines[0]


def test_separation_figure_draws_each_measure_against_depth(structures):
    sep, _, _ = structures
    fig = separation_figure(sep, "test")
    check_panels(fig)
    axes = fig.axes
    assert len(axes) == 6 and not any(ax.get_legend() for ax in axes) and len(fig.legends) == 1
    assert fig.get_layout_engine() is not None  # constrained: room for the legend below
    for ax, measure in zip(axes, MEASURES):
        assert ax.get_title().strip()
        for which in ("features", "errors"):
            values = sep.series(which, measure)
            keep = np.isfinite(values)
            line = _labelled(ax, f"{which} ")
            np.testing.assert_array_equal(line.get_xdata(), np.arange(values.size)[keep])
            np.testing.assert_allclose(line.get_ydata(), values[keep], rtol=1e-12)
    # lambda_C / lambda_{C+1} is NaN where d <= C (the last layer's errors, d_out = C): left out
    assert not np.isfinite(sep.series("errors", "outlier_to_bulk")).all()
    share = [layer.global_mean_share for layer in sep.layers.values()]
    np.testing.assert_allclose(_labelled(axes[5], "features ").get_ydata(), share, rtol=1e-12)
    # one entry per series in the figure's legend
    assert [t.get_text().split()[0] for t in fig.legends[0].get_texts()] == ["features", "errors"]


def test_spectra_figure_leaves_out_numerical_zeros_and_counts_them(structures):
    sep, _, _ = structures
    fig = spectra_figure(sep, "test")
    check_panels(fig)
    C = sep.num_classes
    zeros = {}
    for ax, which in zip(fig.axes, ("features", "errors")):
        title = ax.get_title()
        assert ax.get_yscale() == "log" and f"C = {C}" in title
        for name, layer in sep.layers.items():
            lam = getattr(layer, which).eigenvalues
            keep = lam > ZERO_RTOL * lam[0]
            zeros[name, which] = int((~keep).sum())
            assert (f"{name}: {zeros[name, which]} of {lam.size}" in title) == (zeros[name, which] > 0), title
            curve = _labelled(ax, name)
            np.testing.assert_array_equal(curve.get_xdata(), np.arange(1, lam.size + 1)[keep])
            np.testing.assert_allclose(curve.get_ydata(), lam[keep] / lam[0], rtol=1e-12)
            assert curve.get_ydata().min() > ZERO_RTOL
            # the first C points marked, in the curve's colour
            marks = [m for m in ax.get_lines() if m.get_marker() == "o" and m.get_color() is curve.get_color()]
            assert len(marks) == 1 and marks[0].get_xdata().max() <= C
    # the zero input column and the errors of the last layer (they sum to zero) are numerical zeros
    assert zeros["fc1", "features"] == 1 and zeros["fc3", "errors"] == 1
    assert "none at numerical zero" not in fig.axes[0].get_title()


def test_the_numerical_zero_follows_the_passes_dtype(structures):
    """float32 passes leave the zeros beyond the data's rank near 1e-8 of the largest: the
    command cuts at 10 eps of the passes' dtype (at least ZERO_RTOL), and the figure draws
    nothing below the cut it is given and names it in the title."""
    import torch

    assert numerical_zero(torch.float64) == ZERO_RTOL
    assert numerical_zero(torch.float32) == pytest.approx(10 * 2.0**-23)
    sep, _, _ = structures
    cut = 1e-3  # above some of the small MLP's eigenvalues, so the count changes
    fig = spectra_figure(sep, "test", zero_rtol=cut)
    for ax, which in zip(fig.axes, ("features", "errors")):
        assert all(line.get_ydata().min() > cut for line in ax.get_lines() if line.get_label() in sep.layers)
        assert "below 0.001 of the largest" in ax.get_title().replace("\n", " ")
        for name, layer in sep.layers.items():
            lam = getattr(layer, which).eigenvalues
            hidden = int((lam <= cut * lam[0]).sum())
            assert (f"{name}: {hidden} of {lam.size}" in ax.get_title()) == (hidden > 0)


def test_kronecker_figure_draws_every_cosine(structures):
    _, kron, _ = structures
    fig = kronecker_figure(kron, "test")
    check_panels(fig)
    (ax,) = fig.axes
    cells = np.concatenate([line.get_ydata() for line in ax.get_lines() if line.get_color() == "tab:blue"])
    classes = np.concatenate([line.get_ydata() for line in ax.get_lines() if line.get_color() == "tab:red"])
    np.testing.assert_allclose(cells, np.concatenate([k.cell_cosines[np.isfinite(k.cell_cosines)] for k in kron.layers.values()]))
    np.testing.assert_allclose(classes, np.concatenate([k.class_cosines for k in kron.layers.values()]))
    mean = _labelled(ax, "weighted mean")
    np.testing.assert_allclose(mean.get_ydata(), [k.mean_cell_cosine for k in kron.layers.values()])


def test_weights_figure_draws_the_normalised_singular_values(structures):
    sep, _, weights = structures
    fig = weights_figure(weights, sep.num_classes, "test")
    check_panels(fig)
    (ax,) = fig.axes
    assert ax.get_title().strip()
    for name, layer in weights.layers.items():
        s = layer.singular_values
        np.testing.assert_allclose(_labelled(ax, name).get_ydata(), s / s[0], rtol=1e-12)
    assert _labelled(ax, "$k = C$").get_xdata()[0] == sep.num_classes
