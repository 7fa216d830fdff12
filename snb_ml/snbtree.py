"""Reading ShakeNBreak trees and writing the ML tree in ShakeNBreak's own formats."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from snb_ml.atomic import atomic_path
from snb_ml.errors import InputError, OutputError

DISTORTION_MARKERS = ("Bond_Distortion", "Rattled", "Unperturbed", "Dimer")
HIGH_ENERGY_SUFFIX = "_High_Energy"
METADATA_FILE = "distortion_metadata.json"
PROVENANCE_FILE = "snb_ml_provenance.json"
TRAJECTORY_FILE = "snb_ml_trajectory.extxyz"
DEFAULT_ML_TREE = "ml_tree"  # must not end in a digit: SnB_run.sh -a treats those as defect folders

# Structure inputs ShakeNBreak writes per distortion folder, by code, with their ASE formats.
STRUCTURE_INPUTS = (
    ("POSCAR", "vasp"),
    ("geometry.in", "aims"),
    ("castep.cell", "castep-cell"),
    ("espresso.pwi", "espresso-in"),
    ("structure.cif", "cif"),
)
# Files only a DFT run writes (VASP, QE, FHI-aims, CASTEP, CP2K). CONTCAR is added where it can only come
# from VASP (the DFT tree); in the ML tree it is snb_ml's own output.
DFT_OUTPUT_PATTERNS = (
    "OUTCAR*",
    "vasprun.xml*",
    "OSZICAR*",
    "XDATCAR*",
    "espresso.out",
    "aims.out",
    "*.castep",
    "relax.out",
    "*-pos-*.xyz",
)
_CHARGE_SUFFIX = re.compile(r"^(?P<defect>.+)_(?P<charge>[+-]?\d+)$")


def split_charge(name: str) -> tuple[str, int | None]:
    """Split a ShakeNBreak/doped defect folder name into defect and charge.

    ``v_Cd_-1`` gives ``("v_Cd", -1)``, ``Te_i_C3v_+2`` gives ``("Te_i_C3v", 2)``; a name without a
    charge suffix comes back whole with ``None``.
    """
    match = _CHARGE_SUFFIX.match(name)
    return (match["defect"], int(match["charge"])) if match else (name, None)


def load_json(path: Path, fix: str, error: type[Exception] = OutputError) -> dict | None:
    """Read a JSON record written by snb_ml; ``None`` if absent.

    Args:
        path: The file.
        fix: What the user should do if it is unreadable (ends the error message).
        error: Exception class raised for an unreadable file.
    """
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise error(f"{path} is unreadable ({exc}); {fix}") from exc


def dft_outputs(folder: Path, include_contcar: bool = False) -> list[str]:
    """Names of DFT output files in ``folder`` (with ``CONTCAR*`` too if ``include_contcar``)."""
    patterns = DFT_OUTPUT_PATTERNS + (("CONTCAR*",) if include_contcar else ())
    return sorted({path.name for pattern in patterns for path in folder.glob(pattern)})


def is_distortion_dir(path: Path) -> bool:
    """True for a ShakeNBreak distortion folder (``Bond_Distortion_*``, ``Unperturbed``, ...)."""
    return path.is_dir() and any(marker in path.name for marker in DISTORTION_MARKERS)


def is_defect_dir(path: Path) -> bool:
    """True for a folder that holds ShakeNBreak distortion folders (ShakeNBreak's own rule)."""
    return path.is_dir() and any(is_distortion_dir(child) for child in path.iterdir())


@dataclass(frozen=True)
class DefectInput:
    """One defect (in one charge state) of a ShakeNBreak tree."""

    name: str
    directory: Path

    def distortion_folders(self) -> list[str]:
        """Distortion folder names, Unperturbed first (it is the energy reference), High_Energy excluded."""
        names = [
            child.name
            for child in self.directory.iterdir()
            if is_distortion_dir(child) and HIGH_ENERGY_SUFFIX not in child.name
        ]
        return sorted(names, key=lambda name: (name != "Unperturbed", name))


def defect_site_fractional(defect_dir: Path) -> list[float] | None:
    """The defect's site in fractional coordinates, from ShakeNBreak's ``distortion_metadata.json``.

    The same lookup as minima selection (:func:`snb_ml.minima.fingerprints.load_defect_metadata`): the
    folder's own metadata file first, then the tree's.

    Args:
        defect_dir: A defect folder of a ShakeNBreak tree (or of an ML tree).

    Returns:
        Three fractional coordinates, or ``None`` when no metadata lists this defect.
    """
    from snb_ml.minima.fingerprints import load_defect_metadata

    try:
        _, entry, _ = load_defect_metadata(defect_dir)
    except InputError:
        return None
    return [float(x) for x in entry["unique_site"]]


def locate_defects(path: str | Path, defects: list[str] | None = None) -> tuple[Path, list[DefectInput]]:
    """Find the defect folders to relax.

    Args:
        path: A top-level ShakeNBreak folder (holding defect folders) or a single defect folder.
        defects: Defect folder names to keep (all if ``None``).

    Returns:
        The top-level folder and the selected defects.

    Raises:
        InputError: If ``path`` is not a ShakeNBreak tree or a requested defect is absent.
    """
    root = Path(path).resolve()
    if not root.is_dir():
        raise InputError(f"'{path}' is not a directory. Pass -p the folder written by snb-generate.")
    if is_defect_dir(root):
        found = [DefectInput(root.name, root)]
        top = root.parent
    else:
        top = root
        found = [DefectInput(child.name, child) for child in sorted(root.iterdir()) if is_defect_dir(child)]
    if not found:
        raise InputError(
            f"'{root}' is not a ShakeNBreak tree: no folder in it holds Bond_Distortion_*/Unperturbed/"
            "Rattled/Dimer subfolders. Run snb-generate (or Distortions.write_vasp_files) first, or pass "
            "-p the top-level or defect folder it wrote."
        )
    if defects:
        by_name = {defect.name: defect for defect in found}
        missing = [name for name in defects if name not in by_name]
        if missing:
            raise InputError(
                f"Defect folder(s) {', '.join(missing)} not found in '{top}'. "
                f"Available: {', '.join(sorted(by_name))}."
            )
        found = [by_name[name] for name in defects]
    return top, found


def parse_charge(defect: DefectInput) -> int:
    """Return the defect charge from its folder name (``v_Cd_-1`` -> -1), else from its metadata.

    Raises:
        InputError: If neither the name nor ``distortion_metadata.json`` gives a single charge.
    """
    charge = split_charge(defect.name)[1]
    if charge is not None:
        return charge
    metadata_file = defect.directory / METADATA_FILE
    if metadata_file.is_file():
        try:
            metadata = json.loads(metadata_file.read_text())
            charges = {q for entry in metadata.get("defects", {}).values() for q in entry.get("charges", {})}
        except (ValueError, AttributeError):
            charges = set()
        if len(charges) == 1:
            return int(next(iter(charges)))
    raise InputError(
        f"Cannot tell the charge of defect folder '{defect.directory}': its name does not end in the "
        "charge (like v_Cd_-1 or Te_i_C3v_+2) and its distortion_metadata.json lists no single charge. "
        "Rename the folder or pass the charge (--charge / charge=)."
    )


def read_input_structure(folder: Path):
    """Read the starting structure of one distortion folder (POSCAR or another code's input).

    Raises:
        InputError: If no readable structure file is present.
    """
    from ase.io import read

    for filename, fmt in STRUCTURE_INPUTS:
        candidate = folder / filename
        if candidate.is_file():
            try:
                atoms = read(candidate, format=fmt)
            except Exception as exc:
                raise InputError(
                    f"Cannot read {candidate} ({type(exc).__name__}: {exc}). Regenerate it with "
                    "snb-generate or fix the file."
                ) from exc
            if len(atoms) == 0:
                raise InputError(f"{candidate} holds no atoms. Regenerate it with snb-generate.")
            return atoms
    raise InputError(
        f"No structure file in {folder} (looked for {', '.join(name for name, _ in STRUCTURE_INPUTS)}). "
        "Regenerate the distortion with snb-generate."
    )


def distortion_key(folder: str) -> float | str:
    """ShakeNBreak's key for a distortion folder (``Bond_Distortion_-30.0%`` -> -0.3)."""
    from shakenbreak.analysis import _format_distortion_names

    key = _format_distortion_names(folder)
    return folder if key == "Label_not_recognized" else key


def energies_document(energies: dict[str, float]) -> dict:
    """Arrange ``{folder: energy}`` as ShakeNBreak's ``{defect}.yaml`` content (same keys and order)."""
    distortions = {
        distortion_key(folder): energy for folder, energy in energies.items() if folder != "Unperturbed"
    }
    ordered = dict(
        sorted(
            distortions.items(), key=lambda item: (0, item[0]) if isinstance(item[0], float) else (1, item[0])
        )
    )
    document: dict = {"distortions": ordered}
    if "Unperturbed" in energies:
        document["Unperturbed"] = energies["Unperturbed"]
    return document


def write_energies_yaml(ml_defect_dir: Path, defect: str, energies: dict[str, float]) -> Path:
    """Atomically write ``{defect}.yaml`` with ML energies in ShakeNBreak's format."""
    from monty.serialization import dumpfn

    target = ml_defect_dir / f"{defect}.yaml"
    with atomic_path(target) as temporary:
        dumpfn(energies_document(energies), str(temporary), fmt="yaml")
    return target


def check_ml_defect_dir(ml_defect_dir: Path, defect: str) -> None:
    """Refuse to write ML results where DFT results live.

    Raises:
        OutputError: If the folder holds a ``{defect}.yaml`` not written by snb_ml, or DFT output files.
    """
    if not ml_defect_dir.exists():
        return
    yaml_file = ml_defect_dir / f"{defect}.yaml"
    if yaml_file.exists() and not (ml_defect_dir / PROVENANCE_FILE).exists():
        raise OutputError(
            f"{yaml_file} exists but was not written by snb_ml, so it holds DFT energies; ML energies "
            "are never written into it. Choose another ML tree (--output / output=)."
        )
    for child in ml_defect_dir.iterdir():
        if child.is_dir() and dft_outputs(child):
            raise OutputError(
                f"{child} holds DFT output files; the ML tree must be separate from the DFT tree. "
                "Choose another ML tree (--output / output=)."
            )
