"""Training with the papers' protocol (docs/math.md#experiments), resumable and deterministic.

SGD with momentum 0.9 and weight decay 5e-4 on the mean cross-entropy of
batches of 128, the learning rate divided by 10 at 1/3 and 2/3 of the epochs;
everything is a field of :class:`TrainConfig`.

Determinism: the weights are initialised from ``torch.manual_seed(seed)``; at
the start of epoch ``e`` the data order (``torch.randperm`` of a generator)
and torch's global generators (for any stochastic layer) are seeded from
``(seed, e)``, and the learning rate is a function of ``e``. A checkpoint
written atomically after every epoch holds the weights, batch-norm statistics,
momentum buffers and the log, so a run killed at any point and resumed from its
last checkpoint ends with the same weights as an uninterrupted one (bitwise on
the CPU for a fixed number of threads; ``torch.use_deterministic_algorithms`` is
on during training, on the GPU too). The caller's random state is left as it was.

Files in the run folder: ``checkpoint.pt`` and ``log.json`` (per-epoch train and
test loss and error), both rewritten after every epoch; the command line claims
the folder first (``run.json`` with its settings, ``.lock``:
:func:`theory.runs.claim_run`) and adds ``results.json``, ``report.md`` and
``curves.png`` (see :func:`write_run`).

Data parallel (``torchrun --nproc-per-node W -m deepnet train ...``; Gloo on the
CPU, NCCL on CUDA, :mod:`deepnet.distributed`): the model is wrapped in
``DistributedDataParallel`` and every rank draws the same epoch order, so the
global batches are those of one process; rank ``r`` takes the ``r``-th of ``W``
contiguous near-equal pieces of each (``n_r`` of its ``n`` examples) and
back-propagates ``W * sum_{i in r} loss_i / n``, which DDP's average over the
ranks turns into the gradient of the global batch mean ``(1/n) sum_i loss_i``,
exactly as one process (micro-batches of unequal size included). The weights,
momentum and schedule are therefore those of one process up to round-off (the
order of the sums) for a model without batch norm; with batch norm each rank
normalises by its own micro-batch's statistics (torch's SyncBatchNorm runs on
GPUs only) and the running statistics kept are rank 0's (DDP broadcasts them
before every forward; they are broadcast again before each evaluation), which
differs from one process. The evaluation is split by class over the ranks and its
sums all-reduced. Only rank 0 prints and writes (the run folder, checkpoints); on
resume rank 0 reads its checkpoint and broadcasts it, so the others need no copy.
Before training the ranks compare checksums of the settings, the data and the
model (:func:`deepnet.distributed.check_consistent`); a rank that dies makes the
others stop with :class:`deepnet.distributed.PeerFailureError` (at once when its
connection closes, at the latest after the group's timeout) instead of waiting.

Failures: a non-finite loss stops the run (:class:`TrainingDiverged`, naming the
epoch, step and learning rate) before its epoch is checkpointed, so the last
good checkpoint stays; a damaged checkpoint is refused by name
(:class:`CheckpointError`) with the way to start fresh.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from theory.checks import ArgumentError, check_int, check_real
from theory.figures import new_figure
from theory.progress import progress
from theory.runs import RunFolder, claim_run

from .data import DataBundle, Split, batch_bounds, canonical_name, dataset_from_config, iterate_batches
from .distributed import (
    DistributedContext,
    PeerFailureError,
    all_reduce_sum,
    check_consistent,
    init_distributed,
    launched,
    shard_indices,
    shutdown,
    timeout_from_env,
)
from .models import MODELS, build_model

T = TypeVar("T")

__all__ = [
    "TrainConfig",
    "TrainResult",
    "SweepResult",
    "Checkpoint",
    "CheckpointError",
    "TrainingDiverged",
    "CHECKPOINT",
    "resolve_device",
    "deterministic_mode",
    "milestone_epochs",
    "learning_rate",
    "evaluate",
    "train",
    "lr_sweep",
    "check_save_epochs",
    "epoch_checkpoint",
    "load_checkpoint",
    "write_run",
    "add_arguments",
    "run",
]

CHECKPOINT = "checkpoint.pt"
LOG = "log.json"
_FORMAT = "deepnet-checkpoint/1"
_KEYS = ("config", "data", "history", "model", "optimizer")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (garbage, truncated, empty, another format)."""


