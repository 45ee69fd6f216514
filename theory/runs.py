"""Run folders: every file a command writes lands atomically (write to a
temporary name in the same folder, ``fsync``, then rename), with the user's
normal permissions (``0666`` less the umask), so a run that dies leaves no
half-written result behind.

A command owns its folder (:func:`claim_run`): ``run.json`` records the command
and its settings; the same command with the same settings may resume or rewrite
it, anything else is refused before any work (:class:`RunFolderError`). While a
command runs it holds an exclusive ``fcntl.flock`` on ``.lock`` (a second writer
is refused with the first one's pid), and stale temporary files of a killed run
are removed when the folder is claimed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .figures import write_figure
from .results import to_jsonable

__all__ = ["LOCK_FILE", "RUN_FILE", "RunFolder", "RunFolderError", "claim_run"]

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
_TMP_SUFFIX = ".tmp"


class RunFolderError(ValueError):
    """A run folder that cannot be used: not a folder, not writable, owned by another
    command or other settings, or in use by another process."""


def _file_mode() -> int:
    """``0666`` less the process umask (what ``open`` would give a new file)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


class RunFolder:
    """A folder of results: ``results.json``, figures and ``report.md``."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"out: {self.path} exists and is not a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunFolderError(f"out: cannot create the run folder {self.path} ({err.strerror or err})") from err
        self.figure_errors: dict[str, str] = {}

    def _atomic_write(self, name: str, write: Any, mode: str = "w") -> Path:
        target = self.path / name
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.", suffix=_TMP_SUFFIX)
        try:
            os.fchmod(fd, _file_mode())
            with os.fdopen(fd, mode) as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
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

    def try_figure(self, name: str, make: Callable[[], Any], dpi: int = 120) -> Path | None:
        """Build the figure ``make()`` and save it; a failure (in the plotting or the
        writing) is reported on stderr and kept in ``figure_errors`` instead of
        raised, so that a figure never costs the numbers written before it."""
        try:
            return self.save_figure(name, make(), dpi)
        except Exception as err:  # noqa: BLE001 - any plotting failure is reported, not fatal
            self.figure_errors[name] = f"{type(err).__name__}: {err}"
            print(f"warning: figure {self.path / name} was not written ({self.figure_errors[name]}); "
                  "the numbers are in results.json", file=sys.stderr)
            return None


def _normalised(settings: Any) -> Any:
    """``settings`` as the JSON ``run.json`` holds (tuples as lists, dataclasses as dicts)."""
    return json.loads(json.dumps(to_jsonable(settings), allow_nan=False))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.') or 'settings'}: {old!r} there, {new!r} here"]


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the ``.<name>.*.tmp`` files a killed writer left (the folder is locked by us)."""
    for tmp in path.rglob(f".*{_TMP_SUFFIX}"):
        if tmp.is_file():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@contextlib.contextmanager
def claim_run(path: str | os.PathLike[str], command: str, settings: Any) -> Iterator[RunFolder]:
    """Own the run folder ``path`` for ``command`` with ``settings`` for the block.

    Creates the folder (refusing a file or an unwritable place), takes the lock
    (refusing a folder in use, naming the other pid), then refuses a folder whose
    ``run.json`` names another command or other settings, or that is not empty and
    has no ``run.json`` (a folder holding nothing but ``run.json`` may be taken over);
    otherwise writes ``run.json`` and removes stale temporary files. Everything here
    runs before the command's work.
    """
    folder = RunFolder(path)
    settings_json = _normalised(settings)
    _check_owner(folder.path, command, settings_json)  # read-only, so that a refused folder gets no lock file
    lock_path = folder.path / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise RunFolderError(f"out: cannot write to the run folder {folder.path} ({err.strerror or err})") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderError(
                f"out: {folder.path} is in use by another run (pid {other}); wait for it to end or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _check_owner(folder.path, command, settings_json)  # again, now that no other run can write
        _remove_stale_temporaries(folder.path)
        folder.write_json(RUN_FILE, {"command": command, "settings": settings})
        yield folder
    finally:
        os.close(fd)  # releases the lock


def _check_owner(path: Path, command: str, settings: Any) -> None:
    """Refuse ``path`` unless it is empty (but for its lock and ``run.json``) or owned
    by ``command`` with ``settings``."""
    record = path / RUN_FILE
    others = [p.name for p in path.iterdir() if p.name not in (LOCK_FILE, RUN_FILE) and not p.name.endswith(_TMP_SUFFIX)]
    if not others:  # nothing written yet (a new folder, or a run that failed before its first file)
        return
    if not record.exists():
        listed = ", ".join(sorted(others)[:3]) + (", ..." if len(others) > 3 else "")
        raise RunFolderError(f"out: {path} is not empty ({listed}) and holds no {RUN_FILE} of a run; choose a new or empty folder")
    try:
        owner = json.loads(record.read_text())
        owner_command, owner_settings = owner["command"], owner["settings"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunFolderError(
            f"out: {record} is damaged ({type(err).__name__}: {err}); delete the folder {path} to start fresh"
        ) from err
    if owner_command != command:
        raise RunFolderError(
            f"out: {path} holds a run of `{owner_command}`, not of `{command}`; choose another --out "
            "(its results would be replaced or mixed)"
        )
    if owner_settings != settings:
        diff = _differences(owner_settings, settings)
        raise RunFolderError(
            f"out: {path} holds a run of `{command}` with other settings ({'; '.join(diff[:4])}"
            f"{'; ...' if len(diff) > 4 else ''}); choose another --out, or delete the folder to start fresh"
        )
