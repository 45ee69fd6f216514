"""Argument checks shared by ``theory``, ``simulate`` and ``deepnet``.

Every check names the argument, states what was expected and shows what was
given, and returns the value converted to a plain Python type. A wrong type and
a wrong value both raise :class:`ArgumentError`, which is a ``ValueError`` and a
``TypeError`` at once, so callers may catch either.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

__all__ = ["ArgumentError", "check_choice", "check_dim", "check_flag", "check_int", "check_num_classes", "check_real"]


class ArgumentError(ValueError, TypeError):
    """An argument of the wrong type or outside its allowed range."""


def _show(bound: float) -> str:
    """A bound as the message shows it: integers in full, ``2**63 - 1`` by name, reals in ``%g``."""
    if isinstance(bound, numbers.Integral):
        return "2**63 - 1" if bound == 2**63 - 1 else str(bound)
    return f"{bound:g}"


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_show(low)}, {_show(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_show(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_show(high)}"
    return ""


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None, *, what: str = "") -> int:
    """``value`` as an ``int`` in ``[low, high]`` (either bound optional).

    ``what`` is appended to the message to say what the bound means
    (for example ``"(D >= num_classes)"``).
    """
    bound = _bounds(low, high, False, False)
    expected = f"an integer {bound}".rstrip() + (f" {what}" if what else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentError(f"{name}: expected {expected}, got {value!r} ({type(value).__name__})")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ArgumentError(f"{name}: expected {expected}, got {value}")
    return int(value)


def check_num_classes(value: Any, name: str = "num_classes") -> int:
    """A number of classes ``C >= 2``."""
    return check_int(name, value, 2, what="(the number of classes C)")


def check_dim(value: Any, num_classes: int, name: str = "dim") -> int:
    """A dimension ``D >= C`` (at least one axis per class)."""
    return check_int(name, value, num_classes, what=f"(D >= num_classes = {num_classes})")


def check_real(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "",
) -> float:
    """``value`` as a finite ``float`` within the bounds (closed unless ``*_open``)."""
    bound = _bounds(low, high, low_open, high_open)
    expected = f"a finite number {bound}".rstrip() + (f" {what}" if what else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentError(f"{name}: expected {expected}, got {value!r} ({type(value).__name__})")
    x = float(value)
    bad = not math.isfinite(x)
    if low is not None:
        bad |= x <= low if low_open else x < low
    if high is not None:
        bad |= x >= high if high_open else x > high
    if bad:
        raise ArgumentError(f"{name}: expected {expected}, got {value!r}")
    return x


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` as one of the strings ``choices``."""
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        listed = ", ".join(repr(c) for c in options)
        raise ArgumentError(f"{name}: expected one of {listed}, got {value!r}")
    return value


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a ``bool`` (``True``/``False`` only, not 0/1)."""
    if not isinstance(value, bool):
        raise ArgumentError(f"{name}: expected True or False, got {value!r}")
    return value
