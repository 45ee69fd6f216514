"""Command line of the simulation studies.

    python -m simulate study     [--out DIR] [--quick] [--seed S] [...]   the main job (outlier-to-bulk ratio vs error)
    python -m simulate theorem   [--out DIR] [--quick] [--seed S] [...]   Lemma 8.1 / Theorem 8.1 checks
    python -m simulate synthetic [--out DIR] [--quick] [--seed S] [--device D] [...]   the density estimator's check (Fig. 15)

Each writes a run folder with ``results.json``, PNG figures and ``report.md``. Every
setting is checked before any work starts; the defaults shown by ``--help`` are read from
the settings records. The ``--out`` folder is claimed before any work (:func:`theory.runs.claim_run`:
one command and its settings own a folder; another command, other settings or a second
concurrent run are refused). SIGTERM stops a run like Ctrl-C: workers end at once and no
results file is written.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

from theory.checks import check_int

__all__ = ["build_parser", "main"]


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the option in its message)."""
    try:
        return check_int("value", int(text), 1)
    except ValueError as err:  # not an integer, or below 1
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from err


def _values(value: Any) -> str:
    """A setting as the command line spells it: ``(3, 10)`` as ``3 10``, floats in ``%g``."""
    if isinstance(value, tuple):
        return " ".join(_values(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _default(full: Any, quick: Any, name: str) -> str:
    """``(default X; --quick Y)`` read from the two settings records."""
    a, b = _values(getattr(full, name)), _values(getattr(quick, name))
    return f"(default {a})" if a == b else f"(default {a}; --quick {b})"


def build_parser() -> argparse.ArgumentParser:
    from theory.devices import DEVICE_HELP

    from .study.settings import study_settings
    from .synthetic import synthetic_settings
    from .theorem import theorem_settings

    parser = argparse.ArgumentParser(prog="python -m simulate", description="Simulation studies of the class/cross-class structure of MLR Fisher spectra.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{study,theorem,synthetic}")

    def common(p: argparse.ArgumentParser, out: str, seed: int) -> None:
        p.add_argument("--out", default=out, help=f"run folder, created if missing (default {out})")
        p.add_argument("--quick", action="store_true", help="small settings (as in the test suite)")
        p.add_argument("--seed", type=int, default=seed, help=f"first random seed (default {seed})")
        p.add_argument(
            "--threads", type=_positive, default=1,
            help="torch, Numba and BLAS threads per process (default 1: the products are small, and extra threads "
            "only contend with the worker processes or other jobs)",
        )

    full, quick = study_settings(False), study_settings(True)
    d = lambda name: _default(full, quick, name)  # noqa: E731
    study_help = "the main job: Fisher spectrum of trained MLR vs Theorem 8.1, finite samples, attribution"
    study = sub.add_parser("study", help=study_help, description=study_help)
    common(study, "runs/study", full.seed)
    study.add_argument("--classes", type=int, nargs="+", help=f"numbers of classes C >= 2 {d('classes')}")
    study.add_argument("--dim", type=int, help=f"dimension D > C {d('dim')}")
    study.add_argument("--n-per-class", type=int, help=f"training examples per class {d('n_per_class')}")
    study.add_argument("--n-test", type=int, help=f"test examples per class {d('n_test_per_class')}")
    study.add_argument("--snrs", type=float, nargs="+", help=f"SNR values s = t^2 >= 0 {d('snrs')}")
    study.add_argument("--attribution-snrs", type=float, nargs="+",
                       help=f"SNRs with an attribution report, trained and positive control (those not in --snrs get a fit of their own) {d('attribution_snrs')}; "
                       "with --snrs given: its lowest, middle and highest")
    study.add_argument("--seeds", type=int, help=f"seeds per point {d('seeds')}")
    study.add_argument("--penalty", type=float, help=f"ridge penalty of the MLR fit {d('penalty')}")
    study.add_argument("--workers", type=_positive, default=2, help="worker processes (default 2)")

    full, quick = theorem_settings(False), theorem_settings(True)
    theorem_help = "dense eigh vs Theorem 8.1, Monte Carlo convergence to Lemma 8.1, sympy derivations"
    theorem = sub.add_parser("theorem", help=theorem_help, description=theorem_help)
    common(theorem, "runs/theorem", full.seed)
    theorem.add_argument("--classes", type=int, nargs="+", help=f"numbers of classes C >= 2 of the dense grid {_default(full, quick, 'classes')}")
    theorem.add_argument("--snrs", type=float, nargs="+", help=f"SNR values s >= 0 of the dense grid {_default(full, quick, 'snrs')}")
    theorem.add_argument("--alpha", type=float, help=f"alpha in (0, 1 - 1/C] of the Monte Carlo problem {_default(full, quick, 'mc_alpha')}")
    theorem.add_argument("--dim", type=int, help=f"dimension D >= C of the Monte Carlo problem {_default(full, quick, 'mc_dim')}")
    theorem.add_argument("--n-per-class", type=int,
                         help=f"largest Monte Carlo sample size per class (default {full.mc_n_per_class[-1]}; --quick {quick.mc_n_per_class[-1]})")

    full, quick = synthetic_settings(False), synthetic_settings(True)
    synthetic_help = "the density estimator on diag(5,4,3,0,...) + ZZ^T/n against dense eigh (Fig. 15)"
    synthetic = sub.add_parser("synthetic", help=synthetic_help, description=synthetic_help)
    common(synthetic, "runs/synthetic", full.seed)
    synthetic.add_argument("--size", type=int, help=f"matrix size n {_default(full, quick, 'size')}")
    synthetic.add_argument("--num-steps", type=int, help=f"Lanczos steps per start {_default(full, quick, 'num_steps')}")
    synthetic.add_argument("--num-repeats", type=int, help=f"random starts {_default(full, quick, 'num_repeats')}")
    synthetic.add_argument("--kappa", type=float, help=f"kernel width parameter kappa of the density estimator {_default(full, quick, 'kappa')}")
    synthetic.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} (default cpu)")
    return parser


_BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _configure(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The command's validated settings and the keyword arguments of its ``run_cli``."""
    if args.command == "study":
        from .study import configure

        names = {"classes": "classes", "dim": "dim", "n_per_class": "n_per_class", "n_test": "n_test_per_class",
                 "snrs": "snrs", "attribution_snrs": "attribution_snrs", "seeds": "seeds", "penalty": "penalty", "seed": "seed"}
        overrides: dict[str, Any] = {}
        for arg, name in names.items():
            value = getattr(args, arg)
            if value is not None:
                overrides[name] = tuple(value) if isinstance(value, list) else value
        return configure(args.quick, overrides), {"workers": args.workers, "threads": args.threads}
    if args.command == "theorem":
        from .theorem import configure

        return configure(args.quick, args.seed, args.classes, args.snrs, args.alpha, args.dim, args.n_per_class), {}
    from dataclasses import replace

    from theory.devices import check_device

    from .synthetic import synthetic_settings, validate

    names = ("size", "num_steps", "num_repeats", "kappa", "seed")
    st = replace(synthetic_settings(args.quick), **{n: getattr(args, n) for n in names if getattr(args, n) is not None})
    return validate(st), {"device": check_device("--device", args.device)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in _BLAS_THREADS:  # before numpy loads its BLAS here, and inherited by the worker processes
        os.environ[name] = str(args.threads)
    with contextlib.ExitStack() as stack:
        try:  # every setting and the run folder are checked here, before any work
            settings, options = _configure(args)
            from theory.runs import claim_run

            stack.enter_context(claim_run(args.out, f"simulate {args.command}", settings))
        except (ValueError, TypeError) as err:
            print(f"python -m simulate {args.command}: error: {err}", file=sys.stderr)
            return 2
        from .study import set_threads
        from .workers import stop_on_sigterm

        set_threads(args.threads)
        if args.command == "study":
            from .study import run_cli
        elif args.command == "theorem":
            from .theorem import run_cli
        else:
            from .synthetic import run_cli
        with stop_on_sigterm():
            run_cli(args.out, settings, **options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
