"""Spectral attribution: knockouts, the bulk-edge estimator, certificates and verdicts
on planted models whose answer is known, and on the symmetric-probability Fisher of
Papyan 2020, Thm 8.1 (the mathematics: docs/attribution.md)."""

import json

import numpy as np
import pytest
import torch

from simulate.fisher import ExtendedGradients
from simulate.mixtures import canonical_mixture
from theory.attribution import (
    _certificate,
    Component,
    _complement_trace,
    as_component,
    attribute,
    attribute_decomposition,
    combine_components,
    estimate_bulk_edge,
    projection_knockout,
    subtraction_knockout,
)
from theory.mlr import symmetric_probabilities, theorem_eigenvalues
from theory.operators import DenseOperator
from theory.results import to_jsonable
from theory.runs import RunFolder
from theory.spectral import bulk_density, top_eigenpairs
from theory.structure import CrossClassAccumulator, decompose_cross_class, decompose_features

DENSITY = dict(num_steps=64, num_repeats=4)


def planted(C, n, P, class_size, cross_size, a=0.5, sigma=1.0, seed=0, centred=False, along_class=0.0):
    """Three-index vectors ``v_{i,c,c'} = mu_c + delta_{c,c'} + sigma z`` (``c' != c``) and
    ``sigma z`` on the diagonal cell; ``|mu_c|^2 ~ class_size``, ``|delta|^2 ~ cross_size``
    with ``sum_{c'} delta_{c,c'} = 0``; probabilities ``1 - a`` on the true class and
    ``a`` spread over the others. Then (weighted) the class part has C eigenvalues
    near ``a class_size / C``, the cross part C(C-2) near ``a cross_size / (C (C-1))``,
    and the within part is a Marchenko-Pastur-like bulk of scale ``sigma^2``.
    ``centred``: class means summing to zero (a weak common mode, as in a trained
    model). ``along_class`` (C = 3): ``delta_{c,c'} = +-along_class mu_c`` instead, so
    that the cross range is the class-mean span and the outliers come from both."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((C, P)) * np.sqrt(class_size / P)
    if centred:
        mu -= mu.mean(axis=0)
    off = ~np.eye(C, dtype=bool)
    delta = rng.standard_normal((C, C, P)) * np.sqrt(cross_size / P) * off[:, :, None]
    delta -= delta.sum(axis=1, keepdims=True) / (C - 1) * off[:, :, None]
    if along_class:
        assert C == 3
        signs = np.array([[0, 1, -1], [-1, 0, 1], [1, -1, 0]], dtype=float)
        delta = along_class * signs[:, :, None] * mu[:, None, :]
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
    # judged against its own edge (at zero): the C^2 nonzero eigenvalues of the mean parts,
    # the C small diagonal-cell ones included; nothing of the bulk is left
    within = next(s for s in report.spectra if s.name == "A - within")
    assert within.edge is not None and within.threshold < 1e-3 * report.edge.threshold
    assert counts["A - within"] == C * C and within.bulk_mass < 1e-3
    assert min(within.retained.values()) > 0.95
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
    small = attribute_decomposition(d, density=DENSITY, eigensolver="dense")  # default: the outliers only
    assert small.settings["num_top"] == 18 and small.verdict("outliers").component == "class"
    assert small.verdict("bump").verdict == "absent" and "raise num_top" in small.verdict("bump").evidence
    report = attribute_decomposition(d, num_top=116, density=DENSITY, eigensolver="dense")  # C^2 + 16: the bump too
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
    report = attribute_decomposition(d, num_top=116, density=DENSITY, eigensolver="dense")  # the bump needs C^2 + 16
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
    assert report.common_mode.separated  # the global mean (offset 0.3 per coordinate) is one of the outliers
    assert report.common_mode.norm == pytest.approx(float(f.global_mean.norm()))


def test_features_without_within_variation_have_an_absent_bulk():
    """Every example equals its class mean: the within part is zero, the spectrum is C
    outliers and exact zeros, so the bulk is ``absent`` (not a division by its zero mass)."""
    rng = np.random.default_rng(4)
    C, n, d_ = 4, 30, 40
    labels = np.repeat(np.arange(C), n)
    h = (rng.standard_normal((C, d_)) * 3.0)[labels]
    report = attribute_decomposition(decompose_features(h, labels), density=DENSITY)
    assert report.verdict("outliers").component == "class" and report.verdict("outliers").size == C
    bulk = report.verdict("bulk")
    assert bulk.verdict == "absent" and "no mass" in bulk.evidence


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
    assert sub.certificate.describe().startswith("VIOLATED") and "VIOLATED" in lying.summary()


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
    with pytest.raises(ValueError, match=r"combine\['b'\]: the name of a component"):
        attribute(A, {"b": A}, combine={"b": ("b", "b")})
    with pytest.raises(ValueError, match=r"combine\['bc'\]: expected at least two distinct names"):
        attribute(A, {"b": A, "c": A}, combine={"bc": ("b", "d")})
    with pytest.raises(ValueError, match="common_mode: expected a vector of length 50, got 3"):
        attribute(A, {"b": A}, common_mode=np.ones(3))
    with pytest.raises(ValueError, match="common_mode: the zero vector"):
        attribute(A, {"b": A}, common_mode=np.zeros(50))
    with pytest.raises(ValueError, match="overlap_threshold"):
        attribute(A, {"b": A}, overlap_threshold=0.0)
    with pytest.raises(ValueError, match="parts: a combined component needs at least two"):
        combine_components("x", [as_component("b", A)])


# --------------------------------------------------------------------------- the identity class / diag


def mlr_decomposition(X, labels, probs, C):
    """The weighted decomposition of MLR's extended gradients ``g_{i,c'} = x_i (x) (p_i - e_{c'})``
    (simulate's layout), with a dense total second moment."""
    ext = ExtendedGradients(X, probs, labels, C)
    acc = CrossClassAccumulator(C, second_moment=True)
    for b in ext.batches(1024):
        acc.update(b.v, b.labels, b.probs)
    return acc.finalize()


def theorem_decomposition(C, D, n, s, a, seed=0):
    """Thm 8.1's setting: the canonical model (n per class) with symmetric probabilities
    ``1 - a`` on the true class and ``a / (C - 1)`` elsewhere."""
    data = canonical_mixture(C, D, s).sample(n, seed)
    return mlr_decomposition(data.X, data.labels, symmetric_probabilities(C, a)[data.labels], C)


def test_class_and_diag_parts_share_their_range():
    """sum_{c'} p_{i,c'} (p_i - e_{c'}) = 0 gives P_c v_c = -P_{c,c} v_{c,c}, hence per class
    G_diag,c = a_c / (1 - a_c) G_class,c with a_c = P_c / n_c (docs/attribution.md)."""
    rng = np.random.default_rng(5)
    C, D, n = 4, 6, 50
    labels = np.repeat(np.arange(C), n)
    X = rng.standard_normal((C * n, D)) + 2.0 * np.eye(C, D)[labels]
    logits = 1.5 * X @ rng.standard_normal((D, C))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    d = mlr_decomposition(X, labels, probs, C)
    Pc, Pcc = d.class_weights, np.diag(d.cell_weights)
    a = 1.0 - np.array([probs[labels == c, c].mean() for c in range(C)])
    np.testing.assert_allclose(Pc / n, a, rtol=1e-12)
    np.testing.assert_allclose(Pcc / n, 1.0 - a, rtol=1e-12)
    vc = d.class_means.numpy()
    vcc = d.cross_means.numpy()[np.arange(C), np.arange(C)]
    scale = np.abs(vc).max()
    np.testing.assert_allclose(Pc[:, None] * vc, -Pcc[:, None] * vcc, atol=1e-12 * scale * n)
    N = C * n
    class_c = [Pc[c] / N * np.outer(vc[c], vc[c]) for c in range(C)]
    diag = d.diag_part.as_operator().to_dense().numpy()
    expected = sum(a[c] / (1 - a[c]) * class_c[c] for c in range(C))
    np.testing.assert_allclose(diag, expected, atol=1e-12 * np.abs(expected).max())
    assert not np.allclose(a / (1 - a), a[0] / (1 - a[0]))  # the factors differ per class: a real check
    # equal ranges: the combined class+diag span has rank C, not 2C
    both = combine_components("class+diag", [as_component("class", d.class_part), as_component("diag", d.diag_part)])
    assert both.rank == d.class_part.rank == d.diag_part.rank == C
    assert both.trace == pytest.approx(d.class_part.trace + d.diag_part.trace)


# --------------------------------------------------------------------------- Theorem 8.1: known answers


@pytest.mark.parametrize("C, D, n, s, a", [(4, 20, 1000, 4.0, 0.2), (3, 15, 600, 9.0, 0.3), (5, 20, 800, 6.0, 0.1)])
def test_theorem_fisher_reads_class_cross_within(C, D, n, s, a):
    """Thm 8.1: C outliers in the class-mean span (class + diag), C(C-2) bump eigenvalues of
    the cross means, the bulk of the within part."""
    d = theorem_decomposition(C, D, n, s, a)
    report = attribute_decomposition(d, num_top=C * C + 16, density={**DENSITY, "num_steps": min(64, C * D)}, eigensolver="dense")
    out, bump, bulk = (report.verdict(f) for f in ("outliers", "bump", "bulk"))
    assert (out.verdict, out.size) == ("attributable", C) and out.component in ("class", "class+diag"), out.evidence
    assert (bump.verdict, bump.component, bump.size) == ("attributable", "cross", C * (C - 2)), bump.evidence
    assert (bulk.verdict, bulk.component) == ("attributable", "within"), bulk.evidence
    # the shares the theorem predicts: the mean part of an outlier, beta s (1 - a), splits (1 - a) : a
    # between class and diag; the within part adds beta b to outliers and bump alike
    th = theorem_eigenvalues(C, D, s, a)
    assert out.shares["diag"] / out.shares["class"] == pytest.approx(a / (1 - a), rel=0.05)
    assert out.shares["within"] == pytest.approx(th.bulk / th.outlier, rel=0.1)
    assert bump.shares["cross"] == pytest.approx(1 - th.bulk / th.mini_bulk, rel=0.1)
    assert bump.shares["class"] + bump.shares["diag"] < 0.02
    assert bulk.shares["within"] > 0.98
    np.testing.assert_allclose(out.eigenvalues, th.outlier, rtol=0.15)
    # A - within keeps exactly the C(C-1) nonzero eigenvalues of the means (diag adds no rank)
    within = next(sp for sp in report.spectra if sp.name == "A - within")
    assert within.num_separated == C * (C - 1) and within.bulk_mass < 1e-3
    assert report.components["class+diag"] == C
    assert report.common_mode.separated and report.common_mode.in_outliers > 0.95
    assert all(sp.certificate.holds for sp in report.spectra[1:])


def test_theorem_fisher_without_signal_has_no_outliers_and_no_bump():
    """s = 0: Thm 8.1's outliers and mini-bulk merge into the bulk."""
    d = theorem_decomposition(4, 20, 1000, 0.0, 0.2)
    report = attribute_decomposition(d, density=DENSITY, eigensolver="dense")
    assert report.verdict("outliers").verdict == report.verdict("bump").verdict == "absent"
    assert report.edge.num_separated == 0
    assert report.verdict("bulk").component == "within"


# --------------------------------------------------------------------------- feature definitions, two parts, common mode


def test_feature_from_two_parts_is_not_attributable_and_reports_both_shares():
    """Cross means along the class means (delta_{c,c'} = +-mu_c): the cross range is the
    class-mean span, each outlier is half class, half cross, no single knockout removes it;
    the bump (cross outside the class span) is absent."""
    v, labels, probs = planted(C=3, n=300, P=1000, class_size=600, cross_size=0.0, along_class=1.0)
    d = decompose_cross_class(v, labels, probs, second_moment=True)
    report = attribute_decomposition(d, density=DENSITY, eigensolver="dense")
    out = report.verdict("outliers")
    assert (out.verdict, out.component, out.size) == ("not attributable", None, 3), out.evidence
    assert out.shares["class"] > 0.3 and out.shares["cross"] > 0.3
    assert out.shares["class"] == pytest.approx(out.shares["cross"], rel=0.2)
    assert "no subtraction removes it" in out.evidence
    assert report.verdict("bump").verdict == "absent"
    assert report.verdict("bulk").component == "within"
    assert "| outliers | 3 | not attributable | - |" in report.summary()


def test_outliers_are_defined_by_the_class_span_first():
    """Class directions inside the cross range (as in trained MLR): the outliers still go to
    the class span, not to the cross range that holds a larger share of them."""
    v, labels, probs = planted(C=3, n=300, P=1000, class_size=600, cross_size=0.0, along_class=1.0)
    d = decompose_cross_class(v, labels, probs, second_moment=True)
    report = attribute_decomposition(d, density=DENSITY, eigensolver="dense")
    jc, jx = (report.overlap_components.index(n) for n in ("class", "cross"))
    top = report.overlaps[:3]
    assert top[:, jc].min() > 0.9 and top[:, jx].min() > 0.9  # both ranges hold them
    assert report.feature_overlaps["bump"][:3].max() < 0.1  # the cross range outside the class span does not
    assert report.verdict("outliers").size == 3


def test_weak_common_mode_is_reported_apart():
    """Class means summing to zero: C - 1 outliers in the class-mean span; the common mode
    (sum of the class means) is not among them."""
    C = 4
    v, labels, probs = planted(C=C, n=250, P=1000, class_size=800, cross_size=2.0, centred=True)
    d = decompose_cross_class(v, labels, probs, second_moment=True)
    report = attribute_decomposition(d, density=DENSITY, eigensolver="dense")
    out = report.verdict("outliers")
    assert (out.verdict, out.component, out.size) == ("attributable", "class", C - 1), out.evidence
    m = report.common_mode
    assert not m.separated and m.in_outliers < 0.05 and m.rayleigh < report.edge.threshold
    assert "not among the outliers" in report.summary()
    uncentred = attribute_decomposition(
        decompose_cross_class(*planted(C=C, n=250, P=1000, class_size=800, cross_size=2.0)[:3], second_moment=True),
        density=DENSITY, eigensolver="dense",
    )
    assert uncentred.verdict("outliers").size == C and uncentred.common_mode.separated


def test_complement_trace_exact_and_hutchinson():
    rng = np.random.default_rng(6)
    p = 300
    B = wishart(p, 600, seed=6)
    U = torch.linalg.qr(torch.as_tensor(rng.standard_normal((p, 5))))[0]
    Pp = np.eye(p) - U.numpy() @ U.numpy().T
    exact = np.trace(Pp @ B @ Pp)
    known = Component("b", None, True, DenseOperator(B), None, float(np.trace(B)))
    assert _complement_trace(known, U, seed=0) == pytest.approx(exact, rel=1e-12)
    unknown = Component("b", None, True, DenseOperator(B), None)
    assert _complement_trace(unknown, U, seed=0) == pytest.approx(exact, rel=0.05)


def test_projection_is_evidence_only():
    """range(b2) holds the spike directions too (weakly), as the cross range of trained MLR holds
    the class span: projecting b2 out removes the spikes as well, subtracting it does not. The
    verdict follows the subtraction; the projection is reported in the evidence."""
    rng = np.random.default_rng(7)
    p = 300
    W = wishart(p, 600, seed=7)
    Q = np.linalg.qr(rng.standard_normal((p, 6)))[0]
    u, w = Q[:, :3], Q[:, 3:]
    B1 = u @ np.diag([10.0, 9.0, 8.0]) @ u.T
    B2 = 0.05 * u @ u.T + w @ np.diag([6.0, 5.0, 4.0]) @ w.T
    comps = {
        "b1": Component("b1", 3, True, DenseOperator(B1), torch.as_tensor(u), float(np.trace(B1))),
        "b2": Component("b2", 6, True, DenseOperator(B2), torch.as_tensor(Q), float(np.trace(B2))),
        "w": Component("w", None, True, DenseOperator(W), None, float(np.trace(W))),
    }
    report = attribute(W + B1 + B2, comps, features={"spikes": "b1", "bump": "b2"}, density=DENSITY, eigensolver="dense")
    proj = next(s for s in report.spectra if s.name == "P⊥ A P⊥ (b2)")
    assert proj.retained["spikes"] < 0.05 and proj.retained["bump"] < 0.05  # the projection removes both
    spikes, bump, bulk = (report.verdict(f) for f in ("spikes", "bump", "bulk"))
    assert (spikes.verdict, spikes.component, spikes.size) == ("attributable", "b1", 3), spikes.evidence
    assert (bump.verdict, bump.component, bump.size) == ("attributable", "b2", 3), bump.evidence
    assert "projection P⊥ A P⊥ (b2): retained 0.00 (evidence)" in bump.evidence
    assert (bulk.verdict, bulk.component) == ("attributable", "w"), bulk.evidence
    assert spikes.shares["b1"] > 0.6 and bump.shares["b2"] > 0.5 and bulk.shares["w"] > 0.99


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


# --------------------------------------------------------------------------- num_top, saturation, progress


def _spiked(p: int = 200, spikes: int = 10, seed: int = 6):
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((p, spikes)) * np.linspace(3.0, 2.0, spikes)
    return wishart(p, 400, seed=seed) + F @ F.T, F


def test_saturated_counts_are_not_read_as_a_violated_certificate():
    """A's count 4 saturated (4 computed, more above the threshold) and the knockout's 8:
    the count bound n_sep(K) <= n_sep(A) fails only because n_sep(A) is a lower bound, so
    the certificate must not read VIOLATED; the same counts unsaturated do, and so does
    a broken eigenvalue bound even when saturated."""
    top_a, res = np.array([9.0, 8.0, 7.0, 6.0]), np.zeros(4)
    top_k = np.array([7.5, 6.5, 5.0, 4.5])
    args = ("subtraction", 2, top_a, res, 4, top_k, res, 8, torch.float64)
    saturated = _certificate(*args, saturated=True)
    assert saturated.holds and not saturated.counts_checked
    assert saturated.describe() == "eigenvalue bounds hold; counts not checked: lower bounds"
    assert _certificate(*args).describe() == "VIOLATED"
    broken = _certificate("subtraction", 2, top_a, res, 4, top_k + 3.0, res, 8, torch.float64, saturated=True)
    assert broken.describe().startswith("VIOLATED")


def test_knockouts_show_progress_and_unsaturated_certificates_are_checked(capsys):
    A, F = _spiked(spikes=3)
    basis = torch.linalg.qr(torch.as_tensor(F[:, :2]))[0]
    comp = Component("b", 2, True, DenseOperator(torch.as_tensor(F[:, :2] @ F[:, :2].T)), basis)
    report = attribute(A, {"b": comp}, features={}, density=DENSITY, eigensolver="dense", show_progress=True)
    assert not report.edge.saturated and all(s.certificate.counts_checked for s in report.spectra[1:])
    assert "knockout A - b" in capsys.readouterr().err


def test_default_num_top_is_small_and_extended_only_when_saturated():
    """Default: the outliers' rank + 8 (18 for C = 10, not the summed ranks + 16); an
    operator whose separated count fills it is extended by doubling up to the cap."""
    rng = np.random.default_rng(7)
    C, n, d_ = 10, 40, 150
    labels = np.repeat(np.arange(C), n)
    h = rng.standard_normal((C, d_))[labels] * 3.0 + rng.standard_normal((C * n, d_))
    report = attribute_decomposition(decompose_features(h, labels), density=DENSITY)
    assert report.settings["num_top"] == C + 8 and not report.edge.saturated
    assert report.verdict("outliers").component == "class"
    A, F = _spiked(spikes=12)
    basis = torch.linalg.qr(torch.as_tensor(F[:, :2]))[0]
    comp = Component("b", 2, True, DenseOperator(torch.as_tensor(F[:, :2] @ F[:, :2].T)), basis)
    extended = attribute(A, {"b": comp}, features={"spikes": "b"}, density=DENSITY, eigensolver="dense")
    assert extended.settings["num_top"] == 18 and extended.edge.num_separated == 12 and not extended.edge.saturated
