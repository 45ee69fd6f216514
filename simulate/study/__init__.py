"""The ``study``: does the Fisher's outlier-to-bulk ratio predict the misclassification of
trained multinomial logistic regression (Papyan, JMLR 2020, Section 8), and where not?

For each number of classes ``C``, SNR ``s`` and seed, on the canonical model
``x = t e_c + z`` (``D`` dimensions, ``n`` training examples per class, fresh test data):

1. fit MLR (Numba Newton-CG, ridge ``penalty``) and measure ``alpha`` = mean probability
   mass off the true class, the test error and the Bayes error ``P_err(sqrt(s), C)``;
2. measure the empirical Fisher ``G = (1/N) sum_i (x_i x_i^T) (x) A(p_i)``, matrix-free:
   its :class:`theory.spectrum.Spectrum` (the top ``C`` eigenpairs, the outliers, with
   ``converged`` and residuals; the density of the rest after deflation) and the study's
   quantities from it (:class:`FisherMeasures`: the bulk value below, bulk edge, mini-bulk,
   overlaps with the class-mean span);
3. predict the error from the ratio ``r = mean(outliers) / bulk`` with Theorem 8.1:
   ``s_hat = (r - 1) b / (1 - alpha)``, ``P_err(sqrt(s_hat))``; compare with the test error.
   Claim C6 honestly (``PointResult.c6_*``): only from outliers above the bulk edge and in the
   class-mean span, "no prediction" below separation, against the test and the Bayes error
   separately, next to two references (Bayes error at the true SNR, training error).

**The measured bulk.** Theorem 8.1's bulk is an atom ``beta b`` on the
``(D - C)(C - 1)``-dimensional space ``span(e_C..e_{D-1}) (x) 1^perp``. At finite ``N`` it
spreads into a Marchenko-Pastur-like law whose *mean* is preserved (the expectation
of a trace is the trace of the expectation), so we take the mean of ``G`` on that space,
estimated by its empirical counterpart ``Q^perp (x) I_C`` with ``Q`` an orthonormal basis
of the training class means (the outliers and mini-bulk live in ``span(Q) (x) R^C``; the
``D`` directions ``u (x) 1`` are exactly null because ``A(p) 1 = 0``):

    bulk = tr((Q^perp (x) I) G) / ((D - C)(C - 1)) = (1/N) sum_i |Q^perp x_i|^2 (1 - |p_i|^2) / ((D - C)(C - 1)),

an exact trace, with no eigenvalue selection and no density noise. The mean of the
deflated Lanczos density (null mass removed) is reported beside it as a check.

**Finite samples.** The bulk's Marchenko-Pastur moments, the BBP transition of the
outliers at ``s* = sqrt(D/n)``, their finite-``n`` ratio and eigenvector overlaps are
:mod:`theory.finite_sample` (our derivation, beyond the paper); inverting the ratio gives
a finite-sample-corrected SNR and error prediction (``predicted_error_bbp``). The study checks
them on the symmetric-probability Fisher (no training) and on the trained one.

**Asymmetric probabilities.** Class means ``sqrt(s (1 + eta (2c/(C-1) - 1))) e_c`` (average
SNR ``s``) make the probabilities differ by class; the prediction is compared with the
test error and the Bayes error of that mixture (optimal rule on fresh data) as ``eta`` grows.

**Attribution.** At the attribution SNRs (three of the grid and two beyond it, where the
paper's full structure appears in trained MLR) the Fisher is split into class / cross /
within / diag parts (``theory.structure``, from the extended gradients) and its outliers,
bump and bulk are attributed by knockouts (``theory.attribution``), next to a positive
control: the symmetric-probability Fisher of Theorem 8.1 on the same data.

**Convergence.** No eigensolver warning is switched off: every solve's ``converged`` is
carried into the results, and ``report.md`` says how many did not converge and where.

Run ``python -m simulate study --out runs/study`` (``--quick`` for the test settings).

The parts: :mod:`.settings` (the knobs), :mod:`.measure` (one point), :mod:`.summary`
(headline numbers), :mod:`.run` (the jobs and worker processes), :mod:`.figures`,
:mod:`.report` and :func:`run_cli` here (the run folder).
"""

from __future__ import annotations

from theory.runs import RunFolder

from .figures import plot_attribution, plot_finite_samples, plot_predicted_vs_measured, plot_ratio_vs_error
from .measure import (
    AttributionRead,
    AttributionSummary,
    FisherMeasures,
    PointResult,
    SymmetricPoint,
    fisher_measures,
    fisher_spectrum,
    measure_point,
    symmetric_point,
)
from .report import study_report
from .run import Study, run_study, set_threads
from .settings import StudySettings, configure, study_settings, validate_settings

__all__ = [
    "StudySettings",
    "study_settings",
    "validate_settings",
    "configure",
    "FisherMeasures",
    "PointResult",
    "SymmetricPoint",
    "AttributionRead",
    "AttributionSummary",
    "Study",
    "fisher_spectrum",
    "fisher_measures",
    "measure_point",
    "symmetric_point",
    "run_study",
    "set_threads",
    "study_report",
    "plot_attribution",
    "plot_ratio_vs_error",
    "plot_predicted_vs_measured",
    "plot_finite_samples",
    "run_cli",
]


def run_cli(out: str, settings: StudySettings, show_progress: bool = True, workers: int = 1, threads: int = 1) -> Study:
    """Run the study (:func:`run_study`) and write the run folder ``out``: ``results.json``,
    the four figures, ``report.md`` and ``attribution/``."""
    folder = RunFolder(out)
    study = run_study(settings, show_progress, RunFolder(folder.path / "attribution"), workers, threads)
    folder.write_json("results.json", study)  # the numbers first: a failing figure never costs them
    folder.try_figure("spectra_attribution.png", lambda: plot_attribution(study))
    folder.try_figure("ratio_vs_error.png", lambda: plot_ratio_vs_error(study))
    folder.try_figure("predicted_vs_measured.png", lambda: plot_predicted_vs_measured(study))
    folder.try_figure("finite_samples.png", lambda: plot_finite_samples(study))
    text = study_report(study)
    folder.write_text("report.md", text)
    print("\n## ".join(text.split("\n## ")[:2]).rstrip())  # the title and "what held": the rest is in report.md
    print(f"\nfull report: {folder.path / 'report.md'}; numbers: results.json; 4 figures and attribution/ beside them")
    return study

