"""Reliability: the bad inputs a hostile but fair user tries, across theory, simulate and
deepnet, API and command line, each with the message it gets (``BAD_INPUTS``; the table
in ``docs/bad_inputs.md`` is checked against them: ``WRITE_BAD_INPUTS=1`` rewrites it);
refusal before the work (checked by making the work itself raise); divergence of
training; damaged checkpoints; and the kill / resume matrix (train, spectrum and study
under SIGKILL / SIGTERM / SIGINT, each killing only its own child process by pid)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from deepnet import __main__ as deepnet_cli
from deepnet.train import CHECKPOINT, CheckpointError, TrainConfig, TrainingDiverged, load_checkpoint, train
from simulate import __main__ as simulate_cli
from theory.runs import RUN_FILE, RunFolderError, claim_run

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad_inputs.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"

pytestmark = pytest.mark.usefixtures("one_thread")


class WorkStarted(BaseException):
    """Raised by the patched work functions: a refusal must come before them."""


# --------------------------------------------------------------------------- running a case
@dataclass
class Context:
    tmp: Path
    trained: Path  # a run folder of `deepnet train` (tiny)
    study: Path  # a run folder owned by `simulate study`


def _cli(main: Callable, argv: list[str]) -> str:
    """Run a command line in-process; return the message of its refusal (exit status 2)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    text = err.getvalue()
    assert code == 2 and ": error: " in text, f"not refused (exit {code}): {text[-500:]}"
    assert "Traceback" not in text
    return text[text.rindex(": error: ") + len(": error: "):]


def _api(call: Callable[[], object]) -> str:
    try:
        call()
    except (ValueError, TypeError, FloatingPointError, FileNotFoundError) as err:
        return f"{type(err).__name__}: {err}"
    raise AssertionError("accepted")


def simulate(*argv: str) -> Callable[[Context], str]:
    """``python -m simulate ARGV --out <case folder>/never``."""
    return lambda ctx: _cli(simulate_cli.main, [*argv, "--out", str(ctx.tmp / "never")])


def deepnet(*argv: str, out: str = "{tmp}/never") -> Callable[[Context], str]:
    """``python -m deepnet ARGV --out OUT``, with ``{tmp}``, ``{trained}`` and ``{study}`` filled in."""
    def run(ctx: Context) -> str:
        fill = dict(tmp=ctx.tmp, trained=ctx.trained, study=ctx.study)
        return _cli(deepnet_cli.main, [a.format(**fill) for a in (*argv, "--out", out)])
    return run


def api(call: Callable[[Context], object]) -> Callable[[Context], str]:
    return lambda ctx: _api(lambda: call(ctx))


TINY = ["--dataset", "mnist-5k", "--per-class", "6", "--depth", "1", "--width", "6", "--epochs", "1",
        "--batch-size", "20", "--quiet", "--device", "cpu"]
TRAIN = ["train", *TINY]
SPECTRUM = ["spectrum", "--checkpoint", "{trained}", "--device", "cpu", "--num-outliers", "3", "--num-steps", "8",
            "--num-repeats", "1", "--max-iterations", "5", "--batch-size", "40"]


@dataclass(frozen=True)
class Bad:
    """One bad input: where (``area``, ``via``), what (as the table shows it), how to try it,
    a part of the message it must get, and whether it is refused before any pass over the data."""

    area: str
    via: str
    what: str
    run: Callable[[Context], str]
    expect: str
    before: bool = True
    cpu_only: bool = False


def _A() -> torch.Tensor:
    return torch.diag(torch.linspace(1.0, 2.0, 200, dtype=torch.float64))


def _nan_operator():
    from theory.operators import as_operator

    return as_operator(lambda V: V * float("nan"), size=50)


def _garbage(ctx: Context, name: str, data: bytes) -> Path:
    path = ctx.tmp / name
    path.write_bytes(data)
    return path


def _truncated(ctx: Context) -> bytes:
    return (ctx.trained / CHECKPOINT).read_bytes()[:700]


def _damaged_resume(data: Callable[[Context], bytes]) -> Callable[[Context], str]:
    """``deepnet train`` resuming in a folder it owns whose checkpoint is damaged."""
    def run(ctx: Context) -> str:
        out = ctx.tmp / "damaged"
        shutil_copy(ctx.trained, out)
        (out / CHECKPOINT).write_bytes(data(ctx))
        return _cli(deepnet_cli.main, [*TRAIN, "--out", str(out)])
    return run


