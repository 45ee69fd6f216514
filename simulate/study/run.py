"""Running the study: the jobs (one per ``(C, SNR, seed)`` point and asymmetric point), on
this process or a pool of worker processes, into one :class:`Study`."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

from theory.progress import progress
from theory.runs import RunFolder

from ..arguments import check_positive
from ..workers import init_worker, set_threads
from .measure import (
    AttributionSummary,
    PointResult,
    SymmetricPoint,
    attribution_summary,
    measure_point,
    symmetric_point,
)
from .settings import StudySettings, validate_settings
from .summary import summarize

__all__ = ["Study", "set_threads", "run_study"]


@dataclass(frozen=True)
class Study:
    """All points, the symmetric-probability checks, the asymmetric sweep, the attributions
    (trained and positive control, by ``(C, SNR)``) and the headline numbers (``summary``)."""

    settings: StudySettings
    points: list[PointResult]
    symmetric: list[SymmetricPoint]
    asymmetric: list[PointResult]
    attribution: list[AttributionSummary]
    summary: dict[str, Any]
    seconds: float


def _run_indexed(task: tuple[int, StudySettings, tuple[Any, ...]]) -> tuple[int, tuple[PointResult, SymmetricPoint | None, AttributionSummary | None]]:
    k, st, job = task
    return k, _run_job(st, *job)


def _run_job(
    st: StudySettings, C: int, snr: float, seed: int, eta: float, symmetric: bool, attribution: bool, folder: str | None,
    in_grid: bool = True,
) -> tuple[PointResult, SymmetricPoint | None, AttributionSummary | None]:
    """One point of the study; when asked, also the symmetric-probability Fisher at the measured
    alpha and the attribution of the trained Fisher and its positive control (reports saved in
    ``folder``; ``in_grid``: the point is one of the main grid's)."""
    result, objects = measure_point(st, C, snr, st.seed + seed, eta)
    sym = symmetric_point(st, C, snr, result.alpha_used, st.seed) if symmetric else None
    summary = attribution_summary(st, C, snr, objects, st.seed, result.alpha_used, in_grid) if attribution else None
    if summary is not None and folder is not None:
        summary.trained.report.save(RunFolder(folder), summary.file_prefix)
        summary.control.report.save(RunFolder(folder), summary.file_prefix + "_control")
    return result, sym, summary


def run_study(st: StudySettings, show_progress: bool = True, attribution_folder: RunFolder | None = None,
              workers: int = 1, threads: int = 1) -> Study:
    """Run the study (settings validated first) on ``workers`` processes of ``threads`` threads
    each. Points are seeded independently, so the numbers do not depend on ``workers`` (bitwise,
    at equal thread counts); the fit and the Fisher products are bitwise for any thread count,
    the eigen-solver's results only to round-off. Attribution reports are saved in
    ``attribution_folder`` when given."""
    st = validate_settings(st)
    check_positive(workers, "--workers")
    start = time.perf_counter()
    folder = None if attribution_folder is None else str(attribution_folder.path)
    jobs = [("main", C, s, seed, 0.0, seed == 0, seed == 0 and any(math.isclose(a, s) for a in st.attribution_snrs), folder)
            for C in st.classes for s in st.snrs for seed in range(st.seeds)]
    jobs += [("attribution", C, s, 0, 0.0, False, True, folder, False)  # attribution SNRs beyond the grid: their own fit
             for C in st.classes for s in st.attribution_snrs if not any(math.isclose(s, v) for v in st.snrs)]
    jobs += [("asym", st.asymmetry_classes, st.asymmetry_snr, seed, eta, False, False, None) for eta in st.asymmetry for seed in range(st.seeds)]
    results: list[tuple[PointResult, SymmetricPoint | None, AttributionSummary | None] | None] = [None] * len(jobs)
    if workers == 1:
        for k, job in enumerate(progress(jobs, desc="study", enabled=show_progress)):
            results[k] = _run_job(st, *job[1:])
    else:
        import multiprocessing

        # largest first (attribution, then by Fisher size) so that the workers finish together
        order = sorted(range(len(jobs)), key=lambda k: (jobs[k][6], jobs[k][1]), reverse=True)
        context = multiprocessing.get_context("spawn")  # no fork of a process holding thread pools
        # leaving the block by an exception (a failed job, Ctrl-C, SIGTERM) terminates the workers at once
        with context.Pool(workers, initializer=init_worker, initargs=(threads, os.getpid())) as pool:
            done = pool.imap_unordered(_run_indexed, [(k, st, jobs[k][1:]) for k in order])
            for k, result in progress(done, total=len(jobs), desc="study", enabled=show_progress):
                results[k] = result
    points = [r[0] for job, r in zip(jobs, results) if job[0] == "main"]
    asym = [r[0] for job, r in zip(jobs, results) if job[0] == "asym"]
    symmetric = [r[1] for r in results if r[1] is not None]
    attributions = sorted((r[2] for r in results if r[2] is not None), key=lambda a: (a.num_classes, a.snr))
    return Study(st, points, symmetric, asym, attributions, summarize(st, points, symmetric, asym, attributions), time.perf_counter() - start)


