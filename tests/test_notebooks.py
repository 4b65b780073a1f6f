"""The notebooks in notebooks/: stored without outputs, and each runs top to bottom.

Each notebook is executed in a fresh Jupyter kernel (nbclient) with the Agg
matplotlib backend, in a temporary working directory; a cell that raises
fails the test with the cell's traceback.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
#: Modules a notebook needs beyond ncdask's own dependencies.
NEEDS = {
    "01_quickstart": ["matplotlib"],
    "04_training_dynamics": ["matplotlib", "torch"],
}
TIMEOUT_S = 300  # per cell
#: Smaller sizes the test runs each notebook at (every cell still runs): the notebooks' own
#: sizes show out-of-core work and training to collapse, which take minutes on 2 cores.
#: Sweeps keep two epochs (a curve's two ends), the out-of-core store three row chunks.
SMALLER = {
    "01_quickstart": [("zip([10, 20, 30, 40, 50], [0.0, 0.25, 0.5, 0.75, 1.0], strict=True)",
                       "zip([10, 50], [0.0, 1.0], strict=True)")],
    "02_out_of_core": [("K, D, N = 100, 256, 450_000", "K, D, N = 100, 256, 20_000")],
    "03_gpu_dask_cuda": [("K, D, N = 50, 128, 100_000", "K, D, N = 50, 128, 10_000")],
    "04_training_dynamics": [("CAPTURE_AT = [0, 1, 2, 4, 8, 16, 32, 60]",
                              "CAPTURE_AT = [0, 2]")],
}


def test_there_are_notebooks():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} of {path.name} has outputs: strip them"
            assert cell.execution_count is None, f"cell {i} of {path.name} has a count"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    for mod in ["nbclient", "nbformat", "ipykernel", *NEEDS.get(path.stem, [])]:
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{path.name} needs {mod}")
    import nbformat
    from nbclient import NotebookClient

    # the kernel inherits this environment: figures off screen, no Jupyter
    # path-migration DeprecationWarning, no nested parallelism on small CI machines
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    nb = nbformat.read(str(path), as_version=4)
    for old, new in SMALLER.get(path.stem, []):
        cells = [c for c in nb.cells if c.cell_type == "code" and old in c.source]
        assert len(cells) == 1, f"{path.name}: no single cell sets {old!r}"
        cells[0].source = cells[0].source.replace(old, new)
    # the notebooks close their clusters and folders in their last cell: the kernel is
    # stopped at once after it, not given seconds to run exit hooks
    client = NotebookClient(
        nb, timeout=TIMEOUT_S, kernel_name="python3", shutdown_kernel="immediate",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [
        out for cell in nb.cells if cell.cell_type == "code"
        for out in cell.outputs if out.get("output_type") == "error"
    ]
    assert not errors
