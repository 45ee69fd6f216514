"""Class/cross-class decompositions against brute-force dense constructions (float64)."""

import numpy as np
import pytest
import torch

from theory.operators import DenseOperator
from theory.structure import (
    CrossClassAccumulator,
    FeatureAccumulator,
    decompose_cross_class,
    decompose_features,
)

# --------------------------------------------------------------------------- dense references


def dense_cross_class(v, labels, probs, weighted):
    """docs/math.md#three-index-decomposition written out cell by cell with dense P x P matrices."""
    N, C, P = v.shape
    y, w = (v, probs) if weighted else (np.sqrt(probs)[:, :, None] * v, np.ones_like(probs))
    total = np.einsum("ik,ikp,ikq->pq", w, y, y) / N
    parts = {name: np.zeros((P, P)) for name in ("class", "cross", "within", "diag")}
    for c in range(C):
        idx = labels == c
        Pcc = w[idx].sum(axis=0)
        x = np.einsum("ik,ikp->kp", w[idx], y[idx]) / Pcc[:, None]
        r = y[idx] - x[None]
        parts["within"] += np.einsum("ik,ikp,ikq->pq", w[idx], r, r) / N
        others = np.arange(C) != c
        Pc = Pcc[others].sum()
        vc = Pcc[others] @ x[others] / Pc
        parts["class"] += Pc * np.outer(vc, vc) / N
        d = x[others] - vc
        parts["cross"] += np.einsum("k,kp,kq->pq", Pcc[others], d, d) / N
        parts["diag"] += Pcc[c] * np.outer(x[c], x[c]) / N
    return total, parts


def dense_features(v, labels, C):
    N = v.shape[0]
    pi = np.bincount(labels, minlength=C) / N
    mu = np.stack([v[labels == c].mean(axis=0) for c in range(C)])
    mu_g = v.mean(axis=0)
    r = v - mu[labels]
    return {
        "total": v.T @ v / N,
        "global": np.outer(mu_g, mu_g),
        "between": (mu - mu_g).T @ (pi[:, None] * (mu - mu_g)),
        "class": mu.T @ (pi[:, None] * mu),
        "within": r.T @ r / N,
        "mu": mu,
        "mu_g": mu_g,
    }


def cross_data(seed, N=60, C=4, P=40, dtype=np.float64):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((N, C, P)) + 2 * rng.standard_normal((1, C, P))
    labels = rng.permutation(np.arange(N) % C)
    probs = rng.dirichlet(np.ones(C) * 0.7, size=N)
    return v.astype(dtype), labels, probs


def dense(op):
    return op.to_dense().numpy()


def close(a, b, scale, rtol=1e-12):
    err = np.abs(np.asarray(a) - np.asarray(b)).max()
    assert err <= rtol * scale, f"error {err:.3g} > {rtol:g} x {scale:.3g}"


# --------------------------------------------------------------------------- exact splits


@pytest.mark.parametrize("weighted", [True, False])
def test_four_parts_match_dense_and_sum_to_total(weighted):
    v, labels, probs = cross_data(0)
    d = decompose_cross_class(v, labels, probs, weighted)
    total, parts = dense_cross_class(v, labels, probs, weighted)
    scale = np.abs(total).max()
    for name, ref in parts.items():
        close(dense(d.parts[name].as_operator()), ref, scale)
        assert d.parts[name].trace == pytest.approx(np.trace(ref), rel=1e-11, abs=1e-12 * scale)
    close(sum(parts.values()), total, scale)  # the algebra itself
    close(sum(dense(p.as_operator()) for p in d.parts.values()), total, scale)
    close(dense(d.total_operator()), total, scale)
    close(dense(d.means_part.as_operator()), parts["class"] + parts["cross"] + parts["diag"], scale)
    assert d.total_trace == pytest.approx(np.trace(total), rel=1e-12)


def test_exact_fact_ties_the_class_part_to_the_diag_part():
    """docs/math.md#the-exact-fact: for p-weighted extended gradients
    ``v_{i,c'} = x_i (x) (p_i - e_{c'})`` of a linear classifier, ``sum_{c'} p_{i,c'} (p_i - e_{c'}) = 0``
    gives ``P_c v_c = -P_{c,c} v_{c,c}`` and ``M_diag,c = (a_c / (1 - a_c)) M_class,c``."""
    rng = np.random.default_rng(5)
    N, C, D = 48, 4, 6
    X = rng.standard_normal((N, D))
    logits = X @ rng.standard_normal((D, C))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = rng.permutation(np.arange(N) % C)
    v = (X[:, None, :, None] * (p[:, None, :] - np.eye(C)[None])[:, :, None, :]).reshape(N, C, D * C)  # [i, c', d*C + k]
    d = decompose_cross_class(v, labels, p, True)
    Pc, Pcc = d.class_weights, np.diag(d.cell_weights)
    vc, vcc = d.class_means.numpy(), d.cross_means.numpy()[np.arange(C), np.arange(C)]
    scale = np.abs(Pcc[:, None] * vcc).max()
    close(Pc[:, None] * vc, -Pcc[:, None] * vcc, scale)
    a = Pc / (Pc + Pcc)
    expected_diag = sum((a[c] / (1 - a[c])) * Pc[c] * np.outer(vc[c], vc[c]) / N for c in range(C))
    close(dense(d.diag_part.as_operator()), expected_diag, np.abs(expected_diag).max())


