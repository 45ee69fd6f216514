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
import shutil
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
from deepnet.train import (
    CHECKPOINT,
    CheckpointError,
    TrainConfig,
    TrainingDiverged,
    load_checkpoint,
    train,
)
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
        fill = {"tmp": ctx.tmp, "trained": ctx.trained, "study": ctx.study}
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
    answered: bool = False  # a degenerate input that gets an answer saying so, not an error


def _verdict(case: Bad) -> str:
    return "answered, not refused" if case.answered else "yes" if case.before else "no (after the run)"


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
        shutil.copytree(ctx.trained, out)
        (out / CHECKPOINT).write_bytes(data(ctx))
        return _cli(deepnet_cli.main, [*TRAIN, "--out", str(out)])
    return run


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


def _damaged_data(dataset: str, folder: str, files: dict[str, bytes]) -> Callable[[Context], str]:
    """``deepnet train --dataset DATASET --data-root R`` with damaged files in ``R/folder``."""
    def run(ctx: Context) -> str:
        (ctx.tmp / "data" / folder).mkdir(parents=True)
        for name, data in files.items():
            (ctx.tmp / "data" / folder / name).write_bytes(data)
        argv = ["train", "--dataset", dataset, "--data-root", str(ctx.tmp / "data"), "--per-class", "5", "--epochs", "1",
                "--quiet", "--device", "cpu", "--out", str(ctx.tmp / "never")]
        return _cli(deepnet_cli.main, argv)
    return run


_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR10 = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")


def _a_file(ctx: Context) -> Path:
    (ctx.tmp / "a-file").write_text("x")
    return ctx.tmp / "a-file"


def _other_settings(ctx: Context) -> str:
    out = ctx.tmp / "retrain"
    shutil.copytree(ctx.trained, out)
    return _cli(deepnet_cli.main, [*TRAIN, "--lr", "0.1", "--out", str(out)])


def _point_mass(ctx: Context) -> str:
    from theory.spectral import spectral_density

    d = spectral_density(torch.zeros(50, 50, dtype=torch.float64), num_steps=16)
    assert np.all(np.isfinite(d.density))
    return f"a point mass at {d.point_mass} (finite density, integral {np.trapezoid(d.density, d.grid):.3f})"


