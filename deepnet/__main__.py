"""``python -m deepnet COMMAND ...``: a thin dispatcher. Each command lives in a
module exposing ``add_arguments(parser)`` and ``run(args) -> int``, imported only
when that command is run. Bad input (``ValueError``, ``FileNotFoundError``: bad
options, a run folder owned by another command or settings or in use, a damaged
checkpoint or data file, a diverged training) ends the command with its message
and exit status 2, another ``OSError`` (a full disk) with its message and status
1; ``--device`` (cpu, cuda, cuda:N or auto) is checked here, before the command
starts, as in ``python -m simulate``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from theory.devices import check_device

COMMANDS = {
    "train": ("deepnet.train", "train a network with the papers' protocol and write a run folder"),
    "spectrum": ("deepnet.spectrum", "Hessian / G / E spectra of a trained checkpoint"),
    "structure": ("deepnet.structure_cli", "class / cross-class structure of G and the Hessian of a checkpoint"),
    "layers": ("deepnet.layers_cli", "features, errors, Kronecker structure and weights of a checkpoint layer by layer"),
    "sweep": ("deepnet.sweep", "outliers, bump and bulk of G over saved epochs and training-set sizes (resumable)"),
    "kfac": ("deepnet.kfac_cli", "spectra of K-FAC and of its class-aware correction against G layer by layer"),
    "optimise": ("deepnet.optimise", "SGD, K-FAC and the class-aware K-FAC as optimisers of the MLP: test error against epochs and wall time"),
}


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
    try:
        if getattr(args, "device", None) is not None:
            check_device("--device", args.device, allow_auto=True)
        return int(module.run(args))
    except (ValueError, FileNotFoundError) as error:  # bad input: the message, not a traceback
        command.exit(2, f"{command.prog}: error: {error}\n")
    except OSError as error:  # the system refused (disk full, permissions): the message, exit status 1
        command.exit(1, f"{command.prog}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
