"""``python -m deepnet COMMAND ...``: a thin dispatcher. Each command lives in a
module exposing ``add_arguments(parser)`` and ``run(args) -> int``, imported only
when that command is run. Bad input (``ValueError``, ``FileNotFoundError``: bad
options, a run folder owned by another command or settings or in use, a damaged
checkpoint or data file, a diverged training) ends the command with its message
and exit status 2, another ``OSError`` (a full disk) with its message and status
1; ``--device`` (cpu, cuda, cuda:N or auto) is checked here, before the command
starts, as in ``python -m simulate``.

Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set) the data-parallel commands
(:data:`DATA_PARALLEL`) run on every rank; the analysis commands (:data:`JOINED`)
join the process group here (Gloo on CPU, NCCL on CUDA, collectives failing after
``DEEPNET_DIST_TIMEOUT`` seconds, default 300) and find its
:class:`deepnet.distributed.DistributedContext` as ``args.distributed`` (``train``
joins it itself). Ranks other than 0 print nothing but their errors, which name
the rank. Other commands refuse to run with more than one rank."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from theory.devices import check_device

if TYPE_CHECKING:
    from deepnet.distributed import DistributedContext

COMMANDS = {
    "train": ("deepnet.train", "train a network with the papers' protocol and write a run folder"),
    "spectrum": ("deepnet.spectrum", "Hessian / G / E spectra of a trained checkpoint"),
    "structure": ("deepnet.structure_cli", "class / cross-class structure of G and the Hessian of a checkpoint"),
    "layers": ("deepnet.layers_cli", "features, errors, Kronecker structure and weights of a checkpoint layer by layer"),
    "sweep": ("deepnet.sweep", "outliers, bump and bulk of G over saved epochs and training-set sizes (resumable)"),
    "kfac": ("deepnet.kfac_cli", "spectra of K-FAC and of its class-aware correction against G layer by layer"),
    "optimise": ("deepnet.optimise", "SGD, K-FAC and the class-aware K-FAC as optimisers of the MLP: test error against epochs and wall time"),
}

DATA_PARALLEL = ("spectrum", "structure", "train")
"""Commands that run data-parallel under torchrun."""
JOINED = ("spectrum", "structure")
"""Commands whose process group the dispatcher joins (``args.distributed``)."""


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Standard output and error to the null device for the block (when ``enabled``)."""
    if not enabled:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deepnet", description="Train the papers' networks and compute their spectra; each command writes a run folder."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    known, rest = parser.parse_known_args(argv)
    module_name, summary = COMMANDS[known.command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        parser.error(f"command {known.command!r} is not available in this installation ({module_name} is missing)")
    command = argparse.ArgumentParser(prog=f"python -m deepnet {known.command}", description=summary)
    module.add_arguments(command)
    args = command.parse_args(rest)
    ctx, prefix = None, ""
    try:
        if getattr(args, "device", None) is not None:
            check_device("--device", args.device, allow_auto=True)
        ctx = _join(known.command, args)
        prefix = "" if ctx is None else f"rank {ctx.rank} of {ctx.world_size}: "
        with _quiet(ctx is not None and not ctx.is_writer):
            status = int(module.run(args))
        if ctx is not None:
            from deepnet.distributed import shutdown

            shutdown(ctx)
        return status
    except (ValueError, FileNotFoundError) as error:  # bad input: the message, not a traceback
        command.exit(2, f"{command.prog}: error: {prefix}{error}\n")
    except OSError as error:  # the system refused (disk full, permissions): the message, exit status 1
        command.exit(1, f"{command.prog}: error: {prefix}{error}\n")
    except RuntimeError as error:  # a peer rank died or stopped answering: the message, exit status 1
        from deepnet.distributed import PeerFailureError

        if not isinstance(error, PeerFailureError):
            raise
        command.exit(1, f"{command.prog}: error: {prefix}{error}\n")


def _join(name: str, args: argparse.Namespace) -> DistributedContext | None:
    """The data-parallel context under torchrun (set as ``args.distributed``), else None."""
    from deepnet.distributed import init_distributed, launched, timeout_from_env

    if not launched():
        return None
    if name not in DATA_PARALLEL and int(os.environ["WORLD_SIZE"]) > 1:
        raise ValueError(f"{name} does not run data-parallel; launch it without torchrun (data-parallel: {', '.join(DATA_PARALLEL)})")
    if name not in JOINED:
        return None
    args.distributed = init_distributed(getattr(args, "device", None), timeout_s=timeout_from_env())
    return args.distributed


if __name__ == "__main__":
    sys.exit(main())
