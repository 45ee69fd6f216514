"""Checks of the studies' settings, run before any work so that a bad value fails at once
with a message naming the option (``--classes``, ``--dim``, ...) and what it expects."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["check_classes", "check_dim", "check_positive", "check_snrs", "check_alphas", "check_seeds", "check_fraction"]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_list(values: Any, name: str) -> list[Any]:
    items = list(values) if isinstance(values, Iterable) and not isinstance(values, (str, bytes)) else [values]
    if not items:
        raise ValueError(f"{name}: expected at least one value, got none")
    return items


def check_classes(values: Any, name: str = "--classes") -> tuple[int, ...]:
    """Class counts ``C >= 2``."""
    items = _as_list(values, name)
    for c in items:
        if not _is_int(c) or c < 2:
            raise ValueError(f"{name}: expected integers C >= 2 (number of classes), got {c!r}")
    return tuple(int(c) for c in items)


def check_dim(value: Any, classes: Sequence[int], name: str = "--dim") -> int:
    """A dimension ``D >= C`` for every class count ``C`` in ``classes``."""
    top = max(classes)
    if not _is_int(value) or value < top:
        raise ValueError(f"{name}: expected an integer D >= C for every C in {list(classes)} (so D >= {top}), got {value!r}")
    return int(value)


def check_positive(value: Any, name: str) -> int:
    """An integer ``>= 1`` (sample sizes, repeats)."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def check_snrs(values: Any, name: str = "--snrs") -> tuple[float, ...]:
    """Signal-to-noise ratios ``s = t^2``: finite and ``>= 0``."""
    items = _as_list(values, name)
    for s in items:
        if not _is_real(s) or not math.isfinite(s) or s < 0:
            raise ValueError(f"{name}: expected finite SNR values s = t^2 >= 0, got {s!r}")
    return tuple(float(s) for s in items)


def check_alphas(values: Any, classes: Sequence[int], name: str = "--alpha") -> tuple[float, ...]:
    """Misclassified probability masses ``alpha`` in ``(0, 1 - 1/C]`` for every ``C`` in ``classes``."""
    bound = 1.0 - 1.0 / min(classes)
    items = _as_list(values, name)
    for a in items:
        if not _is_real(a) or not math.isfinite(a) or not 0.0 < a <= bound:
            raise ValueError(
                f"{name}: expected alpha in (0, 1 - 1/C] for every C in {list(classes)} (so in (0, {bound:.6g}]), got {a!r}"
            )
    return tuple(float(a) for a in items)


def check_seeds(value: Any, name: str = "--seeds") -> int:
    """A number of seeds ``>= 1``."""
    return check_positive(value, name)


def check_fraction(value: Any, name: str, low: float = 0.0, high: float = 1.0) -> float:
    """A real number in ``[low, high)``."""
    if not _is_real(value) or not math.isfinite(value) or not low <= value < high:
        raise ValueError(f"{name}: expected a number in [{low:g}, {high:g}), got {value!r}")
    return float(value)
