"""ΔF_vib(T) of every defect and charge state of a doped ``DefectThermodynamics`` or a ShakeNBreak tree.

One bulk phonon calculation and one per elemental reference serve all defects; each defect's result
is added to one JSON file, rewritten atomically after every defect, so an interrupted run resumes
where it stopped (defects already in the file with the same settings are skipped) and a defect that
fails is recorded with its error while the others finish.

Cells: DFT supercells (e.g. doped's HSE+SOC ones) are strained for an ML model trained on another
functional; by default the bulk is brought to the model's zero-pressure lattice and every defect cell
scaled by the same factor (:func:`snb_ml.thermo.cells.scale_to_model`), and the model's pressure on
the given bulk is reported. Measured on doped's CdTe example with CHGNet: the DFT cell sits at
1.5 GPa for the model, and ΔF_vib of V_Cd at 873 K is -1.48 eV as given against +0.10 eV scaled.
"""

from __future__ import annotations

import json
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.data.minima import energies_yaml, energy_of, read_dft_energies
from snb_ml.errors import InputError
from snb_ml.progress import progress_bar
from snb_ml.safe_write import atomic_path, write_text
from snb_ml.thermo.cells import bulk_pressure, relax_cell, report_pressure, scale_to_model
from snb_ml.thermo.inputs import read_structure, reference_from_json
from snb_ml.thermo.phonons import (
    VibrationalFreeEnergy,
    auto_supercell_matrix,
    formation_vibrational_free_energy,
    harmonic_free_energy,
)
from snb_ml.tree.metadata import split_charge

FORMAT = "snb_ml free-energy tree"
FORMAT_VERSION = 1


@dataclass
class DefectCell:
    """One defect supercell to compute.

    Attributes:
        name: Entry name, e.g. ``v_Cd_-1`` (doped's ``defect_entries`` key, or the ShakeNBreak folder).
        defect: Defect name without charge, e.g. ``v_Cd``.
        charge: Total charge of the cell.
        atoms: The relaxed supercell.
        source: Where the structure came from (for the record).
    """

    name: str
    defect: str
    charge: int
    atoms: Atoms
    source: str


def _ase(structure: Any) -> Atoms:
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.info = {}
    for key in list(atoms.arrays):  # doped's site properties (magmoms, selective dynamics) are not needed
        if key not in ("numbers", "positions"):
            del atoms.arrays[key]
    return atoms