def shutil_copy(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst)


def _locked_study(ctx: Context) -> str:
    from simulate.study import configure

    out = ctx.tmp / "locked"
    settings = configure(True, {"snrs": (2.0,), "seeds": 1})
    with claim_run(out, "simulate study", settings):
        return _cli(simulate_cli.main, ["study", "--quick", "--snrs", "2", "--seeds", "1", "--out", str(out)])


def _foreign_folder(ctx: Context) -> str:
    (ctx.tmp / "mine").mkdir()
    (ctx.tmp / "mine" / "thesis.tex").write_text("x")
    return _cli(simulate_cli.main, ["study", "--quick", "--out", str(ctx.tmp / "mine")])


def _a_file(ctx: Context) -> Path:
    (ctx.tmp / "a-file").write_text("x")
    return ctx.tmp / "a-file"


def _other_settings(ctx: Context) -> str:
    out = ctx.tmp / "retrain"
    shutil_copy(ctx.trained, out)
    return _cli(deepnet_cli.main, [*TRAIN, "--lr", "0.1", "--out", str(out)])


def _theory_cases() -> list[Bad]:
    from theory.lanczos import SpectralBounds
    from theory.mlr import bayes_error, expected_fisher, logit_hessian, symmetric_probabilities, theorem_eigenvalues
    from theory.operators import as_operator
    from theory.spectral import spectral_density, top_eigenpairs
    from theory.structure import decompose_cross_class, decompose_features

    v = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1] * 5)
    T = "theory"
    return [
        Bad(T, "API", "`spectral_density(A, kappa='3')`", api(lambda c: spectral_density(_A(), kappa="3")), "kappa:"),
        Bad(T, "API", "`spectral_density(A, kappa=1.0)`", api(lambda c: spectral_density(_A(), kappa=1.0)), "kappa:"),
        Bad(T, "API", "`spectral_density(A, seed=2**70)`", api(lambda c: spectral_density(_A(), seed=2**70)), "2**63 - 1"),
        Bad(T, "API", "`spectral_density(A, seed=-1)`", api(lambda c: spectral_density(_A(), seed=-1)), "seed:"),
        Bad(T, "API", "`spectral_density(A, num_steps=1)`", api(lambda c: spectral_density(_A(), num_steps=1)), "num_steps:"),
        Bad(T, "API", "`spectral_density(A, num_steps=201)` (A is 200 x 200)", api(lambda c: spectral_density(_A(), num_steps=201)), "num_steps:"),
        Bad(T, "API", "`spectral_density(A, num_repeats=0)`", api(lambda c: spectral_density(_A(), num_repeats=0)), "num_repeats:"),
        Bad(T, "API", "`spectral_density(A, num_steps=8.0)`", api(lambda c: spectral_density(_A(), num_steps=8.0)), "num_steps:"),
        Bad(T, "API", "`spectral_density(A, device='cuda')` (not a density setting)", api(lambda c: spectral_density(_A(), device="cuda")), "device"),
        Bad(T, "API", "`spectral_density` of a 1 x 1 operator", api(lambda c: spectral_density(torch.ones(1, 1, dtype=torch.float64))), "dimension >= 2"),
        Bad(T, "API", "`spectral_density(A, bounds=(1, 2))` (a tuple)", api(lambda c: spectral_density(_A(), bounds=(1.0, 2.0))), "SpectralBounds"),
        Bad(T, "API", "`spectral_density(A, bounds=...)` with lower > upper",
            api(lambda c: spectral_density(_A(), bounds=SpectralBounds(2.0, 1.0, 0, 0, 0, 0))), "lower < upper"),
        Bad(T, "API", "`spectral_density(A, bounds=[1.2, 1.5])`, spectrum [1, 2]",
            api(lambda c: spectral_density(_A(), num_steps=8, bounds=SpectralBounds(1.2, 1.5, 0, 0, 0, 0))),
            "do not contain the spectrum", before=False),
        Bad(T, "API", "`spectral_density(A, check_symmetry=1)`", api(lambda c: spectral_density(_A(), check_symmetry=1)), "check_symmetry"),
        Bad(T, "API", "`spectral_density` of an operator returning NaN", api(lambda c: spectral_density(_nan_operator(), num_steps=8)),
            "NaN or Inf"),
        Bad(T, "API", "`spectral_density` of a non-symmetric matrix",
            api(lambda c: spectral_density(torch.triu(torch.ones(200, 200, dtype=torch.float64)))), "not symmetric"),
        Bad(T, "API", "`top_eigenpairs(A, k=0)`", api(lambda c: top_eigenpairs(_A(), k=0)), "k:"),
        Bad(T, "API", "`top_eigenpairs(A, k=201)` (A is 200 x 200)", api(lambda c: top_eigenpairs(_A(), k=201)), "k:"),
        Bad(T, "API", "`top_eigenpairs(A, k=2, which='biggest')`", api(lambda c: top_eigenpairs(_A(), k=2, which="biggest")), "which:"),
        Bad(T, "API", "`top_eigenpairs(A, k=2, tol=0)`", api(lambda c: top_eigenpairs(_A(), k=2, tol=0.0)), "tol:"),
        Bad(T, "API", "`top_eigenpairs(A, k=2, max_iterations=0)`", api(lambda c: top_eigenpairs(_A(), k=2, max_iterations=0)), "max_iterations:"),
        Bad(T, "API", "`as_operator(M, device='cuda')` on a machine without CUDA",
            api(lambda c: as_operator(torch.eye(3, dtype=torch.float64), device="cuda")), "no CUDA device", cpu_only=True),
        Bad(T, "API", "`as_operator(M, device='gpu')`", api(lambda c: as_operator(torch.eye(3, dtype=torch.float64), device="gpu")), "device:"),
        Bad(T, "API", "`as_operator` of a complex matrix", api(lambda c: as_operator(np.eye(4) * (1 + 1j))), "complex"),
        Bad(T, "API", "`as_operator` of a 3 x 4 array", api(lambda c: as_operator(np.ones((3, 4)))), "square"),
        Bad(T, "API", "`as_operator(callable)` without `size`", api(lambda c: as_operator(lambda V: V)), "size:"),
        Bad(T, "API", "`as_operator('matrix')`", api(lambda c: as_operator("matrix")), "expected a SymmetricOperator"),
        Bad(T, "API", "`logit_hessian(p)`, rows summing to 1.1", api(lambda c: logit_hessian(np.array([0.5, 0.6]))), "summing to 1"),
        Bad(T, "API", "`logit_hessian(p)` with a negative entry", api(lambda c: logit_hessian(np.array([1.5, -0.5]))), "probabilities"),
        Bad(T, "API", "`symmetric_probabilities(3, 1.5)`", api(lambda c: symmetric_probabilities(3, 1.5)), "alpha"),
        Bad(T, "API", "`expected_fisher(1, 5, 1.0, 0.1)`", api(lambda c: expected_fisher(1, 5, 1.0, 0.1)), "num_classes"),
        Bad(T, "API", "`expected_fisher(3, 2, 1.0, 0.1)` (D < C)", api(lambda c: expected_fisher(3, 2, 1.0, 0.1)), "dim"),
        Bad(T, "API", "`theorem_eigenvalues(3, 5, -1.0, 0.1)`", api(lambda c: theorem_eigenvalues(3, 5, -1.0, 0.1)), "snr"),
        Bad(T, "API", "`bayes_error(1.0, 1)`", api(lambda c: bayes_error(1.0, 1)), "num_classes"),
        Bad(T, "API", "`decompose_features(v, labels)` with a label -1",
            api(lambda c: decompose_features(v, torch.tensor([-1] + [0] * 9))), "class indices >= 0"),
        Bad(T, "API", "`decompose_features(v, labels)` with float labels", api(lambda c: decompose_features(v, labels.double())), "integer"),
        Bad(T, "API", "`decompose_features(v, labels)` with 9 labels for 10 rows", api(lambda c: decompose_features(v, labels[:9])), "shape"),
        Bad(T, "API", "`decompose_cross_class(v3, labels, probs)` with probabilities of the wrong shape",
            api(lambda c: decompose_cross_class(torch.zeros(10, 2, 3, dtype=torch.float64), labels, torch.ones(10, 3))), "probs:"),
    ]


