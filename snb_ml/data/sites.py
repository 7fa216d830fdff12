"""Locating the defect site of a harvested relaxation (Cartesian, Å), or saying it is unknown.

Two methods, tried in order:

1. ``metadata``: ShakeNBreak's ``distortion_metadata.json`` (``defects.<name>.unique_site``, fractional)
   in the defect folder or its parent, converted with the frame's cell.
2. ``bulk``: the first frame compared with a bulk supercell of the same tree (same cell within 0.1 Å per
   lattice vector): one atom fewer = vacancy (the bulk site farthest from every atom), same count =
   substitution (the single bulk site whose nearest atom has another element), one atom more =
   interstitial (the atom farthest from every bulk site).

The site is the bulk lattice site for vacancies and substitutions (like ShakeNBreak's ``unique_site``,
so it does not move when the defect atom relaxes off-centre) and the atom's position for interstitials.

Anything else (other cells, complexes, several candidate sites) leaves the site unknown; it is never
guessed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from snb_ml.errors import InputError
from snb_ml.tree.metadata import find_defect_metadata

CELL_TOLERANCE = 0.1  # Å per lattice vector for a bulk cell to count as the same supercell
SITE_MARGIN = 0.3  # Å: the chosen vacancy/interstitial site must stand out from the runner-up by this much


def site_from_metadata(defect_folder: Path, atoms) -> np.ndarray | None:
    """Cartesian defect site from ShakeNBreak's ``unique_site``, or ``None`` without metadata."""
    try:
        metadata = find_defect_metadata(defect_folder)
    except InputError:
        return None
    frac = np.asarray(metadata.unique_site or [], dtype=float)
    if frac.shape != (3,):
        return None
    return frac @ np.asarray(atoms.cell)


def _distances(atoms_a, positions_b: np.ndarray, cell, pbc) -> np.ndarray:
    from ase.geometry import get_distances

    _, distances = get_distances(atoms_a.positions, positions_b, cell=cell, pbc=pbc)
    return distances


def site_from_bulk(atoms, bulk) -> np.ndarray | None:
    """Cartesian defect site by comparison with the bulk supercell, or ``None`` if not clear-cut."""
    if bulk is None or not np.all(
        np.linalg.norm(np.asarray(atoms.cell) - np.asarray(bulk.cell), axis=1) < CELL_TOLERANCE
    ):
        return None
    difference = len(atoms) - len(bulk)
    distances = _distances(bulk, atoms.positions, atoms.cell, atoms.pbc)  # bulk sites x defect atoms
    if difference == -1:
        nearest = distances.min(axis=1)
        order = np.argsort(nearest)[::-1]
        if nearest[order[0]] - nearest[order[1]] < SITE_MARGIN:
            return None
        return bulk.positions[order[0]].copy()
    if difference == 1:
        nearest = distances.min(axis=0)
        order = np.argsort(nearest)[::-1]
        if nearest[order[0]] - nearest[order[1]] < SITE_MARGIN:
            return None
        return atoms.positions[order[0]].copy()
    if difference == 0:
        partner = distances.argmin(axis=1)
        bulk_symbols = np.array(bulk.get_chemical_symbols())
        symbols = np.array(atoms.get_chemical_symbols())
        changed = np.flatnonzero(bulk_symbols != symbols[partner])
        if len(changed) != 1:
            return None
        return bulk.positions[changed[0]].copy()
    return None


def locate_site(defect_folder: Path, atoms, bulk) -> tuple[np.ndarray, str] | None:
    """Defect site and method name (``metadata`` or ``bulk``), or ``None`` when unknown."""
    site = site_from_metadata(defect_folder, atoms)
    if site is not None:
        return site, "metadata"
    site = site_from_bulk(atoms, bulk)
    if site is not None:
        return site, "bulk"
    return None