def _round_off_products(ctx: Context) -> str:
    from theory.spectral import bulk_density, top_eigenpairs

    U = torch.randn(300, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    split = bulk_density(U @ U.T, top_eigenpairs(U @ U.T, 4))
    return f"accepted: {type(split).__name__} with {len(split.outliers)} outliers (the symmetry probe judges round-off against the operator's scale)"


def _unresolved_log_axis(ctx: Context) -> str:
    import warnings

    from theory.density import DensitySettings, quadrature

    Q, _ = torch.linalg.qr(torch.randn(1500, 1500, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    A = Q @ torch.diag(torch.from_numpy(np.logspace(-6, 3, 1500))) @ Q.T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        d = quadrature(0.5 * (A + A.T), DensitySettings()).log()
    return f"RuntimeWarning, kept in the result: {d.resolution.warning.split(';')[0]}"


def _theory_cases() -> list[Bad]:
    from theory.lanczos import SpectralBounds
    from theory.mlr import (
        bayes_error,
        expected_fisher,
        logit_hessian,
        symmetric_probabilities,
        theorem_eigenvalues,
    )
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
        Bad(T, "API", "`spectral_density(zeros(50, 50))` (used to be all NaN)", _point_mass, "point mass at 0.0", answered=True),
        Bad(T, "API", "`bulk_density(U U^T, top_eigenpairs(U U^T, 4))`, U 300 x 4 (used to be 'not symmetric')",
            _round_off_products, "accepted", answered=True),
        Bad(T, "API", "log density of eigenvalues log-uniform on 1e-6 .. 1e3, 128 steps (used to be silent)",
            _unresolved_log_axis, "not resolved below", answered=True),
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
        Bad(S, "CLI", "`study --attribution-snrs 0`", simulate("study", "--attribution-snrs", "0"), "--attribution-snrs:"),
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
    garbage = lambda c: bytes(range(20)) * 50
    non_utf8 = lambda c: b"\xff\xfe\xfa" * 300
    empty = lambda c: b""
    return [
        Bad(D, "CLI", "`train --model vgg11 --depth 3`", deepnet(*TRAIN, "--model", "vgg11", "--depth", "3"), "are for the MLP only"),
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
        Bad(D, "CLI", "`train --dataset mnist` with idx files of garbage",
            _damaged_data("mnist", "MNIST/raw", {n: bytes(range(256)) * 4 for n in _IDX}), "not an idx file"),
        Bad(D, "CLI", "`train --dataset mnist` with a truncated idx file",
            _damaged_data("mnist", "MNIST/raw", {n: b"\x00\x00\x08\x03" + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                                               + b"x" * 1000 for n in _IDX}), "bytes of data"),
        Bad(D, "CLI", "`train --dataset mnist` with a damaged .gz file",
            _damaged_data("mnist", "MNIST/raw", {n + ".gz": b"\x1f\x8b" + bytes(200) for n in _IDX}), "cannot be read"),
        Bad(D, "CLI", "`train --dataset cifar10` with batch files of garbage",
            _damaged_data("cifar10", "cifar-10-batches-py", {n: b"\x80\x02" + bytes(range(40)) for n in _CIFAR10}),
            "damaged or not a CIFAR batch"),
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
                   "theory.density.lanczos", "theory.lanczos.lanczos", "theory.eigenpairs.random_block"):
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
    if case.before and not case.answered:
        request.getfixturevalue("no_work")
    message = _normalise(case.run(ctx), context)
    assert case.expect in message
    MESSAGES[case_id] = message
    if os.environ.get("WRITE_BAD_INPUTS"):
        return
    row = _doc_rows().get(case_id)
    assert row is not None, f"docs/bad_inputs.md has no row {case_id}: run with WRITE_BAD_INPUTS=1"
    assert row[:3] == (case.area, case.via, case.what) and row[4] == _verdict(case)
    assert _two_digits(row[3]) == _two_digits(message), (row[3], message)


def _two_digits(text: str) -> str:
    """``text`` with its decimals to two significant digits: a message's measured numbers
    (resolution floors, norms) move in their third digit with the thread count."""
    return re.sub(r"\d+\.\d+(?:e[-+]?\d+)?", lambda m: f"{float(m.group()):.2g}", text)


def _table() -> str:
    head = "| # | area | via | input | message | refused before the work |\n|---|---|---|---|---|---|\n"
    rows = []
    old = _doc_rows()
    for case_id, case in zip(IDS, BAD_INPUTS):
        message = MESSAGES.get(case_id, old.get(case_id, ("", "", "", "?"))[3])
        cells = (case_id, case.area, case.via, case.what, message, _verdict(case))
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    refused = [c for c in BAD_INPUTS if not c.answered]
    before = sum(c.before for c in refused)
    note = (f"\n{len(BAD_INPUTS)} bad inputs ({sum(c.area == 'theory' for c in BAD_INPUTS)} theory, "
            f"{sum(c.area == 'simulate' for c in BAD_INPUTS)} simulate, {sum(c.area == 'deepnet' for c in BAD_INPUTS)} deepnet; "
            f"{sum(c.via == 'API' for c in BAD_INPUTS)} API, {sum(c.via == 'CLI' for c in BAD_INPUTS)} command line): "
            f"{len(refused)} are refused, {before} of them before any pass over the data and {len(refused) - before} "
            f"only after the run that reveals them; {len(BAD_INPUTS) - len(refused)} degenerate inputs are answered "
            "(a point mass, a pass, a warning kept in the result).\n")
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


# --------------------------------------------------------------------------- divergence (item 6)
SMALL = TrainConfig(dataset="mnist-5k", per_class=12, model="mlp", model_kwargs={"depth": 2, "width": 24},
                    epochs=4, lr=0.05, batch_size=32, seed=5, data_seed=2)


def _states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_divergence_stops_at_the_first_non_finite_loss_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    reference = train(SMALL, tmp_path / "reference", show_progress=False)
    train(SMALL, tmp_path / "run", stop_after=1, show_progress=False)
    real_step, calls = torch.optim.SGD.step, []

    def poisoned_step(self, *args, **kwargs):  # the second step of epoch 2 leaves a NaN weight
        out = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", poisoned_step)
    with pytest.raises(TrainingDiverged, match=r"the loss is nan at epoch 2, step 3 of 4, learning rate 0\.005; "
                                               r"the last good checkpoint \(after epoch 1\) is kept in .*checkpoint\.pt"):
        train(SMALL, tmp_path / "run", show_progress=False)
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)
    kept = load_checkpoint(tmp_path / "run", device="cpu")
    assert kept.extra["epochs_done"] == 1
    assert all(bool(torch.isfinite(p).all()) for p in kept.model.parameters())
    resumed = train(SMALL, tmp_path / "run", show_progress=False)  # the kept checkpoint resumes as if nothing happened
    assert _states_equal(resumed.model.state_dict(), reference.model.state_dict())


def test_a_diverged_command_writes_no_results_and_keeps_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    message = _cli(deepnet_cli.main, [*TRAIN, "--lr", "1e6", "--epochs", "3", "--out", str(out)])
    assert "training diverged" in message and "learning rate 100000" in message
    assert not (out / "results.json").exists() and not (out / "curves.png").exists()
    assert load_checkpoint(out, device="cpu").extra["epochs_done"] == 1


# --------------------------------------------------------------------------- damaged checkpoints (item 7)
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "non-utf8"])
def test_a_damaged_checkpoint_is_named_and_a_fresh_start_works(tmp_path, damage):
    train(SMALL, tmp_path, stop_after=1, show_progress=False)
    path = tmp_path / CHECKPOINT
    data = {"garbage": bytes(range(256)) * 4, "truncated": path.read_bytes()[: path.stat().st_size // 2],
            "empty": b"", "non-utf8": b"\xff\xfe" * 500}[damage]
    path.write_bytes(data)
    for call in (lambda: load_checkpoint(path, device="cpu"), lambda: train(SMALL, tmp_path, show_progress=False)):
        with pytest.raises(CheckpointError, match=rf"checkpoint: {re.escape(str(path))} is damaged .*start fresh|fresh one"):
            call()
    fresh = train(SMALL, tmp_path, resume=False, stop_after=1, show_progress=False)
    assert fresh.epoch.tolist() == [1] and load_checkpoint(path, device="cpu").extra["epochs_done"] == 1


# --------------------------------------------------------------------------- huge norms (item 7)
def test_an_operator_of_norm_1e160_gives_the_scaled_spectrum():
    from theory.spectral import spectral_density, top_eigenpairs

    A = torch.diag(torch.linspace(1.0, 2.0, 200, dtype=torch.float64))
    small, huge = spectral_density(A, num_steps=16, seed=3), spectral_density(A * 1e160, num_steps=16, seed=3)
    np.testing.assert_allclose(huge.grid / 1e160, small.grid, rtol=1e-12)
    np.testing.assert_allclose(huge.density * 1e160, small.density, rtol=1e-9, atol=1e-12 * small.density.max())
    top = top_eigenpairs(A * 1e160, k=2, seed=1)
    np.testing.assert_allclose(top.eigenvalues / 1e160, [2.0, 2.0 - 1 / 199], rtol=1e-8)


# --------------------------------------------------------------------------- results before figures (item 4)
def test_a_failing_figure_never_costs_the_numbers(tmp_path, monkeypatch, capsys):
    from simulate import synthetic

    def broken(*args, **kwargs):
        raise ValueError("Data cannot be log-scaled")

    monkeypatch.setattr(synthetic, "plot_synthetic_check", broken)
    out = tmp_path / "run"
    argv = ["synthetic", "--out", str(out), "--size", "300", "--num-steps", "16", "--num-repeats", "2"]
    assert simulate_cli.main(argv) == 0
    assert (out / "results.json").exists() and (out / "report.md").exists() and not (out / "synthetic_check.png").exists()
    assert "synthetic_check.png was not written (ValueError: Data cannot be log-scaled)" in capsys.readouterr().err

    import deepnet.train as trainer

    monkeypatch.setattr(trainer, "_curves_figure", broken)
    out = tmp_path / "train"
    assert deepnet_cli.main([*TRAIN, "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["training"]["finished"] is True
    assert (out / "report.md").exists() and not (out / "curves.png").exists()


# --------------------------------------------------------------------------- kill / resume matrix
SIGNALS = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT]
KILL_TRAIN = ["train", "--dataset", "mnist-5k", "--per-class", "12", "--depth", "2", "--width", "24", "--epochs", "6",
              "--batch-size", "32", "--seed", "5", "--quiet", "--device", "cpu"]
KILL_STUDY = ["study", "--quick", "--classes", "3", "--dim", "16", "--n-per-class", "10", "--n-test", "50", "--seeds", "1",
              "--snrs", "1", "4", "--workers", "2"]
_SLOWED = """
import sys, time
import {module} as target
real = target.{name}
def slowed(*args, **kwargs):
{body}
target.{name} = slowed
from {package}.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _start(package: str, argv: list[str], module: str | None = None, name: str | None = None, body: str = ""):
    """``python -m PACKAGE ARGV`` in a child process (``module.name`` slowed down by ``body``)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    if module is None:
        return subprocess.Popen([sys.executable, "-m", package, *argv], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    code = _SLOWED.format(module=module, name=name, body=body, package=package)
    return subprocess.Popen([sys.executable, "-c", code, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _descendants(pid: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.append(pid)
        except OSError:
            pass
    return alive


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"the child ended early (exit {proc.returncode})"
        assert time.monotonic() < deadline, "the child did not get there in time"
        time.sleep(0.05)


def _kill(proc: subprocess.Popen, sig: int) -> tuple[int, list[int]]:
    """Send ``sig`` to the child, wait for it; return its exit status and any of its
    descendants still alive after 5 s (killed, so that none leaks)."""
    kids = _descendants(proc.pid)
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 5
    while _alive(kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _alive(kids)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return rc, left


@pytest.fixture(scope="module")
def uninterrupted_training(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "train"
    with contextlib.redirect_stdout(io.StringIO()):
        assert deepnet_cli.main([*KILL_TRAIN, "--out", str(out)]) == 0
    return torch.load(out / CHECKPOINT, weights_only=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_training_killed_mid_run_resumes_to_the_uninterrupted_weights(tmp_path, sig, uninterrupted_training):
    out = tmp_path / "run"
    proc = _start("deepnet", [*KILL_TRAIN, "--out", str(out)], "deepnet.train", "iterate_batches",
                  "    for batch in real(*args, **kwargs):\n        time.sleep(0.1)\n        yield batch")
    _wait_for(lambda: (out / "log.json").exists(), proc)
    rc, left = _kill(proc, sig)
    assert rc != 0 and left == []
    kept = load_checkpoint(out, device="cpu")  # what survives: the last finished epoch, loadable
    assert 1 <= kept.extra["epochs_done"] < 6
    assert not (out / "results.json").exists()
    with contextlib.redirect_stdout(io.StringIO()):
        assert deepnet_cli.main([*KILL_TRAIN, "--out", str(out)]) == 0  # the same command resumes
    final = torch.load(out / CHECKPOINT, weights_only=True)
    assert _states_equal(final["model"], uninterrupted_training["model"])
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in final["history"]] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in uninterrupted_training["history"]]
    assert not list(out.rglob("*.tmp"))


def _spectrum_argv(trained: Path, out: Path) -> list[str]:
    return [a.format(trained=trained) for a in SPECTRUM] + ["--out", str(out)]


@pytest.fixture(scope="module")
def uninterrupted_spectrum(context, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "spectrum"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert deepnet_cli.main(_spectrum_argv(context.trained, out)) == 0
    return json.loads((out / "results.json").read_text())


def _without_seconds(results: dict) -> dict:
    return {k: v for k, v in results.items() if k != "spectra"} | {
        "spectra": {k: v for k, v in results["spectra"].items() if k != "seconds"}}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_spectrum_killed_mid_run_leaves_no_results_and_reruns(tmp_path, sig, context, uninterrupted_spectrum):
    out = tmp_path / "spectrum"
    proc = _start("deepnet", _spectrum_argv(context.trained, out), "deepnet.spectrum", "spectrum",
                  "    time.sleep(60)\n    return real(*args, **kwargs)")
    _wait_for(lambda: (out / RUN_FILE).exists(), proc)
    time.sleep(2.0)  # loading the checkpoint or inside the first (slowed) operator: never finished
    (out / ".results.json.stale.tmp").write_text("half")  # as a writer killed mid-write leaves it
    rc, left = _kill(proc, sig)
    assert rc != 0 and left == []
    assert not (out / "results.json").exists() and not (out / "spectra.png").exists()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert deepnet_cli.main(_spectrum_argv(context.trained, out)) == 0  # lock released, same command reruns
    assert not list(out.rglob("*.tmp"))
    rerun = json.loads((out / "results.json").read_text())
    assert _without_seconds(rerun) == _without_seconds(uninterrupted_spectrum)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_study_killed_mid_run_leaves_no_worker_and_no_results(tmp_path, sig):
    out = tmp_path / "study"
    proc = _start("simulate", [*KILL_STUDY, "--out", str(out)])
    _wait_for(lambda: len(_descendants(proc.pid)) >= 2, proc)
    time.sleep(1.0)
    rc, left = _kill(proc, sig)
    assert rc != 0 and left == []
    assert not (out / "results.json").exists() and not list(out.glob("*.png"))
    settings = simulate_cli._configure(simulate_cli.build_parser().parse_args([*KILL_STUDY, "--out", str(out)]))[0]
    (out / ".results.json.stale.tmp").write_text("half")
    with claim_run(out, "simulate study", settings):  # the same command may run again at once
        assert not (out / ".results.json.stale.tmp").exists()
    other = simulate_cli._configure(simulate_cli.build_parser().parse_args([*KILL_STUDY, "--seeds", "2", "--out", str(out)]))[0]
    with pytest.raises(RunFolderError, match="other settings"), claim_run(out, "simulate study", other):
        pass
