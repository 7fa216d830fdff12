"""Reading a finished ShakeNBreak DFT search: per start, the structure DFT began from and what it reached.

A DFT search is a ShakeNBreak tree after ``snb-run`` and ``snb-parse``: per defect folder, one folder per
distortion with the starting ``POSCAR`` and the DFT result (``CONTCAR``, ``OUTCAR``, ``vasprun.xml``),
``{defect}.yaml`` with the final DFT energies, and ``distortion_metadata.json`` where present.

Rules (each problem is one :class:`~snb_ml.errors.InputError` naming the file and the fix):

* energies come from ``{defect}.yaml``; a start it does not list gets the ``energy(sigma->0)`` of its
  ``OUTCAR``/``vasprun.xml`` when there is one (noted), else no DFT energy (noted; ``_High_Energy``
  folders, which ShakeNBreak leaves out of the yaml, are marked as such);
* a yaml entry without a distortion folder means the yaml belongs to another tree: error;
* the final structure is ``CONTCAR``, else the last step of ``vasprun.xml``/``OUTCAR``; it must have the
  starting structure's atoms in the same order (same species sequence, at least half of the atoms
  within 2 Å of their start): error otherwise;
* the defect site comes from ``distortion_metadata.json`` (the defect folder's, then the tree's), else
  from the starting structures (:func:`snb_ml.recall.site.site_from_starts`); error if neither gives it;
* a defect without any DFT energy is an error for that defect; a tree without any, for the tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from snb_ml.data.vasp import UnreadableFile, output_files, read_outcar_frames, read_vasprun
from snb_ml.errors import InputError
from snb_ml.minima.trust import bond_distortion
from snb_ml.tree.layout import (
    HIGH_ENERGY_SUFFIX,
    STRUCTURE_INPUTS,
    is_distortion_dir,
    locate_defects,
    read_input_structure,
)
from snb_ml.tree.metadata import split_charge

MOVED_LIMIT = 2.0  # Å: an atom further than this from its start (after removing drift) "moved far"
# More than this fraction of atoms moving far means another atom order: a shuffled order moves nearly all
# atoms, while a _High_Energy DFT run that fell apart moved 39 of 216 (Mg_O_+1 -50 %, doped's MgO search).
MOVED_FRACTION = 0.5


@dataclass
class DftStart:
    """One start of a DFT search and its DFT outcome.

    Attributes:
        folder: Distortion folder name without ``_High_Energy``.
        directory: The folder in the DFT tree.
        energy: Final DFT energy (eV), ``None`` when unknown.
        energy_source: ``yaml``, the output file it was parsed from, or ``""``.
        final: File holding the DFT-relaxed structure (``None``: no DFT output).
        high_energy: The folder is marked ``_High_Energy`` by ShakeNBreak.
    """

    folder: str
    directory: Path
    energy: float | None = None
    energy_source: str = ""
    final: Path | None = None
    high_energy: bool = False

    @property
    def start_file(self) -> Path:
        """The starting structure file."""
        return next(self.directory / n for n, _ in STRUCTURE_INPUTS if (self.directory / n).is_file())

    def read_start(self) -> Atoms:
        """The starting structure."""
        return read_input_structure(self.directory)

    def read_final(self) -> Atoms | None:
        """The DFT-relaxed structure, ``None`` without DFT output."""
        return None if self.final is None else _read_final(self.final)


@dataclass
class DftDefect:
    """One defect (in one charge state) of a DFT search.

    Attributes:
        name: Defect folder name (``v_Cd_0``).
        directory: The defect folder in the DFT tree.
        charge: Charge from the folder name (``None`` if it has none).
        starts: The starts by folder name, Unperturbed first.
        site: Defect site (fractional) when found from the structures (``None``: from metadata).
        distorted_atoms: Neighbour indices moved by the bond distortions (found with ``site``).
        notes: What was missing or inferred.
    """

    name: str
    directory: Path
    charge: int | None
    starts: dict[str, DftStart]
    site: tuple[float, float, float] | None = None
    distorted_atoms: tuple[int, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def energies(self) -> dict[str, float]:
        """Known DFT energies by start."""
        return {f: s.energy for f, s in self.starts.items() if s.energy is not None}

    @property
    def ground_state_energy(self) -> float:
        """The lowest DFT energy of the search."""
        return min(self.energies.values())


@dataclass
class DftSearch:
    """A DFT search: its defects, and those that cannot be used with the reason."""

    root: Path
    defects: dict[str, DftDefect]
    errors: dict[str, str] = field(default_factory=dict)


def _read_final(path: Path) -> Atoms:
    from ase.io import read

    try:
        if path.name.startswith("CONTCAR"):
            return read(path, format="vasp")
        return read(path, index=-1, format="vasp-xml" if "vasprun" in path.name else "vasp-out")
    except Exception as exc:
        raise InputError(
            f"Cannot read the DFT result {path} ({type(exc).__name__}: {exc}). Remove or fix the file."
        ) from exc


def _output_energy(folder: Path) -> tuple[float, Path] | None:
    """``energy(sigma->0)`` of the last ionic step of the folder's OUTCAR/vasprun.xml (as snb-parse)."""
    files = output_files(folder)
    if not files:
        return None
    latest = files[-1]
    try:
        frames = read_vasprun(latest)[0] if "vasprun" in latest.name else read_outcar_frames(latest)
    except UnreadableFile as exc:
        raise InputError(f"Cannot read the DFT output {latest} ({exc}). Remove or fix the file.") from exc
    return float(frames[-1].get_potential_energy()), latest


