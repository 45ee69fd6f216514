"""The synthetic check (Papyan 2020, Fig. 15) end to end at a reduced size."""

import json

import numpy as np

from theory.synthetic import main, run_synthetic_check


def test_synthetic_check_finds_outliers_and_bulk():
    check, exact = run_synthetic_check(size=800, num_steps=64, num_repeats=6, seed=1)
    np.testing.assert_allclose(check.outliers_estimated, check.outliers_exact, rtol=1e-8)
    # finite-size BBP outliers within a few percent of theta^2 / (theta - 1)
    np.testing.assert_allclose(check.outliers_exact, check.outliers_theory, rtol=0.05)
    lo, hi = check.bulk_edges_exact
    assert -1e-9 < lo < 0.05 and 3.6 < hi < 4.2
    assert abs(check.density_integral - 1) < 1e-3
    assert check.density_l1 < 0.15 and check.bulk_density_l1 < 0.25
    assert check.deflated.bulk.nodes.max() < hi + 0.05


def test_cli_writes_the_run_folder(tmp_path):
    assert main(["--out", str(tmp_path / "run"), "--size", "300", "--num-steps", "32", "--num-repeats", "3"]) == 0
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["report.md", "results.json", "synthetic_check.png"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["size"] == 300 and len(results["outliers_estimated"]) == 3
    assert len(results["density"]["grid"]) == len(results["density"]["density"]) == 1024