def _simulate_cases() -> list[Bad]:
    from simulate.mixtures import canonical_mixture
    from simulate.solver import fit_mlr
    from simulate.study import configure

    S = "simulate"
    X = np.zeros((6, 3))
    return [
        Bad(S, "API", "`canonical_mixture(1, 5, 1.0)`", api(lambda c: canonical_mixture(1, 5, 1.0)), "num_classes"),
        Bad(S, "API", "`canonical_mixture(3, 5, -1.0)`", api(lambda c: canonical_mixture(3, 5, -1.0)), "snr"),
        Bad(S, "API", "`fit_mlr(X, labels, 3, penalty=-1)`", api(lambda c: fit_mlr(X, np.array([0, 1, 2] * 2), 3, penalty=-1.0)), "penalty"),
        Bad(S, "API", "`fit_mlr(X, labels, 3)` with a label 3", api(lambda c: fit_mlr(X, np.array([0, 1, 3] * 2), 3)), "labels"),
        Bad(S, "API", "`fit_mlr` of features with NaN", api(lambda c: fit_mlr(X * np.nan, np.array([0, 1, 2] * 2), 3)), "NaN"),
        Bad(S, "API", "`study.configure(True, {'snrs': (0.0,)})`", api(lambda c: configure(True, {"snrs": (0.0,)})), "--snrs"),
        Bad(S, "CLI", "`study --snrs 0` (used to fail in the figure after 40 s)", simulate("study", "--quick", "--snrs", "0"), "--snrs:"),
        Bad(S, "CLI", "`study --snrs 1e300`", simulate("study", "--quick", "--snrs", "1e300"), "--snrs:"),
        Bad(S, "CLI", "`study --snrs 1 -0.5`", simulate("study", "--snrs", "1", "-0.5"), "--snrs:"),
        Bad(S, "CLI", "`study --snrs 1 nan`", simulate("study", "--snrs", "1", "nan"), "--snrs:"),
        Bad(S, "CLI", "`study --snrs x`", simulate("study", "--snrs", "x"), "invalid float value"),
        Bad(S, "CLI", "`study --quick --n-per-class 1 --seeds 1 --snrs 2` (used to divide by an empty bulk)",
            simulate("study", "--quick", "--n-per-class", "1", "--seeds", "1", "--snrs", "2"), "--n-per-class:"),
        Bad(S, "CLI", "`study --classes 1`", simulate("study", "--classes", "1"), "--classes:"),
        Bad(S, "CLI", "`study --classes 200` (D = 40)", simulate("study", "--classes", "200"), "--dim:"),
        Bad(S, "CLI", "`study --classes 3 --dim 3`", simulate("study", "--classes", "3", "--dim", "3"), "D > C"),
        Bad(S, "CLI", "`study --quick --dim 6` (C D below the Lanczos steps)", simulate("study", "--quick", "--dim", "6"), "Lanczos steps"),
        Bad(S, "CLI", "`study --n-test 0`", simulate("study", "--n-test", "0"), "--n-test:"),
        Bad(S, "CLI", "`study --seeds 0`", simulate("study", "--seeds", "0"), "--seeds:"),
        Bad(S, "CLI", "`study --penalty -1`", simulate("study", "--penalty", "-1"), "--penalty:"),
        Bad(S, "CLI", "`study --attribution-snrs 7.5`", simulate("study", "--attribution-snrs", "7.5"), "--attribution-snrs:"),
        Bad(S, "CLI", "`study --seed -1`", simulate("study", "--seed", "-1"), "--seed:"),
        Bad(S, "CLI", "`study --workers 0`", simulate("study", "--workers", "0"), "--workers"),
        Bad(S, "CLI", "`study --threads 0`", simulate("study", "--threads", "0"), "--threads"),
        Bad(S, "CLI", "`study --bogus`", simulate("study", "--bogus"), "unrecognized arguments"),
        Bad(S, "CLI", "no command", lambda c: _cli(simulate_cli.main, []), "required"),
        Bad(S, "CLI", "`study --out` a file", lambda c: _cli(simulate_cli.main, ["study", "--quick", "--out", str(_a_file(c))]),
            "not a folder"),
        Bad(S, "CLI", "`study --out` below a file",
            lambda c: _cli(simulate_cli.main, ["study", "--quick", "--out", str(_a_file(c) / "run")]), "cannot create"),
        Bad(S, "CLI", "`study --out` a training's run folder",
            lambda c: _cli(simulate_cli.main, ["study", "--quick", "--out", str(c.trained)]), "holds a run of `deepnet train`"),
        Bad(S, "CLI", "`study --quick --out` a study folder of other settings",
            lambda c: _cli(simulate_cli.main, ["study", "--quick", "--seeds", "3", "--out", str(c.study)]), "other settings"),
        Bad(S, "CLI", "`study --out` a non-empty folder that is not a run folder", _foreign_folder, "holds no run.json"),
        Bad(S, "CLI", "`study --out` a folder another run holds", _locked_study, "in use by another run"),
        Bad(S, "CLI", "`theorem --quick --n-per-class 1` (used to end in a singular matrix)",
            simulate("theorem", "--quick", "--n-per-class", "1"), "--n-per-class:"),
        Bad(S, "CLI", "`theorem --seed -1`", simulate("theorem", "--quick", "--seed", "-1"), "--seed:"),
        Bad(S, "CLI", "`theorem --classes 200`", simulate("theorem", "--quick", "--classes", "200"), "--classes:"),
        Bad(S, "CLI", "`theorem --classes 3 1`", simulate("theorem", "--classes", "3", "1"), "--classes:"),
        Bad(S, "CLI", "`theorem --alpha 0.8` (C = 4: alpha <= 3/4)", simulate("theorem", "--alpha", "0.8"), "alpha"),
        Bad(S, "CLI", "`theorem --dim 3`", simulate("theorem", "--dim", "3"), "--dim:"),
        Bad(S, "CLI", "`theorem --snrs -1`", simulate("theorem", "--snrs", "-1"), "--snrs:"),
        Bad(S, "CLI", "`synthetic --size 1`", simulate("synthetic", "--size", "1"), "size"),
        Bad(S, "CLI", "`synthetic --num-steps 1`", simulate("synthetic", "--num-steps", "1"), "num"),
        Bad(S, "CLI", "`synthetic --kappa 0.5`", simulate("synthetic", "--kappa", "0.5"), "kappa"),
        Bad(S, "CLI", "`synthetic --device foo`", simulate("synthetic", "--device", "foo"), "--device:"),
        Bad(S, "CLI", "`synthetic --device cuda` on a machine without CUDA", simulate("synthetic", "--device", "cuda"),
            "no CUDA device", cpu_only=True),
    ]


