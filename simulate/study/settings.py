"""The study's settings: every knob in one frozen record, the default and quick values, and
their checks (clear errors naming the command-line option, before any work)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from theory.checks import check_choice, check_int, check_real

from ..arguments import check_classes, check_dim, check_fraction, check_positive, check_snrs

__all__ = ["StudySettings", "study_settings", "validate_settings", "configure", "MAX_SNR"]

MAX_SNR = 1e4
"""The largest SNR the study accepts (its test and Bayes errors are 0 in double precision long before)."""


@dataclass(frozen=True)
class StudySettings:
    """Every knob of the study. ``attribution_snrs``: SNRs with an attribution (seed 0); those
    not in ``snrs`` get a fit of their own, outside the main grid;
    ``asymmetry`` are the ``eta`` of the unequal-means sweep (``0`` is the canonical model)
    at SNR ``asymmetry_snr`` with ``asymmetry_classes`` classes; ``eig_tol``: relative residual of
    the eigensolves (1e-6: at 1e-3 the Lanczos solver stops, "converged", with the 11th eigenvalue
    in place of a close 10th at C = 10); ``attribution_eigensolver``:
    ``"dense"`` (``eigh``: exact, and faster at the study's sizes ``CD <= 400``) or
    ``"subspace"`` (to ``eig_tol``; its non-converged solves are counted in the report)."""

    classes: tuple[int, ...]
    dim: int
    n_per_class: int
    n_test_per_class: int
    snrs: tuple[float, ...]
    seeds: int
    penalty: float
    attribution_snrs: tuple[float, ...]
    asymmetry: tuple[float, ...]
    asymmetry_snr: float
    asymmetry_classes: int
    eig_tol: float = 1e-6
    max_iterations: int = 400
    density_steps: int = 64
    density_repeats: int = 4
    solver_tol: float = 1e-8
    attribution_eigensolver: str = "dense"
    seed: int = 0


def study_settings(quick: bool = False) -> StudySettings:
    """The default study (about two minutes on two free cores with two workers) or the
    ``quick`` one (tests)."""
    if quick:
        snrs = (0.5, 2.0, 6.0, 30.0)
        return StudySettings(
            classes=(3,), dim=24, n_per_class=120, n_test_per_class=1000, snrs=snrs, seeds=2, penalty=1e-3,
            attribution_snrs=(0.5, 6.0, 30.0), asymmetry=(0.0, 0.8), asymmetry_snr=6.0, asymmetry_classes=3,
            density_steps=48, density_repeats=3,
        )
    snrs = tuple(float(v) for v in np.round(np.geomspace(0.25, 24.0, 12), 3))
    return StudySettings(
        classes=(3, 10), dim=40, n_per_class=200, n_test_per_class=2000, snrs=snrs, seeds=3, penalty=1e-3,
        attribution_snrs=(snrs[2], snrs[6], snrs[10], 40.0, 100.0), asymmetry=(0.0, 0.3, 0.6, 0.9), asymmetry_snr=4.0,
        asymmetry_classes=10,
    )


def validate_settings(st: StudySettings) -> StudySettings:
    """Check every setting (clear errors naming the option) before any work."""
    classes = check_classes(st.classes)
    dim = check_dim(st.dim, classes)
    if dim == max(classes):
        raise ValueError(f"--dim: expected D > C (the bulk has (D - C)(C - 1) eigenvalues), got D = {dim} for C = {max(classes)}")
    check_int("--n-per-class", st.n_per_class, 2, what="(with one example per class the bulk outside the class means is empty)")
    check_positive(st.n_test_per_class, "--n-test")
    snrs = check_snrs(st.snrs)
    for s in snrs:  # the figures' SNR axes are logarithmic; far above 1e4 the fits overflow
        check_real("--snrs", s, 0.0, MAX_SNR, low_open=True, what="(the study's SNR axes are logarithmic)")
    check_positive(st.seeds, "--seeds")
    check_fraction(st.penalty, "--penalty", 0.0, math.inf)
    attribution_snrs = check_snrs(st.attribution_snrs, "--attribution-snrs")
    for s in attribution_snrs:
        check_real("--attribution-snrs", s, 0.0, MAX_SNR, low_open=True, what="(the study's SNR axes are logarithmic)")
    for eta in st.asymmetry:
        check_fraction(eta, "--asymmetry", 0.0, 1.0)
    check_snrs([st.asymmetry_snr], "--asymmetry-snr")
    check_classes([st.asymmetry_classes], "--asymmetry-classes")
    check_dim(dim, [st.asymmetry_classes], "--dim")
    check_fraction(st.eig_tol, "eig_tol", 1e-12, 1.0)
    for name in ("max_iterations", "density_steps", "density_repeats"):
        check_positive(getattr(st, name), name)
    check_choice("attribution_eigensolver", st.attribution_eigensolver, ("dense", "subspace"))
    check_int("--seed", st.seed, 0, 2**63 - 1)
    smallest = min(min(classes), st.asymmetry_classes)  # the Fisher has C D rows, the density C D Lanczos steps at most
    check_int("--dim", dim, -(-st.density_steps // smallest), what=f"(C D >= {st.density_steps} Lanczos steps for C = {smallest})")
    return replace(st, classes=classes, dim=dim, snrs=snrs, attribution_snrs=attribution_snrs)



def configure(quick: bool = False, overrides: dict[str, Any] | None = None) -> StudySettings:
    """Default (or ``quick``) settings with ``overrides``, validated. When ``snrs`` is overridden
    without ``attribution_snrs``, three of the new SNRs are taken (low, middle, high); when
    ``classes`` is, the asymmetric sweep uses the largest of them."""
    base = study_settings(quick)
    over = dict(overrides or {})
    if "snrs" in over:
        snrs = check_snrs(over["snrs"])
        over["snrs"] = snrs
        if "attribution_snrs" not in over:
            ordered = sorted(set(snrs))
            over["attribution_snrs"] = tuple(dict.fromkeys(ordered[i] for i in (0, len(ordered) // 2, len(ordered) - 1)))
        if "asymmetry_snr" not in over:
            over["asymmetry_snr"] = sorted(snrs)[len(snrs) // 2]
    if "classes" in over:
        over["classes"] = check_classes(over["classes"])
        over.setdefault("asymmetry_classes", max(over["classes"]))
    return validate_settings(replace(base, **over))

