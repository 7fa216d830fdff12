"""Execute every tutorial notebook end to end and fail on any cell error."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


def _kernel_manager():
    """A kernel manager that runs this interpreter, whatever ``python`` on PATH is."""
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3")
    # The python3 kernelspec says ``python``; pin it to this venv's interpreter explicitly.
    manager.kernel_spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    return manager


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_tutorial_runs(notebook: Path, tmp_path: Path) -> None:
    # Run a copy from an unrelated working directory: notebooks must only write below their cwd.
    copy = tmp_path / notebook.name
    shutil.copy(notebook, copy)
    nb = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(),
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    # One torch thread per kernel unless the caller says otherwise: a 63-atom CHGNet step gains little
    # from intra-op threads, and oversubscribed cores (xdist workers, shared CI) slow torch >10x.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # Notebooks that use the repository's example data find it here (the copy runs elsewhere).
    env.setdefault("SNB_ML_REPO", str(TUTORIALS.parent))
    client.execute(env=env)  # raises CellExecutionError on the first failing cell

    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, f"{notebook.name}: {errors[0]['ename']}: {errors[0]['evalue']}"


def test_tutorials_are_stored_without_outputs() -> None:
    for notebook in NOTEBOOKS:
        nb = nbformat.read(notebook, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.get("outputs"), f"{notebook.name} is stored with outputs; clear them"
                assert cell.get("execution_count") is None, f"{notebook.name} has execution counts"
