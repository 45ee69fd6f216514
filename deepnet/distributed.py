"""Data parallelism over ``torch.distributed`` (launched by ``torchrun``).

Every analysed quantity of the toolkit is an average over examples,
``A = (1/N) sum_i a_i``; with the data set split over ``W`` ranks (rank ``r``
holds ``N_r`` examples, ``sum_r N_r = N``) it is ``A = (1/N) sum_r N_r A_r`` with
``A_r`` the rank's own average. Each rank computes ``N_r A_r`` and one
all-reduce (sum) gives every rank the same ``N A``. Only the operators
communicate: the spectral core runs unchanged, on every rank, on replicated
vectors drawn from the same seed.

* :class:`DistributedContext`: rank, world size, backend (Gloo on CPU, NCCL on
  CUDA), device and the collective timeout; :meth:`DistributedContext.single`
  when not launched by ``torchrun``.
* :func:`init_distributed` / :func:`shutdown`: join / leave the process group
  from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``).
* :func:`shard_indices`: the deterministic class-balanced split by index.
* :func:`check_consistent`: all ranks compare a checksum of the data or the
  model before any product.
* :func:`all_reduce_sum`: the one collective.
* :class:`DistributedOperator`: a :class:`deepnet.operators.CurvatureOperator` on
  the rank's shard made global, ``A V = all_reduce(N_r A_r V) / N``.
* :func:`reduce_gradient_sums`: the cell sums of :func:`deepnet.passes.gradient_sums`
  over the shards added up (they are sums over examples already);
  :func:`reduce_kfac_factors` the class-conditional K-FAC factors of
  :func:`deepnet.kfac.kfac_factors` (class averages, so re-weighted by the counts).
* :func:`shard_dataset`: the rank's shard of ``(images, labels)`` after checking that
  every rank loaded the same data; :func:`distributed_decomposition` the
  ``G = class + cross + within + diag`` of :mod:`deepnet.structure` with the global
  ``G`` as its total.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from theory.checks import check_int, check_real
from theory.operators import SymmetricOperator
from theory.structure import CrossClassDecomposition

from .kfac import KFACFactors
from .operators import CurvatureOperator, EmpiricalRisk, GaussNewtonOperator
from .passes import GradientSums

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "DistributedContext",
    "DistributedOperator",
    "InconsistentRanksError",
    "PeerFailureError",
    "all_reduce_sum",
    "check_consistent",
    "checksum",
    "distributed_decomposition",
    "global_count",
    "init_distributed",
    "launched",
    "reduce_gradient_sums",
    "reduce_kfac_factors",
    "shard_dataset",
    "shard_indices",
    "shutdown",
]

DEFAULT_TIMEOUT_S = 300.0
"""Seconds a collective waits for its peers before it fails (a dead or stuck rank)."""

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class InconsistentRanksError(ValueError):
    """Ranks disagree on data or model that must be replicated."""


class PeerFailureError(RuntimeError):
    """A collective failed: a peer rank exited or did not answer within the timeout."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a data-parallel group.

    ``backend`` is ``"gloo"`` (CPU), ``"nccl"`` (CUDA) or ``"none"`` (one process,
    no process group); ``device`` the rank's device; ``timeout_s`` the seconds a
    collective waits for its peers."""

    rank: int
    world_size: int
    backend: str
    device: torch.device
    timeout_s: float

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether a process group is in use (more than one rank may take part)."""
        return self.backend != "none"

    @classmethod
    def single(cls, device: torch.device | str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistributedContext:
        """One process, no communication: the context when not launched by torchrun."""
        return cls(0, 1, "none", torch.device(device or "cpu"), float(timeout_s))


TIMEOUT_ENV = "DEEPNET_DIST_TIMEOUT"
"""The environment variable giving the seconds a collective waits (default :data:`DEFAULT_TIMEOUT_S`)."""


def timeout_from_env() -> float:
    """The collective timeout in seconds from ``$DEEPNET_DIST_TIMEOUT`` (a positive number)."""
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        timeout = float(text)
    except ValueError:
        timeout = float("nan")
    if not timeout > 0 or timeout == float("inf"):
        raise ValueError(f"{TIMEOUT_ENV}: expected seconds (a positive number), got {text!r}")
    return timeout


def launched() -> bool:
    """Whether torchrun (or an equivalent launcher) set ``WORLD_SIZE`` and ``RANK``."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def _resolve_device(device: torch.device | str | None, local_rank: int) -> torch.device:
    """``device`` with ``"auto"``/``None`` resolved; ``"cuda"`` becomes ``cuda:LOCAL_RANK``."""
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(
    device: torch.device | str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> DistributedContext:
    """Join the process group described by torchrun's environment and return the context.

    Without torchrun's environment (``RANK``/``WORLD_SIZE`` unset) nothing is
    initialised and :meth:`DistributedContext.single` is returned. The backend is
    Gloo for a CPU ``device`` and NCCL for CUDA (``"cuda"`` means
    ``cuda:LOCAL_RANK``); every collective fails after ``timeout_s`` seconds
    without its peers instead of waiting for ever (with NCCL, its watchdog ends the
    process after the timeout, and torchrun then stops the other ranks). Idempotent:
    in a process whose group is already initialised, its backend is kept."""
    timeout_s = check_real("timeout_s", timeout_s, 0.0, low_open=True)
    if not launched():
        return DistributedContext.single(_resolve_device(device, 0), timeout_s)
    missing = [name for name in _ENV if name not in os.environ and name != "LOCAL_RANK"]
    if missing:
        raise ValueError(
            f"environment: RANK and WORLD_SIZE are set but {', '.join(missing)} is not; "
            "launch with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)"
        )
    rank = check_int("RANK", int(os.environ["RANK"]), 0)
    world_size = check_int("WORLD_SIZE", int(os.environ["WORLD_SIZE"]), 1)
    if rank >= world_size:
        raise ValueError(f"RANK: expected an integer in [0, {world_size - 1}] (WORLD_SIZE={world_size}), got {rank}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        backend = str(dist.get_backend())
    else:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    return DistributedContext(rank, world_size, backend, device, timeout_s)


def shutdown(ctx: DistributedContext) -> None:
    """Leave the process group of ``ctx`` (nothing for a single process)."""
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def shard_indices(labels: torch.Tensor | np.ndarray, rank: int, world_size: int) -> torch.Tensor:
    """The indices (ascending, int64) of the examples rank ``rank`` of ``world_size`` holds.

    Class-balanced and deterministic: the indices of each class, in ascending
    order, are dealt round-robin, the ``j``-th of class ``c`` to rank
    ``j mod world_size``; so every rank holds ``floor`` or ``ceil`` of
    ``N_c / world_size`` examples of each class ``c``, and the shards partition
    ``0 .. N-1``. Raises ``ValueError`` when some class has fewer examples than
    ranks (a rank would miss it)."""
    world_size = check_int("world_size", world_size, 1)
    rank = check_int("rank", rank, 0, world_size - 1, what=f"(world_size={world_size})")
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected integer class labels, got {labels.dtype}")
    if labels.numel() == 0:
        raise ValueError("labels: no examples to shard")
    classes, counts = torch.unique(labels, return_counts=True)
    if int(counts.min()) < world_size:
        c = int(classes[int(torch.argmin(counts))])
        raise ValueError(
            f"world_size: expected at most {int(counts.min())} ranks (the fewest examples of a class: class {c} "
            f"has {int(counts.min())}), got {world_size}; each rank must hold examples of every class"
        )
    order = torch.argsort(labels, stable=True)  # indices grouped by class, ascending within
    position = torch.empty_like(order)
    starts = torch.cumsum(counts, 0) - counts
    for start, count in zip(starts.tolist(), counts.tolist()):
        position[start : start + count] = torch.arange(count)
    mine = order[position % world_size == rank]
    return torch.sort(mine).values.to(torch.int64)


def checksum(value: torch.Tensor | bytes | np.ndarray | list | tuple) -> bytes:
    """A 16-byte BLAKE2 digest of ``value``: raw bytes, a tensor / array (its dtype,
    shape and values) or a sequence of those (e.g. a model's parameters)."""
    digest = hashlib.blake2b(digest_size=16)

    def feed(item: object) -> None:
        if isinstance(item, (bytes, bytearray, memoryview)):
            digest.update(bytes(item))
        elif torch.is_tensor(item):
            t = item.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(item, np.ndarray):
            a = np.ascontiguousarray(item)
            digest.update(f"{a.dtype}{a.shape}".encode())
            digest.update(a.tobytes())
        elif isinstance(item, (list, tuple)):
            digest.update(f"[{len(item)}]".encode())
            for part in item:
                feed(part)
        else:
            raise TypeError(f"value: expected bytes, a tensor, an array or a sequence of those, got {type(item).__name__}")

    feed(value)
    return digest.digest()


def check_consistent(name: str, value: torch.Tensor | bytes | np.ndarray | list | tuple, ctx: DistributedContext) -> None:
    """Raise :class:`InconsistentRanksError` on every rank unless all ranks hold the
    same ``value`` (compared by :func:`checksum`); ``name`` says what it is
    ("data labels", "model parameters"). One small all-gather; nothing for a single process."""
    if not ctx.active or ctx.world_size == 1:
        return
    mine = checksum(value)
    codes = _all_gather_bytes(mine, ctx)
    if any(code != codes[0] for code in codes):
        groups: dict[bytes, list[int]] = {}
        for r, code in enumerate(codes):
            groups.setdefault(code, []).append(r)
        shown = "; ".join(f"ranks {ranks} have {code.hex()[:12]}" for code, ranks in groups.items())
        raise InconsistentRanksError(
            f"{name}: the ranks disagree ({shown}); every rank must load the same checkpoint and data "
            "(same files, same settings, same seed)"
        )


def _all_gather_bytes(payload: bytes, ctx: DistributedContext) -> list[bytes]:
    """Every rank's ``payload`` (all of the same length), in rank order."""
    mine = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(ctx.device)
    parts = [torch.empty_like(mine) for _ in range(ctx.world_size)]
    _collective("check_consistent", f"all-gather of a {len(payload)}-byte checksum", ctx, lambda: dist.all_gather(parts, mine))
    return [bytes(p.cpu().numpy().tobytes()) for p in parts]


def _collective(caller: str, what: str, ctx: DistributedContext, call: Callable[[], object]) -> None:
    """Run the collective ``call``; a failure (a peer rank exited, or did not answer
    within ``ctx.timeout_s``) becomes a :class:`PeerFailureError` that says so."""
    try:
        call()
    except RuntimeError as error:
        raise PeerFailureError(
            f"{caller}: rank {ctx.rank} of {ctx.world_size} could not complete the {what} within "
            f"{ctx.timeout_s:g} s: a peer rank has exited or stopped responding ({error})"
        ) from error


def all_reduce_sum(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """``sum_r tensor_r`` over the ranks, in place, returned (the tensor itself for a
    single process). A peer that died or stopped makes this fail after
    ``ctx.timeout_s`` seconds with a :class:`PeerFailureError` naming the collective."""
    if not ctx.active or ctx.world_size == 1:
        return tensor
    _collective(
        "all_reduce_sum", f"all-reduce of a {tuple(tensor.shape)} {tensor.dtype} tensor", ctx,
        lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM),
    )
    return tensor


def global_count(n_local: int, ctx: DistributedContext) -> int:
    """``N = sum_r N_r``: the examples of all ranks."""
    total = torch.tensor([int(n_local)], dtype=torch.int64, device=ctx.device)
    return int(all_reduce_sum(total, ctx).item())


def shard_dataset(
    images: torch.Tensor, labels: torch.Tensor, ctx: DistributedContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rank's shard ``(images[idx], labels[idx])``, ``idx = shard_indices(labels, rank, W)``,
    after :func:`check_consistent` on the labels and the images (every rank must have
    loaded the same data set in the same order); the whole data for one process."""
    if not ctx.active or ctx.world_size == 1:
        return images, labels
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"data: {images.shape[0]} inputs but {labels.shape[0]} labels")
    index = shard_indices(labels, ctx.rank, ctx.world_size)  # the bad-world-size error first, on every rank alike
    check_consistent("data labels", labels, ctx)
    check_consistent("data inputs", images, ctx)
    index = index.to(labels.device)
    return images[index], labels[index]


class DistributedOperator(SymmetricOperator):
    """The data-parallel form of a curvature operator: ``A V = (1/N) sum_r N_r A_r V``.

    ``local`` is a :class:`deepnet.operators.CurvatureOperator` (Hessian, G or E) of
    rank ``r``'s shard (``N_r = local.risk.num_data`` examples, ``A_r`` their average)
    and ``N = sum_r N_r``; ``matmat(V)`` (``V`` of shape ``(P, k)``, the same on every
    rank) returns ``all_reduce_sum(N_r * local.matmat(V)) / N`` on every rank, so a
    spectral method run on every rank with the same seed sees one operator. The
    result equals the one-process product up to the order of the sums (round-off).

    Checked before any product: the ranks agree on the operator's kind, size and
    dtype and on the values of the differentiated parameters
    (:func:`check_consistent`); the first product also checks that ``V`` is the same
    on every rank (a spectral method seeded differently on some rank). A rank that
    dies makes the others' next product fail after at most ``ctx.timeout_s`` seconds.
    ``local_seconds`` / ``reduce_seconds``: the wall time of the last product spent in
    the shard's product and in the all-reduce (including any wait for a slower rank).
    """

    def __init__(self, local: CurvatureOperator, ctx: DistributedContext):
        if not isinstance(local, CurvatureOperator):
            raise TypeError(f"local: expected a deepnet.operators.CurvatureOperator, got {type(local).__name__}")
        if not isinstance(ctx, DistributedContext):
            raise TypeError(f"ctx: expected a DistributedContext, got {type(ctx).__name__}")
        super().__init__(local.size, local.dtype, local.device)
        self.local, self.ctx = local, ctx
        check_consistent("operator (kind, size, dtype, parameters)", f"{type(local).__name__} {local.size} {local.dtype} "
                         f"{local.risk.names}".encode(), ctx)
        check_consistent("model parameters", list(local.risk.parameters()), ctx)
        self.local_num_data = local.risk.num_data
        self.num_data = global_count(self.local_num_data, ctx)
        self._vectors_checked = False
        self.local_seconds = self.reduce_seconds = 0.0

    @property
    def kind(self) -> str:
        return self.local.kind

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        if not self._vectors_checked:
            check_consistent("product input V (the same seed on every rank?)", V, self.ctx)
            self._vectors_checked = True
        start = time.perf_counter()
        out = (self.local.matmat(V) * self.local_num_data).contiguous()
        middle = time.perf_counter()
        all_reduce_sum(out, self.ctx)
        self.local_seconds, self.reduce_seconds = middle - start, time.perf_counter() - middle
        return out / self.num_data

    def __repr__(self) -> str:
        return f"DistributedOperator({self.local!r}, rank {self.ctx.rank} of {self.ctx.world_size}, N={self.num_data})"


def reduce_gradient_sums(sums: GradientSums, ctx: DistributedContext) -> GradientSums:
    """The :class:`deepnet.passes.GradientSums` of the whole data set from each rank's
    sums over its shard: ``S``, the cell weights, the counts and the squared norms are
    sums over examples, so each is the all-reduced sum of the shards' (every rank
    gets the result). Checks first that the ranks summed the same parameters."""
    if not ctx.active or ctx.world_size == 1:
        return sums
    check_consistent("gradient sums (parameters, weighting)", f"{sums.names} {sums.numels} {sums.weighted} "
                     f"{sums.num_classes} {sums.squared_norms is None}".encode(), ctx)

    def reduced(table: np.ndarray) -> np.ndarray:
        return all_reduce_sum(torch.tensor(table, device=ctx.device), ctx).cpu().numpy()  # a copy: the input stays

    return dataclasses.replace(
        sums,
        sums=all_reduce_sum(sums.sums.clone(), ctx),
        counts=reduced(sums.counts),
        cell_weights=reduced(sums.cell_weights),
        squared_norms=None if sums.squared_norms is None else reduced(sums.squared_norms),
    )


def reduce_kfac_factors(factors: KFACFactors, ctx: DistributedContext) -> KFACFactors:
    """The :class:`deepnet.kfac.KFACFactors` of the whole data set from each rank's
    factors of its shard: per layer and class, ``H_c = sum_r n_c^r H_c^r / n_c`` and
    ``Delta_c`` alike (``n_c = sum_r n_c^r``), ``pi_c = n_c / N``. Exact for the ``"true"``
    and ``"empirical"`` Fisher; with ``"mc"`` each rank draws its own labels, so the
    factors are a different Monte Carlo sample than one process's."""
    if not ctx.active or ctx.world_size == 1:
        return factors
    layers = list(factors.layers.values())
    check_consistent("K-FAC factors (layers, shapes, Fisher)", repr([(f.name, f.weight_shape, f.num_positions) for f in layers]
                     + [factors.fisher, factors.mc_samples, factors.num_classes]).encode(), ctx)
    counts = all_reduce_sum(torch.tensor(layers[0].counts, dtype=torch.int64, device=ctx.device), ctx).cpu().numpy()
    out = {}
    for f in layers:
        n_local = torch.as_tensor(f.counts, dtype=f.class_features.dtype, device=f.class_features.device)[:, None, None]
        n = torch.as_tensor(np.maximum(counts, 1), dtype=f.class_features.dtype, device=f.class_features.device)[:, None, None]
        features = all_reduce_sum((f.class_features * n_local).contiguous(), ctx) / n
        errors = all_reduce_sum((f.class_errors * n_local).contiguous(), ctx) / n
        out[f.name] = dataclasses.replace(f, counts=counts.copy(), class_weights=counts / counts.sum(),
                                          class_features=features, class_errors=errors)
    return dataclasses.replace(factors, num_examples=int(counts.sum()), layers=out)


def distributed_decomposition(
    risk: EmpiricalRisk, sums: GradientSums, ctx: DistributedContext, *, max_columns: int = 8
) -> CrossClassDecomposition:
    """:func:`deepnet.structure.decompose_gradients` of the whole data set: ``sums``
    already reduced (:func:`reduce_gradient_sums`), ``risk`` the rank's shard, and the
    within part ``G - class - cross - diag`` taken with the global
    ``G = DistributedOperator(GaussNewtonOperator(risk))``."""
    from .structure import decompose_gradients

    if not ctx.active or ctx.world_size == 1:
        return decompose_gradients(risk, sums, max_columns=max_columns)
    total = DistributedOperator(GaussNewtonOperator(risk, max_columns=max_columns), ctx)
    return decompose_gradients(risk, sums, max_columns=max_columns, total=total)
