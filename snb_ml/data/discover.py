"""Finding calculations in ShakeNBreak, doped and snb_ml ML trees, and naming them (defect, charge, kind).

Recognised layouts (any depth below the paths given):

- ShakeNBreak: ``<defect>_<charge>/<distortion>/OUTCAR`` (``Bond_Distortion_*``, ``Unperturbed``, ...).
- doped: ``<defect>_<charge>/vasp_std/OUTCAR`` (any ``vasp_*`` subfolder: ``vasp_gam``, ``vasp_ncl``, ...).
- flat: ``<defect>_<charge>/OUTCAR``.
- bulk: any calculation with ``bulk`` in a folder name of its path (case-insensitive).
- snb_ml ML trees: ``<ml_tree>/<defect>/<distortion>/snb_ml_trajectory.extxyz`` (only when asked).
- ShakeNBreak minima: ``<defect>_<charge>/<distortion>/CONTCAR`` without OUTCAR/vasprun.xml, with the
  energy in ``<defect>_<charge>/<defect>_<charge>.yaml`` (see :mod:`snb_ml.data.minima`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from snb_ml.data.minima import CONTCAR, MINIMUM, TRAJECTORY, is_minimum_folder
from snb_ml.data.vasp import output_files
from snb_ml.tree.layout import TRAJECTORY_FILE, is_distortion_dir
from snb_ml.tree.metadata import split_charge

_VASP_SUBFOLDER = re.compile(r"^vasp_\w+$")
_SKIP_DIRS = {".git", "__pycache__", ".snb_ml_handoff"}


@dataclass(frozen=True)
class Calculation:
    """One relaxation (or single point): a folder with VASP outputs or an ML trajectory."""

    folder: Path
    root: Path
    defect_folder: Path
    kind: str  # "defect", "bulk" or "ml"
    files: tuple[Path, ...]
    label: str = TRAJECTORY  # "trajectory" (ionic steps) or "minimum" (CONTCAR + yaml energy)

    @property
    def relaxation(self) -> str:
        """The folder relative to the parent of the input path it was found under (a stable id)."""
        return self.folder.relative_to(self.root.parent).as_posix()

    @property
    def name_charge(self) -> int | None:
        """Charge written in the defect folder's name (``v_Cd_-2`` -> -2), ``None`` if absent."""
        return split_charge(self.defect_folder.name)[1]

    @property
    def defect(self) -> str:
        """Defect name without the charge suffix (the bulk folder's name for bulk calculations)."""
        return split_charge(self.defect_folder.name)[0] if self.kind != "bulk" else self.defect_folder.name

    @property
    def defect_charge_name(self) -> str:
        """Defect folder name with charge (``Mg_O_+2``)."""
        return self.defect_folder.name


def _defect_folder(folder: Path, root: Path) -> Path:
    if (is_distortion_dir(folder) or _VASP_SUBFOLDER.match(folder.name)) and folder != root:
        return folder.parent
    return folder


def _is_bulk(folder: Path, root: Path) -> bool:
    # Only names below the given folder count (a root like 'CdTe_bulk_and_defects/' says nothing),
    # unless the given folder is the calculation itself.
    parts = folder.relative_to(root).parts or (root.name,)
    return any("bulk" in part.lower() for part in parts)


def find_calculations(paths: list[Path], include_ml: bool = False) -> list[Calculation]:
    """Every calculation folder below ``paths``, sorted by path.

    Folders named ``*_High_Energy`` (ShakeNBreak's discarded distortions) are still harvested: their
    frames are real DFT data. A distortion folder without VASP output but with a ``CONTCAR`` and its
    defect's ``{defect}.yaml`` is a labelled minimum (``label == "minimum"``).

    Args:
        paths: Top-level folders (or single calculation folders).
        include_ml: Also collect snb_ml ML-tree trajectories (``snb_ml_trajectory.extxyz``).
    """
    found: dict[Path, Calculation] = {}
    for given in paths:
        root = Path(given).resolve()
        for folder in _walk(root):
            trajectory = folder / TRAJECTORY_FILE
            if trajectory.is_file():
                if include_ml:
                    defect_folder = folder.parent if folder != root else folder
                    found[folder] = Calculation(folder, root, defect_folder, "ml", (trajectory,))
                continue
            files = output_files(folder)
            if not files:
                if is_minimum_folder(folder):
                    found[folder] = Calculation(
                        folder, root, folder.parent, "defect", (folder / CONTCAR,), MINIMUM
                    )
                continue
            kind = "bulk" if _is_bulk(folder, root) else "defect"
            found[folder] = Calculation(folder, root, _defect_folder(folder, root), kind, tuple(files))
    return [found[key] for key in sorted(found)]


def _walk(root: Path):
    if not root.is_dir():
        return
    yield root
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name not in _SKIP_DIRS and not child.is_symlink():
            yield from _walk(child)
