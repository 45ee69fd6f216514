"""Spectral attribution: knockouts, the bulk-edge estimator, certificates and verdicts
on planted models whose answer is known."""

import json

import numpy as np
import pytest
import torch

from theory.attribution import (
    Component,
    attribute,
    attribute_decomposition,
    estimate_bulk_edge,
    projection_knockout,
    subtraction_knockout,
)
from theory.operators import DenseOperator
from theory.results import to_jsonable
from theory.runs import RunFolder
from theory.spectral import bulk_density, top_eigenpairs
from theory.structure import decompose_cross_class, decompose_features

DENSITY = dict(num_steps=64, num_repeats=4)


def planted(C, n, P, class_size, cross_size, a=0.5, sigma=1.0, seed=0):
    """Three-index vectors ``v_{i,c,c'} = mu_c + delta_{c,c'} + sigma z`` (``c' != c``) and
    ``sigma z`` on the diagonal cell; ``|mu_c|^2 ~ class_size``, ``|delta|^2 ~ cross_size``
    with ``sum_{c'} delta_{c,c'} = 0``; probabilities ``1 - a`` on the true class and
    ``a`` spread over the others. Then (weighted) the class part has C eigenvalues
    near ``a class_size / C``, the cross part C(C-2) near ``a cross_size / (C (C-1))``,
    and the within part is a Marchenko-Pastur-like bulk of scale ``sigma^2``."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((C, P)) * np.sqrt(class_size / P)
    off = ~np.eye(C, dtype=bool)
    delta = rng.standard_normal((C, C, P)) * np.sqrt(cross_size / P) * off[:, :, None]
    delta -= delta.sum(axis=1, keepdims=True) / (C - 1) * off[:, :, None]
    cell = (mu[:, None, :] + delta) * off[:, :, None]
    labels = np.repeat(np.arange(C), n)
    v = cell[labels] + sigma * rng.standard_normal((C * n, C, P))
    probs = np.zeros((C * n, C))
    probs[off[labels]] = (a * rng.dirichlet(np.full(C - 1, 5.0), size=C * n)).reshape(-1)
    probs[np.arange(C * n), labels] = 1 - a
    return v, labels, probs


# --------------------------------------------------------------------------- knockouts


def test_knockouts_match_dense_formulas():
    rng = np.random.default_rng(0)
    p = 30
    X = rng.standard_normal((p, p))
    A = X @ X.T
    F = rng.standard_normal((p, 3))
    B = F @ F.T
    comp = Component("b", 3, True, DenseOperator(B), torch.linalg.qr(torch.as_tensor(F))[0])
    np.testing.assert_allclose(subtraction_knockout(A, comp).to_dense().numpy(), A - B, atol=1e-12)
    Pp = np.eye(p) - F @ np.linalg.pinv(F)
    np.testing.assert_allclose(projection_knockout(A, comp).to_dense().numpy(), Pp @ A @ Pp, atol=1e-10)
    with pytest.raises(ValueError, match="component: 'component' has no low-rank range basis"):
        projection_knockout(A, DenseOperator(B))


# --------------------------------------------------------------------------- bulk edge


def wishart(p, m, seed, spikes=()):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((p, m))
    A = Z @ Z.T / m
    A[np.arange(len(spikes)), np.arange(len(spikes))] += spikes
    return A


@pytest.mark.parametrize("p, m", [(400, 800), (400, 400), (600, 300)])
def test_bulk_edge_of_marchenko_pastur_from_exact_eigenvalues(p, m):
    edge = (1 + np.sqrt(p / m)) ** 2
    for seed in range(4):
        vals = np.linalg.eigvalsh(wishart(p, m, seed))[::-1]
        found = estimate_bulk_edge(vals[:120], p)
        assert found.num_separated == 0, f"seed {seed}: invented {found.num_separated} outliers"
        assert found.edge == pytest.approx(edge, rel=0.03)
        # spikes well beyond the BBP threshold are all found, and do not move the edge
        spiked = np.linalg.eigvalsh(wishart(p, m, seed, spikes=[1e6, 30, 20, 10, 6]))[::-1]
        found_s = estimate_bulk_edge(spiked[:120], p)
        assert found_s.num_separated == 5
        assert found_s.edge == pytest.approx(edge, rel=0.03)


def test_bulk_edge_from_lanczos_quadrature_synthetic_check():
    """Papyan 2020, Fig. 15 at p = 1000: diag(5, 4, 3, 0, ...) + Z Z^T / p has bulk [0, 4]
    and outliers at theta + theta / (theta - 1) = 6.25, 5.33, 4.5."""
    A = torch.as_tensor(wishart(1000, 1000, seed=1, spikes=[5.0, 4.0, 3.0]))
    pairs = top_eigenpairs(A, 12, seed=0)
    bulk = bulk_density(A, pairs, num_steps=64, num_repeats=6, seed=0)
    found = estimate_bulk_edge(pairs.eigenvalues, 1000, bulk=bulk.bulk)
    assert found.edge == pytest.approx(4.0, rel=0.03)
    assert found.num_separated == 3
    np.testing.assert_allclose(pairs.eigenvalues[:3], [6.25, 16 / 3, 4.5], rtol=0.04)
    assert found.fit_counts[-1] > 12  # the fit reached past the computed eigenvalues into the quadrature


def test_bulk_edge_bad_input():
    with pytest.raises(ValueError, match="eigenvalues: expected 1 <= k < size"):
        estimate_bulk_edge(np.ones(10), 10)
    with pytest.raises(ValueError, match="fit_fraction"):
        estimate_bulk_edge(np.arange(20.0), 100, fit_fraction=2.0)
    with pytest.raises(ValueError, match="too few bulk values"):
        estimate_bulk_edge(np.arange(2.0), 100)


# --------------------------------------------------------------------------- planted model


def check_planted(report, C):
    out, bump, bulk = (report.verdict(f) for f in ("outliers", "bump", "bulk"))
    assert (out.verdict, out.component, out.size) == ("attributable", "class", C)
    assert (bump.verdict, bump.component, bump.size) == ("attributable", "cross", C * (C - 2))
    assert (bulk.verdict, bulk.component) == ("attributable", "within")
    assert report.edge.num_separated == C + C * (C - 2)
    counts = {s.name: s.num_separated for s in report.spectra}
    assert counts["A - class"] == counts["P⊥ A P⊥ (class)"] == C * (C - 2)
    assert counts["A - cross"] == counts["P⊥ A P⊥ (cross)"] == C
    assert counts["A - within"] == C * (C - 1)
    assert all(s.certificate.holds for s in report.spectra[1:])
    j = report.overlap_components.index("class")
    assert report.overlaps[: C, j].min() > 0.9


def test_planted_three_classes_matrix_free():
    v, labels, probs = planted(C=3, n=300, P=1000, class_size=600, cross_size=600)
    d = decompose_cross_class(v, labels, probs, second_moment=True)
    report = attribute_decomposition(d, density=DENSITY)
    check_planted(report, 3)
    assert all(s.eigenvalues.size for s in report.spectra)


def test_planted_ten_classes(tmp_path):
    v, labels, probs = planted(C=10, n=100, P=1000, class_size=2000, cross_size=2200)
    d = decompose_cross_class(v, labels, probs, second_moment=True)
    assert (d.class_part.rank, d.cross_part.rank) == (10, 80)
    report = attribute_decomposition(d, density=DENSITY, eigensolver="dense")
    check_planted(report, 10)
    # outlier eigenvalues sit above the class-part eigenvalues (the within part adds to them)
    out = np.sort(report.verdict("outliers").eigenvalues)[::-1]
    assert np.all(out >= d.class_part.eigenvalues[:10] * 0.95)
    folder = report.save(RunFolder(tmp_path / "run"))
    saved = json.loads((folder.path / "attribution.json").read_text())
    assert saved["features"][0]["verdict"] == "attributable"
    assert (folder.path / "attribution.png").stat().st_size > 10_000
    assert "| outliers | 10 | attributable | class |" in (folder.path / "attribution.md").read_text()


@pytest.mark.parametrize("cross_size, separated", [(2200, 80), (2.0, 0)])
def test_planted_without_outliers_invents_none(cross_size, separated):
    """Class means shrunk below the noise level: no outliers in truth."""
    v, labels, probs = planted(C=10, n=100, P=1000, class_size=2.0, cross_size=cross_size, seed=1)
    d = decompose_cross_class(v, labels, probs, second_moment=True)
    report = attribute_decomposition(d, density=DENSITY, eigensolver="dense")
    assert report.verdict("outliers").verdict == "absent"
    assert report.edge.num_separated == separated
    assert report.verdict("bump").verdict == ("attributable" if separated else "absent")
    assert report.verdict("bulk").component == "within"


def test_feature_outliers_are_the_class_means():
    rng = np.random.default_rng(3)
    C, n, d_ = 5, 200, 400
    labels = np.repeat(np.arange(C), n)
    means = rng.standard_normal((C, d_)) * np.sqrt(40 / d_) + 0.3
    h = means[labels] + rng.standard_normal((C * n, d_))
    f = decompose_features(h, labels)
    report = attribute_decomposition(f, density=DENSITY)
    out = report.verdict("outliers")
    assert (out.verdict, out.component, out.size) == ("attributable", "class", C)
    assert report.verdict("bulk").component == "within"
    assert [v.feature for v in report.features] == ["outliers", "bulk"]


# --------------------------------------------------------------------------- certificates and errors


def test_certificates_flag_a_false_rank_claim():
    """Weyl's lower bound lambda_{k+r}(A) <= lambda_k(A - B) needs the true rank r of B."""
    rng = np.random.default_rng(4)
    p = 200
    A = wishart(p, 400, seed=4)
    F = rng.standard_normal((p, 6)) * 1.5
    A = A + F @ F.T
    B = DenseOperator(torch.as_tensor(F @ F.T))
    basis = torch.linalg.qr(torch.as_tensor(F))[0]
    honest = attribute(A, {"b": Component("b", 6, True, B, basis)}, features={"spikes": "b"}, density=DENSITY, eigensolver="dense")
    assert all(s.certificate.holds for s in honest.spectra[1:])
    assert honest.verdict("spikes").component == "b"
    lying = attribute(A, {"b": Component("b", 1, True, B, basis[:, :1])}, features={}, density=DENSITY, eigensolver="dense")
    sub = next(s for s in lying.spectra if s.kind == "subtraction")
    assert not sub.certificate.holds and sub.certificate.lower_violation > 1.0


