"""``--help`` of every command: each subcommand of ``python -m simulate`` and
``python -m deepnet`` has a one-line description, and every option (``--help``
aside) a help text saying what it does and its default: the value itself where the
option has one (``%(default)s`` or spelled out), ``default`` where the default is
computed (``None``: from the settings records, the checkpoint or the data), and
``required`` for a required option. A flag (``store_true``) is off unless given."""

from __future__ import annotations

import argparse
import importlib
import re

import pytest

from deepnet import __main__ as deepnet_cli
from simulate.__main__ import build_parser

FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction, argparse._CountAction)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser, built as the two dispatchers build them."""
    parsers = {f"simulate {name}": p for name, p in _subparsers(build_parser()).items()}
    for name, (module, summary) in deepnet_cli.COMMANDS.items():
        parser = argparse.ArgumentParser(prog=f"python -m deepnet {name}", description=summary)
        importlib.import_module(module).add_arguments(parser)
        parsers[f"deepnet {name}"] = parser
    return parsers


PARSERS = command_parsers()


def spellings(value: object) -> set[str]:
    """How a default may read in a help text: ``str``, ``%g`` for numbers, ``none`` for ``''``."""
    if isinstance(value, str):
        return {value} if value else {"none"}
    out = {str(value), f"{value:g}"}
    if isinstance(value, float):  # 1e-06 also as 1e-6, 0.0001 as 1e-4
        exact = [f"{value:.{k}e}" for k in range(4) if float(f"{value:.{k}e}") == value]
        out |= {re.sub(r"e([+-])0*(\d)", r"e\1\2", s).replace("e+", "e") for s in exact}
    return out


def problems(parser: argparse.ArgumentParser) -> list[str]:
    """What is missing from the help of ``parser``'s options."""
    found = []
    if not (parser.description or "").strip():
        found.append("no description")
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        if not action.help or action.help == argparse.SUPPRESS:
            found.append(f"{name}: no help")
            continue
        text = parser._get_formatter()._expand_help(action)
        if isinstance(action, FLAGS):
            continue
        if action.required:
            if "required" not in text:
                found.append(f"{name}: required but its help does not say so: {text!r}")
        elif "default" not in text:
            found.append(f"{name}: no default in {text!r}")
        elif (isinstance(action.default, (str, int, float)) and not isinstance(action.default, bool)
              and not any(s in text for s in spellings(action.default))):
            found.append(f"{name}: its default {action.default!r} is not in {text!r}")
    return found


def test_every_command_is_covered():
    assert set(PARSERS) == {"simulate study", "simulate theorem", "simulate synthetic"} | {
        f"deepnet {name}" for name in deepnet_cli.COMMANDS}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_says_what_it_does_and_its_default(name):
    assert problems(PARSERS[name]) == []


def test_the_check_finds_a_missing_default_and_help():
    parser = argparse.ArgumentParser(description="a command")
    parser.add_argument("--steps", type=int, default=48, help="Lanczos steps")
    parser.add_argument("--tol", type=float, default=1e-3, help="tolerance (default %(default)s)")
    parser.add_argument("--mode", default="fast")
    parser.add_argument("--size", type=int, default=5, help="size (default 6)")
    assert problems(parser) == [
        "--steps: no default in 'Lanczos steps'",
        "--mode: no help",
        "--size: its default 5 is not in 'size (default 6)'",
    ]


def test_train_help_states_the_papers_defaults_and_their_cost(capsys):
    with pytest.raises(SystemExit) as info:
        deepnet_cli.main(["train", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("depth 8", "width 2048", "200 epochs", "CPU", "--depth 2 --width 128 --epochs 10"):
        assert words in text, words


@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in ("study", "theorem", "synthetic")])
def test_simulate_help_prints(argv, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m simulate")
    assert ("--out" in out) == (argv != ["--help"])


def test_deepnet_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        deepnet_cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name, (_, summary) in deepnet_cli.COMMANDS.items():
        assert name in out and summary.split()[0] in out
