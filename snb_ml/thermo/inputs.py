"""Inputs of ``snb-ml free-energy``: structure files or folders, and references computed earlier.

Shared by the one-defect command (:mod:`snb_ml.cli.thermo`) and its whole-tree mode
(:mod:`snb_ml.thermo.workflow`); light to import (ase is imported when a structure is read).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from snb_ml.errors import InputError

#: Structure files looked for, in order, when a folder is given.
STRUCTURE_FILES = ("CONTCAR", "POSCAR")


def read_structure(path: str | Path, what: str):
    """Read a structure file, or ``CONTCAR``/``POSCAR`` (first non-empty) inside a folder.

    Args:
        path: File or folder.
        what: What the structure is (for messages), e.g. ``--defect``.
    """
    from ase.io import read

    path = Path(path)
    if path.is_dir():
        candidates = [path / name for name in STRUCTURE_FILES if (path / name).is_file()]
        candidates = [c for c in candidates if c.stat().st_size > 0]
        if not candidates:
            raise InputError(
                f"{what}: folder {path} holds no non-empty {' or '.join(STRUCTURE_FILES)}. Pass a structure "
                "file or the folder of one relaxed distortion (e.g. ml_tree/v_Cd_0/Bond_Distortion_-30.0%)."
            )
        path = candidates[0]
    try:
        return read(path)
    except Exception as exc:  # ase raises many types for unreadable files
        raise InputError(
            f"{what}: cannot read a structure from {path} ({exc}). Give a POSCAR/CIF/extxyz."
        ) from exc


def reference_from_json(path: Path, element: str, result_class: Any) -> Any:
    """A reference from a ``VibrationalFreeEnergy`` JSON or from an earlier ``snb-ml free-energy`` output.

    Args:
        path: The JSON file given as ``--reference EL=PATH``.
        element: The reference's element (for the lookup in a free-energy output, and for messages).
        result_class: The result type to build, with ``from_dict`` (``VibrationalFreeEnergy``).

    Raises:
        InputError: If the file cannot be read, lacks ``element``, or holds no such result.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"--reference {element}: cannot read {path} ({exc}).") from exc
    if isinstance(data, dict) and "references" in data:
        if element not in data["references"]:
            raise InputError(
                f"--reference {element}: {path} holds references for "
                f"{', '.join(data['references']) or 'none'}, not {element}. "
                f"Pass a structure of elemental {element} instead."
            )
        data = data["references"][element]
    try:
        return result_class.from_dict(data)
    except (TypeError, KeyError, ValueError) as exc:
        raise InputError(
            f"--reference {element}: {path} is neither a VibrationalFreeEnergy JSON nor a free-energy output "
            f"({exc}). Pass a structure file instead."
        ) from exc
