"""The ``device`` argument, one meaning everywhere: ``cpu``, ``cuda`` or ``cuda:N`` (and
``auto`` where a caller allows it: CUDA when available, else the CPU), refused with a clear
message when malformed or not present on this machine."""

from __future__ import annotations

import re
from typing import Any

import torch

from .checks import ArgumentError

__all__ = ["DEVICE_HELP", "check_device"]

DEVICE_HELP = "cpu, cuda or cuda:N"
_PATTERN = re.compile(r"^(cpu|cuda)(:(\d+))?$")


def check_device(name: str, value: Any, *, allow_auto: bool = False) -> torch.device:
    """``value`` (a ``str`` or ``torch.device``) as a ``torch.device`` that exists here.
    ``None`` or ``"auto"`` (when ``allow_auto``) pick CUDA when available, else the CPU."""
    if allow_auto and (value is None or value == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(value) if isinstance(value, torch.device) else value
    match = _PATTERN.match(text) if isinstance(text, str) else None
    if match is None or (match.group(1) == "cpu" and match.group(3) not in (None, "0")):
        expected = "cpu, cuda, cuda:N or auto" if allow_auto else DEVICE_HELP
        raise ArgumentError(f"{name}: expected {expected}, got {value!r}")
    if match.group(1) == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ArgumentError(f"{name}: {text} requested, but this machine has no CUDA device (use cpu)")
    index = int(match.group(3) or 0)
    if index >= torch.cuda.device_count():
        raise ArgumentError(f"{name}: {text} requested, but this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)