def _deepnet_cases() -> list[Bad]:
    D = "deepnet"
    garbage = lambda c: bytes(range(20)) * 50  # noqa: E731
    non_utf8 = lambda c: b"\xff\xfe\xfa" * 300  # noqa: E731
    empty = lambda c: b""  # noqa: E731
    return [
        Bad(D, "CLI", "`train --model vgg11 --depth 3`", deepnet(*TRAIN, "--model", "vgg11", "--depth", "3"), "--depth is for the MLP"),
        Bad(D, "CLI", "`train --model resnet18 --depth 1 --hidden 10`", deepnet(*TRAIN, "--model", "resnet18", "--hidden", "10"), "resnet18 takes"),
        Bad(D, "CLI", "`train --model foo`", deepnet(*TRAIN, "--model", "foo"), "invalid choice"),
        Bad(D, "CLI", "`train --depth -1`", deepnet(*TRAIN, "--depth", "-1"), "depth:"),
        Bad(D, "CLI", "`train --width 0`", deepnet(*TRAIN, "--width", "0"), "width:"),
        Bad(D, "CLI", "`train --device foo`", deepnet(*TRAIN, "--device", "foo"), "--device:"),
        Bad(D, "CLI", "`train --device cuda` on a machine without CUDA", deepnet(*TRAIN, "--device", "cuda"), "no CUDA device", cpu_only=True),
        Bad(D, "CLI", "`train --epochs 0`", deepnet(*TRAIN, "--epochs", "0"), "epochs:"),
        Bad(D, "CLI", "`train --per-class 0`", deepnet(*TRAIN, "--per-class", "0"), "--per-class"),
        Bad(D, "CLI", "`train --per-class 600` (mnist-5k has fewer)", deepnet(*TRAIN, "--per-class", "600"), "per_class"),
        Bad(D, "CLI", "`train --lr 0`", deepnet(*TRAIN, "--lr", "0"), "lr:"),
        Bad(D, "CLI", "`train --lr nan`", deepnet(*TRAIN, "--lr", "nan"), "lr:"),
        Bad(D, "CLI", "`train --momentum 1.5`", deepnet(*TRAIN, "--momentum", "1.5"), "momentum:"),
        Bad(D, "CLI", "`train --batch-size 0`", deepnet(*TRAIN, "--batch-size", "0"), "batch_size:"),
        Bad(D, "CLI", "`train --lr-milestones 0.7 0.3`", deepnet(*TRAIN, "--lr-milestones", "0.7", "0.3"), "lr_milestones:"),
        Bad(D, "CLI", "`train --lr-sweep -2`", deepnet(*TRAIN, "--lr-sweep", "-2"), "--lr-sweep:"),
        Bad(D, "CLI", "`train --lr-sweep 3 --lr-min 0`", deepnet(*TRAIN, "--lr-sweep", "3", "--lr-min", "0"), "--lr-min:"),
        Bad(D, "CLI", "`train --lr-sweep 3 --lr-min 0.1 --lr-max 0.01`",
            deepnet(*TRAIN, "--lr-sweep", "3", "--lr-min", "0.1", "--lr-max", "0.01"), "--lr-max:"),
        Bad(D, "CLI", "`train --stop-after -1`", deepnet(*TRAIN, "--stop-after", "-1"), "--stop-after:"),
        Bad(D, "CLI", "`train --dataset foo`", deepnet(*TRAIN, "--dataset", "foo"), "dataset"),
        Bad(D, "CLI", "`train --dataset mnist --data-root /nonexistent`",
            deepnet("train", "--dataset", "mnist", "--data-root", "{tmp}/nowhere", "--quiet", "--device", "cpu"), "files not found"),
        Bad(D, "CLI", "`train --out` a file", lambda c: _cli(deepnet_cli.main, [*TRAIN, "--out", str(_a_file(c))]), "not a folder"),
        Bad(D, "CLI", "`train --out` below a file (unwritable)",
            lambda c: _cli(deepnet_cli.main, [*TRAIN, "--out", str(_a_file(c) / "run")]), "cannot create"),
        Bad(D, "CLI", "`train --out` a study's run folder", deepnet(*TRAIN, out="{study}"), "holds a run of `simulate study`"),
        Bad(D, "CLI", "`train --out` a training of other settings (`--lr 0.1`)", _other_settings, "lr: 0.05 there, 0.1 here"),
        Bad(D, "CLI", "`train --lr 1e6 --epochs 3` (used to train on NaN, then fail in the plot)", deepnet(*TRAIN, "--lr", "1e6", "--epochs", "3"),
            "training diverged", before=False),
        Bad(D, "CLI", "`train` resuming a garbage checkpoint", _damaged_resume(garbage), "is damaged or not a checkpoint"),
        Bad(D, "CLI", "`train` resuming a truncated checkpoint", _damaged_resume(_truncated), "is damaged or not a checkpoint"),
        Bad(D, "CLI", "`train` resuming an empty checkpoint", _damaged_resume(empty), "is damaged or not a checkpoint"),
        Bad(D, "CLI", "`spectrum --checkpoint` missing", deepnet("spectrum", "--checkpoint", "{tmp}/missing.pt", "--device", "cpu"),
            "does not exist"),
        Bad(D, "CLI", "`spectrum --checkpoint` garbage",
            lambda c: _cli(deepnet_cli.main, ["spectrum", "--checkpoint", str(_garbage(c, "g.pt", garbage(c))), "--device", "cpu"]),
            "is damaged or not a checkpoint"),
        Bad(D, "CLI", "`spectrum --checkpoint` not UTF-8 / not a zip",
            lambda c: _cli(deepnet_cli.main, ["spectrum", "--checkpoint", str(_garbage(c, "u.pt", non_utf8(c))), "--device", "cpu"]),
            "is damaged or not a checkpoint"),
        Bad(D, "CLI", "`spectrum --checkpoint` truncated",
            lambda c: _cli(deepnet_cli.main, ["spectrum", "--checkpoint", str(_garbage(c, "t.pt", _truncated(c))), "--device", "cpu"]),
            "is damaged or not a checkpoint"),
        Bad(D, "CLI", "`spectrum --checkpoint` empty",
            lambda c: _cli(deepnet_cli.main, ["spectrum", "--checkpoint", str(_garbage(c, "e.pt", b"")), "--device", "cpu"]),
            "is damaged or not a checkpoint"),
        Bad(D, "CLI", "`spectrum --checkpoint` a state dict, not a training checkpoint",
            lambda c: (torch.save({"w": torch.zeros(2)}, c.tmp / "sd.pt"),
                       _cli(deepnet_cli.main, ["spectrum", "--checkpoint", str(c.tmp / "sd.pt"), "--device", "cpu"]))[1],
            "not a checkpoint written by deepnet.train"),
        Bad(D, "CLI", "`spectrum --checkpoint D --out D` (used to replace the training's results)",
            deepnet(*SPECTRUM, out="{trained}"), "holds a run of `deepnet train`"),
        Bad(D, "CLI", "`spectrum --out` a file", lambda c: _cli(deepnet_cli.main, [*[a.format(trained=c.trained) for a in SPECTRUM],
                                                                                  "--out", str(_a_file(c))]), "not a folder"),
        Bad(D, "CLI", "`spectrum --out` below a file (unwritable)",
            lambda c: _cli(deepnet_cli.main, [*[a.format(trained=c.trained) for a in SPECTRUM], "--out", str(_a_file(c) / "x")]),
            "cannot create"),
        Bad(D, "CLI", "`spectrum --num-steps 1`", deepnet(*SPECTRUM, "--num-steps", "1"), "num_steps:"),
        Bad(D, "CLI", "`spectrum --num-steps 5000` (more than the parameters)", deepnet(*SPECTRUM, "--num-steps", "5000"), "exceeds"),
        Bad(D, "CLI", "`spectrum --kappa 0.5`", deepnet(*SPECTRUM, "--kappa", "0.5"), "kappa:"),
        Bad(D, "CLI", "`spectrum --batch-size 0`", deepnet(*SPECTRUM, "--batch-size", "0"), "--batch-size:"),
        Bad(D, "CLI", "`spectrum --num-outliers 0`", deepnet(*SPECTRUM, "--num-outliers", "0"), "num_outliers:"),
        Bad(D, "CLI", "`spectrum --tol 0`", deepnet(*SPECTRUM, "--tol", "0"), "tol:"),
        Bad(D, "CLI", "`spectrum --params nonexistent`", deepnet(*SPECTRUM, "--params", "nonexistent"), "nonexistent"),
        Bad(D, "CLI", "`spectrum --operator foo`", deepnet(*SPECTRUM, "--operator", "foo"), "invalid choice"),
        Bad(D, "CLI", "`spectrum --device foo`", deepnet(*SPECTRUM, "--device", "foo"), "--device:"),
        Bad(D, "API", "`load_checkpoint` of a crafted pickle (os.system)",
            api(lambda c: load_checkpoint(_crafted_pickle(c), device="cpu")), "is damaged or not a checkpoint"),
        Bad(D, "API", "`TrainConfig(model='vgg11', model_kwargs={'depth': 3})`",
            api(lambda c: TrainConfig(model="vgg11", model_kwargs={"depth": 3})), "vgg11 takes"),
        Bad(D, "API", "`TrainConfig(lr=-1)`", api(lambda c: TrainConfig(lr=-1.0)), "lr:"),
        Bad(D, "API", "`train(config, out, stop_after=-1)`", api(lambda c: train(TrainConfig(), c.tmp / "never", stop_after=-1)), "stop_after"),
    ]


