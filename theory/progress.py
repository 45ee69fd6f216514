"""A minimal progress bar on standard error, for long loops of known length."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

__all__ = ["progress"]


def progress(
    items: Iterable[T],
    total: int | None = None,
    desc: str = "",
    stream: TextIO | None = None,
    enabled: bool = True,
    width: int = 28,
) -> Iterator[T]:
    """Yield from ``items`` while drawing ``desc [#####.....] i/total elapsed eta``.

    Redraws in place on a terminal and prints one line per 10% otherwise (logs). The
    ETA is ``(total - done)`` times the time per item since the first item (or the first
    batch of items arriving together, as from a worker pool) finished, so start-up
    (imports, compilation, a pool warming up) does not inflate it.
    """
    stream = sys.stderr if stream is None else stream
    if total is None:
        total = len(items)  # type: ignore[arg-type]
    if not enabled or total <= 0:
        yield from items
        return
    interactive = getattr(stream, "isatty", lambda: False)()
    start = time.perf_counter()
    last_decile = -1
    first: tuple[int, float] | None = None  # (items done, time) when the first item finished

    def draw(done: int) -> None:
        nonlocal last_decile, first
        now = time.perf_counter()
        elapsed = now - start
        if done and (first is None or now - first[1] < 0.05):  # items arriving with the first belong to its batch
            first = (done, now)
        if first is not None and done > first[0]:
            per_item = (now - first[1]) / (done - first[0])
        else:
            per_item = elapsed / done if done else None
        eta = f"{per_item * (total - done):5.1f}s" if per_item is not None else "    ?"
        filled = int(width * done / total)
        line = f"{desc} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {elapsed:5.1f}s eta {eta}"
        if interactive:
            stream.write("\r" + line + ("\n" if done == total else ""))
        elif done * 10 // total > last_decile:
            last_decile = done * 10 // total
            stream.write(line + "\n")
        stream.flush()

    draw(0)
    for i, item in enumerate(items, start=1):
        yield item
        draw(i)
