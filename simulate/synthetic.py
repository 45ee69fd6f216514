"""The ``synthetic`` command: the density estimator's check of Papyan (2020), Fig. 15
(:func:`theory.synthetic.run_synthetic_check`), written to a run folder."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from theory.checks import check_int, check_real
from theory.runs import RunFolder
from theory.synthetic import SyntheticCheck, plot_synthetic_check, report, run_synthetic_check

__all__ = ["SyntheticSettings", "synthetic_settings", "run_cli"]


@dataclass(frozen=True)
class SyntheticSettings:
    """Matrix size ``n``, Lanczos steps and starts, kernel width ``kappa`` and the seed."""

    size: int = 2000
    num_steps: int = 128
    num_repeats: int = 10
    kappa: float = 3.0
    seed: int = 0


def synthetic_settings(quick: bool = False) -> SyntheticSettings:
    """The paper-size check, or the ``quick`` one (tests)."""
    return SyntheticSettings(size=300, num_steps=32, num_repeats=3) if quick else SyntheticSettings()


def validate(st: SyntheticSettings) -> SyntheticSettings:
    """Check every setting (errors name the option) before any work."""
    check_int("--size", st.size, 6)
    check_int("--num-steps", st.num_steps, 2, st.size, what="(at most --size)")
    check_int("--num-repeats", st.num_repeats, 1)
    check_real("--kappa", st.kappa, 1.0, low_open=True)
    check_int("--seed", st.seed, 0, 2**63 - 1)
    return st


def run_cli(out: str, st: SyntheticSettings, device: torch.device) -> SyntheticCheck:
    """Run the check and write ``results.json``, ``synthetic_check.png`` and ``report.md``."""
    folder = RunFolder(out)
    check, exact = run_synthetic_check(st.size, st.num_steps, st.num_repeats, st.kappa, st.seed, device)
    folder.write_json("results.json", check)
    folder.try_figure("synthetic_check.png", lambda: plot_synthetic_check(check, exact))
    text = report(check)
    folder.write_text("report.md", text)
    print(text)
    print(f"results written to {folder.path}/ (report.md, results.json, synthetic_check.png)")
    return check
