"""The tutorials are stored with their outputs, and re-executing them reproduces those outputs.

The stored outputs (plots, tables, printed numbers) are what readers see on GitHub and in the
documentation, so they must be what the code gives today: each notebook is re-executed in a temporary
folder and its outputs are compared with the stored ones by structure (per code cell: the kinds of
output, and images where images were) and by numbers (every number in the printed text and the plain
text of results, as a sorted list, within a relative tolerance), not byte for byte. Cells tagged
``output-varies`` (timings, the log of a live CHGNet run) are compared by structure only.
``python tutorials/execute.py`` re-stores a notebook after an intended change.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
VARIES = "output-varies"
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
#: Relative tolerance on printed numbers: covers float summation order and BLAS differences between
#: machines, far below any change a reader would notice in a table or a printed energy.
RTOL = 1e-3
ATOL = 1e-6
#: Largest stored notebook and largest embedded PNG, so that GitHub renders them.
MAX_NOTEBOOK_BYTES = 1_000_000
MAX_PNG_BYTES = 200_000


def _execute(notebook: Path, workdir: Path):
    spec = importlib.util.spec_from_file_location("tutorials_execute", TUTORIALS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.execute(notebook, workdir)


def _outputs(cell) -> list[tuple[str, str]]:
    """(kind, text) per output of a code cell: stdout merged, stderr dropped (warnings vary)."""
    result: list[tuple[str, str]] = []
    for output in cell.get("outputs", []):
        kind = output["output_type"]
        if kind == "stream":
            if output["name"] != "stdout":
                continue
            if result and result[-1][0] == "stdout":
                result[-1] = ("stdout", result[-1][1] + output["text"])
            else:
                result.append(("stdout", output["text"]))
        elif kind in ("display_data", "execute_result"):
            data = output["data"]
            shown = "image/png" if "image/png" in data else "text"
            text = data.get("text/plain", "") if shown == "text" else ""
            result.append((f"{kind}:{shown}", text))
        else:  # error
            result.append((kind, f"{output.get('ename')}: {output.get('evalue')}"))
    return result


#: Durations ("in 2.4 s", "(156 s)") and object addresses ("at 0x7f...") are not results.
NOT_RESULTS = re.compile(r"[-+]?\d+(?:\.\d+)?\s?s\b|0x[0-9a-fA-F]+")


def _numbers(text: str) -> list[float]:
    return [float(n) for n in NUMBER.findall(NOT_RESULTS.sub("", text))]


def compare_notebooks(stored, fresh, name: str) -> None:
    """Raise AssertionError naming the first code cell whose outputs differ in structure or numbers."""
    stored_cells = [c for c in stored.cells if c.cell_type == "code"]
    fresh_cells = [c for c in fresh.cells if c.cell_type == "code"]
    assert len(stored_cells) == len(fresh_cells), f"{name}: number of code cells changed"
    for index, (old, new) in enumerate(zip(stored_cells, fresh_cells, strict=True)):
        where = f"{name}, code cell {index + 1} ({old.source.splitlines()[0][:60]!r})"
        old_out, new_out = _outputs(old), _outputs(new)
        assert [k for k, _ in old_out] == [k for k, _ in new_out], (
            f"{where}: output kinds {[k for k, _ in new_out]} instead of the stored {[k for k, _ in old_out]}"
        )
        if VARIES in old.metadata.get("tags", []):
            continue
        for (kind, old_text), (_, new_text) in zip(old_out, new_out, strict=True):
            # Sorted: rows of near-equal energies (e.g. basin members within 1 meV) may be listed in
            # another order on another machine; the values themselves must stay.
            old_numbers, new_numbers = sorted(_numbers(old_text)), sorted(_numbers(new_text))
            assert len(old_numbers) == len(new_numbers), (
                f"{where}: {kind} changed:\n--- stored\n{old_text}\n--- now\n{new_text}"
            )
            for a, b in zip(old_numbers, new_numbers, strict=True):
                assert abs(a - b) <= ATOL + RTOL * abs(a), (
                    f"{where}: {a} is now {b}:\n--- stored\n{old_text}\n--- now\n{new_text}"
                )


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_tutorial_reproduces_its_stored_outputs(notebook: Path, tmp_path: Path) -> None:
    stored = nbformat.read(notebook, as_version=4)
    # Run from an unrelated working directory: notebooks must only write below their cwd.
    fresh = _execute(notebook, tmp_path)  # raises CellExecutionError on the first failing cell
    compare_notebooks(stored, fresh, notebook.name)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_tutorial_is_stored_executed_with_outputs(notebook: Path) -> None:
    assert notebook.stat().st_size < MAX_NOTEBOOK_BYTES, f"{notebook.name}: store smaller figures"
    nb = nbformat.read(notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    # Executed top to bottom in one kernel (python tutorials/execute.py), every cell.
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), f"{notebook.name}: re-execute"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], f"{notebook.name} is stored with an error"
    pngs = [o.data["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert pngs, f"{notebook.name} shows no figure"
    assert max(len(p) for p in pngs) * 3 // 4 < MAX_PNG_BYTES, f"{notebook.name}: a figure is too large"
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    for private in ("/tmp/", "/home/", "/work/", "/Users/"):
        assert private not in text, f"{notebook.name} stores a path of the machine that ran it ({private})"
    for cell in code:  # tests belong in tests/, not in what users read
        assert not re.search(r"^\s*assert\b", cell.source, re.M), f"{notebook.name}: assert left in a cell"


def test_comparison_fails_on_a_changed_number_or_a_lost_figure() -> None:
    # The comparison above must be able to fail: check it against edited copies of a stored notebook.
    stored = nbformat.read(TUTORIALS / "03_finite_temperature_doped.ipynb", as_version=4)
    compare_notebooks(stored, copy.deepcopy(stored), "same")

    changed = copy.deepcopy(stored)
    cell = next(
        c
        for c in changed.cells
        if c.cell_type == "code" and VARIES not in c.metadata.get("tags", []) and _numbers(_outputs(c)[0][1])
    )
    stream = next(o for o in cell.outputs if o.output_type == "stream" and _numbers(o.text))
    first = NUMBER.search(stream.text)
    stream.text = (
        stream.text[: first.start()] + str(float(first.group()) * 1.01 + 1) + stream.text[first.end() :]
    )
    with pytest.raises(AssertionError, match="is now"):
        compare_notebooks(stored, changed, "changed")

    lost = copy.deepcopy(stored)
    cell = next(
        c
        for c in lost.cells
        if c.cell_type == "code" and any("image/png" in o.get("data", {}) for o in c.outputs)
    )
    cell.outputs = [o for o in cell.outputs if "image/png" not in o.get("data", {})]
    with pytest.raises(AssertionError, match="output kinds"):
        compare_notebooks(stored, lost, "lost")
