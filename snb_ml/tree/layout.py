"""Layout of ShakeNBreak trees and ML trees: folder rules, structure inputs, ``{defect}.yaml``, tree marker.

The metadata file (``distortion_metadata.json``) is read by :mod:`snb_ml.tree.metadata`, the provenance
file (``snb_ml_provenance.json``) by :mod:`snb_ml.tree.provenance`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from snb_ml import __version__ as version
from snb_ml.errors import InputError, OutputError
from snb_ml.safe_write import atomic_path, write_text
from snb_ml.tree.provenance import PROVENANCE_FILE, read_provenance

DISTORTION_MARKERS = ("Bond_Distortion", "Rattled", "Unperturbed", "Dimer")
HIGH_ENERGY_SUFFIX = "_High_Energy"
TRAJECTORY_FILE = "snb_ml_trajectory.extxyz"
TREE_MARKER = "snb_ml_tree.json"  # at the top of an ML tree: which input tree it was written from
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
    return any(marker in path.name for marker in DISTORTION_MARKERS) and path.is_dir()


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


def input_structure_file(folder: Path) -> Path | None:
    """The starting-structure file of one distortion folder (the one :func:`read_input_structure` reads)."""
    return next((folder / name for name, _ in STRUCTURE_INPUTS if (folder / name).is_file()), None)


def input_structure_hash(folder: Path) -> str | None:
    """sha256 of the starting-structure file of a distortion folder; ``None`` if it has none."""
    path = input_structure_file(folder)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else None


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


def _holds_structure(folder: Path) -> bool:
    return any((folder / name).is_file() for name, _ in STRUCTURE_INPUTS)


def _is_structure_defect_dir(path: Path) -> bool:
    """A defect folder of a ShakeNBreak input tree or an ML tree: distortion folders with structures."""
    try:
        return path.is_dir() and any(
            is_distortion_dir(child) and _holds_structure(child) for child in path.iterdir()
        )
    except OSError:  # unreadable: not ours to judge
        return False


def _is_ml_defect_dir(path: Path) -> bool:
    return (path / PROVENANCE_FILE).is_file()


def input_tree_identity(top: Path, label: str | None) -> str:
    """What the tree marker records as the input of an ML tree: a label, or the input tree's path."""
    return label or str(Path(top).resolve())


def _written_from(ml_top: Path) -> tuple[str | None, str | None]:
    """The input tree an existing ML tree was written from (identity, relative path), if it says."""
    marker = load_json(ml_top / TREE_MARKER, f"delete it if {ml_top} is an ML tree of this input tree.")
    if marker is not None:
        return marker.get("input_tree"), marker.get("input_tree_relative")
    # Trees written before the marker existed: each defect's provenance names its input folder.
    for child in sorted(ml_top.iterdir()):
        if not (child / PROVENANCE_FILE).is_file():
            continue
        provenance = read_provenance(child)
        source = provenance.input_directory if provenance else None
        if source:
            return (str(Path(source).parent) if os.path.isabs(source) else source), None
    return None, None


def check_output_location(
    ml_top: Path, top: Path, defects: list[DefectInput], identity: str, force: bool = False
) -> None:
    """Refuse an ML tree location where writing would overwrite or mix up another tree.

    Refused: the input tree or one of its defect folders; anything at or inside a distortion folder or a
    defect folder (of any ShakeNBreak or ML tree); an existing ShakeNBreak input tree; and, unless
    ``force``, an existing ML tree written from another input tree. A new folder directly inside the
    input tree (the default ``<top>/ml_tree``) is fine.

    Args:
        ml_top: The ML tree folder (resolved).
        top: The input tree's top-level folder.
        defects: The defects of this run.
        identity: This run's input identity (:func:`input_tree_identity`).
        force: Accept an ML tree written from another input tree (its results are redone).

    Raises:
        OutputError: With both trees named and what to pass instead.
    """
    fix = "Pass --output (output=) a new folder, e.g. the default <input tree>/ml_tree."
    top = Path(top).resolve()
    if ml_top == top or any(ml_top == d.directory.resolve() for d in defects):
        raise OutputError(
            f"The ML tree {ml_top} would be the DFT tree itself; choose a separate folder "
            "(--output / output=)."
        )
    for folder in (ml_top, *ml_top.parents):
        if not folder.exists():
            continue
        if is_distortion_dir(folder) and _holds_structure(folder):
            raise OutputError(
                f"The ML tree {ml_top} would be inside the distortion folder {folder}; DFT and ShakeNBreak "
                f"folders are never written to. {fix}"
            )
        if _is_structure_defect_dir(folder):
            raise OutputError(
                f"The ML tree {ml_top} would be inside the defect folder {folder}; DFT and ShakeNBreak "
                f"folders are never written to. {fix}"
            )
    if not ml_top.is_dir():
        return
    if not (ml_top / TREE_MARKER).is_file():
        inputs = [
            c for c in sorted(ml_top.iterdir()) if _is_structure_defect_dir(c) and not _is_ml_defect_dir(c)
        ]
        if inputs:
            raise OutputError(
                f"{ml_top} is a ShakeNBreak input tree (e.g. {inputs[0].name} holds distortion folders and "
                f"no snb_ml results); writing the ML tree of {top} there would overwrite its files. {fix}"
            )
    source, relative = _written_from(ml_top)
    if source is None or force or source == identity:
        return
    if relative is not None and (ml_top / relative).resolve() == top:  # both trees moved together
        return
    raise OutputError(
        f"{ml_top} is the ML tree of another input tree ({source}); this run's input is {identity}. Results "
        f"of two trees are never mixed in one ML tree. {fix} If {source} was moved to {identity}, delete "
        f"{ml_top / TREE_MARKER} (results whose starting structures still match are reused), or pass "
        "--force (force=True) to redo every result of this run in it."
    )


def write_tree_marker(ml_top: Path, top: Path, identity: str) -> None:
    """Record at the top of the ML tree which input tree it is written from."""
    data = {
        "snb_ml_version": version,
        "input_tree": identity,
        "input_tree_relative": os.path.relpath(Path(top).resolve(), ml_top),
    }
    write_text(ml_top / TREE_MARKER, json.dumps(data, indent=2) + "\n")