def test_unweighted_is_the_weighted_form_of_scaled_vectors():
    v, labels, probs = cross_data(1)
    a = decompose_cross_class(v, labels, probs, weighted=False)
    b = decompose_cross_class(np.sqrt(probs)[:, :, None] * v, labels, None, weighted=False)
    for name in ("class", "cross", "within", "diag"):
        close(dense(a.parts[name].as_operator()), dense(b.parts[name].as_operator()), np.abs(v).max() ** 2)
    np.testing.assert_array_equal(a.cell_weights, np.stack([np.bincount(labels, minlength=4)] * 4, axis=1))
    # the weighted and unweighted forms split the same matrix
    w = decompose_cross_class(v, labels, probs, weighted=True)
    close(dense(a.total_operator()), dense(w.total_operator()), np.abs(dense(w.total_operator())).max())


@pytest.mark.parametrize("C", [3, 5])
def test_rank_bounds_are_attained_for_generic_data(C):
    v, labels, probs = cross_data(2, N=12 * C, C=C, P=60)
    d = decompose_cross_class(v, labels, probs)
    assert (d.class_part.rank, d.cross_part.rank, d.diag_part.rank, d.means_part.rank) == (C, C * (C - 2), C, C * C)
    for part in (d.class_part, d.cross_part, d.diag_part):
        eig = np.linalg.eigvalsh(dense(part.as_operator()))
        assert np.sum(eig > 1e-10 * eig.max()) == part.rank


def test_gram_spectra_equal_dense_eigh():
    v, labels, probs = cross_data(3, C=5, P=50)
    d = decompose_cross_class(v, labels, probs)
    f = decompose_features(v[:, 0], labels)
    parts = [d.class_part, d.cross_part, d.diag_part, d.means_part, f.global_part, f.between_part, f.class_part]
    for part in parts:
        D = dense(part.as_operator())
        ref = np.linalg.eigvalsh(D)[::-1][: part.eigenvalues.size]
        close(part.eigenvalues, ref, ref[0])
        vals, U = part.eigenpairs()
        U = U.numpy()
        close(D @ U, U * vals, ref[0], rtol=1e-10)
        close(U.T @ U, np.eye(part.rank), 1.0, rtol=1e-10)
        Q = part.range_basis().numpy()
        close(Q @ (Q.T @ D), D, ref[0], rtol=1e-10)


def test_feature_parts_match_dense_unbalanced():
    rng = np.random.default_rng(4)
    C, d_ = 5, 30
    counts = np.array([3, 10, 7, 25, 5])
    labels = rng.permutation(np.repeat(np.arange(C), counts))
    v = rng.standard_normal((counts.sum(), d_)) + 3 * rng.standard_normal((C, d_))[labels] + 1.0
    f = decompose_features(v, labels)
    ref = dense_features(v, labels, C)
    scale = np.abs(ref["total"]).max()
    for name in ("global", "between", "class"):
        close(dense(getattr(f, f"{name}_part").as_operator()), ref[name], scale)
    close(dense(f.within_part.as_operator()), ref["within"], scale)
    close(dense(f.total_operator()), ref["total"], scale)
    close(ref["global"] + ref["between"] + ref["within"], ref["total"], scale)
    close(f.class_means.numpy(), ref["mu"], np.abs(v).max())
    close(f.global_mean.numpy(), ref["mu_g"], np.abs(v).max())
    np.testing.assert_array_equal(f.counts, counts)
    assert f.within_part.trace == pytest.approx(np.trace(ref["within"]), rel=1e-12)
    assert (f.global_part.rank, f.between_part.rank, f.class_part.rank) == (1, C - 1, C)


