"""The study report's text, on hand-made summaries (no study run): its first line answers
the study's question from the Claim C6 numbers, and a footnote is printed only where a
table row carries its marker."""

from __future__ import annotations

import copy

from simulate.study.report import answer_line, attribution_lines
from simulate.study.settings import study_settings

C6 = {"num_points": 8, "num_predicted": 5, "pearson": {"prediction_vs_test": 0.9736},
      "median_abs_gap": {"prediction_to_test": 0.0356, "prediction_to_bayes": 0.0016}}

SIDE = {"bump_size": 0, "common_mode_separated": False, "full_bump_size": 3, "num_class_outliers": 2, "num_separated": 2,
        "outlier_diag_fraction": 0.001, "outlier_shares": {"class": 0.85, "cross": 0.09, "diag": 0.0, "within": 0.06},
        "verdicts": {"bulk": ["attributable", "within", 70], "bump": ["absent", None, 0], "outliers": ["attributable", "class", 2]}}
ATTRIBUTION = {"3": {
    "rows": [{"alpha": 0.001, "snr": 30.0, "in_grid": True, "trained": SIDE, "control": SIDE}],
    "control_agrees_with_theorem": [True], "trained_appears_at": {"outliers": 30.0, "bump": None, "bulk": 30.0},
    "trained_full_structure_at": None, "trained_full_bump_at": None,
}}


def test_the_answer_states_coverage_and_the_gaps():
    line = answer_line(C6)
    assert line.startswith("**Answer**: where at least C - 1 of the Fisher's outliers are separated")
    assert "(5 of 8 points)" in line and "test error to 0.036" in line and "Pearson 0.974" in line
    assert "Bayes error to 0.0016" in line and "at the other 3 it gives no prediction." in line
    every = dict(C6, num_predicted=8)
    assert answer_line(every).endswith("to 0.0016.")
    none = {"num_points": 8, "num_predicted": 0}
    assert answer_line(none).startswith("**Answer**: the ratio gives no prediction at any of the 8 points")


def test_the_beyond_grid_footnote_only_with_its_marker():
    st = study_settings(quick=True)
    text = "\n".join(attribution_lines(st, ATTRIBUTION))
    assert "†" not in text
    beyond = copy.deepcopy(ATTRIBUTION)
    beyond["3"]["rows"][0]["in_grid"] = False
    text = "\n".join(attribution_lines(st, beyond))
    assert "| 30† |" in text and "†: beyond the main grid" in text
