"""Checks of the studies' settings, run before any work so that a bad value fails at once
with a message naming the option (``--classes``, ``--dim``, ...) and what it expects.
Each check is :mod:`theory.checks` applied to every value of an option."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from theory.checks import ArgumentError, check_int, check_num_classes, check_real

__all__ = ["check_alphas", "check_classes", "check_dim", "check_fraction", "check_positive", "check_snrs"]


def _as_list(values: Any, name: str) -> list[Any]:
    items = list(values) if isinstance(values, Iterable) and not isinstance(values, (str, bytes)) else [values]
    if not items:
        raise ArgumentError(f"{name}: expected at least one value, got none")
    return items


def check_classes(values: Any, name: str = "--classes") -> tuple[int, ...]:
    """Class counts ``C >= 2``."""
    return tuple(check_num_classes(c, name) for c in _as_list(values, name))


def check_dim(value: Any, classes: Sequence[int], name: str = "--dim") -> int:
    """A dimension ``D >= C`` for every class count ``C`` in ``classes``."""
    return check_int(name, value, max(classes), what=f"(D >= C for every C in {list(classes)})")


def check_positive(value: Any, name: str) -> int:
    """An integer ``>= 1`` (sample sizes, repeats, seeds)."""
    return check_int(name, value, 1)


def check_snrs(values: Any, name: str = "--snrs") -> tuple[float, ...]:
    """Signal-to-noise ratios ``s = t^2``: finite and ``>= 0``."""
    return tuple(check_real(name, s, 0.0, what="(SNR s = t^2)") for s in _as_list(values, name))


def check_alphas(values: Any, classes: Sequence[int], name: str = "--alpha") -> tuple[float, ...]:
    """Misclassified probability masses ``alpha`` in ``(0, 1 - 1/C]`` for every ``C`` in ``classes``."""
    bound = 1.0 - 1.0 / min(classes)
    what = f"(alpha in (0, 1 - 1/C] for every C in {list(classes)})"
    return tuple(check_real(name, a, 0.0, bound, low_open=True, what=what) for a in _as_list(values, name))


def check_fraction(value: Any, name: str, low: float = 0.0, high: float = 1.0) -> float:
    """A real number in ``[low, high)``."""
    return check_real(name, value, low, high, high_open=True)
