"""The synthetic check (Papyan 2020, Fig. 15) end to end at a reduced size, and its
command line ``python -m simulate synthetic``."""

import json

import numpy as np
import pytest
import torch

from simulate.__main__ import main
from theory.synthetic import run_synthetic_check


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
    argv = ["synthetic", "--out", str(tmp_path / "run"), "--size", "300", "--num-steps", "32", "--num-repeats", "3"]
    assert main(argv) == 0
    files = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name != ".lock")
    assert files == ["report.md", "results.json", "run.json", "synthetic_check.png"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["size"] == 300 and len(results["outliers_estimated"]) == 3
    assert len(results["density"]["grid"]) == len(results["density"]["density"]) == 1024


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "gpu"], "--device: expected cpu, cuda or cuda:N, got 'gpu'"),
        (["--device", "cuda:99"], "--device: cuda:99 requested, but this machine has"),
        (["--size", "3"], "--size: expected an integer >= 6"),
        (["--quick", "--num-steps", "500"], "--num-steps: expected an integer in [2, 300]"),
        (["--kappa", "1"], "--kappa: expected a finite number > 1"),
        (["--seed", "-1"], "--seed: expected an integer in [0, "),
    ],
)
def test_cli_rejects_bad_arguments_before_work(argv, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["synthetic", *argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cli_refuses_cuda_without_a_device(tmp_path, capsys):
    assert main(["synthetic", "--device", "cuda", "--out", str(tmp_path / "never")]) == 2
    assert "--device: cuda requested, but this machine has no CUDA device (use cpu)" in capsys.readouterr().err