class TrainingDiverged(FloatingPointError, ValueError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


def _read_checkpoint(path: Path, map_location: str | torch.device, fresh: str) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` checked to be a checkpoint of :func:`train`;
    anything else raises :class:`CheckpointError` naming the file and ``fresh`` (how to start over)."""
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - garbage, truncation and pickles all end here
        text = str(err).split("WeightsUnpickler error:")[-1]  # after torch's advice, its reason
        reason = f"{type(err).__name__}: {next((t.strip() for t in text.splitlines() if t.strip()), 'no detail')}"
        raise CheckpointError(f"checkpoint: {path} is damaged or not a checkpoint ({reason[:160]}); {fresh}") from None
    if not isinstance(saved, Mapping) or saved.get("format") != _FORMAT or any(k not in saved for k in _KEYS):
        found = f"format {saved.get('format')!r}" if isinstance(saved, Mapping) else type(saved).__name__
        raise CheckpointError(f"checkpoint: {path} is not a checkpoint written by deepnet.train ({found}); {fresh}")
    return dict(saved)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model (the device aside).

    ``dataset``, ``root``, ``per_class`` and ``data_seed`` fix the training subset
    (:func:`deepnet.data.load_subset`; ``per_class=None``: the whole training
    split); ``model`` and ``model_kwargs`` the network (:func:`deepnet.models.build_model`);
    ``seed`` the initial weights and the data order. The learning rate of epoch
    ``e`` (from 0) is ``lr * lr_decay ** #{m in milestones: e >= m}`` with the
    milestones ``round(f * epochs)`` for ``f`` in ``lr_milestones``.
    """

    dataset: str = "fashion-mnist"
    root: str | None = None
    per_class: int | None = 100
    data_seed: int = 0
    model: str = "mlp"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 200
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    lr_milestones: tuple[float, ...] = (1 / 3, 2 / 3)
    lr_decay: float = 0.1
    seed: int = 0
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", canonical_name(self.dataset))
        model = self.model.lower() if isinstance(self.model, str) else self.model
        if model not in MODELS:
            raise ValueError(f"model: unknown name {self.model!r}; expected one of {', '.join(MODELS)}")
        object.__setattr__(self, "model", model)
        if not isinstance(self.model_kwargs, Mapping):
            raise ValueError(f"model_kwargs: expected a dict, got {self.model_kwargs!r}")
        accepted = [n for n in inspect.signature(MODELS[model]).parameters if n not in ("in_shape", "num_classes")]
        unknown = sorted(set(self.model_kwargs) - set(accepted))
        if unknown:
            raise ValueError(f"model_kwargs: {model} takes {', '.join(accepted)}; got {', '.join(unknown)} "
                             "(--depth and --no-batch-norm are for the MLP only, --hidden for VGG11 only)")
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        if self.root is not None:
            object.__setattr__(self, "root", str(Path(self.root).expanduser().absolute()))
        if self.per_class is not None:
            check_int("per_class", self.per_class, 1)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            check_int(name, getattr(self, name), 1)
        for name in ("seed", "data_seed"):
            check_int(name, getattr(self, name))
        check_real("lr", self.lr, 0.0, low_open=True)
        check_real("momentum", self.momentum, 0.0, 0.999999)
        check_real("weight_decay", self.weight_decay, 0.0)
        check_real("lr_decay", self.lr_decay, 0.0, 1.0, low_open=True)
        milestones = tuple(self.lr_milestones)
        for f in milestones:
            check_real("lr_milestones", f, 0.0, 1.0, low_open=True)
        if list(milestones) != sorted(milestones):
            raise ValueError(f"lr_milestones: expected increasing fractions of the epochs, got {milestones!r}")
        object.__setattr__(self, "lr_milestones", milestones)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"config: unknown fields {sorted(unknown)}")
        return cls(**data)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or CUDA when available and the CPU otherwise (``None`` / ``"auto"``)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device} requested but no CUDA device is available")
    return device


@contextlib.contextmanager
def deterministic_mode(enabled: bool = True) -> Iterator[None]:
    """Within the block: ``torch.use_deterministic_algorithms`` (warning, not
    failing, on the few CUDA kernels without a deterministic version), cuDNN
    deterministic and not benchmarking; the previous settings are restored after."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if enabled:
        # cuBLAS is deterministic only with a fixed workspace (read when its handle is made).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]


def milestone_epochs(config: TrainConfig) -> tuple[int, ...]:
    """The epochs (from 0) at which the learning rate is multiplied by ``lr_decay``."""
    return tuple(int(round(f * config.epochs)) for f in config.lr_milestones)


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """``lr * lr_decay ** (number of milestones <= epoch)`` for epoch ``epoch`` (from 0)."""
    return config.lr * config.lr_decay ** sum(epoch >= m for m in milestone_epochs(config))


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed that is a fixed function of (seed, epoch)."""
    words = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, epoch]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


@torch.no_grad()
def _evaluation_sums(model: nn.Module, split: Split, batch_size: int, device: torch.device) -> torch.Tensor:
    """``[sum_i loss_i, #misclassified]`` (float64, shape (2,)) of ``model`` in eval mode over ``split``."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for x, y in iterate_batches(split, batch_size, device=device):
        logits = model(x)
        sums[0] += F.cross_entropy(logits.double(), y, reduction="sum")
        sums[1] += (logits.argmax(dim=1) != y).sum()
    model.train(was_training)
    return sums


def evaluate(model: nn.Module, split: Split, batch_size: int, device: torch.device,
             ctx: DistributedContext | None = None, *, total: int | None = None) -> tuple[float, float]:
    """Mean cross-entropy and error rate of ``model`` in eval mode over ``split``
    (sum-reduced per batch, divided by the number of examples). Data parallel
    (``ctx``): ``split`` is this rank's shard, the sums are all-reduced and divided by
    ``total``, the examples of all shards; every rank gets the same numbers."""
    sums = _evaluation_sums(model, split, batch_size, device)
    if ctx is not None:
        sums = all_reduce_sum(sums, ctx)
    n = max(len(split) if total is None else total, 1)
    loss, wrong = sums.tolist()
    return loss / n, wrong / n


@dataclass(frozen=True)
class TrainResult:
    """A (possibly partial) training run: per-epoch arrays over the epochs done so far.

    ``epoch`` counts from 1; losses are mean cross-entropies, errors fractions
    misclassified, both in eval mode after the epoch; ``seconds`` is the wall time
    of each epoch (training and evaluation). ``finished``: all epochs are done.
    ``world_size``: the data-parallel ranks of this call (1: one process).
    """

    config: dict[str, Any]
    device: str
    deterministic: bool
    num_parameters: int
    train_size: int
    test_size: int
    data_source: str
    data_mean: tuple[float, ...]
    data_std: tuple[float, ...]
    milestones: tuple[int, ...]
    finished: bool
    epoch: np.ndarray
    lr: np.ndarray
    train_loss: np.ndarray
    train_error: np.ndarray
    test_loss: np.ndarray
    test_error: np.ndarray
    seconds: np.ndarray
    checkpoint: str
    model: nn.Module = field(metadata={"json": False}, repr=False)
    world_size: int = 1

    @property
    def final_test_error(self) -> float:
        return float(self.test_error[-1]) if self.test_error.size else math.nan

    @property
    def final_test_loss(self) -> float:
        return float(self.test_loss[-1]) if self.test_loss.size else math.nan


def _result(config: TrainConfig, data: DataBundle, model: nn.Module, history: list[dict[str, float]],
            device: torch.device, deterministic: bool, checkpoint: Path, world_size: int) -> TrainResult:
    def column(key: str, dtype: type = np.float64) -> np.ndarray:
        return np.array([row[key] for row in history], dtype=dtype)

    return TrainResult(
        config=config.to_dict(),
        device=str(device),
        deterministic=deterministic,
        num_parameters=sum(p.numel() for p in model.parameters()),
        train_size=len(data.train),
        test_size=len(data.test),
        data_source=data.source,
        data_mean=data.mean,
        data_std=data.std,
        milestones=milestone_epochs(config),
        finished=len(history) == config.epochs,
        epoch=column("epoch", np.int64),
        lr=column("lr"),
        train_loss=column("train_loss"),
        train_error=column("train_error"),
        test_loss=column("test_loss"),
        test_error=column("test_error"),
        seconds=column("seconds"),
        checkpoint=str(checkpoint),
        model=model,
        world_size=world_size,
    )


def _data_info(data: DataBundle) -> dict[str, Any]:
    return {
        "name": data.name, "num_classes": data.num_classes, "in_shape": list(data.in_shape), "mean": list(data.mean),
        "std": list(data.std), "source": data.source, "train_size": len(data.train), "test_size": len(data.test),
    }


def _config_mismatch(saved: Mapping[str, Any], config: TrainConfig) -> list[str]:
    now = TrainConfig.from_dict(saved).to_dict()
    return [f"{k}: {now[k]!r} there, {v!r} here" for k, v in config.to_dict().items() if now[k] != v]


def train(
    config: TrainConfig,
    out: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    deterministic: bool = True,
    show_progress: bool = True,
    save_epochs: Sequence[int] = (),
    ctx: DistributedContext | None = None,
) -> TrainResult:
    """Train ``config`` with checkpoints in the folder ``out``; return the run so far.

    ``resume``: continue from ``out/checkpoint.pt`` if there is one (its
    configuration must equal ``config``); otherwise start over and overwrite it.
    ``stop_after``: run at most this many epochs in this call (a later call
    resumes). ``deterministic``: see :func:`deterministic_mode`. ``save_epochs``:
    epochs (from 1, increasing, at most ``config.epochs``) after which a copy of the
    checkpoint is also kept as ``epoch_XXX.pt`` (:func:`epoch_checkpoint`).
    ``ctx``: data parallel over an initialised process group (module docstring):
    every rank calls this with the same arguments (checked), on ``ctx.device``
    (``device`` is not used); rank 0 alone reads and writes ``out``.
    """
    save_epochs = check_save_epochs("save_epochs", save_epochs, config.epochs)
    parallel = ctx is not None and ctx.active
    writer = not parallel or ctx.is_writer
    milestones = milestone_epochs(config)
    if len(set(milestones)) < len(milestones) and writer:  # warned when training, not on every load of the configuration
        warnings.warn(
            f"lr_milestones: {config.lr_milestones!r} of {config.epochs} epochs fall on epochs {list(milestones)}, "
            f"so the learning rate is decayed more than once in one epoch; train for more epochs "
            f"or give fewer milestones",
            stacklevel=2,
        )
    if stop_after is not None:
        check_int("stop_after", stop_after, 0, what="or None")
    device = ctx.device if parallel else resolve_device(device)
    checkpoint_path = Path(out) / CHECKPOINT
    if parallel:  # the data root may differ between machines: the data are compared below
        settings = {"config": {**config.to_dict(), "root": None}, "resume": resume, "stop_after": stop_after,
                    "deterministic": deterministic, "save_epochs": save_epochs}
        check_consistent("training settings (configuration, resume, stop_after, deterministic, save_epochs)",
                         json.dumps(settings, sort_keys=True).encode(), ctx)
    saved = None
    if resume:
        location = "cpu" if parallel else device  # broadcast from the CPU; load_state_dict moves it

        def read() -> dict[str, Any] | None:
            return _resume_checkpoint(checkpoint_path, config, location) if checkpoint_path.exists() else None

        saved = _from_writer(ctx, read, "the checkpoint") if parallel else read()
    data = dataset_from_config(config, device)  # unknown data sets, missing files, bad subsets fail here
    if parallel:
        check_consistent("training data (images and labels)", [data.train.images, data.train.labels], ctx)
        train_shard, test_shard = _shard(data.train, ctx), _shard(data.test, ctx)
    folder = RunFolder(out) if writer else None
    cuda_devices = [device] if device.type == "cuda" else []
    with deterministic_mode(deterministic), torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(config.seed)
        model = build_model(config.model, data.num_classes, data.in_shape, **config.model_kwargs).to(device)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        history: list[dict[str, float]] = []
        if saved is not None:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            history = list(saved["history"])
        start = len(history)
        stop = config.epochs if stop_after is None else min(config.epochs, start + stop_after)
        net: nn.Module = model
        if parallel:
            _check_micro_batches(len(data.train), config.batch_size, model, ctx.world_size)
            check_consistent("model parameters and buffers", list(model.state_dict().values()), ctx)
            with _peer_failures(ctx, "the set-up of DistributedDataParallel"):
                net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        for epoch in progress(range(start, stop), total=stop - start, desc=f"train {config.model}",
                              enabled=show_progress and writer):
            began = time.perf_counter()
            lr = learning_rate(config, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            seed = epoch_seed(config.seed, epoch)
            torch.manual_seed(seed)
            order = torch.Generator().manual_seed(seed)
            net.train()
            losses = []
            kept = (f"rank 0's checkpoint after epoch {len(history)} is kept in {checkpoint_path}; run the same "
                    "torchrun command again to resume" if history else "no checkpoint was written yet")
            with _peer_failures(ctx, f"epoch {epoch + 1}", kept) if parallel else contextlib.nullcontext():
                for x, y, n in _batches(data.train, config.batch_size, device, order, ctx if parallel else None):
                    optimizer.zero_grad(set_to_none=True)
                    if parallel:  # this rank's part of the global batch mean; DDP averages W * part over the W ranks
                        part = F.cross_entropy(net(x), y, reduction="sum") / n
                        (part * ctx.world_size).backward()
                    else:
                        part = F.cross_entropy(net(x), y)
                        part.backward()
                    optimizer.step()
                    losses.append(part.detach())
                batch_losses = torch.stack(losses)
                if parallel:
                    all_reduce_sum(batch_losses, ctx)  # the global batches' mean losses, the same on every rank
                    for buffer in model.buffers():  # rank 0's batch-norm statistics, as checkpointed
                        dist.broadcast(buffer, src=0)
                    train_loss, train_error = evaluate(model, train_shard, config.eval_batch_size, device, ctx,
                                                       total=len(data.train))
                    test_loss, test_error = evaluate(model, test_shard, config.eval_batch_size, device, ctx,
                                                     total=len(data.test))
                else:
                    train_loss, train_error = evaluate(model, data.train, config.eval_batch_size, device)
                    test_loss, test_error = evaluate(model, data.test, config.eval_batch_size, device)
            _check_finite(batch_losses, train_loss, test_loss, epoch, lr, checkpoint_path, len(history))
            history.append({
                "epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_error": train_error,
                "test_loss": test_loss, "test_error": test_error, "seconds": time.perf_counter() - began,
            })
            if folder is None:
                continue
            state = {
                "format": _FORMAT, "config": config.to_dict(), "data": _data_info(data), "history": history,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            }
            folder.save_torch(CHECKPOINT, state)
            if epoch + 1 in save_epochs:
                folder.save_torch(epoch_checkpoint(epoch + 1), state)
            folder.write_json(LOG, {"config": config, "history": history})
    model.eval()
    return _result(config, data, model, history, device, deterministic, checkpoint_path, ctx.world_size if parallel else 1)


def _resume_checkpoint(path: Path, config: TrainConfig, map_location: str | torch.device) -> dict[str, Any]:
    """The checkpoint at ``path``, refused unless it holds a run of ``config``."""
    saved = _read_checkpoint(path, map_location, "delete it, or run with --no-resume (resume=False), to start fresh")
    mismatch = _config_mismatch(saved["config"], config)
    if mismatch:
        raise ValueError(
            f"out: {path} holds a run of another configuration ({'; '.join(mismatch)}); "
            "choose another run folder or start over without resuming"
        )
    return saved


def _batches(split: Split, batch_size: int, device: torch.device, generator: torch.Generator,
             ctx: DistributedContext | None) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """``(images, labels, n)`` of one epoch: the batches of :func:`deepnet.data.iterate_batches`
    in the order of ``generator``, ``n`` examples each; data parallel (``ctx``), rank ``r`` of
    ``W`` gets positions ``[r n // W, (r + 1) n // W)`` of every batch (the same order on every rank)."""
    if ctx is None:
        yield from ((x, y, len(y)) for x, y in iterate_batches(split, batch_size, device=device, generator=generator))
        return
    order = torch.randperm(len(split), generator=generator).to(split.device)
    for start, stop in batch_bounds(len(split), batch_size):
        n = stop - start
        index = order[start + ctx.rank * n // ctx.world_size : start + (ctx.rank + 1) * n // ctx.world_size]
        yield split.images[index].to(device, non_blocking=True), split.labels[index].to(device, non_blocking=True), n


def _check_micro_batches(num_data: int, batch_size: int, model: nn.Module, world_size: int) -> None:
    """Refuse a batch size that leaves some rank fewer than 1 example of a batch (2 with batch norm)."""
    need = 2 if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) else 1
    smallest = min(stop - start for start, stop in batch_bounds(num_data, batch_size))
    if smallest // world_size < need:
        raise ArgumentError(
            f"batch_size: {batch_size} over {world_size} ranks leaves a rank {smallest // world_size} examples of the "
            f"smallest batch ({smallest} of the {num_data} training examples); each rank needs at least {need}"
            f"{' (batch norm)' if need == 2 else ''}: use at most {smallest // need} ranks or a larger batch size"
        )


def _shard(split: Split, ctx: DistributedContext) -> Split:
    """This rank's class-balanced part of ``split`` (:func:`deepnet.distributed.shard_indices`)."""
    index = shard_indices(split.labels, ctx.rank, ctx.world_size).to(split.device)
    return Split(split.images[index], split.labels[index])


@contextlib.contextmanager
def _peer_failures(ctx: DistributedContext, during: str, then: str = "") -> Iterator[None]:
    """A collective that fails within the block (a rank exited, or did not answer within
    ``ctx.timeout_s``) becomes a :class:`deepnet.distributed.PeerFailureError` that says
    so (and ``then``, what is left); other errors pass unchanged. Gloo raises a plain
    ``RuntimeError``: a collective's is told by a frame in ``torch.distributed`` or
    ``torch.nn.parallel`` (DDP's forward) or, from DDP's hooks in the backward pass,
    by its message (Gloo's or NCCL's source, a timeout)."""
    try:
        yield
    except RuntimeError as error:
        text = str(error)
        frames = (f.filename.replace(os.sep, "/") for f in traceback.extract_tb(error.__traceback__))
        if not (
            isinstance(error, (PeerFailureError, dist.DistError))
            or any("torch/distributed/" in f or "torch/nn/parallel/" in f for f in frames)
            or any(word in text.lower() for word in ("gloo", "nccl", "timeout", "timed out"))
        ):
            raise
        raise PeerFailureError(
            f"train: rank {ctx.rank} of {ctx.world_size} stopped in {during}: a peer rank exited or did not answer "
            f"within {ctx.timeout_s:g} s ({text.splitlines()[0][:300] if text else type(error).__name__})"
            f"{'; ' + then if then else ''}"
        ) from error


def _from_writer(ctx: DistributedContext, produce: Callable[[], T], what: str) -> T:
    """``produce()`` run on rank 0 and its value broadcast to every rank; a ``ValueError`` or
    ``OSError`` it raises (a damaged checkpoint, a run folder in use) is raised on every rank."""
    box: list[Any] = [None]
    if ctx.is_writer:
        try:
            box[0] = (True, produce())
        except (ValueError, OSError) as error:
            box[0] = (False, error)
    with _peer_failures(ctx, f"the broadcast of {what} from rank 0"):
        dist.broadcast_object_list(box, src=0, device=ctx.device)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _check_finite(losses: torch.Tensor, train_loss: float, test_loss: float, epoch: int, lr: float,
                  checkpoint: Path, epochs_saved: int) -> None:
    """Raise :class:`TrainingDiverged` at the first non-finite batch loss of the epoch (one
    device sync per epoch), or a non-finite evaluation loss, before the epoch is saved."""
    bad = (~torch.isfinite(losses)).nonzero()
    if not len(bad) and math.isfinite(train_loss) and math.isfinite(test_loss):
        return
    where = f"step {int(bad[0]) + 1} of {len(losses)}" if len(bad) else "the evaluation after the last step"
    value = float(losses[int(bad[0])]) if len(bad) else (train_loss if not math.isfinite(train_loss) else test_loss)
    kept = (f"the last good checkpoint (after epoch {epochs_saved}) is kept in {checkpoint}" if epochs_saved
            else "no checkpoint was written")
    raise TrainingDiverged(
        f"training diverged: the loss is {value} at epoch {epoch + 1}, {where}, learning rate {lr:g}; "
        f"{kept}. Lower --lr, in another --out folder (or delete this one)"
    )


class Checkpoint(NamedTuple):
    """A trained model (eval mode), its :class:`TrainConfig` and the rest of the
    checkpoint (``extra``: ``epochs_done``, ``history``, ``data`` with the number of
    classes, input shape, standardisation and source folder, and ``path``)."""

    model: nn.Module
    config: TrainConfig
    extra: dict[str, Any]


def epoch_checkpoint(epoch: int) -> str:
    """The file name of the copy of the checkpoint kept after ``epoch`` (``save_epochs``)."""
    return f"epoch_{epoch:03d}.pt"


def check_save_epochs(name: str, value: Any, epochs: int) -> tuple[int, ...]:
    """``value`` (a sequence of ints, or a string ``"E1,E2,..."``) as increasing epochs in ``[1, epochs]``."""
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ArgumentError(f"{name}: expected comma-separated epochs such as 5,10,20, got {value!r}") from None
    found = tuple(check_int(name, v, 1, epochs, what=f"(an epoch of the {epochs} trained)") for v in value)
    if any(b <= a for a, b in zip(found, found[1:])):
        raise ArgumentError(f"{name}: expected increasing epochs, got {list(found)}")
    return found


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device | None = None) -> Checkpoint:
    """Rebuild the model of a checkpoint written by :func:`train` on ``device``
    (default: CUDA when available) in eval mode. The training subset is
    ``deepnet.data.dataset_from_config(checkpoint.config)``."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    device = resolve_device(device)
    saved = _read_checkpoint(path, "cpu", "train again (python -m deepnet train ... --no-resume) to write a fresh one")
    config = TrainConfig.from_dict(saved["config"])
    info = saved["data"]
    with torch.device("meta"):  # no initialisation work: the weights come from the file
        model = build_model(config.model, info["num_classes"], tuple(info["in_shape"]), **config.model_kwargs)
    model.load_state_dict(saved["model"], assign=True)
    extra = {"epochs_done": len(saved["history"]), "history": saved["history"], "data": info, "path": str(path)}
    return Checkpoint(model.to(device).eval(), config, extra)


# ----------------------------------------------------------------------------- learning-rate sweep


@dataclass(frozen=True)
class SweepResult:
    """Final errors of one run per learning rate; ``best_index`` has the lowest final
    test error (ties: lowest final test loss, then the smaller rate)."""

    lrs: np.ndarray
    epochs: int
    final_train_error: np.ndarray
    final_test_error: np.ndarray
    final_test_loss: np.ndarray
    best_index: int
    best_lr: float
    folders: tuple[str, ...]


def lr_sweep(
    config: TrainConfig,
    out: str | os.PathLike[str],
    *,
    num: int = 5,
    low: float = 1e-4,
    high: float = 0.25,
    epochs: int | None = None,
    **train_kwargs: Any,
) -> SweepResult:
    """Train ``config`` with ``num`` learning rates log-spaced in [low, high] (the
    paper: 100 in [1e-4, 0.25]), each for ``epochs`` (default ``config.epochs``), in
    ``out/lr-XX``; pick the rate by final test error. ``train_kwargs`` go to :func:`train`
    (with ``ctx``, data parallel, only rank 0 writes the run folders)."""
    check_int("num", num, 1)
    if not (0 < low <= high and math.isfinite(high)):
        raise ValueError(f"low, high: expected 0 < low <= high < inf, got {low!r}, {high!r}")
    lrs = np.geomspace(low, high, num) if num > 1 else np.array([low])
    epochs = config.epochs if epochs is None else epochs
    results, folders = [], []
    for i, lr in enumerate(lrs):
        folder = Path(out) / f"lr-{i:02d}"
        results.append(train(dataclasses.replace(config, lr=float(lr), epochs=epochs), folder, **train_kwargs))
        if _is_writer(train_kwargs.get("ctx")):
            write_run(folder, results[-1])
        folders.append(str(folder))
    test_error = np.array([r.final_test_error for r in results])
    test_loss = np.array([r.final_test_loss for r in results])
    best = int(np.lexsort((np.arange(num), np.nan_to_num(test_loss, nan=np.inf), np.nan_to_num(test_error, nan=np.inf)))[0])
    return SweepResult(
        lrs=lrs,
        epochs=epochs,
        final_train_error=np.array([float(r.train_error[-1]) for r in results]),
        final_test_error=test_error,
        final_test_loss=test_loss,
        best_index=best,
        best_lr=float(lrs[best]),
        folders=tuple(folders),
    )


# ----------------------------------------------------------------------------- run folder


def _curves_figure(result: TrainResult) -> Any:
    fig, (ax_loss, ax_err) = new_figure(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((ax_loss, "loss", "cross-entropy"), (ax_err, "error", "error")):
        ax.plot(result.epoch, getattr(result, f"train_{key}"), label="train (subset)")
        ax.plot(result.epoch, getattr(result, f"test_{key}"), label="test")
        for m in result.milestones:
            ax.axvline(m + 0.5, color="0.7", lw=0.8, ls=":")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend()
    ax_loss.set_yscale("log")
    cfg = result.config
    fig.suptitle(f"{cfg['model']} on {cfg['dataset']}, {cfg['per_class'] or 'all'} per class (lr decays at dotted lines)")
    return fig


def _sweep_figure(sweep: SweepResult) -> Any:
    fig, ax = new_figure(figsize=(5, 3.5))
    ax.semilogx(sweep.lrs, sweep.final_test_error, "o-", label="test")
    ax.semilogx(sweep.lrs, sweep.final_train_error, "s--", label="train")
    ax.axvline(sweep.best_lr, color="0.6", ls=":")
    ax.set_xlabel("initial learning rate")
    ax.set_ylabel(f"error after {sweep.epochs} epochs")
    ax.legend()
    return fig


def _report(result: TrainResult, sweep: SweepResult | None) -> str:
    cfg = result.config
    state = "finished" if result.finished else f"stopped after {len(result.epoch)} of {cfg['epochs']} epochs (resume to go on)"
    lines = [
        f"# Training: {cfg['model']} on {cfg['dataset']}",
        "",
        f"Run {state}, {result.seconds.sum():.1f} s on {result.device}"
        f"{f' x {result.world_size} data-parallel ranks' if result.world_size > 1 else ''}"
        f"{' (deterministic algorithms)' if result.deterministic else ''}.",
        "",
        f"* data: {cfg['dataset']} from `{result.data_source}`, {cfg['per_class'] or 'all'} per class "
        f"(subset seed {cfg['data_seed']}): {result.train_size} training and {result.test_size} test examples; "
        f"channels standardised with the training split's mean {np.round(result.data_mean, 4).tolist()} "
        f"and std {np.round(result.data_std, 4).tolist()}; no augmentation",
        f"* model: {cfg['model']} {cfg['model_kwargs'] or ''}, {result.num_parameters:,} parameters, seed {cfg['seed']}",
        f"* SGD: lr {cfg['lr']:g}, momentum {cfg['momentum']:g}, weight decay {cfg['weight_decay']:g}, "
        f"batch {cfg['batch_size']}, {cfg['epochs']} epochs, lr x{cfg['lr_decay']:g} at epochs {list(result.milestones)}",
        "",
    ]
    if len(result.epoch):
        lines += [
            f"| after epoch {result.epoch[-1]} | loss | error |",
            "|---|---|---|",
            f"| train subset | {result.train_loss[-1]:.4f} | {result.train_error[-1]:.4f} |",
            f"| test | {result.test_loss[-1]:.4f} | {result.test_error[-1]:.4f} |",
            "",
            "![training curves](curves.png)",
            "",
        ]
    if sweep is not None:
        lines += [
            f"Learning rate chosen by final test error after {sweep.epochs} epochs: {sweep.best_lr:.4g}.",
            "",
            "| lr | train error | test error | test loss |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {lr:.4g} | {tr:.4f} | {te:.4f} | {tl:.4f} |"
            for lr, tr, te, tl in zip(sweep.lrs, sweep.final_train_error, sweep.final_test_error, sweep.final_test_loss)
        ]
        lines += ["", "![learning-rate sweep](lr_sweep.png)", ""]
    lines += [
        f"Checkpoint: `{CHECKPOINT}` (`deepnet.train.load_checkpoint`); per-epoch log: `{LOG}`; "
        "every number: `results.json`.",
        "",
    ]
    return "\n".join(lines)


def write_run(out: str | os.PathLike[str], result: TrainResult, sweep: SweepResult | None = None) -> RunFolder:
    """Write ``results.json``, ``report.md`` and ``curves.png`` (and ``lr_sweep.png``) to ``out``."""
    folder = RunFolder(out)
    folder.write_json("results.json", {"training": result, "lr_sweep": sweep})  # before the figures
    if len(result.epoch):
        folder.try_figure("curves.png", lambda: _curves_figure(result))
    if sweep is not None:
        folder.try_figure("lr_sweep.png", lambda: _sweep_figure(sweep))
    folder.write_text("report.md", _report(result, sweep))
    return folder


# ----------------------------------------------------------------------------- command line


def _per_class(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m deepnet train``."""
    d = TrainConfig()
    mlp = inspect.signature(MODELS["mlp"]).parameters
    parser.epilog = (
        f"The defaults are the paper's network and protocol: an MLP of depth {mlp['depth'].default} and width "
        f"{mlp['width'].default} (31M parameters on 28 x 28 images), "
        f"{d.epochs} epochs of SGD, here on {d.per_class} examples per class of {d.dataset}. On a CPU one such epoch took "
        "31 s on one thread of a shared machine (most of it the evaluation on the 10,000 test images), so the "
        f"{d.epochs} epochs take one to two hours; use a GPU (--device cuda) for them. A small setting that trains "
        "in seconds to a minute on a CPU: --per-class 100 --depth 2 --width 128 --epochs 10."
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=d.dataset, help="mnist, fashion-mnist, cifar10, cifar100 or mnist-5k (default %(default)s)")
    data.add_argument("--data-root", default=None, metavar="DIR",
                      help="folder holding the data set (default: $DEEPNET_DATA, ./data, the system copies)")
    data.add_argument("--per-class", type=_per_class, default=d.per_class, metavar="N",
                      help="training examples per class, or 'all' (default %(default)s)")
    data.add_argument("--data-seed", type=int, default=d.data_seed, help="seed of the subset (default %(default)s)")
    net = parser.add_argument_group("model")
    net.add_argument("--model", default=d.model, choices=list(MODELS), help="network (default %(default)s)")
    net.add_argument("--depth", type=int, help="MLP: hidden layers (default 8)")
    net.add_argument("--width", type=int, help="MLP: hidden units (default 2048); VGG11/ResNet18: base channels (default 64)")
    net.add_argument("--hidden", type=int, help="VGG11: classifier width (default 4096)")
    net.add_argument("--no-batch-norm", action="store_true", help="MLP: no batch norm")
    opt = parser.add_argument_group("training (defaults: the paper's protocol)")
    opt.add_argument("--epochs", type=int, default=d.epochs, help="default %(default)s (the paper: 200 MNIST/Fashion, 350 CIFAR)")
    opt.add_argument("--lr", type=float, default=d.lr, help="initial learning rate (default %(default)s)")
    add_protocol_arguments(opt, d)
    opt.add_argument("--seed", type=int, default=d.seed, help="seed of the weights and data order (default %(default)s)")
    sweep = parser.add_argument_group("learning-rate sweep (off unless --lr-sweep)")
    sweep.add_argument("--lr-sweep", type=int, default=0, metavar="K",
                       help="try K log-spaced initial rates in [--lr-min, --lr-max], keep the one with the lowest final test error "
                            "(default %(default)s: no sweep; the paper: 100)")
    sweep.add_argument("--lr-min", type=float, default=1e-4, help="default %(default)s")
    sweep.add_argument("--lr-max", type=float, default=0.25, help="default %(default)s")
    sweep.add_argument("--sweep-epochs", type=int, default=None,
                       help="epochs of each sweep run (default --epochs; fewer screens cheaply, then one full run)")
    run_ = parser.add_argument_group("run")
    run_.add_argument("--out", default=None, help="run folder (default runs/train-<dataset>-<model>-n<N>-s<seed>)")
    run_.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default %(default)s)")
    run_.add_argument("--no-resume", action="store_true", help="start over even if the run folder holds a checkpoint")
    run_.add_argument("--save-epochs", default="", metavar="E1,E2,...",
                      help="also keep the checkpoint after these epochs as epoch_XXX.pt in the run folder, e.g. 1,5,20 "
                           "(default: none; for python -m deepnet sweep)")
    run_.add_argument("--stop-after", type=int, default=None, metavar="E", help="run at most E epochs now, resume later (default: all of --epochs)")
    run_.add_argument("--nondeterministic", action="store_true", help="allow faster nondeterministic GPU kernels")
    run_.add_argument("--quiet", action="store_true", help="no progress bar")


PROTOCOL_OPTIONS = ("momentum", "weight_decay", "batch_size", "lr_milestones", "lr_decay", "eval_batch_size")
"""The :class:`TrainConfig` fields of :func:`add_protocol_arguments`."""


def add_protocol_arguments(group: Any, defaults: TrainConfig) -> None:
    """The SGD protocol's options (:data:`PROTOCOL_OPTIONS`) with ``defaults``' values,
    shared by ``train`` and ``optimise``; read back by :func:`protocol_from_args`."""
    group.add_argument("--momentum", type=float, default=defaults.momentum, help="default %(default)s")
    group.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="default %(default)s")
    group.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default %(default)s")
    group.add_argument("--lr-milestones", type=float, nargs="*", default=list(defaults.lr_milestones), metavar="F",
                       help="fractions of the epochs where the lr is decayed (default 1/3 2/3)")
    group.add_argument("--lr-decay", type=float, default=defaults.lr_decay, help="default %(default)s")
    group.add_argument("--eval-batch-size", type=int, default=defaults.eval_batch_size, help="default %(default)s")


def protocol_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`TrainConfig` keywords of :func:`add_protocol_arguments`' options."""
    values = {name: getattr(args, name) for name in PROTOCOL_OPTIONS}
    values["lr_milestones"] = tuple(values["lr_milestones"])
    return values


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``train`` options."""
    model_kwargs: dict[str, Any] = {k: getattr(args, k) for k in ("depth", "width", "hidden") if getattr(args, k) is not None}
    if args.no_batch_norm:
        model_kwargs["batch_norm"] = False
    return TrainConfig(
        dataset=args.dataset, root=args.data_root, per_class=args.per_class, data_seed=args.data_seed,
        model=args.model, model_kwargs=model_kwargs, epochs=args.epochs, lr=args.lr, seed=args.seed, **protocol_from_args(args),
    )


def _sweep_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """The sweep options, checked (``None`` without a sweep)."""
    num = check_int("--lr-sweep", args.lr_sweep, 0, what="(0: no sweep)")
    if not num:
        return None
    low = check_real("--lr-min", args.lr_min, 0.0, low_open=True)
    high = check_real("--lr-max", args.lr_max, low, what="(>= --lr-min)")
    epochs = None if args.sweep_epochs is None else check_int("--sweep-epochs", args.sweep_epochs, 1)
    return {"num": num, "low": low, "high": high, "epochs": epochs}


def _is_writer(ctx: DistributedContext | None) -> bool:
    return ctx is None or ctx.is_writer


def _join(args: argparse.Namespace) -> DistributedContext | None:
    """The data-parallel context under torchrun (``RANK``, ``WORLD_SIZE`` set; Gloo on the
    CPU, NCCL on CUDA; collectives fail after ``$DEEPNET_DIST_TIMEOUT`` s), else None."""
    ctx = getattr(args, "distributed", None)
    if ctx is not None or not launched():
        return ctx
    return init_distributed(args.device, timeout_s=timeout_from_env())


def run(args: argparse.Namespace) -> int:
    """``python -m deepnet train``: train (after an optional sweep) and write the run folder.
    Every option and the run folder (:func:`theory.runs.claim_run`) are checked first.
    Under torchrun every rank trains its part of each batch (:func:`train` with ``ctx``);
    rank 0 alone claims and writes the run folder and prints."""
    config = config_from_args(args)
    sweep_settings = _sweep_settings(args)
    if args.stop_after is not None:
        check_int("--stop-after", args.stop_after, 0)
    save_epochs = check_save_epochs("--save-epochs", args.save_epochs, config.epochs)
    out = Path(args.out or f"runs/train-{config.dataset}-{config.model}-n{config.per_class or 'all'}-s{config.seed}")
    ctx = _join(args)
    writer = _is_writer(ctx)
    kwargs = dict(device=resolve_device(args.device) if ctx is None else ctx.device, deterministic=not args.nondeterministic,
                  show_progress=not args.quiet and writer, ctx=ctx)
    settings = {"config": config.to_dict(), "lr_sweep": sweep_settings, "deterministic": not args.nondeterministic}
    with contextlib.ExitStack() as claimed:
        def claim() -> None:
            claimed.enter_context(claim_run(out, "deepnet train", settings))

        if ctx is None:
            claim()
        else:  # rank 0 claims; a refusal (folder in use, other settings) stops every rank
            _from_writer(ctx, claim, "the claim of the run folder")
        sweep, resume = None, not args.no_resume
        if sweep_settings is not None:
            sweep = lr_sweep(config, out / "sweep", **sweep_settings, resume=resume, **kwargs)
            config = dataclasses.replace(config, lr=sweep.best_lr)
            if sweep.epochs == config.epochs:  # the best sweep run is the final run: reuse its checkpoint
                best = Path(sweep.folders[sweep.best_index]) / CHECKPOINT
                if writer:
                    RunFolder(out).save_torch(CHECKPOINT, _read_checkpoint(best, "cpu", f"delete {best.parent} to redo it"))
                resume = True
        result = train(config, out, resume=resume, stop_after=args.stop_after, save_epochs=save_epochs, **kwargs)
        if writer:
            write_run(out, result, sweep)
    if writer:
        print(f"final test error {result.final_test_error:.4f} after {len(result.epoch)} epochs; run folder: {out}")
    if ctx is not None:
        shutdown(ctx)
    return 0
