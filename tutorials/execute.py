"""Execute the tutorial notebooks and store them with their outputs.

The notebooks are committed *with* outputs (plots, tables, printed numbers) so that GitHub and the
documentation show results; ``tests/test_tutorials.py`` re-executes them and compares the new outputs
with the stored ones (structure and numbers, not bytes). After changing a tutorial, or snb_ml in a way
that changes its numbers, re-store it:

.. code-block:: bash

    python tutorials/execute.py                       # all tutorials
    python tutorials/execute.py 03_finite_temperature_doped.ipynb

Each notebook runs in a fresh temporary folder (so the files it writes never land in the repository,
and no machine-specific path is stored) with ``SNB_ML_REPO`` pointing at this clone for its example
data, one torch thread unless ``OMP_NUM_THREADS`` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

TUTORIALS = Path(__file__).resolve().parent
REPO = TUTORIALS.parent


def _kernel_manager():
    """A kernel manager that runs this interpreter, whatever ``python`` on PATH is."""
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3")
    # The python3 kernelspec says ``python``; pin it to this interpreter explicitly.
    manager.kernel_spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    return manager


def execute(notebook: Path, workdir: Path, timeout: int = 900):
    """Execute a copy of ``notebook`` with ``workdir`` as its working directory; return the executed node.

    Raises:
        nbclient.exceptions.CellExecutionError: A cell raised; the message names the cell and the error.
    """
    import nbclient
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(),
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    # One torch thread per kernel unless the caller says otherwise: a 63-atom CHGNet step gains little
    # from intra-op threads, and oversubscribed cores (xdist workers, shared CI) slow torch >10x.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.setdefault("SNB_ML_REPO", str(REPO))  # notebooks find the repository's example data here
    try:
        client.execute(env=env)
    finally:
        # A kernel manager passed in is not shut down by nbclient: stop the kernel here.
        if client.km is not None and client.km.has_kernel:
            client.km.shutdown_kernel(now=True)
    _relative_paths(nb, workdir)
    return nb


def _relative_paths(nb, workdir: Path) -> None:
    """Print paths below the working folder as relative paths, as a reader running it would see them.

    Summaries print absolute paths (``ML tree: /tmp/.../ml_tree``); stored, those would name the
    machine that ran the notebook, and every run would differ.
    """
    prefixes = sorted({f"{workdir}/", f"{Path(workdir).resolve()}/"}, key=len, reverse=True)

    def strip(text: str) -> str:
        for prefix in prefixes:
            text = text.replace(prefix, "")
        return text

    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                output["text"] = strip(output["text"])
            for mime in ("text/plain", "text/html"):
                if mime in output.get("data", {}):
                    output["data"][mime] = strip(output["data"][mime])


def main(argv: list[str] | None = None) -> None:
    """Command line: execute the named tutorials (default: all) and store them with outputs."""
    import nbformat

    from snb_ml.atomic import write_text

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("notebooks", nargs="*", help="Notebook file names in tutorials/ (default: all).")
    args = parser.parse_args(argv)
    names = args.notebooks or sorted(p.name for p in TUTORIALS.glob("*.ipynb"))
    for name in names:
        path = TUTORIALS / Path(name).name
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="snb_ml_tutorial_") as tmp:
            nb = execute(path, Path(tmp))
        write_text(path, nbformat.writes(nb) + "\n")  # temp file + rename: never half a notebook
        size = path.stat().st_size / 1e3
        print(f"{path.name}: executed in {time.perf_counter() - start:.0f} s, stored ({size:.0f} kB)")


if __name__ == "__main__":
    main()
