"""Run folders: every file a command writes lands atomically (write to a
temporary name in the same folder, then rename), so a run that dies leaves no
half-written result behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .figures import write_figure
from .results import to_jsonable

__all__ = ["RunFolder"]


class RunFolder:
    """A folder of results: ``results.json``, figures and ``report.md``."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"out: {self.path} exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)

    def _atomic_write(self, name: str, write: Any, mode: str = "w") -> Path:
        target = self.path / name
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, mode) as handle:
                write(handle)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
        return target

    def write_json(self, name: str, data: Any) -> Path:
        """Write ``to_jsonable(data)`` as indented JSON."""
        payload = json.dumps(to_jsonable(data), indent=2, allow_nan=False)
        return self._atomic_write(name, lambda h: h.write(payload + "\n"))

    def write_text(self, name: str, text: str) -> Path:
        return self._atomic_write(name, lambda h: h.write(text))

    def save_torch(self, name: str, obj: Any) -> Path:
        """Write ``obj`` with ``torch.save`` (state dicts, checkpoints)."""
        return self._atomic_write(name, lambda h: torch.save(obj, h), mode="wb")

    def save_figure(self, name: str, figure: Any, dpi: int = 120) -> Path:
        """Save a figure of :func:`theory.figures.new_figure` (format from the suffix of ``name``)."""
        fmt = Path(name).suffix.lstrip(".") or "png"
        return self._atomic_write(name, lambda h: write_figure(figure, h, fmt=fmt, dpi=dpi), mode="wb")
