"""The checkpoint that an analysis command (``spectrum``, ``structure``, ``layers``,
``kfac``) reads: its model in eval mode, the data split it is analysed on, and the
default run folder ``runs/<command>-<run name>``. Under ``torchrun`` (a
:class:`deepnet.distributed.DistributedContext` given) each rank keeps its
class-balanced shard of the split, on its own device."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .distributed import DistributedContext

__all__ = ["default_out", "load_analysis"]


def default_out(command: str, checkpoint: Path, out: str | None) -> Path:
    """``out`` if given, else ``runs/<command>-<name of the checkpoint's run folder>``."""
    if out:
        return Path(out)
    run = checkpoint if checkpoint.is_dir() else checkpoint.parent
    return Path("runs") / f"{command}-{run.resolve().name}"


def load_analysis(
    checkpoint: str | Path, split: str, device: str | None, *, sort_by_class: bool = False,
    ctx: DistributedContext | None = None,
) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], int, Any]:
    """``(model, (images, labels), num_classes, config)`` of a checkpoint and its ``split``
    ("train" or "test"); ``sort_by_class`` orders the examples by label (stable), so
    that batches are class-pure. ``ctx``: the examples are this rank's shard
    (:func:`deepnet.distributed.shard_dataset`, after checking that all ranks loaded
    the same data and model) and ``device`` is the rank's (``ctx.device``)."""
    from .data import dataset_from_config
    from .train import load_checkpoint

    if ctx is not None:
        device = str(ctx.device)
    model, config, _ = load_checkpoint(checkpoint, device=device)
    bundle = dataset_from_config(config, device=next(model.parameters()).device)
    part = bundle.train if split == "train" else bundle.test
    images, labels = part.images, part.labels
    if sort_by_class:
        order = torch.argsort(labels.cpu(), stable=True).to(labels.device)
        images, labels = images[order], labels[order]
    if ctx is not None:  # data-parallel: this rank's shard of the same data and model
        from .distributed import check_consistent, shard_dataset

        images, labels = shard_dataset(images, labels, ctx)
        check_consistent("model parameters and buffers", list(model.state_dict().values()), ctx)
    return model, (images, labels), bundle.num_classes, config
