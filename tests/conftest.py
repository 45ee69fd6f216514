"""Shared test options: ``--run-slow`` enables tests marked ``slow``; tests marked
``gpu`` are skipped (with a reason) when no CUDA device is present.

OpenMP threads of torch and of Numba wait passively between parallel regions,
so that the two thread pools do not spin against each other on small machines
(set before torch loads its OpenMP runtime)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow")
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: pass --run-slow to run"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="gpu: no CUDA device present"))
