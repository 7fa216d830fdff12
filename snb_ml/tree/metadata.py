"""The one reader of ShakeNBreak's ``distortion_metadata.json`` and of the charge in a defect folder's name.

ShakeNBreak writes ``distortion_metadata.json`` into the top-level folder of a tree (every defect) and
sometimes into each defect folder (that defect only); ``snb-ml run`` copies both into the ML tree. Its
shape (ShakeNBreak 3.x)::

    {"distortion_parameters": {"mc_rattle_parameters": {"stdev": ...}, ...},
     "defects": {"v_Cd": {"unique_site": [x, y, z], "defect_site_index": i,
                          "charges": {"0": {"distorted_atoms": [[index, "Te"], ...], ...}, ...}}}}

:func:`find_defect_metadata` finds the entry of one defect folder and returns it typed
(:class:`DefectMetadata`); every module that needs the defect site, its distorted neighbours, the
rattle width or the defect's charge goes through here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snb_ml.errors import InputError

METADATA_FILE = "distortion_metadata.json"
_CHARGE_SUFFIX = re.compile(r"^(?P<defect>.+)_(?P<charge>[+-]?\d+)$")


def split_charge(name: str) -> tuple[str, int | None]:
    """Split a ShakeNBreak/doped defect folder name into defect and charge.

    ``v_Cd_-1`` gives ``("v_Cd", -1)``, ``Te_i_C3v_+2`` gives ``("Te_i_C3v", 2)``; a name without a
    charge suffix comes back whole with ``None``.
    """
    match = _CHARGE_SUFFIX.match(name)
    return (match["defect"], int(match["charge"])) if match else (name, None)


def charged_name(defect: str, charge: int) -> str:
    """The ShakeNBreak/doped folder name of a defect in a charge state (the inverse of :func:`split_charge`).

    ``("v_Cd", -1)`` gives ``v_Cd_-1``, ``("Mg_O", 0)`` gives ``Mg_O_0``, ``("Mg_O", 2)`` gives ``Mg_O_+2``.
    """
    return f"{defect}_{'+' if charge > 0 else ''}{charge}"


def read_metadata(path: Path) -> dict | None:
    """Read a ShakeNBreak ``distortion_metadata.json`` as plain data; ``None`` if absent.

    Raises:
        InputError: If the file is not UTF-8 JSON holding an object.
    """
    if not path.is_file():
        return None
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at position {exc.start}); ShakeNBreak "
            "writes it as UTF-8 JSON. Regenerate it with snb-generate, or re-save it as UTF-8."
        ) from exc
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}). Regenerate it with snb-generate.") from exc
    if not isinstance(data, dict):
        raise InputError(
            f"{path} holds {type(data).__name__}, not a JSON object. Regenerate it with snb-generate."
        )
    return data


@dataclass(frozen=True)
class DefectMetadata:
    """What ``distortion_metadata.json`` says about one defect folder.

    Attributes:
        name: The defect's name in the metadata (the folder name without its charge).
        unique_site: The defect site in fractional coordinates (``None`` if the entry has none).
        defect_site_index: Index of the defect atom in doped's structure, if recorded.
        charge_entry: The entry of this folder's charge (``distorted_atoms`` ...); empty if not listed.
        charges: Every charge the entry lists (as the strings ShakeNBreak writes).
        rattle_stdev: ``mc_rattle_parameters.stdev`` of the file, if recorded.
        source: The file the entry was read from.
        entry: The raw entry, for keys this reader does not type.
    """

    name: str
    unique_site: tuple[float, float, float] | None
    defect_site_index: int | None
    charge_entry: dict[str, Any]
    charges: tuple[str, ...]
    rattle_stdev: float | None
    source: Path
    entry: dict[str, Any] = field(repr=False, compare=False)

    @property
    def distorted_atoms(self) -> list:
        """``distorted_atoms`` of this charge's entry (``[[index, element], ...]``; may be empty)."""
        return list(self.charge_entry.get("distorted_atoms") or [])


def _pick_entry(defects: dict[str, Any], folder_name: str, single_file: bool) -> tuple[str, dict] | None:
    stem, charge = split_charge(folder_name)
    if stem in defects:
        return stem, defects[stem]
    if single_file and len(defects) == 1:
        return next(iter(defects.items()))
    matches = [
        (name, entry)
        for name, entry in defects.items()
        if charge is not None
        and folder_name.startswith(name)
        and isinstance(entry, dict)
        and str(charge) in (entry.get("charges") or {})
    ]
    return matches[0] if len(matches) == 1 else None