def _crafted_pickle(ctx: Context) -> Path:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = ctx.tmp / "evil.pt"
    path.write_bytes(pickle.dumps(Evil()))
    return path


BAD_INPUTS = _theory_cases() + _simulate_cases() + _deepnet_cases()
IDS = [f"{i + 1:03d}" for i in range(len(BAD_INPUTS))]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Context:
    base = tmp_path_factory.mktemp("shared")
    trained = base / "trained"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert deepnet_cli.main([*TRAIN, "--out", str(trained)]) == 0
    from simulate.study import configure

    study = base / "study"
    with claim_run(study, "simulate study", configure(True)) as folder:
        folder.write_json("results.json", {"numbers": [1, 2, 3]})
    return Context(tmp=base, trained=trained, study=study)


@pytest.fixture
def no_work(monkeypatch):
    """Make the work itself raise: the first pass over the data (training batches, the
    spectra, the studies' computations, the Lanczos runs and subspace iterations)."""
    def started(*args, **kwargs):
        raise WorkStarted()

    for target in ("deepnet.train.iterate_batches", "deepnet.spectrum.spectrum", "simulate.study.run_study",
                   "simulate.theorem.run_theorem_study", "simulate.synthetic.run_synthetic_check",
                   "theory.density.lanczos", "theory.eigenpairs.random_block"):
        monkeypatch.setattr(target, started)


