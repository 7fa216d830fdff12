"""Ground-state recall: relax the starts of a finished DFT search with a model, select, and check the outcome.

:func:`benchmark_search` copies the starting structures of a ShakeNBreak DFT search into its own output
folder (the DFT tree is only read), relaxes them with any relaxer through :func:`snb_ml.runner.run_tree`
(the same :class:`~snb_ml.settings.RunSettings` as ``snb-ml run``; reruns reuse finished relaxations),
runs :func:`~snb_ml.minima.select_defect` and compares the selection with what DFT found.

What a selected start is expected to reach in DFT follows the hand-off: a start handed over *as
generated* (exploration, reference) reaches what DFT reached from it in the search; a representative
handed over as its *ML minimum* reaches the DFT basin its ML minimum lies in (defect-site fingerprint
within the selection threshold of that start's DFT result, else of the nearest DFT result), and is
unknown when it lies in none. Searches without DFT structures (energies only) fall back to the start's
own DFT energy, and say so. **Ground state found** means some DFT run of the plan reaches an energy
within ``tolerance`` of the search's lowest. The plan always holds Unperturbed, which the hand-off keeps
and ``snb-run`` relaxes, so it counts in the DFT relaxations ``k`` of both policies.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from snb_ml.errors import InputError, OutputError, SnbMlError
from snb_ml.minima.selection import DEFAULT_THRESHOLD
from snb_ml.minima.trust import ENERGY_NOISE, bond_distortion
from snb_ml.plugins import get_selection_policy
from snb_ml.recall.compare import compare_defect
from snb_ml.recall.dft_search import DftDefect, read_dft_search
from snb_ml.recall.report import write_result
from snb_ml.recall.results import TOLERANCE, DefectRecall, RecallResult
from snb_ml.recall.site import site_from_starts
from snb_ml.runner import load_model, run_tree
from snb_ml.safe_write import write_text
from snb_ml.settings import RunSettings
from snb_ml.tree.layout import read_input_structure
from snb_ml.tree.metadata import METADATA_FILE, find_defect_metadata, split_charge

STARTS_FOLDER = "starts"
ML_FOLDER = "ml_tree"


def _no_defect_message(root: Path, errors: dict[str, str]) -> str:
    if len(errors) == 1:
        return next(iter(errors.values()))
    listed = "; ".join(f"{name}: {message}" for name, message in errors.items())
    return f"No defect of {root} could be benchmarked ({listed})"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def stage_defect(defect: DftDefect, starts_top: Path, ml_top: Path) -> None:
    """Copy the starts (and metadata) of one defect into the benchmark folder; refuse stale ML results.

    Where no ``distortion_metadata.json`` lists the defect, its site is found from the starts
    (:func:`snb_ml.recall.site.site_from_starts`) and written as the copy's metadata.

    Raises:
        InputError: The site cannot be found.
        OutputError: The benchmark's ML tree holds relaxations of other starts.
    """
    target = starts_top / defect.name
    stale = sorted(p.name for p in target.glob("*") if p.is_dir() and p.name not in defect.starts)
    if stale:
        raise OutputError(
            f"{target} holds starts that {defect.directory} no longer has ({', '.join(stale)}); their ML "
            "relaxations would be counted. Use another --output folder for this search, or move the old "
            "one away."
        )
    for name, start in defect.starts.items():
        ml_start = ml_top / defect.name / name / "POSCAR"
        if ml_start.is_file() and not _same_start(read_input_structure(ml_start.parent), start.read_start()):
            raise OutputError(
                f"{ml_top / defect.name} holds ML relaxations of other starting structures than "
                f"{start.directory} (first: {name}). Use another --output folder for this search, or move "
                "the old one away."
            )
    try:
        find_defect_metadata(defect.directory)
        metadata = None
    except InputError:
        unperturbed = defect.starts["Unperturbed"].read_start()
        bonds = {v: s.read_start() for f, s in defect.starts.items() if (v := bond_distortion(f)) is not None}
        found = site_from_starts(unperturbed, bonds)
        if found is None:
            raise InputError(
                f"Cannot find the defect site of {defect.directory}: no {METADATA_FILE} there or in "
                f"{defect.directory.parent} lists it, and its starts do not show it (it needs at least two "
                "bond distortions whose moved neighbours agree on one centre). Copy the search's "
                f"{METADATA_FILE} (written by snb-generate) into {defect.directory}."
            ) from None
        site, moved = found
        defect.site = (float(site[0]), float(site[1]), float(site[2]))
        defect.distorted_atoms = moved
        defect.notes.append(
            f"defect site found from the starting structures (no {METADATA_FILE}): "
            f"{[round(x, 4) for x in defect.site]}, distorted atoms {list(moved)}"
        )
        symbols = unperturbed.get_chemical_symbols()
        charge = str(defect.charge if defect.charge is not None else 0)
        metadata = {
            "defects": {
                split_charge(defect.name)[0]: {
                    "unique_site": list(defect.site),
                    "charges": {charge: {"distorted_atoms": [[i, symbols[i]] for i in moved]}},
                }
            },
            "snb_ml_note": "defect site found from the starting structures by snb-ml recall",
        }
    for name, start in defect.starts.items():
        source = start.start_file
        write_text(target / name / source.name, source.read_text())
    if metadata is not None:
        write_text(target / METADATA_FILE, json.dumps(metadata, indent=2))
    else:
        for source, copy in (
            (defect.directory / METADATA_FILE, target / METADATA_FILE),
            (defect.directory.parent / METADATA_FILE, starts_top / METADATA_FILE),
        ):
            if source.is_file():
                write_text(copy, source.read_text())


def _same_start(first, second, tolerance: float = 1e-3) -> bool:
    if first.get_chemical_symbols() != second.get_chemical_symbols():
        return False
    delta = first.get_scaled_positions() - second.get_scaled_positions()
    delta -= np.round(delta)
    return bool(np.abs(delta @ first.cell.array).max() < tolerance)


def benchmark_search(
    dft_tree: str | Path,
    output: str | Path,
    settings: RunSettings | None = None,
    policy: str = "protect",
    tolerance: float = TOLERANCE,
    threshold: float = DEFAULT_THRESHOLD,
    defects: list[str] | None = None,
    noise: float = ENERGY_NOISE,
    model: Any = None,
    write: bool = True,
) -> RecallResult:
    """Measure how well a model + selection recovers the ground states of a finished DFT search.

    Args:
        dft_tree: The ShakeNBreak DFT search (top-level or one defect folder); only read.
        output: The benchmark's folder: ``starts/`` (copied starts), ``ml_tree/`` (ML relaxations,
            reused by reruns with the same settings), ``recall_<policy>.json``/``.txt``/``.png``.
        settings: Relaxer, model and optimizer (as ``snb-ml run``); CHGNet defaults if ``None``.
            A fine-tuned model: ``RunSettings(relaxer="chgnet", model="path/to/model.pth.tar")``.
        policy: Selection policy, ``protect`` or ``lean``.
        tolerance: Energy (eV) above the DFT minimum that still counts as the ground state.
        threshold: Fingerprint distance of one basin (selection and ML-vs-DFT comparison).
        defects: Defect folder names (all if ``None``).
        noise: ML energy spread below which the model cannot rank its minima (``protect``).
        model: An already loaded model (:func:`snb_ml.runner.load_model`) to reuse across calls.
        write: Write the reports into ``output``.

    Returns:
        The typed result (``.to_json()``, ``.table()``, ``.summary_line()``). Defects that cannot be
        benchmarked are in ``errors``; the others finish.

    Raises:
        InputError: Bad arguments, not a ShakeNBreak tree, no DFT results in it, or no defect that
            can be benchmarked (then no report is written).
        OutputError: ``output`` inside the DFT tree.
    """
    started = time.perf_counter()
    if tolerance < 0:
        raise InputError(f"Need tolerance >= 0 (got {tolerance}).")
    get_selection_policy(policy)  # an unknown policy fails here, before any relaxation
    settings = settings or RunSettings()
    root, out = Path(dft_tree).resolve(), Path(output).resolve()
    search = read_dft_search(root, defects)
    if _inside(out, search.root) or _inside(search.root, out):
        raise OutputError(
            f"The benchmark folder {out} overlaps the DFT search {search.root}; the benchmark never writes "
            "into a DFT tree. Pass --output a folder outside it."
        )
    starts_top, ml_top = out / STARTS_FOLDER, out / ML_FOLDER
    errors = dict(search.errors)
    staged: list[DftDefect] = []
    for defect in search.defects.values():
        try:
            stage_defect(defect, starts_top, ml_top)
            staged.append(defect)
        except SnbMlError as exc:
            errors[defect.name] = str(exc)
    if not staged:
        raise InputError(_no_defect_message(root, errors))
    loaded = time.perf_counter()
    model = model or load_model(settings)
    model_seconds = time.perf_counter() - loaded
    report = run_tree(starts_top, settings, [d.name for d in staged], output=ml_top, model=model)
    run_seconds = report.seconds
    reports: dict[str, Any] = {d.name: d for d in report.defects}
    results: dict[str, DefectRecall] = {}
    for defect in staged:
        run = reports.get(defect.name)
        if run is not None and run.error:
            errors[defect.name] = run.error
            continue
        try:
            results[defect.name] = compare_defect(
                defect, ml_top / defect.name, policy, tolerance, threshold, noise, run
            )
        except SnbMlError as exc:
            errors[defect.name] = str(exc)
    if not results:
        raise InputError(_no_defect_message(root, errors))
    total = time.perf_counter() - started
    result = RecallResult(
        dft_tree=search.root,
        output=out,
        policy=policy,
        tolerance=tolerance,
        threshold=threshold,
        model={"name": model.name, "version": model.version, "settings": settings.signature()},
        defects=results,
        errors=errors,
        timings={
            "total": total,
            "model_load": model_seconds,
            "relaxation": run_seconds,
            "overhead": total - run_seconds,
        },
    )
    if write:
        write_result(result)
        result.timings["total_with_reports"] = time.perf_counter() - started
    return result
