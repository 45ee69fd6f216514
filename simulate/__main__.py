"""Command line of the simulation studies.

    python -m simulate study   [--out DIR] [--quick] [...]   the main job (outlier-to-bulk ratio vs error)
    python -m simulate theorem [--out DIR] [--quick] [...]   Lemma 8.1 / Theorem 8.1 checks

Each writes a run folder with ``results.json``, PNG figures and ``report.md``. Every
setting is checked before any work starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from theory.checks import check_int

__all__ = ["main", "build_parser"]


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the option in its message)."""
    try:
        return check_int("value", int(text), 1)
    except ValueError as err:  # not an integer, or below 1
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulate", description="Simulation studies of the class/cross-class structure of MLR Fisher spectra.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{study,theorem}")

    def common(p: argparse.ArgumentParser, out: str) -> None:
        p.add_argument("--out", default=out, help=f"run folder, created if missing (default {out})")
        p.add_argument("--quick", action="store_true", help="small settings (as in the test suite)")
        p.add_argument(
            "--threads", type=_positive, default=1,
            help="torch, Numba and BLAS threads per process (default 1: the products are small, and extra threads "
            "only contend with the worker processes or other jobs)",
        )

    study = sub.add_parser("study", help="the main job: Fisher spectrum of trained MLR vs Theorem 8.1, finite samples, attribution")
    common(study, "runs/study")
    study.add_argument("--classes", type=int, nargs="+", help="numbers of classes C >= 2 (default 3 10)")
    study.add_argument("--dim", type=int, help="dimension D > C (default 60)")
    study.add_argument("--n-per-class", type=int, help="training examples per class (default 300)")
    study.add_argument("--n-test", type=int, help="test examples per class (default 2000)")
    study.add_argument("--snrs", type=float, nargs="+", help="SNR values s = t^2 >= 0 (default 12 values in [0.25, 24])")
    study.add_argument("--attribution-snrs", type=float, nargs="+", help="SNRs (values of --snrs) with an attribution report")
    study.add_argument("--seeds", type=int, help="seeds per point (default 3)")
    study.add_argument("--penalty", type=float, help="ridge penalty of the MLR fit (default 1e-3)")
    study.add_argument("--workers", type=_positive, default=2, help="worker processes (default 2)")

    theorem = sub.add_parser("theorem", help="dense eigh vs Theorem 8.1, Monte Carlo convergence to Lemma 8.1, sympy derivations")
    common(theorem, "runs/theorem")
    theorem.add_argument("--classes", type=int, nargs="+", help="numbers of classes C >= 2 of the dense grid")
    theorem.add_argument("--snrs", type=float, nargs="+", help="SNR values s >= 0 of the dense grid")
    theorem.add_argument("--alpha", type=float, help="alpha in (0, 1 - 1/C] of the Monte Carlo problem")
    theorem.add_argument("--dim", type=int, help="dimension D >= C of the Monte Carlo problem")
    theorem.add_argument("--n-per-class", type=int, help="largest Monte Carlo sample size per class")
    theorem.add_argument("--seed", type=int, default=0, help="first Monte Carlo seed")
    return parser


_BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in _BLAS_THREADS:  # before numpy loads its BLAS here, and inherited by the worker processes
        os.environ[name] = str(args.threads)
    try:  # every setting is checked here, before any work
        if args.command == "study":
            from .study import configure, run_cli

            names = {"classes": "classes", "dim": "dim", "n_per_class": "n_per_class", "n_test": "n_test_per_class",
                     "snrs": "snrs", "attribution_snrs": "attribution_snrs", "seeds": "seeds", "penalty": "penalty"}
            overrides: dict[str, Any] = {}
            for arg, name in names.items():
                value = getattr(args, arg)
                if value is not None:
                    overrides[name] = tuple(value) if isinstance(value, list) else value
            settings = configure(args.quick, overrides)
        else:
            from .theorem import configure, run_cli

            settings = configure(args.quick, args.seed, args.classes, args.snrs, args.alpha, args.dim, args.n_per_class)
    except (ValueError, TypeError) as err:
        print(f"python -m simulate {args.command}: error: {err}", file=sys.stderr)
        return 2
    from .study import set_threads

    set_threads(args.threads)
    if args.command == "study":
        run_cli(args.out, settings, workers=args.workers, threads=args.threads)
    else:
        run_cli(args.out, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