def _final_file(folder: Path) -> Path | None:
    contcar = folder / "CONTCAR"
    if contcar.is_file() and contcar.stat().st_size > 0:
        return contcar
    files = output_files(folder)
    return files[-1] if files else None


def _yaml_folder(key: object) -> str:
    """The distortion folder of a ``{defect}.yaml`` key (-0.3 -> ``Bond_Distortion_-30.0%``)."""
    if isinstance(key, float | int) and not isinstance(key, bool):
        return f"Bond_Distortion_{round(float(key) * 100, 1) + 0}%"
    return str(key)


def _read_yaml(defect_dir: Path) -> dict[str, float] | None:
    import yaml

    path = defect_dir / f"{defect_dir.name}.yaml"
    if not path.is_file():
        return None
    try:
        document = yaml.safe_load(path.read_text())
        entries = dict(document.get("distortions") or {})
        if "Unperturbed" in document:
            entries["Unperturbed"] = document["Unperturbed"]
        return {_yaml_folder(key): float(value) for key, value in entries.items()}
    except Exception as exc:
        raise InputError(
            f"{path} is not a ShakeNBreak energies file ({type(exc).__name__}: {exc}); regenerate it with "
            "snb-parse."
        ) from exc


def _match_yaml(energies: dict[str, float], folders: set[str], path: Path) -> dict[str, float]:
    matched: dict[str, float] = {}
    unknown = []
    for key, energy in energies.items():
        for candidate in (key, f"Bond_Distortion_{key}"):
            if candidate in folders:
                matched[candidate] = energy
                break
        else:
            unknown.append(key)
    if unknown:
        raise InputError(
            f"{path} disagrees with the folders beside it: it lists {', '.join(sorted(unknown))}, which have "
            f"no distortion folder there (folders: {', '.join(sorted(folders))}). The yaml belongs to "
            "another search: rerun snb-parse in this defect folder."
        )
    return matched


def _check_same_atoms(start: Atoms, final: Atoms, where: str, final_file: Path) -> None:
    if start.get_chemical_symbols() != final.get_chemical_symbols():
        raise InputError(
            f"{where}: the starting structure ({len(start)} atoms, {start.get_chemical_formula()}) and the "
            f"DFT result {final_file} ({len(final)} atoms, {final.get_chemical_formula()}) do not hold the "
            "same atoms in the same order, so the DFT result cannot be compared with a relaxation of this "
            "start. Put the POSCAR that DFT started from beside its output."
        )
    from ase.geometry import find_mic

    shift, _ = find_mic(final.positions - start.positions, start.cell, pbc=True)
    moved = np.linalg.norm(shift - np.median(shift, axis=0), axis=1) > MOVED_LIMIT
    if moved.sum() > max(2, MOVED_FRACTION * len(start)):
        raise InputError(
            f"{where}: {int(moved.sum())} of {len(start)} atoms of the DFT result {final_file} lie more than "
            f"{MOVED_LIMIT} Å from their starting position: the atom order differs from the starting "
            "structure (or the POSCAR is not the one DFT started from). Put the POSCAR that DFT started from "
            "beside its output."
        )


