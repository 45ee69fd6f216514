"""Every notebook in ``notebooks/`` runs: its code cells are executed in order in one
namespace (matplotlib's Agg backend, a temporary working directory), so a broken
notebook fails the suite. The notebooks' problems are small (sizes up to a few hundred),
where threads buy nothing and spin-waiting OpenMP pools of torch and Numba cost up to
20x on a loaded two-core machine, so the run uses one torch and one Numba thread
(restored afterwards). The .ipynb files are read with the standard ``json`` module;
stored notebooks must carry no outputs."""

import json
from pathlib import Path

import matplotlib
import numba
import pytest
import torch

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def _load(path: Path) -> dict:
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb.get("nbformat") == 4 and nb.get("nbformat_minor", 0) >= 5, f"{path.name}: expected nbformat 4.5+"
    assert nb["metadata"]["kernelspec"]["language"] == "python"
    for cell in nb["cells"]:
        assert {"id", "cell_type", "metadata", "source"} <= cell.keys(), f"{path.name}: incomplete cell {cell.get('id')}"
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, (
                f"{path.name}: cell {cell['id']} is stored with outputs; clear them before committing"
            )
    return nb


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/: expected at least one .ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    nb = _load(path)
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    try:
        for index, cell in enumerate(nb["cells"]):
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            try:
                exec(compile(source, f"{path.name}[cell {index}, id {cell['id']}]", "exec"), namespace)
            except Exception as err:
                raise AssertionError(f"{path.name}: code cell {index} (id {cell['id']}) failed: {err!r}") from err
    finally:
        plt.close("all")
        torch.set_num_threads(threads[0])
        numba.set_num_threads(threads[1])