def _normalise(message: str, ctx: Context) -> str:
    text = " ".join(message.split()).replace(str(ctx.tmp), "<tmp>")
    return re.sub(r"pid \d+", "pid <pid>", text)


def _doc_rows() -> dict[str, tuple[str, ...]]:
    text = DOC.read_text() if DOC.exists() else ""
    body = text.split(BEGIN)[1].split(END)[0] if BEGIN in text else ""
    rows = {}
    for line in [line for line in body.splitlines() if line.startswith("|")][2:]:
        cells = tuple(c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1])
        rows[cells[0]] = cells[1:]
    return rows


MESSAGES: dict[str, str] = {}


# --------------------------------------------------------------------------- the bad inputs
@pytest.mark.parametrize("case", BAD_INPUTS, ids=IDS)
def test_bad_input_is_refused_with_its_message(case, request, context, monkeypatch):
    if case.cpu_only and torch.cuda.is_available():
        pytest.skip("a machine without CUDA only")
    case_id = request.node.callspec.id
    ctx = Context(tmp=context.tmp / f"case{case_id}", trained=context.trained, study=context.study)
    ctx.tmp.mkdir()
    if case.before:
        request.getfixturevalue("no_work")
    message = _normalise(case.run(ctx), context)
    assert case.expect in message
    MESSAGES[case_id] = message
    if os.environ.get("WRITE_BAD_INPUTS"):
        return
    row = _doc_rows().get(case_id)
    assert row is not None, f"docs/bad_inputs.md has no row {case_id}: run with WRITE_BAD_INPUTS=1"
    assert row == (case.area, case.via, case.what, message, "yes" if case.before else "no (after the run)")