def read_dft_defect(defect_dir: Path) -> DftDefect:
    """Read and check one defect folder of a DFT search.

    Raises:
        InputError: For the problems listed in the module docstring.
    """
    directory = Path(defect_dir)
    found: dict[str, Path] = {}
    for child in sorted(directory.iterdir()):
        if not is_distortion_dir(child):
            continue
        name = child.name.removesuffix(HIGH_ENERGY_SUFFIX)
        if name in found:
            raise InputError(
                f"{directory} holds both {name} and {name}{HIGH_ENERGY_SUFFIX}; keep one of them."
            )
        found[name] = child
    defect = DftDefect(directory.name, directory, split_charge(directory.name)[1], {})
    yaml_energies = _read_yaml(directory)
    if yaml_energies is None:
        defect.notes.append(f"no {directory.name}.yaml: DFT energies read from OUTCAR/vasprun.xml")
    yaml_energies = _match_yaml(yaml_energies or {}, set(found), directory / f"{directory.name}.yaml")
    for name in sorted(found, key=lambda n: (n != "Unperturbed", _sort_key(n))):
        folder = found[name]
        if not any((folder / n).is_file() for n, _ in STRUCTURE_INPUTS):
            defect.notes.append(f"{folder.name}: no starting structure (POSCAR), left out")
            continue
        start = DftStart(name, folder, high_energy=folder.name.endswith(HIGH_ENERGY_SUFFIX))
        start.final = _final_file(folder)
        if name in yaml_energies:
            start.energy, start.energy_source = yaml_energies[name], "yaml"
        elif start.final is not None and (parsed := _output_energy(folder)) is not None:
            start.energy, start.energy_source = parsed[0], parsed[1].name
            if yaml_energies:
                defect.notes.append(f"{name}: not in the yaml, DFT energy read from {parsed[1].name}")
        elif start.high_energy:
            defect.notes.append(f"{name}: _High_Energy in DFT, no energy (not a ground-state candidate)")
        elif start.final is None:
            defect.notes.append(f"{name}: no DFT output and no energy (a start DFT did not finish)")
        else:
            defect.notes.append(f"{name}: DFT structure but no energy (not in the yaml, no OUTCAR)")
        defect.starts[name] = start
    if "Unperturbed" not in defect.starts:
        raise InputError(
            f"{directory} has no Unperturbed folder with a starting structure; it defines the defect "
            "site and the energy reference of a ShakeNBreak search. Pass the defect folder written by "
            "snb-generate."
        )
    if not defect.energies:
        raise InputError(
            f"{directory} holds no DFT results: no {directory.name}.yaml entries and no OUTCAR/vasprun.xml "
            "with an energy. Run snb-parse after the DFT relaxations (or pass the finished DFT search)."
        )
    _check_structures(defect)
    return defect


def _sort_key(name: str) -> tuple:
    key = bond_distortion(name)
    return (0, key, name) if key is not None else (1, 0.0, name)


def _check_structures(defect: DftDefect) -> None:
    reference = defect.starts["Unperturbed"].read_start()
    for start in defect.starts.values():
        where = f"{defect.name}/{start.directory.name}"
        atoms = start.read_start()
        if atoms.get_chemical_symbols() != reference.get_chemical_symbols():
            raise InputError(
                f"{where}: its starting structure ({atoms.get_chemical_formula()}, {len(atoms)} atoms) does "
                f"not hold Unperturbed's atoms ({reference.get_chemical_formula()}) in the same order; one "
                "defect folder must hold starts of one defect."
            )
        final = start.read_final()
        if final is not None:
            _check_same_atoms(atoms, final, where, start.final)


def read_dft_search(path: str | Path, defects: list[str] | None = None) -> DftSearch:
    """Read a ShakeNBreak DFT search; per-defect problems are recorded, not raised.

    Args:
        path: Top-level folder of the search, or one defect folder.
        defects: Defect folder names (all if ``None``).

    Returns:
        The usable defects and, by name, the reason each other one cannot be used.

    Raises:
        InputError: If ``path`` is not a ShakeNBreak tree or none of its defects has a DFT result.
    """
    top, selected = locate_defects(path, defects)
    search = DftSearch(root=top, defects={})
    for entry in selected:
        try:
            search.defects[entry.name] = read_dft_defect(entry.directory)
        except InputError as exc:
            search.errors[entry.name] = str(exc)
    if not search.defects and all("no DFT results" in message for message in search.errors.values()):
        raise InputError(
            f"'{path}' holds no DFT results (no defect folder has {{defect}}.yaml energies or an OUTCAR/"
            "vasprun.xml). The benchmark compares a model with a finished DFT search: run snb-parse after "
            "the DFT relaxations, or pass the search's top-level folder."
        )
    return search
