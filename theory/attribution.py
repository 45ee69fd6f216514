"""Quantitative spectral attribution by knockouts (PAPER.md section 4).

For an operator ``A`` and named additive components ``B`` (the parts of a
decomposition, or any operators):

* knockouts: subtraction ``A - B`` and projection ``(I - Q_B Q_B^T) A (I - Q_B Q_B^T)``
  with ``Q_B`` an orthonormal basis of ``range(B)`` (low-rank components only);
* a bulk edge (:func:`estimate_bulk_edge`) and the eigenvalues separated from the
  bulk, for ``A`` and each knockout (one threshold, that of ``A``);
* features of ``A``: the separated eigenvalues whose eigenvectors lie mostly in
  the range of a defining component (``outliers``: class means, ``bump``:
  cross-class means, as PAPER.md prescribes: count by overlap, not by eye), and
  the ``bulk`` (the rest of the spectrum);
* a feature is attributable to ``B`` when every knockout of ``B`` makes it vanish
  while every other feature stays, and to no other component; the verdict says
  which, ``absent``, or ``not attributable`` with the evidence;
* only eigenvalues above the bulk edge are counted: a bump inside or below the
  main bulk (PAPER.md: its side is not fixed) shows in the log-density figure,
  but its verdict reads ``absent`` (nothing above the edge);
* certificates on the computed numbers: for ``B >= 0`` of rank ``r`` (Weyl) and
  for the projection of rank ``r`` (Cauchy interlacing),
  ``lambda_{k+r}(A) <= lambda_k(K) <= lambda_k(A)``, hence
  ``n_sep(A) - r <= n_sep(K) <= n_sep(A)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import torch

from .operators import SymmetricOperator, as_operator, check_symmetric
from .runs import RunFolder
from .spectral import (
    Eigenpairs,
    SpectralDensity,
    bulk_density,
    spectral_densities,
    top_eigenpairs,
)
from .structure import CrossClassDecomposition, FeatureDecomposition, LowRankPart, WithinPart

__all__ = [
    "Component",
    "as_component",
    "subtraction_knockout",
    "projection_knockout",
    "BulkEdge",
    "estimate_bulk_edge",
    "Certificate",
    "KnockoutSpectrum",
    "FeatureVerdict",
    "AttributionReport",
    "attribute",
    "attribute_decomposition",
]


# --------------------------------------------------------------------------- components
@dataclass(frozen=True)
class Component:
    """A named additive part ``B`` of ``A``.

    ``basis``: orthonormal ``p x r`` basis of ``range(B)`` when ``B`` has low rank
    (enables the projection knockout and the overlaps), else None. ``positive``:
    ``B`` is positive semidefinite (the certificates apply).
    """

    name: str
    rank: int | None
    positive: bool
    operator: SymmetricOperator = field(metadata={"json": False}, repr=False)
    basis: torch.Tensor | None = field(default=None, metadata={"json": False}, repr=False)


def as_component(name: str, obj: Any) -> Component:
    """A :class:`Component` from a :class:`~theory.structure.LowRankPart` (range from
    the Gram trick), a :class:`~theory.structure.WithinPart` (positive, full rank),
    a ``Component``, or any operator (not assumed positive, no range)."""
    if isinstance(obj, Component):
        return obj
    if isinstance(obj, LowRankPart):
        return Component(name, obj.rank, True, obj.as_operator(), obj.range_basis())
    if isinstance(obj, WithinPart):
        return Component(name, None, True, obj.as_operator(), None)
    try:
        op = as_operator(obj)
    except (TypeError, ValueError) as err:
        raise TypeError(f"components[{name!r}]: expected a LowRankPart, WithinPart, Component or operator ({err})") from err
    return Component(name, None, False, op, None)


def subtraction_knockout(A: Any, component: Any) -> SymmetricOperator:
    """``A - B`` as an operator."""
    comp = as_component("component", component)
    return as_operator(A) - comp.operator


def projection_knockout(A: Any, component: Any) -> SymmetricOperator:
    """``(I - Q Q^T) A (I - Q Q^T)`` with ``Q`` an orthonormal basis of ``range(B)``."""
    comp = as_component("component", component)
    if comp.basis is None:
        raise ValueError(f"component: {comp.name!r} has no low-rank range basis; the projection knockout needs one")
    A = as_operator(A)
    return A.project_out(comp.basis.to(dtype=A.dtype, device=A.device), orthonormalize=False)


# --------------------------------------------------------------------------- bulk edge
@dataclass(frozen=True)
class BulkEdge:
    """Upper edge of the bulk by square-root extrapolation of its upper quantiles.

    ``x_j = edge - spacing * j^(2/3)`` is fitted to the ``j``-th largest bulk
    eigenvalue for ``j = 1 .. J``; ``threshold = edge + margin * spacing``;
    ``num_separated`` eigenvalues lie above it (``saturated``: all that were
    computed did, so there may be more).
    """

    edge: float
    spacing: float
    threshold: float
    margin: float
    num_separated: int
    saturated: bool
    fit_rms: float
    fit_counts: np.ndarray
    fit_values: np.ndarray


def _bulk_quantiles(eigenvalues: np.ndarray, size: int, bulk: SpectralDensity | None, counts: np.ndarray) -> np.ndarray:
    """``x`` with ``#{lambda_i > x} = t`` for each count ``t``: the ``t``-th computed
    eigenvalue when ``t <= k``, else from the quadrature of the deflated operator
    (``#{lambda > x} = k + (p - k) sum_{nodes > x} w``), interpolated at mid-steps."""
    k = eigenvalues.size
    out = np.empty(counts.size)
    exact = counts <= k
    out[exact] = eigenvalues[counts[exact] - 1]
    if (~exact).any():
        order = np.argsort(-bulk.nodes)
        nodes, w = bulk.nodes[order], bulk.weights[order] / bulk.weights.sum()
        mid = k + (size - k) * (np.cumsum(w) - 0.5 * w)
        out[~exact] = np.interp(counts[~exact], mid, nodes)
    return out


def estimate_bulk_edge(
    eigenvalues: np.ndarray,
    size: int,
    *,
    bulk: SpectralDensity | None = None,
    margin: float = 2.0,
    fit_fraction: float = 0.05,
    min_points: int = 8,
) -> BulkEdge:
    """Bulk edge of a spectrum from its top ``k`` eigenvalues (descending) and,
    optionally, the density of the operator deflated by them.

    Estimator: a bulk with a soft (square-root) edge, ``rho(x) ~ sqrt(edge - x)``,
    as every sample-covariance-like bulk has (Marchenko-Pastur and its
    deformations), has counting function ``#{lambda > x} ~ b (edge - x)^(3/2)``, so
    its ``j``-th largest eigenvalue is ``x_j ~ edge - spacing j^(2/3)`` with
    ``spacing = b^(-2/3)``, the typical gap at the edge (about three Tracy-Widom
    scales). Given a candidate number ``n`` of separated eigenvalues, the bulk
    quantiles ``x_j = lambda_{n+j}`` for ``j = 1 .. J``, ``J = max(min_points,
    fit_fraction (p - n))`` (from the computed eigenvalues, then from the deflated
    quadrature), are fitted by least squares in ``(edge, spacing)``; the count
    above ``edge + margin * spacing`` gives the next ``n``. Starting from ``n = k``
    (every computed eigenvalue removed, which biases the edge low) the count
    decreases to the largest self-consistent ``n``. The fit uses many bulk
    eigenvalues, so a single large one cannot move it, and the margin keeps
    Tracy-Widom fluctuations of the top bulk eigenvalue (tail beyond about
    ``5.6`` scales) from counting as outliers.
    """
    vals = np.sort(np.asarray(eigenvalues, dtype=np.float64).reshape(-1))[::-1]
    k, p = vals.size, int(size)
    if k < 1 or p <= k:
        raise ValueError(f"eigenvalues: expected 1 <= k < size = {p} top eigenvalues, got k = {k}")
    if not (0 < fit_fraction < 1):
        raise ValueError(f"fit_fraction: expected a number in (0, 1), got {fit_fraction}")
    if not margin >= 0:
        raise ValueError(f"margin: expected a number >= 0, got {margin}")

    def fit(n: int):
        J = max(int(min_points), int(round(fit_fraction * (p - n))))
        J = min(J, p - n) if bulk is not None else min(J, k - n)
        if J < 3:
            raise ValueError(
                f"eigenvalues: too few bulk values to fit the edge (n = {n} separated of k = {k} computed); "
                "compute more eigenvalues or pass bulk="
            )
        j = np.arange(1, J + 1)
        x = _bulk_quantiles(vals, p, bulk, n + j)
        X = np.stack([np.ones(J), -(j ** (2.0 / 3.0))], axis=1)
        (edge, spacing), *_ = np.linalg.lstsq(X, x, rcond=None)
        spacing = max(float(spacing), 0.0)
        rms = float(np.sqrt(np.mean((X @ np.array([edge, spacing]) - x) ** 2)))
        return float(edge), spacing, rms, j, x

    n = k if bulk is not None else max(k - min_points, 0)
    seen: set[int] = set()
    while True:
        edge, spacing, rms, j, x = fit(n)
        threshold = edge + margin * spacing
        count = int(np.sum(vals > threshold))
        if count == n or count in seen:
            n = min(n, count)
            break
        seen.add(n)
        n = count if bulk is not None else min(count, max(k - min_points, 0))
    edge, spacing, rms, j, x = fit(n)
    threshold = edge + margin * spacing
    n = int(np.sum(vals > threshold))
    return BulkEdge(edge, spacing, threshold, float(margin), n, n >= k, rms, j, x)


# --------------------------------------------------------------------------- report records
@dataclass(frozen=True)
class Certificate:
    """Weyl (subtraction of ``B >= 0``) or Cauchy interlacing (projection) checked on the
    computed eigenvalues ``theta``: ``theta_k(K) <= theta_k(A)`` and, for rank ``r``,
    ``theta_{k+r}(A) <= theta_k(K)``, each up to ``tolerance`` (residuals plus
    round-off); and ``n_sep(A) - r <= n_sep(K) <= n_sep(A)``."""

    kind: str
    rank: int | None
    upper_violation: float
    lower_violation: float | None
    tolerance: float
    count_bounds: tuple[int, int]
    holds: bool


@dataclass(frozen=True)
class KnockoutSpectrum:
    """Spectrum summary of ``A`` (``kind="original"``) or one knockout of it.

    ``eigenvalues`` (top, descending) with ``residuals``; ``num_separated`` above the
    threshold of ``A``; ``bulk_mass``: spectral mass in ``(zero_tol, threshold]``;
    ``retained[f]``: ``|U_sep^T U_f|_F^2 / |f|``, the share of feature ``f``'s
    eigenvectors inside this operator's separated eigenspace (1: stays, 0: gone).
    """

    name: str
    kind: str
    component: str | None
    eigenvalues: np.ndarray
    residuals: np.ndarray
    num_separated: int
    saturated: bool
    bulk_mass: float
    retained: dict[str, float]
    certificate: Certificate | None
    density: SpectralDensity
    log_density: SpectralDensity
    eigenvectors: torch.Tensor = field(metadata={"json": False}, repr=False)


@dataclass(frozen=True)
class FeatureVerdict:
    """One spectral feature of ``A`` and the component it is attributable to.

    ``verdict`` is ``"attributable"`` (``component`` names it), ``"absent"`` (the
    feature is not in the spectrum) or ``"not attributable"`` (the knockouts
    disagree, or none or several remove it); ``evidence`` says why.
    """

    feature: str
    defined_by: str | None
    size: int
    eigenvalues: np.ndarray
    verdict: str
    component: str | None
    vanishes_under: list[str]
    stays_under: list[str]
    evidence: str


@dataclass(frozen=True)
class AttributionReport:
    """Everything :func:`attribute` measured; ``spectra[0]`` is ``A`` itself.

    ``overlaps[i, j] = |Q_j^T u_i|^2``: share of ``A``'s ``i``-th top eigenvector in
    the range of low-rank component ``overlap_components[j]``.
    """

    size: int
    components: dict[str, int | None]
    edge: BulkEdge
    eigenvalues: np.ndarray
    overlaps: np.ndarray
    overlap_components: list[str]
    spectra: list[KnockoutSpectrum]
    features: list[FeatureVerdict]
    settings: dict[str, Any]

    def verdict(self, feature: str) -> FeatureVerdict:
        for f in self.features:
            if f.feature == feature:
                return f
        raise KeyError(f"feature: no feature named {feature!r} (have {[f.feature for f in self.features]})")

    def summary(self) -> str:
        """A short Markdown account: edge, counts per knockout, certificates, verdicts."""
        e = self.edge
        lines = [
            "# Spectral attribution",
            "",
            f"Bulk edge {e.edge:.6g} (spacing {e.spacing:.3g}); eigenvalues above {e.threshold:.6g} "
            f"(edge + {e.margin:g} spacings) count as separated: {e.num_separated}"
            + (" (all computed eigenvalues; raise num_top)" if e.saturated else "") + ".",
            "",
            "| operator | separated | bulk mass | " + " | ".join(f"retained {f.feature}" for f in self.features if f.feature != "bulk") + " | certificate |",
            "|---|---|---|" + "---|" * sum(f.feature != "bulk" for f in self.features) + "---|",
        ]
        for s in self.spectra:
            cert = "-" if s.certificate is None else ("holds" if s.certificate.holds else "VIOLATED")
            ret = " | ".join(f"{s.retained.get(f.feature, float('nan')):.2f}" for f in self.features if f.feature != "bulk")
            lines.append(f"| {s.name} | {s.num_separated}{'+' if s.saturated else ''} | {s.bulk_mass:.3f} | {ret} | {cert} |")
        lines += ["", "| feature | size | verdict | component | evidence |", "|---|---|---|---|---|"]
        for f in self.features:
            lines.append(f"| {f.feature} | {f.size} | {f.verdict} | {f.component or '-'} | {f.evidence} |")
        return "\n".join(lines) + "\n"

    def figure(self, columns: int = 3):
        """Log-densities of ``A`` (grey) and of each knockout over it (Papyan 2020, Fig. 5
        style), separated eigenvalues marked as ticks and the threshold as a dashed
        line; the x range is the support of ``A`` (zero eigenvalues of projection
        knockouts, at ``log10(eps)``, may fall outside it)."""
        import matplotlib.pyplot as plt

        n = len(self.spectra)
        cols = min(columns, n)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
        base = self.spectra[0]
        eps = base.log_density.eps
        y_thr = math.log10(abs(self.edge.threshold) + eps)
        floor = max(base.log_density.density.max(), 1e-300) * 1e-5
        support = base.log_density.grid[base.log_density.density > 10 * floor]
        xlim = (support.min() - 0.5, support.max() + 0.3) if support.size else None
        for ax, s in zip(axes.flat, self.spectra):
            ax.fill_between(base.log_density.grid, floor, np.maximum(base.log_density.density, floor), color="0.8", label="A")
            if s is not base:
                ax.semilogy(s.log_density.grid, np.maximum(s.log_density.density, floor), color="C3", lw=1.2, label=s.name)
            else:
                ax.set_yscale("log")
            sep = s.eigenvalues[s.eigenvalues > self.edge.threshold]
            ax.plot(np.log10(np.abs(sep) + eps), np.full(sep.size, floor * 3), "|", color="C0", ms=10, mew=0.6,
                    label="separated eigenvalues")
            ax.axvline(y_thr, color="k", ls="--", lw=0.8, label="edge threshold")
            if xlim is not None:
                ax.set_xlim(*xlim)
            ax.set_title(f"{s.name}: {s.num_separated} separated", fontsize=9)
            ax.set_xlabel("log10(|lambda| + eps)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6, loc="upper left")
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        fig.tight_layout()
        return fig

    def save(self, out: str | RunFolder, prefix: str = "attribution") -> RunFolder:
        """Write ``<prefix>.json``, ``<prefix>.md`` and ``<prefix>.png`` atomically."""
        folder = out if isinstance(out, RunFolder) else RunFolder(out)
        folder.write_json(f"{prefix}.json", self)
        folder.write_text(f"{prefix}.md", self.summary())
        folder.save_figure(f"{prefix}.png", self.figure())
        return folder


# --------------------------------------------------------------------------- the analysis
def _dense_eigenpairs(op: SymmetricOperator, k: int) -> Eigenpairs:
    """The top ``k`` eigenpairs from ``eigh`` of ``op.to_dense()`` (float64, LAPACK ``evr``
    on the wanted index range only), with residuals ``|D v - lambda v|``."""
    D = op.to_dense().to(dtype=torch.float64, device="cpu").numpy()
    D = 0.5 * (D + D.T)
    p = D.shape[0]
    vals, vecs = scipy.linalg.eigh(D, subset_by_index=[p - k, p - 1], driver="evr")
    vals, vecs = vals[::-1].copy(), vecs[:, ::-1].copy()
    res = np.linalg.norm(D @ vecs - vecs * vals, axis=0)
    return Eigenpairs(
        eigenvalues=vals, eigenvectors=torch.as_tensor(vecs).to(dtype=op.dtype, device=op.device), residuals=res,
        num_iterations=0, converged=True, which="largest", block_size=p, seed=0, num_products=p,
    )


def _retained(U_sep: torch.Tensor, U_feature: torch.Tensor) -> float:
    if U_feature.shape[1] == 0:
        return float("nan")
    if U_sep.shape[1] == 0:
        return 0.0
    M = U_sep.to(torch.float64).T @ U_feature.to(device=U_sep.device, dtype=torch.float64)
    return float((M * M).sum()) / U_feature.shape[1]


def _certificate(kind: str, rank: int | None, top_a, res_a, n_a: int, top_k, res_k, n_k: int, dtype) -> Certificate:
    scale = float(np.max(np.abs(top_a))) if top_a.size else 0.0
    rel = 100.0 * float(torch.finfo(dtype).eps) * max(scale, 1e-300)
    m = min(top_a.size, top_k.size)
    tol_upper = res_a[:m] + res_k[:m] + rel
    upper = float(np.max(top_k[:m] - top_a[:m] - tol_upper, initial=-np.inf))
    lower = None
    if rank is not None:
        idx = np.arange(m)
        ok = idx + rank < top_a.size
        if ok.any():
            i = idx[ok]
            lower = float(np.max(top_a[i + rank] - top_k[i] - (res_a[i + rank] + res_k[i] + rel)))
    low_count = n_a - rank if rank is not None else 0
    holds = upper <= 0 and (lower is None or lower <= 0) and (max(low_count, 0) <= n_k <= n_a)
    return Certificate(
        kind=kind,
        rank=rank,
        upper_violation=max(upper, 0.0),
        lower_violation=None if lower is None else max(lower, 0.0),
        tolerance=float(np.max(tol_upper, initial=rel)),
        count_bounds=(max(low_count, 0), n_a),
        holds=bool(holds),
    )


def attribute(
    A: Any,
    components: Mapping[str, Any],
    *,
    features: Mapping[str, str] | None = None,
    num_top: int | None = None,
    eigensolver: str = "subspace",
    eig_tol: float = 1e-4,
    num_iterations: int | None = None,
    max_iterations: int = 500,
    edge_margin: float = 2.0,
    fit_fraction: float = 0.05,
    overlap_threshold: float = 0.5,
    vanish: float = 0.25,
    stay: float = 0.75,
    zero_tol: float | None = None,
    log_eps: float = 1e-6,
    density: Mapping[str, Any] | None = None,
    seed: int = 0,
    show_progress: bool = False,
) -> AttributionReport:
    """Attribute the outliers, bump(s) and bulk of ``A`` to its ``components``.

    ``features`` maps a feature name to the low-rank component whose range defines
    it: a separated eigenvalue of ``A`` belongs to the feature whose defining range
    holds the largest share of its eigenvector, if that share is at least
    ``overlap_threshold`` (default ``{"outliers": "class", "bump": "cross"}`` restricted
    to the components given). ``bulk`` is the rest of the spectrum; its mass is that
    in ``(zero_tol, threshold]`` (default ``zero_tol``: ``1e-6 |lambda_1|``).

    ``num_top`` eigenpairs of ``A`` (default: the summed ranks of the low-rank
    components plus 16), and ``n_sep(A) + 8`` of each knockout, come from
    :func:`theory.spectral.top_eigenpairs` (``eigensolver="subspace"``: block
    subspace iteration to relative residual ``eig_tol``, or a fixed
    ``num_iterations``) or, when the caller asks for it with
    ``eigensolver="dense"``, from ``eigh`` of the dense matrix (exact; for sizes
    up to a few thousand, where it is faster). ``density`` holds keyword
    arguments of :func:`theory.spectral.spectral_density` (``num_steps``,
    ``num_repeats``, ``kappa``, ...); every density uses the bounds of ``A`` and the
    same seed, so that they compare point by point.

    A feature vanishes under a knockout when ``retained <= vanish`` (bulk:
    ``bulk_mass <= vanish`` times that of ``A``) and stays when ``retained >= stay``
    (bulk: mass ratio ``>= stay``). It is attributable to ``B`` when it vanishes
    under every knockout of ``B`` (subtraction, and projection if low-rank) while
    every other nonempty feature stays under them, and ``B`` is the only such
    component.
    """
    A = as_operator(A)
    if not components:
        raise ValueError("components: expected at least one named component")
    comps = {str(name): as_component(str(name), c) for name, c in components.items()}
    for name, c in comps.items():
        if c.operator.size != A.size:
            raise ValueError(f"components[{name!r}]: size {c.operator.size} differs from the size {A.size} of A")
        if c.operator.dtype != A.dtype or c.operator.device != A.device:
            raise ValueError(
                f"components[{name!r}]: dtype/device ({c.operator.dtype}, {c.operator.device}) differ from A's "
                f"({A.dtype}, {A.device})"
            )
    low_rank = [n for n, c in comps.items() if c.basis is not None]
    if features is None:
        features = {f: c for f, c in {"outliers": "class", "bump": "cross"}.items() if c in low_rank}
    for f, c in features.items():
        if c not in low_rank:
            raise ValueError(f"features[{f!r}]: {c!r} is not a low-rank component (have {low_rank})")
        if f == "bulk":
            raise ValueError("features: 'bulk' is reserved for the rest of the spectrum")
    if not (0 <= vanish < stay <= 1):
        raise ValueError(f"vanish, stay: expected 0 <= vanish < stay <= 1, got {vanish}, {stay}")
    if eigensolver not in ("subspace", "dense"):
        raise ValueError(f"eigensolver: expected 'subspace' or 'dense', got {eigensolver!r}")
    p = A.size
    if num_top is None:
        num_top = sum(comps[n].rank for n in low_rank) + 16
    num_top = int(min(max(num_top, 4), p - 2))
    dens_kw = dict(density or {})
    allowed = {"num_steps", "num_repeats", "kappa", "num_points", "margin", "seed", "reorthogonalize"}
    if set(dens_kw) - allowed:
        raise ValueError(f"density: unexpected keys {sorted(set(dens_kw) - allowed)} (allowed: {sorted(allowed)})")
    dens_kw.setdefault("seed", seed)

    def top(op: SymmetricOperator, k: int) -> Eigenpairs:
        if eigensolver == "dense":
            return _dense_eigenpairs(op, k)
        return top_eigenpairs(
            op, k, tol=eig_tol, num_iterations=num_iterations, max_iterations=max_iterations,
            seed=seed, check_symmetry=False, show_progress=show_progress,
        )

    # --- A: top eigenpairs, densities, bulk edge
    check_symmetric(A, seed=seed)
    pairs = top(A, num_top)
    dens_kw["check_symmetry"] = False
    lin_a, log_a = spectral_densities(A, eps=log_eps, **dens_kw)
    bounds = lin_a.bounds
    deflated = bulk_density(A, pairs, **dens_kw)
    edge = estimate_bulk_edge(pairs.eigenvalues, p, bulk=deflated.bulk, margin=edge_margin, fit_fraction=fit_fraction)
    thr = edge.threshold
    if zero_tol is None:
        zero_tol = 1e-6 * float(np.max(np.abs(pairs.eigenvalues)))

    def bulk_mass(d: SpectralDensity) -> float:
        return float(d.weights[(d.nodes > zero_tol) & (d.nodes <= thr)].sum())

    U = pairs.eigenvectors
    sep = pairs.eigenvalues > thr
    bases = {n: comps[n].basis.to(dtype=torch.float64, device=U.device) for n in low_rank}
    U64 = U.to(torch.float64)
    overlaps = np.stack([((bases[n].T @ U64) ** 2).sum(dim=0).cpu().numpy() for n in low_rank], axis=1) if low_rank else np.zeros((U.shape[1], 0))

    # --- features by overlap with their defining ranges
    feat_names = list(features)
    members: dict[str, np.ndarray] = {f: np.zeros(0, dtype=int) for f in feat_names}
    unassigned = np.zeros(0, dtype=int)
    if feat_names:
        cols = [low_rank.index(features[f]) for f in feat_names]
        share = overlaps[:, cols]
        best = share.argmax(axis=1)
        owned = share.max(axis=1) >= overlap_threshold
        for fi, f in enumerate(feat_names):
            members[f] = np.flatnonzero(sep & owned & (best == fi))
        unassigned = np.flatnonzero(sep & ~owned)
    else:
        unassigned = np.flatnonzero(sep)
    if unassigned.size:
        feat_names.append("other separated")
        members["other separated"] = unassigned
    sep_feats = [f for f in feat_names if members[f].size]
    Uf = {f: U[:, members[f]] for f in feat_names}

    def summarize(name, kind, comp, op, top, cert_rank, lin=None, log=None) -> KnockoutSpectrum:
        vals = top.eigenvalues
        n_sep = int(np.sum(vals > thr))
        if lin is None:
            lin, log = spectral_densities(op, eps=log_eps, bounds=bounds, **dens_kw)
        Usep = top.eigenvectors[:, vals > thr]
        retained = {f: _retained(Usep, Uf[f]) for f in feat_names}
        cert = None
        if cert_rank is not False:
            cert = _certificate(kind, cert_rank, pairs.eigenvalues, pairs.residuals, edge.num_separated, vals, top.residuals, n_sep, A.dtype)
        return KnockoutSpectrum(
            name, kind, comp, vals, top.residuals, n_sep, bool(n_sep >= vals.size), bulk_mass(lin),
            retained, cert, lin, log, top.eigenvectors,
        )

    spectra = [summarize("A", "original", None, A, pairs, False, lin_a, log_a)]
    k_knock = int(min(edge.num_separated + 8, p - 2))
    for name, c in comps.items():
        ops = [("subtraction", f"A - {name}", subtraction_knockout(A, c), c.rank if c.positive else False)]
        if c.basis is not None:
            ops.append(("projection", f"P⊥ A P⊥ ({name})", projection_knockout(A, c), c.rank))
        for kind, label, op, cert_rank in ops:  # cert_rank None: B >= 0 of full rank, upper Weyl bound only
            spectra.append(summarize(label, kind, name, op, top(op, k_knock), cert_rank))

    # --- verdicts
    mass_a = spectra[0].bulk_mass
    verdicts = []
    for f in feat_names + ["bulk"]:
        size = int(members[f].size) if f != "bulk" else int(p - edge.num_separated)
        vals = pairs.eigenvalues[members[f]] if f != "bulk" else np.zeros(0)
        defined_by = features.get(f) if f != "bulk" else None
        if f != "bulk" and size == 0:
            verdicts.append(FeatureVerdict(
                f, defined_by, 0, vals, "absent", None, [], [],
                f"no eigenvalue above the threshold {thr:.4g} has at least {overlap_threshold:g} of its "
                f"eigenvector in range({defined_by})",
            ))
            continue

        def gone(s: KnockoutSpectrum) -> bool:
            return s.bulk_mass <= vanish * mass_a if f == "bulk" else s.retained[f] <= vanish

        def others_stay(s: KnockoutSpectrum) -> bool:
            ok = all(s.retained[g] >= stay for g in sep_feats if g != f)
            return ok and (f == "bulk" or s.bulk_mass >= stay * mass_a)

        vanish_under = [s.name for s in spectra[1:] if gone(s)]
        stays_under = [s.name for s in spectra[1:] if not gone(s) and (s.bulk_mass >= stay * mass_a if f == "bulk" else s.retained[f] >= stay)]
        candidates = []
        notes = []
        for name in comps:
            mine = [s for s in spectra[1:] if s.component == name]
            if all(gone(s) for s in mine) and all(others_stay(s) for s in mine):
                candidates.append(name)
            elif any(gone(s) for s in mine):
                why = "the knockouts disagree" if not all(gone(s) for s in mine) else "other features vanish too"
                notes.append(f"{name}: {why}")
        measure = "bulk mass ratio" if f == "bulk" else "retained"

        def value(s: KnockoutSpectrum) -> float:
            return s.bulk_mass / mass_a if f == "bulk" else s.retained[f]

        if len(candidates) == 1:
            name = candidates[0]
            detail = ", ".join(f"{s.kind} {measure} {value(s):.2f}" for s in spectra[1:] if s.component == name)
            ov = ""
            if f != "bulk" and name in low_rank:
                ov = f"; mean overlap with range({name}) {overlaps[members[f], low_rank.index(name)].mean():.2f}"
            verdicts.append(FeatureVerdict(
                f, defined_by, size, vals, "attributable", name, vanish_under, stays_under,
                f"vanishes under {name} ({detail}) while the other features stay{ov}",
            ))
        else:
            why = (f"several components remove it alone: {', '.join(candidates)}" if candidates
                   else "no single component's knockouts remove it while the rest stays")
            if notes:
                why += " (" + "; ".join(notes) + ")"
            verdicts.append(FeatureVerdict(f, defined_by, size, vals, "not attributable", None, vanish_under, stays_under, why))

    settings = dict(
        num_top=num_top, eig_tol=eig_tol, edge_margin=edge_margin, fit_fraction=fit_fraction,
        overlap_threshold=overlap_threshold, vanish=vanish, stay=stay, zero_tol=zero_tol, log_eps=log_eps,
        density=dens_kw, features=dict(features), seed=seed,
    )
    return AttributionReport(
        size=p,
        components={n: c.rank for n, c in comps.items()},
        edge=edge,
        eigenvalues=pairs.eigenvalues,
        overlaps=overlaps,
        overlap_components=low_rank,
        spectra=spectra,
        features=verdicts,
        settings=settings,
    )


def attribute_decomposition(decomposition: CrossClassDecomposition | FeatureDecomposition, **kwargs: Any) -> AttributionReport:
    """:func:`attribute` for ``A = decomposition.total_operator()`` and its parts:
    class / cross / diag / within for three-index vectors (outliers defined by the
    class range, the bump by the cross range), class / within for features
    (outliers by the span of the class means, global mean included)."""
    if isinstance(decomposition, CrossClassDecomposition):
        comps = {n: decomposition.parts[n] for n in ("class", "cross", "diag", "within")}
    elif isinstance(decomposition, FeatureDecomposition):
        comps = {"class": decomposition.class_part, "within": decomposition.within_part}
    else:
        raise TypeError(f"decomposition: expected a CrossClassDecomposition or FeatureDecomposition, got {type(decomposition).__name__}")
    return attribute(decomposition.total_operator(), comps, **kwargs)