def _table() -> str:
    head = "| # | area | via | input | message | refused before the work |\n|---|---|---|---|---|---|\n"
    rows = []
    old = _doc_rows()
    for case_id, case in zip(IDS, BAD_INPUTS):
        message = MESSAGES.get(case_id, old.get(case_id, ("", "", "", "?"))[3])
        cells = (case_id, case.area, case.via, case.what, message, "yes" if case.before else "no (after the run)")
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    before = sum(c.before for c in BAD_INPUTS)
    note = (f"\n{len(BAD_INPUTS)} bad inputs ({sum(c.area == 'theory' for c in BAD_INPUTS)} theory, "
            f"{sum(c.area == 'simulate' for c in BAD_INPUTS)} simulate, {sum(c.area == 'deepnet' for c in BAD_INPUTS)} deepnet; "
            f"{sum(c.via == 'API' for c in BAD_INPUTS)} API, {sum(c.via == 'CLI' for c in BAD_INPUTS)} command line); "
            f"{before} are refused before any pass over the data, {len(BAD_INPUTS) - before} only after the run "
            "that reveals them.\n")
    return head + "\n".join(rows) + "\n" + note


def test_the_documented_table_lists_every_case():
    if os.environ.get("WRITE_BAD_INPUTS"):
        text = DOC.read_text()
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        DOC.write_text(text[:start] + "\n" + _table() + text[end:])
    rows = _doc_rows()
    assert list(rows) == IDS
    assert [r[:3] for r in rows.values()] == [(c.area, c.via, c.what) for c in BAD_INPUTS]
    assert len(BAD_INPUTS) >= 60
    assert _table().split("\n\n")[-1].strip() in DOC.read_text()  # the closing count is current
