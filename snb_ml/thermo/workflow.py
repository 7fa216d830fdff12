"""The free-energy workflows behind ``snb-ml free-energy``, callable from Python without the CLI.

- :func:`compute_free_energies`: one defect supercell, its bulk and the elemental references it needs
  (harmonic, optionally quasi-harmonic), as the JSON data ``snb-ml free-energy --defect`` writes;
- :func:`defect_cells` + :func:`whole_tree_free_energies`: every defect (and charge state) of a doped
  ``DefectThermodynamics`` or a ShakeNBreak tree, resumable, through :mod:`snb_ml.thermo.tree`;
- :func:`plugin_terms`: free-energy terms built by plugins (``--term``), to attach with the ΔF_vib.

Both paths share the per-structure steps of :mod:`snb_ml.thermo.tree` (composition change, reference
loading, reference phonons), so a defect computed alone and within a tree gives the same numbers.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.batch import batch_evaluator_for
from snb_ml.errors import InputError
from snb_ml.thermo.cells import bulk_pressure, report_pressure, scale_to_model
from snb_ml.thermo.inputs import read_structure
from snb_ml.thermo.phonons import (
    VibrationalFreeEnergy,
    auto_supercell_matrix,
    formation_vibrational_free_energy,
    harmonic_free_energy,
)
from snb_ml.thermo.qha import quasi_harmonic_free_energy
from snb_ml.thermo.tree import (
    DefectCell,
    cells_from_thermodynamics,
    cells_from_tree,
    composition_change,
    load_references,
    load_thermodynamics,
    reference_free_energy,
    select_cells,
    tree_free_energies,
)


def needed_references(references: dict[str, Path], change: dict[str, int]) -> dict[str, Path]:
    """The references the composition change needs; raise for a missing one, warn for an unneeded one."""
    missing = sorted(set(change) - set(references))
    if missing:
        raise InputError(
            f"The defect changes the composition by {change}; give --reference for {', '.join(missing)} "
            f"(e.g. --reference {missing[0]}=POSCAR_{missing[0]})."
        )
    unneeded = sorted(set(references) - set(change))
    if unneeded:
        warnings.warn(
            f"--reference {', '.join(f'{e}={references[e]}' for e in unneeded)} not used: the defect changes "
            f"the composition by {change} only; not computed and not stored.",
            stacklevel=3,
        )
    return {e: p for e, p in references.items() if e in change}


def compute_free_energies(
    defect_path: str | Path,
    bulk_path: str | Path,
    references: dict[str, Path],
    calculator: Any,
    temperatures: np.ndarray,
    qha: bool = False,
    reference_min_length: float = 10.0,
    charge: int | None = None,
    model: str = "",
    log: Callable[[str], None] = print,
    symprec: float = 1e-3,
    relax_cells: bool = True,
    check_elements: Any = None,
    evaluator: Any = None,
) -> dict[str, Any]:
    """Compute everything ``snb-ml free-energy --defect`` writes, as plain JSON data.

    References given as ``.json`` are loaded (``VibrationalFreeEnergy.write_json`` output, or an earlier
    ``snb-ml free-energy`` output holding that element; same temperature grid needed); structures
    are relaxed at fixed cell and their phonons computed in a diagonal supercell of at least
    ``reference_min_length`` Å per lattice vector (q-mesh of length 30).

    Args:
        defect_path: Defect supercell (file or folder).
        bulk_path: Pristine supercell with the same lattice.
        references: Elemental reference phases by element.
        calculator: ASE calculator.
        temperatures: Temperatures in K.
        qha: Also compute quasi-harmonic G(T) of the bulk and the references.
        reference_min_length: Smallest supercell lattice-vector length for the references, Å.
        charge: Total charge of the defect cell, stored in ``atoms.info["charge"]`` for charge-aware models.
        model: Model name recorded in the results.
        log: Progress printer.
        symprec: Phonopy symmetry tolerance (Å) for the defect, bulk and reference phonon steps; a looser
            tolerance finds more symmetry in ML-relaxed cells and needs fewer displacements.
        relax_cells: Scale defect and bulk isotropically to the model's zero-pressure bulk lattice and relax
            reference cells in full (:mod:`snb_ml.thermo.cells`); otherwise a strained bulk only warns.
        check_elements: ``check_elements(symbols, where)`` raising for elements the model lacks
            (:meth:`~snb_ml.relaxers.base.LoadedModel.check_elements`); checked before any phonon step.
        evaluator: Batched evaluator of the model for the displaced supercells (``None``: one at a time).

    Raises:
        InputError: For a missing reference or an unreadable structure; unneeded references only warn
            and are left out.
    """
    defect_atoms = read_structure(defect_path, "--defect")
    bulk_atoms = read_structure(bulk_path, "--bulk")
    change = composition_change(defect_atoms, bulk_atoms)
    references = needed_references(references, change)
    loaded_refs = load_references(references)
    ref_atoms = {e: r for e, r in loaded_refs.items() if isinstance(r, Atoms)}
    if check_elements is not None:  # before any model call: the whole job or nothing
        check_elements(defect_atoms.get_chemical_symbols(), f"--defect {defect_path}")
        check_elements(bulk_atoms.get_chemical_symbols(), f"--bulk {bulk_path}")
        for element, atoms in ref_atoms.items():
            check_elements(atoms.get_chemical_symbols(), f"--reference {element}={references[element]}")
    pressure, scale = bulk_pressure(bulk_atoms, calculator), 1.0
    if relax_cells:
        defect_atoms, bulk_atoms, scale = scale_to_model(defect_atoms, bulk_atoms, calculator)
    report_pressure(pressure, scale if relax_cells else None, log)
    if charge is not None:
        defect_atoms.info["charge"] = charge
    harmonic = dict(temperatures=temperatures, symprec=symprec, model=model, evaluator=evaluator)
    results = {}
    for name, atoms in (("defect", defect_atoms), ("bulk", bulk_atoms)):
        start = time.perf_counter()
        results[name] = harmonic_free_energy(atoms, calculator, **harmonic)
        log(
            f"{name}: {results[name].formula}, {results[name].n_displacements} displacements, "
            f"{time.perf_counter() - start:.1f} s"
        )
    refs: dict[str, VibrationalFreeEnergy] = {}
    for element, reference in loaded_refs.items():
        if isinstance(reference, VibrationalFreeEnergy):
            refs[element] = reference
            continue
        refs[element] = reference_free_energy(
            reference, calculator, relax_cells, reference_min_length, **harmonic
        )
        log(f"reference {element}: {refs[element].n_displacements} displacements")
    delta = formation_vibrational_free_energy(results["defect"], results["bulk"], refs, change)
    data: dict[str, Any] = {
        "temperatures": np.asarray(temperatures).tolist(),
        "composition_change": change,
        "delta_free_energy": delta.tolist(),
        "delta_free_energy_note": "F_defect - F_bulk - sum_i n_i mu_vib,i (eV); n_i > 0 added, < 0 removed",
        "defect": results["defect"].to_dict(),
        "bulk": results["bulk"].to_dict(),
        "references": {e: r.to_dict() for e, r in refs.items()},
        "defect_path": str(defect_path),
        "bulk_path": str(bulk_path),
        "model": model,
        "symprec": symprec,
        "bulk_pressure_GPa": pressure,
        "relax_cells": relax_cells,
        "cell_scale": scale,
        "qha": {},
    }
    if qha:
        data["qha"]["bulk"] = quasi_harmonic_free_energy(bulk_atoms, calculator, temperatures).to_dict()
        for element, atoms in ref_atoms.items():
            matrix = auto_supercell_matrix(atoms, reference_min_length)
            data["qha"][element] = quasi_harmonic_free_energy(
                atoms, calculator, temperatures, supercell_matrix=matrix
            ).to_dict()
    return data


def phonon_evaluator(loaded: Any, engine: str) -> Any:
    """The batched evaluator for the displaced supercells, or ``None`` for one calculator call each.

    ``auto`` batches where it pays (a GPU, or a model whose batched evaluator beats the sequential one on
    CPU in ``bench/``), as ``snb-ml run --engine auto`` does.
    """
    if engine == "sequential":
        return None
    evaluator = batch_evaluator_for(loaded)
    if engine == "batched":
        return evaluator
    fast = evaluator.batched and (evaluator.device.startswith("cuda") or evaluator.faster_on_cpu)
    return evaluator if fast else None


def defect_cells(
    thermo_path: str | Path | None,
    tree: str | Path | None,
    bulk_path: str | Path | None,
    only: Iterable[str] = (),
) -> tuple[list[DefectCell], Atoms, Any]:
    """The defect cells of a doped JSON (``thermo_path``) or a ShakeNBreak ``tree``, and their bulk.

    Args:
        thermo_path: doped ``DefectThermodynamics`` JSON(.gz); its bulk unless ``bulk_path`` is given.
        tree: ShakeNBreak DFT or ML tree (needs ``bulk_path``), used when ``thermo_path`` is ``None``.
        bulk_path: Pristine supercell file or folder.
        only: Entry or defect names to keep (all when empty).

    Returns:
        ``(cells, bulk, thermo)``; ``thermo`` is the loaded doped object, or ``None`` for a tree.
    """
    thermo = None
    if thermo_path:
        thermo = load_thermodynamics(thermo_path)
        cells, bulk = cells_from_thermodynamics(thermo, Path(thermo_path).name)
        if bulk_path:
            bulk = read_structure(bulk_path, "--bulk")
    else:
        cells, bulk = cells_from_tree(tree), read_structure(bulk_path, "--bulk")
    return select_cells(cells, only), bulk, thermo


def whole_tree_free_energies(
    cells: list[DefectCell],
    bulk: Atoms,
    references: dict[str, Path],
    loaded: Any,
    evaluator: Any,
    temperatures: np.ndarray,
    model_settings: dict[str, Any],
    output: str | Path,
    symprec: float = 1e-3,
    relax_cells: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """ΔF_vib(T) of every cell into one resumable JSON (``snb-ml free-energy --thermo/--tree``).

    Args:
        cells: From :func:`defect_cells`.
        bulk: Their bulk supercell.
        references: ``--reference`` paths by element (structures or earlier JSON results).
        loaded: The model (:class:`~snb_ml.relaxers.base.LoadedModel`).
        evaluator: From :func:`phonon_evaluator` (``None``: one calculator call per cell).
        temperatures: Temperatures in K.
        model_settings: The run settings recorded with the results (``RunSettings.as_dict()``); a rerun
            resumes only with the same settings.
        output: The JSON to write and resume from.
        symprec: Phonopy symmetry tolerance (Å).
        relax_cells: Scale the cells to the model's zero-pressure bulk lattice.
        progress: Progress bar over the defects.
        log: Printer of one-line messages.

    Returns:
        The data written (:func:`snb_ml.thermo.tree.tree_free_energies`); ``data["failed"]`` names the
        cells that failed.
    """
    run_settings = {
        "model": model_settings,
        "temperatures": np.asarray(temperatures).tolist(),
        "symprec": symprec,
        "relax_cells": relax_cells,
        "references": {e: str(p) for e, p in sorted(references.items())},
        "batched_phonons": evaluator is not None,
    }
    log(
        f"{len(cells)} defect cells ({', '.join(c.name for c in cells)}); phonon forces "
        f"{'batched (' + evaluator.name + ')' if evaluator is not None else 'one at a time'}"
    )
    return tree_free_energies(
        cells,
        bulk,
        load_references(references),
        loaded.calculator,
        temperatures,
        output,
        run_settings,
        evaluator=evaluator,
        relax_cells=relax_cells,
        symprec=symprec,
        model=loaded.name,
        check_elements=loaded.check_elements,
        progress=progress,
        log=log,
    )


def plugin_terms(specs: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Build free-energy terms from ``--term`` values through the plugin registry.

    Each value is ``[DEFECT:]NAME[=ARGS]``: ``NAME`` a term registered with the
    ``register_free_energy_terms`` hook (``snb-ml plugins`` lists them), ``ARGS`` JSON passed to its
    builder (an object as keyword arguments, a list as positional ones, anything else as the one
    argument), ``DEFECT`` a defect or entry name of the doped object (default: every entry, ``*``).

    Returns:
        ``{defect or entry name ("*": all): {term name: term}}``.

    Raises:
        InputError: For an unknown term name (listing the installed ones), arguments that are not JSON,
            or a builder that refuses its arguments.
    """
    # deferred: the plugin registry loads entry points; only --term needs it
    from snb_ml.plugins import get_free_energy_term

    terms: dict[str, dict[str, Any]] = {}
    for spec in specs:
        head, has_args, raw = spec.partition("=")
        target, _, name = head.rpartition(":")
        target, name = target.strip() or "*", name.strip()
        if not name:
            raise InputError(
                f"--term {spec!r}: expected [DEFECT:]NAME[=JSON], e.g. --term 'linear={{\"a\": 0.1}}'."
            )
        builder = get_free_energy_term(name, "--term").provider
        try:
            args = json.loads(raw) if has_args else None
        except ValueError as exc:
            raise InputError(
                f"--term {name}: the arguments after '=' are not JSON ({exc}): {raw!r}."
            ) from exc
        try:
            if args is None:
                term = builder()
            elif isinstance(args, dict):
                term = builder(**args)
            elif isinstance(args, list):
                term = builder(*args)
            else:
                term = builder(args)
        except (TypeError, ValueError, InputError) as exc:
            raise InputError(
                f"--term {name}: its builder refused {raw or 'no arguments'!s} ({exc})."
            ) from exc
        if name in terms.setdefault(target, {}):
            raise InputError(f"--term {name} given twice for {target}.")
        terms[target][name] = term
    return terms


def expand_terms(terms: dict[str, dict[str, Any]], entries: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Replace the ``"*"`` key of :func:`plugin_terms` by every entry name (for the doped object)."""
    everywhere = terms.get("*", {})
    out = {name: dict(group) for name, group in terms.items() if name != "*"}
    if everywhere:
        for entry in entries:
            for term_name, term in everywhere.items():
                out.setdefault(entry, {}).setdefault(term_name, term)
    return out


def check_terms(thermo: Any, terms: dict[str, dict[str, Any]]) -> None:
    """Check that every defect or entry name of ``terms`` is in ``thermo`` (before any phonon step).

    Raises:
        InputError: For a name that is not an entry or defect of ``thermo`` (the message lists them).
    """
    if not terms:
        return
    # deferred: doped_thermo imports doped, pymatgen and matplotlib; only runs with --term need them here
    from snb_ml.thermo.doped_thermo import FiniteTemperatureThermodynamics

    FiniteTemperatureThermodynamics.from_thermodynamics(thermo, terms=terms)
