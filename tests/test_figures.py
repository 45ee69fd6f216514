"""Figures are made one way (theory.figures): no pyplot, saved atomically."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from theory.figures import new_figure, write_figure
from theory.runs import RunFolder

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"

SCRIPT = """
import sys
from theory.figures import new_figure
from theory.runs import RunFolder
import theory.attribution, theory.synthetic, simulate.theorem, simulate.study, deepnet.train, deepnet.spectrum
fig, axes = new_figure(2, 3, figsize=(6, 3), sharey=True, squeeze=False)
axes[1, 2].plot([0, 1], [1, 0])
fig.suptitle("title")
RunFolder(sys.argv[1]).save_figure("figure.png", fig)
print("pyplot" if "matplotlib.pyplot" in sys.modules else "no pyplot")
"""


def test_creating_and_saving_a_figure_does_not_import_pyplot(tmp_path):
    """In a fresh interpreter (other tests may have imported pyplot here), importing
    every figure-making module, making a figure and saving it leaves pyplot unimported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "module://nonexistent"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "no pyplot"
    assert (tmp_path / "figure.png").read_bytes().startswith(PNG)


def test_save_figure_writes_a_png_atomically(tmp_path):
    fig, ax = new_figure(figsize=(3, 2))
    ax.plot([0, 1, 2], [0, 1, 4])
    folder = RunFolder(tmp_path)
    path = folder.save_figure("curve.png", fig)
    assert path == tmp_path / "curve.png" and path.read_bytes().startswith(PNG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]  # no temporary file left

    # a figure that fails to draw leaves the previous file intact and no temporary file
    class Broken:
        def savefig(self, handle, **kwargs):
            handle.write(b"partial")
            raise RuntimeError("drawing failed")

    with pytest.raises(RuntimeError, match="drawing failed"):
        folder.save_figure("curve.png", Broken())
    assert path.read_bytes().startswith(PNG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]


def test_new_figure_axes_follow_subplots():
    fig, ax = new_figure(figsize=(2, 2))
    assert len(fig.axes) == 1 and ax is fig.axes[0]
    fig, axes = new_figure(1, 3, figsize=(6, 2))
    assert axes.shape == (3,)
    fig, axes = new_figure(1, 1, figsize=(2, 2), squeeze=False)
    assert axes.shape == (1, 1)


def test_write_figure_to_a_path(tmp_path):
    fig, _ = new_figure(figsize=(2, 2))
    write_figure(fig, tmp_path / "f.svg", fmt="svg")
    assert (tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")
