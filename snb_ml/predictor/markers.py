"""Defect markers of a starting structure: 0 host, 1 substituent or interstitial, 2 vacancy (a ghost node).

The single-step predictor reads a defect supercell as a graph whose nodes carry a marker:

- ``0``: a host atom;
- ``1``: the defect atom, i.e. the substituent or the interstitial;
- ``2``: a *ghost* node at the empty site of a vacancy. It has no species and no displacement; it only
  tells its neighbours where the missing atom was.

The defect is located in one of two ways (the same sources as :mod:`snb_ml.data.sites`):

1. ``site``: the Cartesian defect site, e.g. ShakeNBreak's ``unique_site`` from
   ``distortion_metadata.json`` (what the runner puts in ``atoms.info["defect_site"]``). The atom
   nearest to the site is the substituent or interstitial if it lies within
   :data:`SITE_ATOM_FRACTION` of the bulk-like bond length; otherwise the site is a vacancy. The margin
   matters: ShakeNBreak means to leave the defect atom unrattled, but with doped's defect entries it
   keeps a host atom still instead (an index mismatch, seen with ShakeNBreak 3.4 and doped 3.2) and
   rattles the substituent like any atom, up to ~0.35 bond lengths off its site; the nearest atom to
   a vacancy is at least 0.4 bond lengths away even after ShakeNBreak's strongest (-60 %) distortion.
2. ``bulk``: comparison with the bulk supercell (:func:`snb_ml.data.sites.site_from_bulk`): one atom
   fewer is a vacancy, the same count a substitution, one more an interstitial.

Anything else (no site and no bulk, complexes, several atoms on the site) raises
:class:`~snb_ml.errors.InputError`: a prediction is never made for a defect that was not located.

The defect charge enters as the project's size-consistent site feature
(:mod:`snb_ml.models.charge`): ``q`` on the nodes within the marker radius of the site, ``0`` elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

from snb_ml.data.sites import site_from_bulk
from snb_ml.errors import InputError
from snb_ml.models.charge import MARKER_RADIUS_FACTOR, bulk_bond_length
from snb_ml.neighbors import neighbor_list

HOST, DEFECT_ATOM, GHOST = 0, 1, 2
#: An atom closer than this fraction of the bulk-like bond length to the site is the defect atom.
SITE_ATOM_FRACTION = 0.35
KINDS = ("vacancy", "substitution", "interstitial")


@dataclass
class MarkedStructure:
    """A starting structure with its defect located.

    Attributes:
        atoms: The (unrelaxed) structure; not modified.
        markers: Per-atom marker, ``0`` host or ``1`` defect atom (shape ``(len(atoms),)``).
        ghost: Cartesian position of the vacancy ghost node (Å), or ``None`` without a vacancy.
        site: Cartesian defect site (Å).
        charge: Integer charge state of the supercell.
        kind: ``vacancy``, ``substitution`` or ``interstitial``.
        method: How the defect was located: ``site`` or ``bulk``.
    """

    atoms: Atoms
    markers: np.ndarray
    ghost: np.ndarray | None
    site: np.ndarray
    charge: int
    kind: str
    method: str

    @property
    def defect_index(self) -> int | None:
        """Index of the defect atom (substituent or interstitial), ``None`` for a vacancy."""
        found = np.flatnonzero(self.markers == DEFECT_ATOM)
        return int(found[0]) if len(found) else None


def _distances_to(atoms: Atoms, point: np.ndarray) -> np.ndarray:
    from ase.geometry import get_distances

    _, distances = get_distances(point.reshape(1, 3), atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    return distances[0]


def bond_length(atoms: Atoms) -> float:
    """Bulk-like bond length of ``atoms``: the median nearest-neighbour distance (Å).

    The same quantity as :func:`snb_ml.models.charge.bulk_bond_length`, from snb_ml's fast
    neighbour list (about 0.2 ms for a 64-atom cell).

    Raises:
        InputError: If no atom has a neighbour within 8 Å.
    """
    for cutoff in (3.5, 5.0, 8.0):
        centers, _, _, distances = neighbor_list(atoms, cutoff)
        nearest = np.full(len(atoms), np.inf)
        np.minimum.at(nearest, centers, distances)
        if np.isfinite(nearest).mean() >= 0.9:
            return float(np.median(nearest[np.isfinite(nearest)]))
    raise InputError(f"No atom of the {len(atoms)}-atom structure has a neighbour within 8 Å.")


def _integer_charge(charge, where: str) -> int:
    try:
        value = float(charge)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value != round(value):
        raise InputError(f"{where}: the defect charge must be an integer, got {charge!r}.")
    return int(round(value))


def mark_defect(
    atoms: Atoms,
    charge: int,
    site: np.ndarray | list[float] | None = None,
    bulk: Atoms | None = None,
    where: str = "structure",
) -> MarkedStructure:
    """Locate the defect of ``atoms`` and mark it (see the module docstring).

    Args:
        atoms: The unrelaxed defect supercell.
        charge: Its charge state.
        site: Cartesian defect site (Å), e.g. from ShakeNBreak's metadata; tried first.
        bulk: The bulk supercell (same cell) for locating the defect by comparison.
        where: What the structure is, for error messages.

    Returns:
        The marked structure.

    Raises:
        InputError: If the defect cannot be located unambiguously.
    """
    if len(atoms) == 0:
        raise InputError(f"{where}: the structure holds no atoms.")
    q = _integer_charge(charge, where)
    if site is not None:
        centre = np.asarray(site, dtype=float).reshape(-1)
        if centre.shape != (3,) or not np.isfinite(centre).all():
            raise InputError(f"{where}: the defect site must be three Cartesian coordinates, got {site!r}.")
        distances = _distances_to(atoms, centre)
        tolerance = SITE_ATOM_FRACTION * bond_length(atoms)
        on_site = np.flatnonzero(distances < tolerance)
        if len(on_site) > 1:
            raise InputError(
                f"{where}: {len(on_site)} atoms lie within {tolerance:.2f} Å of the defect site "
                f"{centre.round(3).tolist()}; the defect cannot be marked. Check the site (Cartesian Å, "
                "this structure's cell) or the structure."
            )
        if len(on_site) == 1:
            kind = "substitution"
            if bulk is not None and len(atoms) == len(bulk) + 1:
                kind = "interstitial"
            return _marked(atoms, on_site[0], None, centre, q, kind, "site")
        return _marked(atoms, None, centre, centre, q, "vacancy", "site")
    if bulk is not None:
        located = site_from_bulk(atoms, bulk)
        difference = len(atoms) - len(bulk)
        if located is None or difference not in (-1, 0, 1):
            raise InputError(
                f"{where}: the defect could not be located by comparison with the bulk supercell ("
                f"{len(atoms)} vs {len(bulk)} atoms; the cells must match within 0.1 Å and differ by one "
                "vacancy, substitution or interstitial). Complexes are not supported; pass the defect "
                "site (ShakeNBreak's distortion_metadata.json) instead."
            )
        centre = np.asarray(located, dtype=float)
        if difference == -1:
            return _marked(atoms, None, centre, centre, q, "vacancy", "bulk")
        index = int(np.argmin(_distances_to(atoms, centre)))
        return _marked(atoms, index, None, centre, q, KINDS[1 + difference], "bulk")
    raise InputError(
        f"{where}: the defect cannot be located: no defect site (ShakeNBreak's distortion_metadata.json "
        "with unique_site next to the defect folder) and no bulk supercell to compare with. Keep the "
        'metadata file in the tree, or pass the bulk structure (calc-kwargs {"bulk": PATH} / --bulk).'
    )


def _marked(atoms, index, ghost, site, charge, kind, method) -> MarkedStructure:
    markers = np.zeros(len(atoms), dtype=np.int64)
    if index is not None:
        markers[index] = DEFECT_ATOM
    return MarkedStructure(
        atoms=atoms,
        markers=markers,
        ghost=None if ghost is None else np.asarray(ghost, dtype=float).copy(),
        site=np.asarray(site, dtype=float).copy(),
        charge=charge,
        kind=kind,
        method=method,
    )


def with_positions(marked: MarkedStructure, positions: np.ndarray) -> MarkedStructure:
    """The same defect (markers, ghost, charge) on other positions of the same atoms.

    Markers are a property of the relaxation, fixed at its start (like the charge features of
    :mod:`snb_ml.models.charge`): an intermediate frame keeps the markers of its starting structure.
    """
    atoms = marked.atoms.copy()
    atoms.positions = np.asarray(positions, dtype=float)
    return MarkedStructure(
        atoms, marked.markers.copy(), marked.ghost, marked.site, marked.charge, marked.kind, marked.method
    )


def charge_site_markers(
    marked: MarkedStructure, radius: float | None, bond_length: float | None = None
) -> np.ndarray:
    """``1.0`` for atoms within ``radius`` of the defect site, ``0.0`` elsewhere.

    ``None`` uses the site-charge models' default shell (:mod:`snb_ml.models.charge`:
    ``MARKER_RADIUS_FACTOR`` x the bulk-like bond length, the median nearest-neighbour distance), so the
    predictor and the site-charge MACE models mark the same atoms. ``bond_length`` passes that median
    when the caller already has it (the graph builder takes it from its neighbour list). Unlike those
    models no atom is required in the shell: a vacancy's ghost node carries the charge itself.
    """
    if radius is None:
        radius = MARKER_RADIUS_FACTOR * (bond_length if bond_length else bulk_bond_length(marked.atoms))
    return (_distances_to(marked.atoms, marked.site) <= radius).astype(float)