def test_attribute_bad_input():
    A = DenseOperator(torch.eye(50, dtype=torch.float64))
    with pytest.raises(ValueError, match="components: expected at least one"):
        attribute(A, {})
    with pytest.raises(ValueError, match=r"components\['b'\]: size 40 differs"):
        attribute(A, {"b": DenseOperator(torch.eye(40, dtype=torch.float64))})
    with pytest.raises(ValueError, match=r"features\['outliers'\]: 'b' is not a low-rank component"):
        attribute(A, {"b": A}, features={"outliers": "b"})
    with pytest.raises(ValueError, match="eigensolver"):
        attribute(A, {"b": A}, eigensolver="arpack")
    with pytest.raises(ValueError, match=r"density: unexpected keys \['bounds'\]"):
        attribute(A, {"b": A}, density={"bounds": None})
    with pytest.raises(TypeError, match="decomposition: expected"):
        attribute_decomposition(A)


def test_defaults_fit_a_small_operator_and_the_result_says_so():
    """Size 80 with the default 128 Lanczos steps: clamped to 80, recorded in the settings."""
    rng = np.random.default_rng(5)
    C, n, d_ = 4, 60, 80
    labels = np.repeat(np.arange(C), n)
    h = rng.standard_normal((C, d_))[labels] * 2.0 + rng.standard_normal((C * n, d_))
    report = attribute_decomposition(decompose_features(h, labels))
    assert report.size == 80 and report.settings["density"].num_steps == 80
    assert report.settings["density_clamped"] == "num_steps 128 -> 80 (the dimension of A)"
    assert all(s.density.num_steps == 80 and np.isfinite(s.density.density).all() for s in report.spectra)
    assert report.verdict("outliers").component == "class"
    json.dumps(to_jsonable(report.settings), allow_nan=False)
    fitted = attribute_decomposition(decompose_features(h, labels), density=DENSITY)
    assert fitted.settings["density_clamped"] is None and fitted.settings["density"].num_steps == 64
