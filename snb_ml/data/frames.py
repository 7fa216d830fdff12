"""Turning one calculation folder into labelled frames (extxyz keys that MACE reads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from snb_ml.data.discover import Calculation
from snb_ml.data.minima import LABEL_KIND_KEY, MINIMUM, TRAJECTORY, read_minimum
from snb_ml.data.vasp import (
    OutcarInfo,
    UnreadableFile,
    charge_from_electrons,
    fidelity,
    read_incar,
    read_outcar_frames,
    read_vasprun,
    scan_outcar,
)
from snb_ml.errors import InputError

# Keys written to the extended XYZ files (see docs/training.md).
ENERGY_KEY = "REF_energy"  # eV, VASP energy(sigma->0) (ASE "energy"), as in ShakeNBreak's yaml
FREE_ENERGY_KEY = "REF_free_energy"  # eV, VASP free energy TOTEN (ASE "free_energy"), when known
FORCES_KEY = "REF_forces"  # eV/Å, per-atom array
STRESS_KEY = "REF_stress"  # eV/Å^3, 3x3 written row-major as 9 numbers, ASE sign convention
CHARGE_KEY = "total_charge"


@dataclass
class Harvested:
    """Frames of one calculation plus what went wrong while reading it."""

    calculation: Calculation
    frames: list = field(default_factory=list)
    unconverged: set[int] = field(default_factory=set)  # frame indices
    messages: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)
    charge: int | None = None
    head: str | None = None


def _read_file(path: Path) -> tuple[list, OutcarInfo]:
    if path.name.startswith("vasprun"):
        return read_vasprun(path)
    info = scan_outcar(path)
    return read_outcar_frames(path, info.complete_steps), info


def harvest_calculation(calculation: Calculation) -> Harvested:
    """Read every ionic step of one calculation (all restart files, oldest first) and label it.

    Unreadable files are skipped with a message; incomplete ones (no closing timing block, e.g. a run
    killed at the wall-time limit) keep their complete ionic steps.

    Raises:
        InputError: If the charge cannot be determined, disagrees with the folder name, or the files of
            one folder disagree on charge or functional.
    """
    if calculation.kind == "ml":
        return _harvest_ml(calculation)
    if calculation.label == MINIMUM:
        return _harvest_minimum(calculation)
    result = Harvested(calculation)
    incar = read_incar(calculation.folder)
    offset = 0
    for path in calculation.files:
        try:
            frames, info = _read_file(path)
        except UnreadableFile as exc:
            result.messages.append(f"skipped unreadable file {exc}")
            result.skipped_files.append(str(path))
            continue
        if not info.complete:
            result.messages.append(
                f"{path}: incomplete run (no closing timing block, or cut inside an ionic step); "
                f"kept its {len(frames)} complete ionic step(s)"
            )
        charge = charge_from_electrons(info, incar, path)
        head = fidelity({**info.tags, **incar})
        for label, new, old in (("charge", charge, result.charge), ("functional", head, result.head)):
            if old is not None and new != old:
                raise InputError(
                    f"{calculation.folder}: its output files disagree on the {label} "
                    f"({old} vs {new} in {path}); move runs of different settings into separate folders."
                )
        result.charge, result.head = charge, head
        result.unconverged.update(offset + step for step in info.unconverged_steps if step < len(frames))
        for index, atoms in enumerate(frames):
            result.frames.append(_label(atoms, calculation, path, offset + index, charge, head))
        offset += len(frames)
    if result.charge is not None and calculation.kind == "defect":
        named = calculation.name_charge
        if named is not None and named != result.charge:
            raise InputError(
                f"Charge mismatch in {calculation.folder}: the folder name "
                f"'{calculation.defect_charge_name}' says {named:+d} but NELECT gives {result.charge:+d} "
                "(neutral valence electrons minus NELECT). "
                "Fix the folder name or the INCAR's NELECT."
            )
    return result


def _label(atoms, calculation: Calculation, path: Path, index: int, charge: int, head: str):
    from ase import Atoms

    frame = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
    results = atoms.calc.results if atoms.calc is not None else {}
    energy = results.get("energy", results.get("free_energy"))
    frame.info[ENERGY_KEY] = float(energy) if energy is not None else None
    if "free_energy" in results:
        frame.info[FREE_ENERGY_KEY] = float(results["free_energy"])
    if results.get("forces") is not None:
        frame.arrays[FORCES_KEY] = np.asarray(results["forces"], dtype=float).copy()
    stress = results.get("stress")
    if stress is not None:
        from ase.stress import voigt_6_to_full_3x3_stress

        stress = np.asarray(stress, dtype=float)
        full = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress.reshape(3, 3)
        frame.info[STRESS_KEY] = full.reshape(9)
    frame.info.update(
        {
            CHARGE_KEY: int(charge),
            "charge": int(charge),
            "charge_state": int(charge),
            "head": head,
            "config_type": calculation.kind,
            "defect": calculation.defect,
            "relaxation": calculation.relaxation,
            "frame": int(index),
            "source": str(path),
            LABEL_KIND_KEY: TRAJECTORY,
        }
    )
    return frame


def _harvest_minimum(calculation: Calculation) -> Harvested:
    """One ``CONTCAR`` + yaml minimum: the yaml energy, zero forces, no stress, ``label_kind = minimum``.

    Its head is the functional of an INCAR in the distortion or defect folder; without one it stays
    ``None`` here and :func:`snb_ml.data.harvest.harvest` assigns it (see there).
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    result = Harvested(calculation)
    record, reason = read_minimum(calculation.folder)
    if record is None:
        result.messages.append(str(reason))
        return result
    atoms = record.atoms
    atoms.calc = SinglePointCalculator(atoms, energy=record.energy, forces=np.zeros((len(atoms), 3)))
    frame = _label(atoms, calculation, calculation.files[0], 0, record.charge, record.head or "")
    frame.info[LABEL_KIND_KEY] = MINIMUM
    result.frames.append(frame)
    result.charge, result.head = record.charge, record.head
    return result


def _harvest_ml(calculation: Calculation) -> Harvested:
    from ase.io import read

    result = Harvested(calculation)
    path = calculation.files[0]
    try:
        frames = read(str(path), index=":", format="extxyz")
    except Exception as exc:
        result.messages.append(f"skipped unreadable file {path}: {type(exc).__name__}: {exc}")
        result.skipped_files.append(str(path))
        return result
    for index, atoms in enumerate(frames):
        model = atoms.info.get("model", "unknown")
        charge = atoms.info.get("charge")
        if charge is None:
            charge = calculation.name_charge
        if charge is None:
            raise InputError(f"{path}: frame {index} has no charge and the folder name gives none.")
        head = f"ml:{model}"
        if result.head is not None and head != result.head:
            raise InputError(f"{path}: frames from several models ({result.head}, {head}).")
        result.charge, result.head = int(charge), head
        frame = _label(atoms, calculation, path, index, int(charge), head)
        frame.info["defect"] = calculation.defect
        result.frames.append(frame)
    return result