def load_thermodynamics(path: str | Path) -> Any:
    """Load a doped ``DefectThermodynamics`` JSON(.gz) (doped's ``to_json``/``dumpfn`` output)."""
    from doped.thermodynamics import DefectThermodynamics
    from monty.serialization import loadfn

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            thermo = loadfn(str(path))
    except Exception as exc:  # monty raises many types for unreadable files
        raise InputError(f"--thermo: cannot read {path} ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(thermo, DefectThermodynamics):
        raise InputError(
            f"--thermo: {path} holds a {type(thermo).__name__}, not a doped DefectThermodynamics. Save one "
            "with DefectThermodynamics.to_json()."
        )
    return thermo


def cells_from_thermodynamics(thermo: Any, source: str) -> tuple[list[DefectCell], Atoms]:
    """The defect supercells and the bulk supercell of a doped ``DefectThermodynamics``.

    Raises:
        InputError: If an entry lacks its supercell or bulk structure, or the entries use different bulks.
    """
    cells, bulk = [], None
    for name, entry in thermo.defect_entries.items():
        sc_structure = getattr(getattr(entry, "sc_entry", None), "structure", None)
        bulk_structure = getattr(getattr(entry, "bulk_entry", None), "structure", None)
        if sc_structure is None or bulk_structure is None:
            raise InputError(
                f"{source}: entry {name} holds no defect or bulk supercell structure; save the "
                "DefectThermodynamics from doped's DefectsParser output (it keeps both)."
            )
        if bulk is None:
            bulk = _ase(bulk_structure)
        elif len(bulk_structure) != len(bulk) or not np.allclose(
            bulk_structure.lattice.matrix, np.asarray(bulk.cell), atol=1e-3
        ):
            raise InputError(f"{source}: entry {name} uses another bulk supercell than the first entry.")
        defect = split_charge(name)[0] if split_charge(name)[1] is not None else name
        cells.append(
            DefectCell(name, defect, int(entry.charge_state), _ase(sc_structure), f"{source}:{name}")
        )
    if bulk is None:
        raise InputError(f"{source}: the DefectThermodynamics holds no defect entries.")
    return cells, bulk


def cells_from_tree(tree: str | Path) -> list[DefectCell]:
    """The lowest-energy structure of every defect folder of a ShakeNBreak (DFT or ML) tree.

    A defect folder is one holding ``{defect}/{defect}.yaml`` (written by ``snb-parse`` or ``snb-ml run``);
    its lowest-energy distortion with a ``CONTCAR`` is taken. The charge is read from the folder name.
    """
    from ase.io import read

    tree = Path(tree)
    cells = []
    for folder in sorted(p for p in tree.iterdir() if p.is_dir() and energies_yaml(p).is_file()):
        energies = read_dft_energies(folder)
        candidates = []
        for sub in folder.iterdir():
            energy = energy_of(sub, energies) if (sub / "CONTCAR").is_file() else None
            if energy is not None:
                candidates.append((energy, sub.name))
        defect, charge = split_charge(folder.name)
        if not candidates or charge is None:
            raise InputError(
                f"--tree: {folder} has no distortion with both a CONTCAR and an energy in "
                f"{energies_yaml(folder).name}, or its name does not end in the charge (e.g. v_Cd_0)."
            )
        energy, best = min(candidates)
        atoms = read(str(folder / best / "CONTCAR"), format="vasp")
        cells.append(DefectCell(folder.name, defect, int(charge), atoms, f"{folder / best / 'CONTCAR'}"))
    if not cells:
        raise InputError(
            f"--tree: {tree} holds no defect folder with a {{defect}}.yaml; run snb-parse (DFT tree) or "
            "snb-ml run (ML tree) first, or pass --thermo with a doped DefectThermodynamics JSON."
        )
    return cells


def composition_change(defect: Atoms, bulk: Atoms) -> dict[str, int]:
    """Atoms added (> 0) or removed (< 0) per element."""
    counts = [Counter(atoms.get_chemical_symbols()) for atoms in (defect, bulk)]
    change = {e: counts[0][e] - counts[1][e] for e in sorted(set(counts[0]) | set(counts[1]))}
    return {e: n for e, n in change.items() if n}


def select_cells(cells: list[DefectCell], only: Iterable[str]) -> list[DefectCell]:
    """The cells named in ``only`` (entry names such as ``v_Cd_-1``, or defects such as ``v_Cd``).

    Raises:
        InputError: For a name that is neither an entry nor a defect (the message lists both).
    """
    only = tuple(only)
    if not only:
        return cells
    chosen = [c for c in cells if c.name in only or c.defect in only]
    unknown = sorted(set(only) - {c.name for c in cells} - {c.defect for c in cells})
    if unknown:
        raise InputError(
            f"--only {', '.join(unknown)}: not among the entries ({', '.join(c.name for c in cells)}) or "
            f"defects ({', '.join(sorted({c.defect for c in cells}))})."
        )
    return chosen


def load_references(references: dict[str, Path]) -> dict[str, Atoms | VibrationalFreeEnergy]:
    """Reference structures (ASE, to compute) or earlier results (``VibrationalFreeEnergy``) by element.

    Args:
        references: ``--reference EL=PATH`` values: a structure file or folder, or a ``.json`` of an
            earlier result (:func:`snb_ml.thermo.inputs.reference_from_json`).
    """
    out: dict[str, Atoms | VibrationalFreeEnergy] = {}
    for element, path in references.items():
        if Path(path).suffix == ".json":
            out[element] = reference_from_json(Path(path), element, VibrationalFreeEnergy)
        else:
            out[element] = read_structure(path, f"--reference {element}")
    return out


def reference_free_energy(
    atoms: Atoms,
    calculator: Any,
    relax_cell_first: bool,
    min_length: float,
    **harmonic: Any,
) -> VibrationalFreeEnergy:
    """Harmonic F_vib(T) of an elemental reference phase in a supercell of at least ``min_length`` Å.

    Args:
        atoms: The reference structure (primitive or conventional cell).
        calculator: ASE calculator of the model.
        relax_cell_first: Relax the cell in full with the model first (``--relax-cells``).
        min_length: Smallest supercell lattice-vector length, Å.
        **harmonic: Passed to :func:`~snb_ml.thermo.phonons.harmonic_free_energy` (temperatures, ...).
    """
    if relax_cell_first:
        atoms = relax_cell(atoms, calculator)
    matrix = auto_supercell_matrix(atoms, min_length)
    return harmonic_free_energy(atoms, calculator, supercell_matrix=matrix, **harmonic)


def _settings_key(settings: dict[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True)


def _load_previous(output: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The earlier output of the same run (same settings) to resume from, or ``None``."""
    if not output.is_file():
        return None
    try:
        data = json.loads(output.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{output} exists but is not readable JSON ({exc}); move it away to start again."
        ) from exc
    if data.get("format") != FORMAT:
        raise InputError(
            f"{output} exists and is not a whole-tree free-energy file; choose another -o or move it away."
        )
    if _settings_key(data.get("settings", {})) != _settings_key(settings):
        raise InputError(
            f"{output} holds results of other settings ({data.get('settings')}); rerun with those settings "
            "to resume, or choose another -o (or move it away) to start again."
        )
    return data


def tree_free_energies(
    cells: list[DefectCell],
    bulk: Atoms,
    references: dict[str, Atoms | Any],
    calculator: Any,
    temperatures: np.ndarray,
    output: str | Path,
    settings: dict[str, Any],
    evaluator: Any = None,
    relax_cells: bool = True,
    symprec: float = 1e-3,
    reference_min_length: float = 10.0,
    model: str = "",
    check_elements: Callable[[Iterable[str], str], None] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Compute ΔF_vib(T) of every cell and write them to one JSON (resumable; see the module docstring).

    Args:
        cells: Defect supercells (all in the lattice of ``bulk``).
        bulk: Pristine supercell.
        references: Elemental reference phases by element: ASE ``Atoms`` (relaxed and computed here) or
            :class:`~snb_ml.thermo.phonons.VibrationalFreeEnergy` (computed earlier, same temperatures).
        calculator: ASE calculator of the model.
        temperatures: Temperatures in K.
        output: The JSON to write (and to resume from).
        settings: Everything that changes the numbers (model, temperatures, symprec, cells); an existing
            output with other settings is refused rather than mixed.
        evaluator: Batched evaluator of the model for the displaced supercells (``None``: one at a time).
        relax_cells: Scale to the model's zero-pressure bulk lattice (default); otherwise warn when the
            bulk is strained.
        symprec: Phonopy symmetry tolerance (Å).
        reference_min_length: Smallest supercell lattice-vector length for the references, Å.
        model: Model name recorded in the results.
        check_elements: ``check_elements(symbols, where)`` raising for elements the model lacks.
        progress: Show a progress bar over the defects.
        log: Printer of one-line progress messages.

    Returns:
        The data written; ``data["failed"]`` maps the names of the cells that failed to their error.

    Raises:
        InputError: For a missing reference, elements the model lacks, or an output of other settings.
    """
    output = Path(output)
    changes = {cell.name: composition_change(cell.atoms, bulk) for cell in cells}
    needed = sorted({e for change in changes.values() for e in change})
    missing = [e for e in needed if e not in references]
    if missing:
        raise InputError(
            f"The defects exchange {', '.join(needed)} with reservoirs; give --reference for "
            f"{', '.join(missing)} (e.g. --reference {missing[0]}=POSCAR_{missing[0]})."
        )
    if check_elements is not None:  # before any model call: the whole job or nothing
        check_elements(bulk.get_chemical_symbols(), "the bulk supercell")
        for cell in cells:
            check_elements(cell.atoms.get_chemical_symbols(), cell.source)
    data = _load_previous(output, settings) or {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "settings": settings,
        "temperatures": np.asarray(temperatures).tolist(),
        "delta_free_energy_note": "F_defect - F_bulk - sum_i n_i mu_vib,i (eV); n_i > 0 added, < 0 removed",
        "model": model,
        "defects": {},
        "failed": {},
    }
    harmonic = dict(temperatures=temperatures, symprec=symprec, model=model, evaluator=evaluator)

    def save() -> None:
        write_text(output, json.dumps(data, indent=1))

    if "bulk" not in data:
        pressure = bulk_pressure(bulk, calculator)
        scale, work_bulk = 1.0, bulk
        if relax_cells:
            _, work_bulk, scale = scale_to_model(bulk, bulk, calculator)
        report_pressure(pressure, scale if relax_cells else None, log, label="bulk at")
        start = time.perf_counter()
        result = harmonic_free_energy(work_bulk, calculator, **harmonic)
        log(
            f"bulk: {result.formula}, {result.n_displacements} displacements, "
            f"{time.perf_counter() - start:.1f} s"
        )
        data.update(
            bulk=result.to_dict(), bulk_pressure_GPa=pressure, cell_scale=scale, relax_cells=relax_cells
        )
        data["references"] = {}
        save()
    bulk_result = VibrationalFreeEnergy.from_dict(data["bulk"])
    scale = float(data["cell_scale"])
    for element in needed:
        if element in data["references"]:
            continue
        reference = references[element]
        if isinstance(reference, VibrationalFreeEnergy):
            data["references"][element] = reference.to_dict()
            continue
        result = reference_free_energy(reference, calculator, relax_cells, reference_min_length, **harmonic)
        log(f"reference {element}: {result.formula}, {result.n_displacements} displacements")
        data["references"][element] = result.to_dict()
        save()
    refs = {e: VibrationalFreeEnergy.from_dict(r) for e, r in data["references"].items()}
    todo = [cell for cell in cells if cell.name not in data["defects"]]
    if len(todo) < len(cells):
        log(f"resuming {output}: {len(cells) - len(todo)} of {len(cells)} defects already done")
    data["failed"] = {k: v for k, v in data.get("failed", {}).items() if k not in {c.name for c in todo}}
    for cell in progress_bar(todo, desc="defects", unit="defect", enabled=progress):
        start = time.perf_counter()
        try:
            atoms = cell.atoms.copy()
            if scale != 1.0:
                atoms.set_cell(np.array(atoms.cell) * scale, scale_atoms=True)
            atoms.info["charge"] = cell.charge
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = harmonic_free_energy(atoms, calculator, **harmonic)
            delta = formation_vibrational_free_energy(result, bulk_result, refs, changes[cell.name])
        except Exception as exc:  # one defect's failure (model, phonopy, structure) must not stop the rest
            data["failed"][cell.name] = f"{type(exc).__name__}: {exc}"
            log(f"{cell.name}: FAILED ({type(exc).__name__}: {exc}); the other defects go on")
            save()
            continue
        for warning in caught:  # phonopy's own API deprecations are not the user's business
            if not issubclass(warning.category, DeprecationWarning):
                log(f"{cell.name}: warning: {warning.message}")
        data["defects"][cell.name] = {
            "defect": cell.defect,
            "charge": cell.charge,
            "source": cell.source,
            "composition_change": changes[cell.name],
            "delta_free_energy": delta.tolist(),
            "result": result.to_dict(),
        }
        data["failed"].pop(cell.name, None)
        save()
        log(
            f"{cell.name}: ΔF_vib({temperatures[-1]:g} K) = {delta[-1]:+.3f} eV, {result.n_displacements} "
            f"displacements, {time.perf_counter() - start:.1f} s"
        )
    return data


def vibrational_terms(data: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ΔF_vib(T) terms per entry name (T > 0 only) from a whole-tree output, for the doped drop-in."""
    temps = np.asarray(data["temperatures"], dtype=float)
    keep = temps > 0
    terms = {}
    for name, record in data.get("defects", {}).items():
        delta = np.asarray(record["delta_free_energy"], dtype=float)
        terms[name] = (temps[keep].copy(), delta[keep].copy())
    return terms


def read_tree_json(path: str | Path) -> dict[str, Any]:
    """Load a whole-tree ``snb-ml free-energy`` output."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(
            f"Cannot read {path} ({exc}); pass the JSON written by `snb-ml free-energy --thermo`."
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(
            f"{path} is not a whole-tree free-energy file (written by `snb-ml free-energy --thermo/--tree`)."
        )
    return data


def attach_terms(
    thermo: Any,
    data: dict[str, Any],
    term_name: str = "vib",
    extrapolate: bool = False,
    extra_terms: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """The doped drop-in (``FiniteTemperatureThermodynamics``) with the ΔF_vib of ``data`` attached.

    Args:
        thermo: The doped ``DefectThermodynamics`` (not modified).
        data: Whole-tree free-energy output (:func:`tree_free_energies`, :func:`read_tree_json`).
        term_name: Name of the term in the drop-in (``vib`` shows in the entropy breakdown's vib column).
        extrapolate: Hold the end values outside the computed temperatures (default: refuse).
        extra_terms: More terms, ``{defect or entry name: {term name: term}}``, e.g. built by a
            free-energy-term plugin (:func:`snb_ml.thermo.workflow.plugin_terms`).

    Raises:
        InputError: If a computed defect is not an entry of ``thermo``, or nothing was computed.
    """
    # deferred: doped_thermo imports doped, pymatgen and matplotlib; only attaching terms needs them
    from snb_ml.thermo.doped_thermo import FiniteTemperatureThermodynamics

    terms = vibrational_terms(data)
    if not terms:
        raise InputError("The free-energy file holds no finished defect; nothing to attach.")
    unknown = sorted(set(terms) - set(thermo.defect_entries))
    if unknown:
        raise InputError(
            f"Free energies for {', '.join(unknown)}, which are not entries of the DefectThermodynamics "
            f"({', '.join(sorted(thermo.defect_entries))}); compute them from the same doped object "
            "(snb-ml free-energy --thermo) or rename the tree folders to doped's entry names."
        )
    with_terms = FiniteTemperatureThermodynamics.from_thermodynamics(
        thermo, terms={name: {term_name: term} for name, term in terms.items()}, extrapolate=extrapolate
    )
    for name, group in (extra_terms or {}).items():
        for extra_name, term in group.items():
            if extra_name == term_name:
                raise InputError(f"The term {term_name!r} is ΔF_vib here; give the other term another name.")
            with_terms.set_term(name, extra_name, term)
    return with_terms


def write_doped_json(
    thermo: Any,
    data: dict[str, Any],
    path: str | Path,
    extrapolate: bool = False,
    extra_terms: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """Attach the ΔF_vib terms (and ``extra_terms``) to ``thermo`` and write the doped JSON atomically.

    The file (``.gz`` compressed by its name) loads with doped's own ``DefectThermodynamics.from_json``.

    Returns:
        The :class:`~snb_ml.thermo.doped_thermo.FiniteTemperatureThermodynamics` written.
    """
    from monty.serialization import dumpfn

    with_terms = attach_terms(thermo, data, extrapolate=extrapolate, extra_terms=extra_terms)
    target = Path(path)
    # monty picks gzip from the name, so the temporary file keeps the target's suffixes.
    with atomic_path(target) as temporary:
        named = temporary.with_name(temporary.name + "".join(target.suffixes))
        try:
            dumpfn(with_terms, str(named))
            named.replace(temporary)
        finally:
            named.unlink(missing_ok=True)
    return with_terms