def test_separation_statistics_match_dense():
    rng = np.random.default_rng(5)
    C, d_ = 4, 25
    labels = rng.permutation(np.arange(80) % C)
    v = rng.standard_normal((80, d_)) + 2 * rng.standard_normal((C, d_))[labels]
    f = decompose_features(v, labels)
    ref = dense_features(v, labels, C)
    s = f.separation()
    assert s.trace_ratio == pytest.approx(np.trace(ref["between"]) / np.trace(ref["within"]), rel=1e-12)
    expect = np.trace(ref["within"] @ np.linalg.pinv(ref["between"], rcond=1e-10, hermitian=True)) / C
    assert s.within_over_between == pytest.approx(expect, rel=1e-9)
    lam = np.linalg.eigvalsh(ref["class"])[::-1]
    assert s.class_eigenvalue_ratio == pytest.approx(lam[1] / lam[C - 1], rel=1e-9)
    m = ref["mu"] - ref["mu_g"]
    cos = (m @ m.T) / np.outer(np.linalg.norm(m, axis=1), np.linalg.norm(m, axis=1))
    close(s.cosines, cos, 1.0)
    # balanced classes: the class weights are 1/C, as in the paper's Ave_c
    np.testing.assert_allclose(f.class_weights, np.full(C, 1 / C))


def test_zero_weight_cell_contributes_nothing():
    v, labels, probs = cross_data(6)
    probs[labels == 1, 2] = 0.0
    probs /= probs.sum(axis=1, keepdims=True)
    d = decompose_cross_class(v, labels, probs)
    assert d.cell_weights[1, 2] == 0.0
    assert torch.all(d.cross_means[1, 2] == 0)
    M = np.einsum("ik,ikp,ikq->pq", probs, v, v) / len(labels)
    close(sum(dense(p.as_operator()) for p in d.parts.values()), M, np.abs(M).max())
    assert d.cross_part.rank == 4 * 2 - 1  # one cross direction fewer


# --------------------------------------------------------------------------- streaming


