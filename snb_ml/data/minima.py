"""Harvesting what users keep of a finished ShakeNBreak search: ``CONTCAR`` + ``{defect}.yaml``, no OUTCAR.

Many trees drop their OUTCARs for space once ``snb-parse`` has written the final DFT energies to
``{defect}/{defect}.yaml``. Each such distortion folder still holds a labelled DFT minimum: the final
structure (``CONTCAR``) and its energy (the yaml's value for that distortion, VASP's
``energy(sigma->0)``, the same convention as ``REF_energy`` of harvested OUTCAR frames). Forces are
written as zeros (a relaxation ShakeNBreak counts as converged ends below its ``EDIFFG`` force
threshold, 0.01 eV/Å by default) and the frame is marked ``label_kind = "minimum"``, so a trainer can
use or ignore those force labels (``snb-ml train --base chgnet --minima-forces``).

Not harvested, each with a message: folders whose name has no yaml entry (e.g. ShakeNBreak's
``*_High_Energy`` folders) and a structure that repeats an earlier minimum of the same defect exactly
(the same labels twice would only reweight it; different labels would contradict each other). Defect
folders of snb_ml's own ML trees (they hold ``snb_ml_provenance.json``) are never read as DFT minima.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snb_ml.data.vasp import fidelity, read_incar
from snb_ml.errors import InputError
from snb_ml.tree.layout import is_distortion_dir
from snb_ml.tree.metadata import split_charge

CONTCAR = "CONTCAR"
#: ``info["label_kind"]`` of frames: an ionic step of a DFT relaxation, or a minimum read from a yaml.
TRAJECTORY, MINIMUM = "trajectory", "minimum"
LABEL_KIND_KEY = "label_kind"
_PROVENANCE_FILE = "snb_ml_provenance.json"  # written by snb_ml into every ML-tree defect folder


def energies_yaml(defect_folder: Path) -> Path:
    """Return the path of ShakeNBreak's energy file of a defect folder, ``{defect}/{defect}.yaml``."""
    return defect_folder / f"{defect_folder.name}.yaml"


def is_minimum_folder(folder: Path) -> bool:
    """True for a distortion folder with a ``CONTCAR`` whose defect folder holds DFT energies.

    The caller has already found no OUTCAR/vasprun.xml in ``folder``.
    """
    defect_folder = folder.parent
    return (
        is_distortion_dir(folder)
        and (folder / CONTCAR).is_file()
        and energies_yaml(defect_folder).is_file()
        and not (defect_folder / _PROVENANCE_FILE).exists()
    )


def read_dft_energies(defect_folder: Path) -> dict[float | str, float]:
    """Return the DFT energies of ``{defect}.yaml`` keyed as ShakeNBreak keys them.

    Keys are distortion factors (``-0.3``) or labels (``Rattled``, ``Unperturbed``,
    ``-60.0%_from_0``); ``Unperturbed`` is moved in with the distortions.

    Raises:
        InputError: If the file is not a ShakeNBreak energy file.
    """
    import yaml

    path = energies_yaml(defect_folder)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"Cannot read {path} ({type(exc).__name__}: {exc}); rerun snb-parse.") from exc
    if not isinstance(document, dict) or not isinstance(document.get("distortions", {}), dict):
        raise InputError(
            f"{path} is not a ShakeNBreak energy file (no 'distortions' mapping); rerun snb-parse."
        )
    energies: dict[float | str, float] = {}
    for key, value in {**document.get("distortions", {}), "Unperturbed": document.get("Unperturbed")}.items():
        if value is None:
            continue
        try:
            energies[key] = float(value)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"{path}: energy {value!r} of '{key}' is not a number; rerun snb-parse."
            ) from exc
    return energies


def yaml_key(name: str) -> float | str | None:
    """ShakeNBreak's yaml key of a distortion folder name (``Bond_Distortion_-30.0%`` -> -0.3).

    The rule of ``shakenbreak.analysis._format_distortion_names``, restated because importing that
    module costs seconds (matplotlib and more) per harvest: ``Unperturbed``/``Rattled``/``Dimer`` names
    are their own keys, ``Bond_Distortion_X%`` is ``X / 100``, ``Bond_Distortion_X%_from_q`` is
    ``X%_from_q``; anything else (``*_High_Energy``) has no key.
    """
    name = name.strip()
    if any(label in name for label in ("Unperturbed", "Rattled", "Dimer")) and "from" not in name:
        return name
    if name.startswith("Bond_Distortion_") and name.endswith("%"):
        try:
            return float(name[len("Bond_Distortion_") : -1]) / 100
        except ValueError:
            return None
    if name.startswith("Bond_Distortion_") and "_from_" in name:
        return name[len("Bond_Distortion_") :]
    if ("Rattled" in name or "Dimer" in name) and "_from_" in name:
        return name
    return None


def energy_of(folder: Path, energies: dict[float | str, float]) -> float | None:
    """Return the yaml energy of a distortion folder, ``None`` when the yaml has no entry for it."""
    key = yaml_key(folder.name)
    if key is None:
        return None
    if isinstance(key, float):
        matches = [v for k, v in energies.items() if isinstance(k, float) and abs(k - key) < 1e-6]
        return matches[0] if matches else None
    return energies.get(key)


@dataclass
class MinimumRecord:
    """One harvested minimum before labelling: structure, energy, charge and (if known) functional."""

    atoms: object
    energy: float
    charge: int
    head: str | None


def read_minimum(folder: Path) -> tuple[MinimumRecord | None, str | None]:
    """Read one ``CONTCAR`` + yaml minimum; return it, or ``None`` and the reason it was skipped.

    Args:
        folder: The distortion folder.

    Raises:
        InputError: If the charge cannot be read from the defect folder's name, or the yaml or
            CONTCAR is unreadable.
    """
    from ase.io import read

    defect_folder = folder.parent
    energy = energy_of(folder, read_dft_energies(defect_folder))
    if energy is None:
        return None, (
            f"{folder}: no energy for '{folder.name}' in {energies_yaml(defect_folder).name}; not harvested"
        )
    charge = split_charge(defect_folder.name)[1]
    if charge is None:
        raise InputError(
            f"Cannot tell the charge of the DFT minima in {defect_folder}: without an OUTCAR it is read "
            "from the folder name, which must end in the charge (e.g. v_Cd_0, Mg_O_+2)."
        )
    try:
        atoms = read(str(folder / CONTCAR), format="vasp")
    except Exception as exc:
        raise InputError(f"Cannot read {folder / CONTCAR} ({type(exc).__name__}: {exc}).") from exc
    tags = read_incar(folder) or read_incar(defect_folder)
    return MinimumRecord(atoms, energy, int(charge), fidelity(tags) if tags else None), None


def same_structure(a, b) -> bool:
    """True when two frames are the same structure (same atoms, cell and positions within 1e-6 Å)."""
    return (
        len(a) == len(b)
        and bool(np.array_equal(a.numbers, b.numbers))
        and bool(np.allclose(np.asarray(a.cell), np.asarray(b.cell), atol=1e-6))
        and bool(np.allclose(a.positions, b.positions, atol=1e-6))
    )
