"""The progress bar's ETA leaves out start-up time."""

import io

import theory.progress as progress_module
from theory.progress import progress


def test_eta_uses_the_time_per_item_after_the_first(monkeypatch):
    """The first item takes 100 s (start-up), every later one 1 s: after 3 of 10 items the
    ETA is 7 s, not the 7 x 34 s that the mean since the start would give."""
    clock = iter([0.0, 0.0, 100.0, 101.0, 102.0] + [102.0 + k for k in range(1, 8)])
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    lines = []
    for i in progress(range(10), desc="job", stream=out):
        lines.append(out.getvalue().splitlines()[-1])
    assert lines[0].endswith("eta     ?")  # drawn before any item finished
    assert lines[1].endswith("eta 900.0s")  # one item done: only the time since the start is known
    assert lines[3].endswith("eta   7.0s")


def test_eta_treats_items_arriving_together_as_one_batch(monkeypatch):
    """A pool delivers 4 items at once after 80 s of start-up, then one per 0.5 s."""
    times = [0.0, 0.0] + [80.0] * 4 + [80.0 + 0.5 * k for k in range(1, 5)]
    clock = iter(times)
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    lines = []
    for _ in progress(range(8), desc="pool", stream=out):
        lines.append(out.getvalue().splitlines()[-1])
    assert lines[4].endswith("eta  80.0s")  # the batch alone: the mean since the start
    assert lines[6].endswith("eta   1.0s")  # two items 0.5 s apart after the batch, two to go