def _typed(name: str, entry: dict, data: dict, folder: str, source: Path) -> DefectMetadata:
    charges = entry.get("charges") or {}
    charges = charges if isinstance(charges, dict) else {}
    charge = split_charge(folder)[1]
    if charge is not None and str(charge) in charges:
        charge_entry = charges[str(charge)]
    else:
        charge_entry = next(iter(charges.values())) if len(charges) == 1 else {}
    site = entry.get("unique_site")
    index = entry.get("defect_site_index")
    parameters = data.get("distortion_parameters")
    rattle = parameters.get("mc_rattle_parameters") if isinstance(parameters, dict) else None
    stdev = rattle.get("stdev") if isinstance(rattle, dict) else None
    return DefectMetadata(
        name=name,
        unique_site=None if site is None else tuple(site) if isinstance(site, list | tuple) else (),
        defect_site_index=index if isinstance(index, int) else None,
        charge_entry=charge_entry if isinstance(charge_entry, dict) else {},
        charges=tuple(str(q) for q in charges),
        rattle_stdev=float(stdev) if isinstance(stdev, int | float) else None,
        source=source,
        entry=entry,
    )


def find_defect_metadata(defect_dir: str | Path, require_site: bool = True) -> DefectMetadata:
    """Find the metadata entry of one defect folder (of a ShakeNBreak tree or an ML tree).

    The folder's own ``distortion_metadata.json`` is read first (its single entry, or the one named
    like the folder), then the tree's (the entry named like the folder, or the one whose name starts
    the folder's name and which lists the folder's charge).

    Args:
        defect_dir: The defect folder, e.g. ``ml_tree/v_Cd_0``.
        require_site: Skip entries without a ``unique_site``.

    Raises:
        InputError: If no metadata file lists this defect (with a ``unique_site`` if required), or a
            file is not UTF-8 JSON.
    """
    directory = Path(defect_dir)
    for path, single in ((directory / METADATA_FILE, True), (directory.parent / METADATA_FILE, False)):
        data = read_metadata(path)
        defects = data.get("defects") if data else None
        if not isinstance(defects, dict) or not defects:
            continue
        picked = _pick_entry(defects, directory.name, single)
        if picked is None or not isinstance(picked[1], dict):
            continue
        if require_site and "unique_site" not in picked[1]:
            continue
        return _typed(picked[0], picked[1], data, directory.name, path)
    raise InputError(
        f"Cannot identify the defect site of {directory}: no {METADATA_FILE} there or in {directory.parent} "
        f"lists defect '{directory.name}' with a unique_site. snb-ml run copies ShakeNBreak's metadata "
        "into the ML tree; copy distortion_metadata.json from the ShakeNBreak defect folder into "
        f"{directory} (or rerun snb-ml run on a tree written by snb-generate)."
    )


def load_defect_metadata(ml_defect_dir: str | Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(name, entry, charge entry)`` of :func:`find_defect_metadata`, as plain data (older API)."""
    found = find_defect_metadata(ml_defect_dir)
    return found.name, found.entry, found.charge_entry


def defect_site_fractional(defect_dir: Path) -> list[float] | None:
    """The defect's site in fractional coordinates, or ``None`` when no metadata lists this defect."""
    try:
        found = find_defect_metadata(defect_dir)
    except InputError:
        return None
    return [float(x) for x in found.unique_site or ()] or None


def charge_from_folder(defect_dir: Path, name: str | None = None) -> int:
    """The defect charge of a defect folder: from its name (``v_Cd_-1`` -> -1), else from its metadata.

    Args:
        defect_dir: The defect folder (its ``distortion_metadata.json`` is the fallback).
        name: The defect's name, if not the folder's.

    Raises:
        InputError: If neither the name nor ``distortion_metadata.json`` gives a single charge.
    """
    directory = Path(defect_dir)
    charge = split_charge(name or directory.name)[1]
    if charge is not None:
        return charge
    metadata = read_metadata(directory / METADATA_FILE)
    if metadata is not None:
        try:
            charges = {q for entry in metadata.get("defects", {}).values() for q in entry.get("charges", {})}
        except (TypeError, AttributeError):
            charges = set()
        if len(charges) == 1:
            return int(next(iter(charges)))
    raise InputError(
        f"Cannot tell the charge of defect folder '{directory}': its name does not end in the "
        "charge (like v_Cd_-1 or Te_i_C3v_+2) and its distortion_metadata.json lists no single charge. "
        "Rename the folder or pass the charge (--charge / charge=)."
    )