def random_batches(rng, n, max_size):
    """Cut ``range(n)`` (already permuted) into batches of random sizes, some empty."""
    cuts = np.sort(rng.integers(0, n + 1, size=max(1, n // max_size * 2)))
    return np.split(np.arange(n), cuts)


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("order", ["random", "by_class"])
def test_streaming_equals_in_memory(weighted, order):
    v, labels, probs = cross_data(7, N=90, C=5, P=35)
    ref = decompose_cross_class(v, labels, probs, weighted)
    rng = np.random.default_rng(8)
    perm = rng.permutation(len(labels)) if order == "random" else np.argsort(labels, kind="stable")[::-1]
    acc = CrossClassAccumulator(5, weighted)
    batches = [perm[b] for b in random_batches(rng, len(perm), 17)]
    for idx in batches:
        acc.update(torch.as_tensor(v[idx]), labels[idx], probs[idx])
    out = acc.finalize(batches=lambda: ((v[i], labels[i], probs[i]) for i in batches))
    scale = np.abs(v).max() ** 2
    np.testing.assert_allclose(out.cell_weights, ref.cell_weights, rtol=1e-13)
    close(out.cross_means.numpy(), ref.cross_means.numpy(), np.abs(v).max())
    close(out.class_means.numpy(), ref.class_means.numpy(), np.abs(v).max())
    for name in ("class", "cross", "diag"):
        close(out.parts[name].eigenvalues, ref.parts[name].eigenvalues, scale)
    for name in ("class", "cross", "within", "diag"):
        close(dense(out.parts[name].as_operator()), dense(ref.parts[name].as_operator()), scale)
    assert out.total_trace == pytest.approx(ref.total_trace, rel=1e-13)


def test_feature_streaming_equals_in_memory_and_dense_second_moment():
    rng = np.random.default_rng(9)
    C, d_ = 6, 20
    labels = rng.integers(0, C, 150)
    v = rng.standard_normal((150, d_)) + rng.standard_normal((C, d_))[labels]
    ref = decompose_features(v, labels)
    acc = FeatureAccumulator(C, second_moment=True)
    for idx in random_batches(rng, 150, 11):
        acc.update(v[idx], labels[idx])
    out = acc.finalize()
    assert out.within_part.method.startswith("dense")
    scale = np.abs(v).max() ** 2
    for name in ("global", "between", "within"):
        close(dense(out.parts[name].as_operator()), dense(ref.parts[name].as_operator()), scale)
    s_out, s_ref = out.separation(), ref.separation()
    assert s_out.within_over_between == pytest.approx(s_ref.within_over_between, rel=1e-10)


def test_cross_class_dense_second_moment_and_total_operator_agree():
    v, labels, probs = cross_data(10, P=25)
    streamed = decompose_cross_class(v, labels, probs)
    with_dense = decompose_cross_class(v, labels, probs, second_moment=True)
    acc = CrossClassAccumulator(4)
    acc.update(v, labels, probs)
    total = DenseOperator(dense(streamed.total_operator()))
    from_total = acc.finalize(total=total)
    W = dense(streamed.within_part.as_operator())
    scale = np.abs(dense(streamed.total_operator())).max()
    close(dense(with_dense.within_part.as_operator()), W, scale)
    close(dense(from_total.within_part.as_operator()), W, scale)
    assert from_total.within_part.method.startswith("total")
    no_data = acc.finalize()
    assert no_data.within_part.method == "unavailable"
    assert no_data.within_part.trace == pytest.approx(np.trace(W), rel=1e-12)
    with pytest.raises(ValueError, match="needs the data"):
        no_data.within_part.as_operator()


def test_float32_data_keeps_float32_sums_and_float64_gram():
    v, labels, probs = cross_data(11, dtype=np.float32)
    d32 = decompose_cross_class(v, labels, probs.astype(np.float32))
    d64 = decompose_cross_class(v.astype(np.float64), labels, probs)
    assert d32.cross_means.dtype == torch.float32
    assert d32.cross_part.gram.dtype == np.float64
    close(d32.cross_part.eigenvalues, d64.cross_part.eigenvalues, d64.cross_part.eigenvalues[0], rtol=1e-5)
    assert d32.cross_part.rank == d64.cross_part.rank == 8


def test_restreaming_a_different_source_is_an_error():
    v, labels, probs = cross_data(12)
    acc = CrossClassAccumulator(4)
    acc.update(v, labels, probs)
    d = acc.finalize(batches=lambda: [(v[:10], labels[:10], probs[:10])])
    with pytest.raises(ValueError, match="batches: the source yielded 10 examples"):
        d.within_part.as_operator().matvec(np.ones(40))


@pytest.mark.gpu
def test_accumulation_on_gpu_matches_cpu():
    v, labels, probs = cross_data(13)
    cpu = decompose_cross_class(v, labels, probs)
    gpu = decompose_cross_class(torch.as_tensor(v).cuda(), torch.as_tensor(labels).cuda(), torch.as_tensor(probs).cuda())
    close(gpu.cross_part.eigenvalues, cpu.cross_part.eigenvalues, cpu.cross_part.eigenvalues[0], rtol=1e-10)
    W = dense(cpu.within_part.as_operator())
    close(gpu.within_part.as_operator().to_dense().cpu().numpy(), W, np.abs(W).max(), rtol=1e-10)


# --------------------------------------------------------------------------- bad input


def test_bad_input_errors_name_the_argument():
    v, labels, probs = cross_data(14)
    bad = labels.copy()
    bad[3] = 4
    with pytest.raises(ValueError, match=r"labels: values must lie in \[0, 4\)"):
        decompose_cross_class(v, bad, probs)
    with pytest.raises(ValueError, match=r"labels: class\(es\) \[2\] have no examples"):
        keep = labels != 2
        decompose_cross_class(v[keep], labels[keep], probs[keep])
    with pytest.raises(ValueError, match=r"labels: class\(es\) \[1\] have no examples"):
        decompose_features(v[labels != 1, 0], labels[labels != 1])
    neg = probs.copy()
    neg[0] = [1.2, -0.2, 0.0, 0.0]
    with pytest.raises(ValueError, match="probs: probabilities must be nonnegative"):
        decompose_cross_class(v, labels, neg)
    with pytest.raises(ValueError, match="probs: every row must sum to one"):
        decompose_cross_class(v, labels, probs * 1.01)
    with pytest.raises(ValueError, match=r"probs: expected shape \(60, 4\)"):
        decompose_cross_class(v, labels, probs[:, :3])
    with pytest.raises(ValueError, match=r"labels: expected shape \(60,\)"):
        decompose_cross_class(v, labels[:-1], probs)
    with pytest.raises(ValueError, match=r"v: expected shape \(N, C, P\)"):
        decompose_cross_class(v[:, 0], labels, probs)
    with pytest.raises(ValueError, match=r"v: expected shape \(n, 4, P\)"):
        CrossClassAccumulator(4).update(v[:, :3], labels, probs[:, :3])
    with pytest.raises(TypeError, match="labels: expected integer class indices"):
        decompose_features(v[:, 0], labels.astype(float))
    with pytest.raises(ValueError, match="probs: required"):
        decompose_cross_class(v, labels, None, weighted=True)
    with pytest.raises(ValueError, match="num_classes: expected an integer >= 2"):
        FeatureAccumulator(1)
    acc = CrossClassAccumulator(4)
    acc.update(v[:5], labels[:5], probs[:5])
    with pytest.raises(ValueError, match="v: vectors of length 39, but earlier batches had 40"):
        acc.update(v[5:, :, :39], labels[5:], probs[5:])
    acc.update(v[5:], labels[5:], probs[5:])
    with pytest.raises(ValueError, match="total: expected an operator of size 40"):
        acc.finalize(total=DenseOperator(torch.eye(39, dtype=torch.float64)))
    with pytest.raises(ValueError, match="finalize: no batches"):
        FeatureAccumulator(3).finalize()
    nan = v.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(FloatingPointError, match="v: the data contain NaN"):
        decompose_cross_class(nan, labels, probs)
