"""Class/cross-class decompositions of second-moment matrices (docs/math.md#two-index-decomposition, docs/math.md#three-index-decomposition).

Two-index objects (features) ``v_{i,c}`` in R^d, example i of class c, N examples,
``n_c`` of class c, ``pi_c = n_c / N``:

* class means ``mu_c = Ave_i v_{i,c}``, global mean ``mu_G = sum_c pi_c mu_c``;
* ``Ave v v^T = mu_G mu_G^T + Sigma_B + Sigma_W`` (exact) with
  ``Sigma_B = sum_c pi_c (mu_c - mu_G)(mu_c - mu_G)^T`` (rank <= C-1) and
  ``Sigma_W = Ave_{i,c} (v_{i,c} - mu_c)(v_{i,c} - mu_c)^T``; the class part
  ``sum_c pi_c mu_c mu_c^T = mu_G mu_G^T + Sigma_B`` has rank <= C.

Three-index objects (errors, gradients) ``v_{i,c,c'}`` with probabilities
``p_{i,c,c'}`` (each row of ``p`` sums to one) and ``M = (1/N) sum p v v^T``:

* cell weights ``P_{c,c'} = sum_i p_{i,c,c'}``, cross-class means
  ``v_{c,c'} = sum_i p v / P_{c,c'}`` (C^2), class weights
  ``P_c = sum_{c' != c} P_{c,c'}`` and class means
  ``v_c = sum_{c' != c} P_{c,c'} v_{c,c'} / P_c`` (the diagonal cell kept apart);
* ``M = M_class + M_cross + M_within + M_diag`` exactly, with
  ``M_class = (1/N) sum_c P_c v_c v_c^T`` (rank <= C),
  ``M_cross = (1/N) sum_c sum_{c' != c} P_{c,c'} (v_{c,c'} - v_c)(...)^T`` (rank <= C(C-2)),
  ``M_within = (1/N) sum_{c,c',i} p_{i,c,c'} (v_{i,c,c'} - v_{c,c'})(...)^T``,
  ``M_diag = (1/N) sum_c P_{c,c} v_{c,c} v_{c,c}^T`` (rank <= C).
* The unweighted form (arXiv 1901.08244, ``G = G0 + G1 + G2 + G3``) splits the
  same matrix ``M`` written as ``(1/N) sum u u^T`` over the scaled vectors
  ``u_{i,c,c'} = sqrt(p_{i,c,c'}) v_{i,c,c'}`` with unit weights: every ``p`` above
  becomes 1 and ``v`` becomes ``u`` (plain averages over ``i`` and over
  ``c' != c``). With ``probs=None`` the vectors are taken as ``u`` directly.

Counts need not be balanced: every example weighs ``1/N`` and class ``c``
weighs ``n_c / N``, so every split above is exact for any counts; with balanced
classes (``n_c = N / C``) the formulas are those of the paper. A class with no
examples is an error. A cell with zero weight (all ``p_{i,c,c'} = 0``) gets a
zero mean and contributes nothing.

Memory and the within part. The accumulators keep the ``C K`` running sums of
``P``-vectors (``K = 1`` for features, ``K = C`` cross-class cells), a few
``C x K`` tables, and one batch at a time. All mean parts are then kept as
factors: ``B = F^T F`` with ``F = L X``, ``X`` the ``C K x P`` cell means and
``L`` a small float64 coefficient matrix, so a product costs ``O(P C K k)`` and
the nonzero spectrum is that of the small Gram matrix ``L (X X^T) L^T``
(float64), never a ``P x P`` one. The within part (and the total) cannot be
applied from running sums: a product with ``sum w v v^T`` needs the data. Three
ways are offered, chosen at ``finalize``:

* ``batches``: a callable returning a fresh iterable of the same batches; each
  product re-streams the data (``O(N K P k)`` time, one batch of memory) and is
  computed centred, ``sum w (y - x_cell)(y - x_cell)^T V``, so there is no
  cancellation. The in-memory entry points use this with the arrays they were
  given (no copy).
* ``second_moment=True`` on the accumulator: the dense ``P x P`` sum of
  ``w y y^T`` is kept (``O(P^2)`` memory; for layer widths up to ~10^4), and the
  within part is that minus the mean parts (cancellation of order
  ``eps * ||M||``, harmless in float64).
* ``total``: an operator for ``M`` supplied by the caller (for example an
  autograd Gauss-Newton product); the within part is ``total - means`` as an
  operator (same cancellation as above, in the dtype of ``total``).

Traces of every part, including the within part, come from the running sums
alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from .operators import DenseOperator, SymmetricOperator, as_operator, torch_dtype

__all__ = [
    "BatchSource",
    "FactorOperator",
    "StreamedSecondMoment",
    "LowRankPart",
    "WithinPart",
    "SeparationStatistics",
    "FeatureDecomposition",
    "CrossClassDecomposition",
    "FeatureAccumulator",
    "CrossClassAccumulator",
    "decompose_features",
    "decompose_cross_class",
]

BatchSource = Callable[[], Iterable[tuple]]
"""A callable returning a fresh iterable of batches ``(v, labels)`` or ``(v, labels, probs)``."""

_GRAM_CHUNK = 1 << 15


# --------------------------------------------------------------------------- input checks
def _as_tensor(x: object, name: str) -> torch.Tensor:
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name}: expected a torch tensor or numpy array, got {type(x).__name__}") from err


def _check_labels(labels: object, n: int, num_classes: int) -> torch.Tensor:
    lab = _as_tensor(labels, "labels")
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"labels: expected shape ({n},) (one label per row of v), got {tuple(lab.shape)}")
    if lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
        raise TypeError(f"labels: expected integer class indices, got dtype {lab.dtype}")
    lab = lab.to(torch.int64)
    if n and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
        allowed = f"lie in [0, {num_classes})" if num_classes < np.iinfo(np.int64).max else "be class indices >= 0"
        raise ValueError(f"labels: values must {allowed}, got min {int(lab.min())} and max {int(lab.max())}")
    return lab


def _check_probs(probs: object, n: int, num_classes: int, atol: float) -> torch.Tensor:
    p = _as_tensor(probs, "probs")
    if p.shape != (n, num_classes):
        raise ValueError(f"probs: expected shape ({n}, {num_classes}) (one row per example), got {tuple(p.shape)}")
    if not p.is_floating_point():
        raise TypeError(f"probs: expected floating-point probabilities, got dtype {p.dtype}")
    if n == 0:
        return p
    if not bool(torch.isfinite(p).all()):
        raise ValueError("probs: contains NaN or Inf")
    if float(p.min()) < 0:
        raise ValueError(f"probs: probabilities must be nonnegative, got min {float(p.min()):.3g}")
    dev = (p.to(torch.float64).sum(dim=1) - 1.0).abs()
    worst = int(dev.argmax())
    if float(dev[worst]) > atol:
        raise ValueError(
            f"probs: every row must sum to one (within prob_atol={atol:g}); row {worst} sums to "
            f"{float(p[worst].to(torch.float64).sum()):.6g}"
        )
    return p


def _default_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype in (torch.float32, torch.float64):
        return dtype
    return torch.float32 if dtype.is_floating_point else torch.float64


@dataclass(frozen=True)
class _Layout:
    """How a raw batch maps to cells ``(c, k)``: ``K = 1`` for features, ``K = C``
    for cross-class vectors. A batch becomes ``v3 (b, K, P)``, labels, a row
    scale ``s (b, K)`` (``y = s v``; None for 1) and a weight ``w (b, K)`` (None for 1)."""

    num_classes: int
    cross: bool
    weighted: bool
    prob_atol: float

    @property
    def cells_per_class(self) -> int:
        return self.num_classes if self.cross else 1

    def prepare(self, batch: tuple, dtype: torch.dtype | None = None, device: torch.device | None = None):
        C = self.num_classes
        if self.cross:
            if len(batch) == 2 and not self.weighted:
                (v, labels), probs = batch, None
            elif len(batch) == 3:
                v, labels, probs = batch
            else:
                raise ValueError(
                    f"batch: expected (v, labels, probs){' or (v, labels)' if not self.weighted else ''}, "
                    f"got {len(batch)} items"
                )
            if probs is None and self.weighted:
                raise ValueError("probs: required for the probability-weighted decomposition (weighted=True)")
        else:
            if len(batch) != 2:
                raise ValueError(f"batch: expected (v, labels), got {len(batch)} items")
            (v, labels), probs = batch, None
        v = _as_tensor(v, "v")
        if self.cross:
            if v.ndim != 3 or v.shape[1] != C:
                raise ValueError(f"v: expected shape (n, {C}, P) (one vector per example and class), got {tuple(v.shape)}")
            v3 = v
        else:
            if v.ndim != 2:
                raise ValueError(f"v: expected shape (n, d), got {tuple(v.shape)}")
            v3 = v[:, None, :]
        n = v3.shape[0]
        lab = _check_labels(labels, n, C)
        s = w = None
        if probs is not None:
            p = _check_probs(probs, n, C, self.prob_atol)
            if self.weighted:
                w = p
            else:
                s = p.sqrt()
        if dtype is not None:
            v3 = v3.to(dtype=dtype, device=device)
            lab = lab.to(device)
            s = None if s is None else s.to(dtype=dtype, device=device)
            w = None if w is None else w.to(dtype=dtype, device=device)
        return v3, lab, s, w


# --------------------------------------------------------------------------- operators
class FactorOperator(SymmetricOperator):
    """``B = X^T Q X`` for stored vectors ``X`` (m x P) and a symmetric ``Q`` (m x m).

    ``B V = X^T (Q (X V))`` costs ``O(m P k)``; never forms a ``P x P`` matrix.
    """

    def __init__(self, vectors: torch.Tensor, coupling: torch.Tensor | np.ndarray):
        X = _as_tensor(vectors, "vectors")
        if X.ndim != 2:
            raise ValueError(f"vectors: expected shape (m, P), got {tuple(X.shape)}")
        Q = torch.as_tensor(coupling)
        if Q.shape != (X.shape[0], X.shape[0]):
            raise ValueError(f"coupling: expected shape ({X.shape[0]}, {X.shape[0]}), got {tuple(Q.shape)}")
        super().__init__(X.shape[1], _default_dtype(X.dtype), X.device)
        self.vectors = X.to(self.dtype)
        self.coupling = Q.to(dtype=self.dtype, device=self.device)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.vectors.T @ (self.coupling @ (self.vectors @ V))


class StreamedSecondMoment(SymmetricOperator):
    """``(1/N) sum_{i,k} w (y - x)(y - x)^T`` applied by re-streaming the data.

    ``y = s v`` are the (scaled) vectors of each batch, ``w`` their weights and
    ``x`` the mean of their cell (``centers``, ``C K x P``), or ``x = 0`` when
    ``centers`` is None (the total second moment). Each product is one pass over
    ``batches()``: ``O(N K P k)`` time, one batch of memory.
    """

    def __init__(
        self,
        batches: BatchSource,
        layout: _Layout,
        num_examples: int,
        size: int,
        dtype: torch.dtype,
        device: torch.device,
        centers: torch.Tensor | None = None,
    ):
        if not callable(batches):
            raise TypeError(f"batches: expected a callable returning an iterable of batches, got {type(batches).__name__}")
        super().__init__(size, dtype, device)
        self.batches, self.layout, self.num_examples = batches, layout, int(num_examples)
        self.centers = None if centers is None else centers.to(dtype=dtype, device=device)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        K = self.layout.cells_per_class
        XV = None if self.centers is None else self.centers @ V
        acc = None if XV is None else torch.zeros_like(XV)
        out = torch.zeros_like(V)
        seen = 0
        for batch in self.batches():
            v3, lab, s, w = self.layout.prepare(tuple(batch), self.dtype, self.device)
            b, _, P = v3.shape
            if P != self.size:
                raise ValueError(f"batches: a batch has vectors of length {P}, expected {self.size}")
            seen += b
            rows = v3.reshape(b * K, P)
            Z = rows @ V
            if s is not None:
                Z.mul_(s.reshape(-1, 1))
            if XV is not None:
                cells = (lab[:, None] * K + torch.arange(K, device=lab.device)).reshape(-1)
                Z.sub_(XV[cells])
            if w is not None:
                Z.mul_(w.reshape(-1, 1))
            if acc is not None:
                acc.index_add_(0, cells, Z)
            if s is not None:
                Z.mul_(s.reshape(-1, 1))
            out.addmm_(rows.T, Z)
        if seen != self.num_examples:
            raise ValueError(
                f"batches: the source yielded {seen} examples but the decomposition was built from {self.num_examples}"
            )
        if acc is not None:
            out.addmm_(self.centers.T, acc, alpha=-1.0)
        return out.div_(self.num_examples)


# --------------------------------------------------------------------------- parts
def _gram64(X: torch.Tensor) -> np.ndarray:
    """``X X^T`` in float64 (m x m), accumulated over column chunks of ``X`` (m x P)."""
    K = torch.zeros(X.shape[0], X.shape[0], dtype=torch.float64, device=X.device)
    for j in range(0, X.shape[1], _GRAM_CHUNK):
        Y = X[:, j : j + _GRAM_CHUNK].to(torch.float64)
        K.addmm_(Y, Y.T)
    return K.cpu().numpy()


def _eigh_desc(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vals, vecs = np.linalg.eigh((G + G.T) / 2)
    return vals[::-1].copy(), vecs[:, ::-1].copy()


@dataclass(frozen=True)
class LowRankPart:
    """A positive semidefinite part ``B = F^T F``, ``F = L X`` (r x P).

    ``X`` (m x P) are stored vectors (the cell means), ``L`` (r x m) float64
    coefficients. The nonzero eigenvalues of ``B`` are those of the ``r x r``
    Gram matrix ``F F^T = L (X X^T) L^T`` (the Gram trick, float64);
    ``rank`` counts those above ``rank_tol``. ``trace = Tr B``.
    """

    name: str
    eigenvalues: np.ndarray
    rank: int
    rank_tol: float
    trace: float
    coefficients: np.ndarray = field(metadata={"json": False}, repr=False)
    gram: np.ndarray = field(metadata={"json": False}, repr=False)
    vectors: torch.Tensor = field(metadata={"json": False}, repr=False)

    @classmethod
    def from_coefficients(
        cls, name: str, vectors: torch.Tensor, coefficients: np.ndarray, vector_gram: np.ndarray, scale: float
    ) -> LowRankPart:
        """Build the part ``F = L X`` given ``X X^T`` (float64); eigenvalues below
        ``100 m eps_64 scale`` count as zero (``scale``: a bound on ``||B||``)."""
        L = np.asarray(coefficients, dtype=np.float64)
        G = L @ vector_gram @ L.T
        vals = _eigh_desc(G)[0]
        tol = 100.0 * max(L.shape[1], 1) * np.finfo(np.float64).eps * max(scale, float(vals[0]) if vals.size else 0.0)
        return cls(
            name=name,
            eigenvalues=vals,
            rank=int(np.sum(vals > tol)),
            rank_tol=float(tol),
            trace=float(np.trace(G)),
            coefficients=L,
            gram=G,
            vectors=vectors,
        )

    @property
    def size(self) -> int:
        return int(self.vectors.shape[1])

    def as_operator(self) -> FactorOperator:
        """``B`` as an operator: ``V -> X^T (L^T L) X V``, ``O(m P k)`` per product."""
        return FactorOperator(self.vectors, self.coefficients.T @ self.coefficients)

    def eigenpairs(self, k: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """The top ``k`` (default: ``rank``) eigenpairs of ``B`` by the Gram trick:
        ``F F^T = W diag(lam) W^T`` gives eigenvectors ``F^T W lam^{-1/2}`` (P x k)."""
        k = self.rank if k is None else int(k)
        if not 0 <= k <= self.rank:
            raise ValueError(f"k: expected 0 <= k <= rank = {self.rank} (nonzero eigenvalues only), got {k}")
        vals, W = _eigh_desc(self.gram)
        coef = (self.coefficients.T @ W[:, :k]) / np.sqrt(vals[:k])
        U = self.vectors.T @ torch.as_tensor(coef, dtype=self.vectors.dtype, device=self.vectors.device)
        return vals[:k].copy(), U

    def range_basis(self) -> torch.Tensor:
        """Orthonormal basis (P x rank) of ``range(B)`` (Gram eigenvectors, re-orthonormalised by QR)."""
        U = self.eigenpairs()[1]
        return torch.linalg.qr(U)[0] if U.shape[1] else U


@dataclass(frozen=True)
class _DataAccess:
    """What the within and total parts need beyond the running sums."""

    layout: _Layout
    num_examples: int
    centers: torch.Tensor
    means: LowRankPart
    batches: BatchSource | None
    dense_total: torch.Tensor | None
    total: SymmetricOperator | None

    @property
    def method(self) -> str:
        if self.dense_total is not None:
            return "dense second moment minus mean parts"
        if self.batches is not None:
            return "centred products re-streaming the data"
        if self.total is not None:
            return "total operator minus mean parts"
        return "unavailable"

    def operator(self, centred: bool) -> SymmetricOperator:
        X = self.centers
        if self.dense_total is not None:
            return DenseOperator(self.dense_total) - self.means.as_operator() if centred else DenseOperator(self.dense_total)
        if self.batches is not None:
            return StreamedSecondMoment(
                self.batches, self.layout, self.num_examples, X.shape[1], X.dtype, X.device, X if centred else None
            )
        if self.total is not None:
            return self.total - self.means.as_operator() if centred else self.total
        raise ValueError(
            "the within/total part needs the data: pass batches= (a callable re-streaming the batches) or "
            "total= (an operator for the total second moment) to finalize(), or build the accumulator "
            "with second_moment=True"
        )


@dataclass(frozen=True)
class WithinPart:
    """The within-cell part ``(1/N) sum w (y - x_cell)(y - x_cell)^T`` (full rank in general).

    ``trace`` comes from the running sums; ``method`` says how ``as_operator`` applies it.
    """

    name: str
    trace: float
    method: str
    access: _DataAccess = field(metadata={"json": False}, repr=False)

    def as_operator(self) -> SymmetricOperator:
        return self.access.operator(centred=True)


@dataclass(frozen=True)
class SeparationStatistics:
    """Class separation of features (Papyan 2020, Sec. 7; docs/math.md#separation-measures).

    ``trace_ratio = Tr Sigma_B / Tr Sigma_W``; ``within_over_between =
    Tr(Sigma_W Sigma_B^+) / C`` (NaN when the within part is unavailable);
    ``class_eigenvalue_ratio = lambda_2 / lambda_C`` of the class part
    ``sum_c pi_c mu_c mu_c^T`` (inf if its rank is below C); ``cosines`` (C x C)
    between centred class means ``mu_c - mu_G``; ``mean_abs_cosine`` the average
    of its off-diagonal absolute values.
    """

    trace_ratio: float
    within_over_between: float
    class_eigenvalue_ratio: float
    cosines: np.ndarray
    mean_abs_cosine: float


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class FeatureDecomposition:
    """``Ave v v^T = global + between + within`` for two-index vectors ``v_{i,c}`` (d-dim).

    ``global_part = mu_G mu_G^T`` (rank 1), ``between_part = Sigma_B`` (rank <= C-1),
    ``class_part = sum_c pi_c mu_c mu_c^T = global + between`` (rank <= C),
    ``within_part = Sigma_W``. ``class_weights = pi_c = n_c / N``.
    """

    num_classes: int
    num_examples: int
    dim: int
    counts: np.ndarray
    class_weights: np.ndarray
    total_trace: float
    global_part: LowRankPart
    between_part: LowRankPart
    class_part: LowRankPart
    within_part: WithinPart
    global_mean: torch.Tensor = field(metadata={"json": False}, repr=False)
    class_means: torch.Tensor = field(metadata={"json": False}, repr=False)

    @property
    def parts(self) -> dict[str, LowRankPart | WithinPart]:
        """The additive parts of ``Ave v v^T``: global, between, within."""
        return {"global": self.global_part, "between": self.between_part, "within": self.within_part}

    def total_operator(self) -> SymmetricOperator:
        """``Ave v v^T`` as an operator (needs the data, like the within part)."""
        return self.within_part.access.operator(centred=False)

    def separation(self) -> SeparationStatistics:
        """Separation statistics; ``within_over_between`` costs one within product with ``C - 1`` vectors."""
        C = self.num_classes
        G = self.between_part.gram  # pi-weighted Gram of centred means
        w = np.sqrt(self.class_weights)
        centred_gram = G / np.outer(w, w)
        norms = np.sqrt(np.clip(np.diag(centred_gram), 0.0, None))
        with np.errstate(divide="ignore", invalid="ignore"):
            cosines = centred_gram / np.outer(norms, norms)
        off = cosines[~np.eye(C, dtype=bool)]
        lam = self.class_part.eigenvalues
        ratio = float(lam[1] / lam[C - 1]) if lam[C - 1] > self.class_part.rank_tol else float("inf")
        wb = float("nan")
        if self.within_part.method != "unavailable" and self.between_part.rank:
            vals, U = self.between_part.eigenpairs()
            WU = self.within_part.as_operator().matmat(U)
            quad = (U.to(torch.float64) * WU.to(torch.float64)).sum(dim=0).cpu().numpy()
            wb = float(np.sum(quad / vals) / C)
        tw = self.within_part.trace
        return SeparationStatistics(
            trace_ratio=self.between_part.trace / tw if tw > 0 else float("inf"),
            within_over_between=wb,
            class_eigenvalue_ratio=ratio,
            cosines=cosines,
            mean_abs_cosine=float(np.mean(np.abs(off))) if off.size else float("nan"),
        )


@dataclass(frozen=True)
class CrossClassDecomposition:
    """``M = class + cross + within + diag`` for three-index vectors ``v_{i,c,c'}``.

    ``cell_weights[c, c'] = P_{c,c'}`` (sums of ``p``; counts ``n_c`` when
    unweighted), ``class_weights[c] = P_c``; ``means_part = class + cross + diag
    = (1/N) sum_{c,c'} P_{c,c'} v_{c,c'} v_{c,c'}^T`` (rank <= C^2), whose spectrum
    is a ``C^2 x C^2`` Gram eigenproblem.
    """

    num_classes: int
    num_examples: int
    dim: int
    weighted: bool
    counts: np.ndarray
    cell_weights: np.ndarray
    class_weights: np.ndarray
    total_trace: float
    class_part: LowRankPart
    cross_part: LowRankPart
    diag_part: LowRankPart
    means_part: LowRankPart
    within_part: WithinPart
    cross_means: torch.Tensor = field(metadata={"json": False}, repr=False)
    class_means: torch.Tensor = field(metadata={"json": False}, repr=False)

    @property
    def parts(self) -> dict[str, LowRankPart | WithinPart]:
        """The four additive parts of ``M``: class, cross, within, diag."""
        return {
            "class": self.class_part,
            "cross": self.cross_part,
            "within": self.within_part,
            "diag": self.diag_part,
        }

    def total_operator(self) -> SymmetricOperator:
        """``M`` as an operator (needs the data, like the within part)."""
        return self.within_part.access.operator(centred=False)


# --------------------------------------------------------------------------- accumulators
class _CellAccumulator:
    """Running sums per cell ``(c, k)``: ``S = sum s w v`` (stored K x C x P),
    ``W = sum w`` (C x K), ``Q = sum w s^2 |v|^2`` (C x K), counts ``n_c``, and
    optionally the dense ``sum w s^2 v v^T`` (P x P)."""

    def __init__(
        self,
        layout: _Layout,
        dtype: torch.dtype | None,
        device: torch.device | str | None,
        second_moment: bool,
    ):
        if int(layout.num_classes) != layout.num_classes or layout.num_classes < 2:
            raise ValueError(f"num_classes: expected an integer >= 2, got {layout.num_classes}")
        self._layout = layout
        self._dtype = None if dtype is None else torch_dtype(dtype)
        self._device = None if device is None else torch.device(device)
        self._second_moment = bool(second_moment)
        self._sums: torch.Tensor | None = None

    @property
    def num_examples(self) -> int:
        return 0 if self._sums is None else int(self._counts.sum())

    def _allocate(self, P: int, dtype: torch.dtype, device: torch.device) -> None:
        C, K = self._layout.num_classes, self._layout.cells_per_class
        self._dtype = self._dtype or _default_dtype(dtype)
        self._device = self._device or device
        z = dict(dtype=self._dtype, device=self._device)
        self._sums = torch.zeros(K, C, P, **z)  # S[k, c]: cell (c, k), batch-major for baddbmm
        self._weights = torch.zeros(C, K, dtype=torch.float64, device=self._device)
        self._sq = torch.zeros(C, K, dtype=torch.float64, device=self._device)
        self._counts = torch.zeros(C, dtype=torch.int64, device=self._device)
        self._dense = torch.zeros(P, P, **z) if self._second_moment else None

    def _update(self, batch: tuple) -> None:
        v3, lab, s, w = self._layout.prepare(batch)
        if self._sums is None:
            self._allocate(v3.shape[2], v3.dtype, v3.device)
        elif v3.shape[2] != self._sums.shape[2]:
            raise ValueError(f"v: vectors of length {v3.shape[2]}, but earlier batches had {self._sums.shape[2]}")
        if v3.shape[0] == 0:
            return
        dt, dev = self._dtype, self._device
        v3 = v3.to(dtype=dt, device=dev)
        lab = lab.to(dev)
        s = None if s is None else s.to(dtype=dt, device=dev)
        w = None if w is None else w.to(dtype=dt, device=dev)
        C, K = self._layout.num_classes, self._layout.cells_per_class
        onehot = torch.nn.functional.one_hot(lab, C).to(dt)  # (b, C)
        scale = s if w is None else (w if s is None else s * w)  # s w, (b, K)
        # S[k, c, :] += sum_i onehot[i, c] scale[i, k] v[i, k, :]: one batched product
        # into contiguous (K, C, P) storage, no weighted copy of the batch
        A = onehot.T.expand(K, C, -1) if scale is None else onehot.T[None, :, :] * scale.T[:, None, :]
        self._sums.baddbmm_(A, v3.transpose(0, 1))
        sq = torch.linalg.vector_norm(v3, dim=2).to(torch.float64).square_()  # (b, K)
        wk = torch.ones_like(sq) if w is None else w.to(torch.float64)
        if s is not None:
            sq.mul_(s.to(torch.float64).square())
        oh64 = onehot.to(torch.float64)
        self._weights.add_(oh64.T @ wk)
        self._sq.add_(oh64.T @ (wk * sq))
        self._counts.add_(torch.bincount(lab, minlength=C))
        if self._dense is not None:
            f = torch.ones_like(v3[:, :, 0]) if w is None else w.sqrt()
            if s is not None:
                f = f * s
            R = (v3 * f[:, :, None]).reshape(-1, v3.shape[2])
            self._dense.addmm_(R.T, R)

    def _finish(self, batches: BatchSource | None, total: SymmetricOperator | None):
        """Shared finalisation: checks, cell means, their float64 Gram and the data access."""
        if self._sums is None:
            raise ValueError("finalize: no batches were added (call update first)")
        C, K = self._layout.num_classes, self._layout.cells_per_class
        counts = self._counts.cpu().numpy()
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            raise ValueError(f"labels: class(es) {empty.tolist()} have no examples (counts per class: {counts.tolist()})")
        if not bool(torch.isfinite(self._sums).all()) or not bool(torch.isfinite(self._sq).all()):
            raise FloatingPointError("v: the data contain NaN or Inf (the running sums are not finite)")
        if batches is not None and not callable(batches):
            raise TypeError(f"batches: expected a callable returning an iterable of batches, got {type(batches).__name__}")
        P = self._sums.shape[2]
        if total is not None:
            total = as_operator(total)
            if total.size != P or total.dtype != self._dtype or total.device != self._device:
                raise ValueError(
                    f"total: expected an operator of size {P}, dtype {self._dtype}, device {self._device}; got "
                    f"size {total.size}, dtype {total.dtype}, device {total.device}"
                )
        N = int(counts.sum())
        W = self._weights.cpu().numpy().reshape(C * K)
        inv = np.divide(1.0, W, out=np.zeros_like(W), where=W > 0)  # a zero-weight cell gets a zero mean
        X = torch.empty(C, K, P, dtype=self._dtype, device=self._device)
        torch.mul(self._sums.transpose(0, 1), torch.as_tensor(inv, dtype=self._dtype, device=self._device).reshape(C, K, 1), out=X)
        X = X.reshape(C * K, P)
        gram = _gram64(X)
        means = LowRankPart.from_coefficients("means", X, np.diag(np.sqrt(W / N)), gram, scale=float(np.dot(W, np.diag(gram)) / N))
        dense = None if self._dense is None else self._dense / N
        access = _DataAccess(self._layout, N, X, means, batches, dense, total)
        sq_total = float(self._sq.sum().cpu()) / N
        within = WithinPart("within", sq_total - means.trace, access.method, access)
        return X, gram, W, counts, N, means, within, sq_total


class FeatureAccumulator(_CellAccumulator):
    """Streaming class sums for two-index vectors: ``update(v, labels)`` with
    ``v`` (b x d) and integer ``labels`` (b,) in ``[0, C)``, any order and mix of
    classes; ``finalize()`` gives a :class:`FeatureDecomposition`.

    Keeps ``C`` running sums of length ``d`` (dtype ``dtype``, default the first
    batch's float32/float64), per-class counts and squared norms (float64), and
    with ``second_moment=True`` the dense ``d x d`` sum of ``v v^T``.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        second_moment: bool = False,
    ):
        super().__init__(_Layout(num_classes, cross=False, weighted=False, prob_atol=0.0), dtype, device, second_moment)

    def update(self, v: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> None:
        """Add a batch: ``v`` (b x d), ``labels`` (b,)."""
        self._update((v, labels))

    def finalize(
        self, *, batches: BatchSource | None = None, total: SymmetricOperator | None = None
    ) -> FeatureDecomposition:
        """The decomposition of the vectors added so far (the accumulator stays usable).

        ``batches``/``total``: how the within part is applied (module docstring).
        """
        X, gram, W, counts, N, _, within, sq_total = self._finish(batches, total)
        pi = counts / N
        C = self._layout.num_classes
        scale = float(pi @ np.diag(gram))
        build = lambda name, L: LowRankPart.from_coefficients(name, X, L, gram, scale)  # noqa: E731
        return FeatureDecomposition(
            num_classes=C,
            num_examples=N,
            dim=X.shape[1],
            counts=counts,
            class_weights=pi,
            total_trace=sq_total,
            global_part=build("global", pi[None, :]),
            between_part=build("between", np.sqrt(pi)[:, None] * (np.eye(C) - pi[None, :])),
            class_part=build("class", np.diag(np.sqrt(pi))),
            within_part=within,
            global_mean=torch.as_tensor(pi, dtype=X.dtype, device=X.device) @ X,
            class_means=X,
        )


class CrossClassAccumulator(_CellAccumulator):
    """Streaming cross-class sums for three-index vectors: ``update(v, labels, probs)``
    with ``v`` (b x C x P) (row ``c'`` of example i: ``v_{i,c,c'}``), ``labels`` (b,)
    and ``probs`` (b x C) (rows nonnegative, summing to one within ``prob_atol``);
    ``finalize()`` gives a :class:`CrossClassDecomposition`.

    ``weighted=True``: weights ``p`` (docs/math.md#three-index-decomposition). ``weighted=False``: the
    1901.08244 form on ``u = sqrt(p) v`` with unit weights (``probs`` may then be
    omitted, taking ``u = v``). Keeps the ``C^2`` running sums of length ``P``
    (dtype ``dtype``, default the first batch's float32/float64), ``C x C`` tables
    of weights and weighted squared norms (float64), per-class counts, and with
    ``second_moment=True`` the dense ``P x P`` sum of ``w y y^T``.
    """

    def __init__(
        self,
        num_classes: int,
        weighted: bool = True,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        second_moment: bool = False,
        prob_atol: float = 1e-5,
    ):
        super().__init__(_Layout(num_classes, cross=True, weighted=bool(weighted), prob_atol=float(prob_atol)), dtype, device, second_moment)

    def update(
        self,
        v: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        probs: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        """Add a batch: ``v`` (b x C x P), ``labels`` (b,), ``probs`` (b x C)."""
        self._update((v, labels, probs))

    def finalize(
        self, *, batches: BatchSource | None = None, total: SymmetricOperator | None = None
    ) -> CrossClassDecomposition:
        """The decomposition of the vectors added so far (the accumulator stays usable).

        ``batches``/``total``: how the within part is applied (module docstring).
        """
        X, gram, W, counts, N, means, within, sq_total = self._finish(batches, total)
        C = self._layout.num_classes
        Wc = W.reshape(C, C)
        off = ~np.eye(C, dtype=bool)
        Pc = np.where(off, Wc, 0.0).sum(axis=1)
        # class-mean coefficients A (C x C^2): v_c = sum_{c' != c} (P_{cc'} / P_c) v_{cc'}
        A = np.zeros((C, C * C))
        for c in range(C):
            if Pc[c] > 0:
                A[c, c * C : (c + 1) * C] = np.where(off[c], Wc[c], 0.0) / Pc[c]
        rows = [(c, k) for c in range(C) for k in range(C) if k != c]
        L_cross = np.zeros((len(rows), C * C))
        for r, (c, k) in enumerate(rows):
            L_cross[r] = -A[c]
            L_cross[r, c * C + k] += 1.0
            L_cross[r] *= np.sqrt(Wc[c, k] / N)
        L_diag = np.zeros((C, C * C))
        L_diag[np.arange(C), np.arange(C) * (C + 1)] = np.sqrt(np.diag(Wc) / N)
        scale = means.trace
        build = lambda name, L: LowRankPart.from_coefficients(name, X, L, gram, scale)  # noqa: E731
        return CrossClassDecomposition(
            num_classes=C,
            num_examples=N,
            dim=X.shape[1],
            weighted=self._layout.weighted,
            counts=counts,
            cell_weights=Wc,
            class_weights=Pc,
            total_trace=sq_total,
            class_part=build("class", np.sqrt(Pc / N)[:, None] * A),
            cross_part=build("cross", L_cross),
            diag_part=build("diag", L_diag),
            means_part=means,
            within_part=within,
            cross_means=X.reshape(C, C, -1),
            class_means=torch.as_tensor(A, dtype=X.dtype, device=X.device) @ X,
        )

    # ----------------------------------------------------------------- from cell sums
    @classmethod
    def from_sums(
        cls,
        sums: torch.Tensor,
        cell_weights: np.ndarray | torch.Tensor,
        squared_norms: np.ndarray | torch.Tensor,
        counts: np.ndarray | torch.Tensor,
        weighted: bool = True,
    ) -> CrossClassAccumulator:
        """An accumulator holding running sums computed elsewhere (for example by backward
        passes, never forming the vectors): ``sums[c, c'] = sum_{i in c} s w v`` (C x C x P),
        ``cell_weights[c, c'] = sum_{i in c} w`` (C x C), ``squared_norms[c, c'] =
        sum_{i in c} w s^2 |v|^2`` (C x C) and ``counts[c] = n_c`` (C,), with ``w = p, s = 1``
        (``weighted``) or ``w = 1, s = sqrt(p)`` (unweighted). ``finalize`` then needs
        ``total=`` (or ``batches=``) for the within part, as after ``update``."""
        S = _as_tensor(sums, "sums")
        if S.ndim != 3 or S.shape[0] != S.shape[1] or S.shape[0] < 2 or not S.is_floating_point():
            raise ValueError(f"sums: expected a floating (C, C, P) tensor with C >= 2, got {S.dtype} of shape {tuple(S.shape)}")
        C = S.shape[0]
        tables = {}
        for name, value, shape in (("cell_weights", cell_weights, (C, C)), ("squared_norms", squared_norms, (C, C)), ("counts", counts, (C,))):
            t = _as_tensor(value, name)
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: expected shape {shape} (C = {C} from sums), got {tuple(t.shape)}")
            tables[name] = t.to(device=S.device)
        if tables["counts"].is_floating_point() or bool((tables["counts"] < 0).any()):
            raise ValueError("counts: expected nonnegative integer counts per class")
        acc = cls(C, weighted, dtype=S.dtype, device=S.device)
        acc._allocate(S.shape[2], S.dtype, S.device)
        acc._sums.copy_(S.transpose(0, 1))
        acc._weights.copy_(tables["cell_weights"].to(torch.float64))
        acc._sq.copy_(tables["squared_norms"].to(torch.float64))
        acc._counts.copy_(tables["counts"].to(torch.int64))
        return acc
    # ----------------------------------------------------------------- end from cell sums


# --------------------------------------------------------------------------- in-memory entry points
def decompose_features(
    v: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    *,
    num_classes: int | None = None,
    second_moment: bool = False,
) -> FeatureDecomposition:
    """Class decomposition of in-memory features ``v`` (N x d) with ``labels`` (N,).

    ``num_classes`` defaults to ``max(labels) + 1``. The within part re-streams
    ``v`` (kept by reference, not copied), or with ``second_moment=True`` is a
    dense ``d x d`` matrix.
    """
    vt = _as_tensor(v, "v")
    if vt.ndim != 2:
        raise ValueError(f"v: expected shape (N, d), got {tuple(vt.shape)}")
    lab = _check_labels(labels, vt.shape[0], num_classes if num_classes is not None else np.iinfo(np.int64).max)
    if num_classes is None:
        num_classes = int(lab.max()) + 1 if lab.numel() else 0
    acc = FeatureAccumulator(num_classes, second_moment=second_moment)
    acc.update(vt, lab)
    return acc.finalize(batches=None if second_moment else (lambda: [(vt, lab)]))


def decompose_cross_class(
    v: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    probs: torch.Tensor | np.ndarray | None,
    weighted: bool = True,
    *,
    second_moment: bool = False,
    prob_atol: float = 1e-5,
) -> CrossClassDecomposition:
    """Class/cross-class decomposition of in-memory vectors ``v`` (N x C x P),
    ``labels`` (N,), ``probs`` (N x C) (see :class:`CrossClassAccumulator`).

    The within part re-streams ``v`` (kept by reference, not copied), or with
    ``second_moment=True`` is a dense ``P x P`` matrix.
    """
    vt = _as_tensor(v, "v")
    if vt.ndim != 3:
        raise ValueError(f"v: expected shape (N, C, P), got {tuple(vt.shape)}")
    acc = CrossClassAccumulator(vt.shape[1], weighted, second_moment=second_moment, prob_atol=prob_atol)
    acc.update(vt, labels, probs)
    return acc.finalize(batches=None if second_moment else (lambda: [(vt, labels, probs)]))
