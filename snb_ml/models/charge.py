"""Charge features for charge-aware MACE models: defect-site markers and the per-structure annotation.

Three ways to tell a MACE model the charge state ``q`` of a defect supercell (``CHARGE_MODES``):

``site`` (default, size-consistent)
    A per-atom feature ``defect_charge_i = q * m_i``, where the marker ``m_i`` is 1 for atoms within
    a marker radius of the defect site and 0 elsewhere. The embedding is bias-free, so an atom with
    feature 0 is exactly unaffected by ``q``; only atoms within the receptive field of the marked
    shell feel the charge, and ``E(q) - E(q')`` no longer depends on the supercell size once the
    cell is larger than that field.
``global``
    MACE's own per-graph ``total_charge`` added to every atom's features. ``E(q) - E(q')`` grows in
    proportion to the number of atoms (extensive); kept for comparison and for models trained so.
``intensive``
    A per-atom feature ``q / N`` on every atom. To first order in ``q / N`` the summed energy change
    ``N * f'(0) * q / N`` does not grow with ``N``, but a model trained on one cell size sees small
    features in larger cells, so it extrapolates less safely than ``site``.

Markers are computed once from the starting structure of a relaxation and then held fixed, so the
feature is a constant of the relaxation and energies and forces stay conservative.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from snb_ml.errors import InputError

CHARGE_MODES = ("site", "global", "intensive")
DEFAULT_CHARGE_MODE = "site"

#: ``atoms.arrays`` key of the ``site`` feature, ``atoms.info`` key of the ``global`` one, and the
#: ``atoms.arrays`` key of the ``intensive`` one. The embedding specs use the same names.
SITE_KEY = "defect_charge"
GLOBAL_KEY = "total_charge"
INTENSIVE_KEY = "charge_per_atom"
#: Where ``atoms.info`` carries the integer charge (what ``MACECalculator`` reads for ``total_charge``).
CHARGE_INFO_KEY = "charge"
#: Where ``atoms.info`` carries the Cartesian defect site (Å) for ``site`` models.
SITE_INFO_KEY = "defect_site"

#: Default marker radius in units of the bulk-like bond length of the structure. 1.3 covers the first
#: neighbour shell even when a ShakeNBreak bond distortion stretches a bond by up to 30 %, and stays
#: below the second shell of common lattices (rocksalt 1.41, zinc blende / wurtzite 1.63).
MARKER_RADIUS_FACTOR = 1.3

_SITE_ATOM_TOLERANCE = 0.5  # Å; a substituent or interstitial sits on the site itself


def bulk_bond_length(atoms: Atoms) -> float:
    """Return the median nearest-neighbour distance of ``atoms`` (Å).

    The median over all atoms is dominated by the bulk-like region, so it hardly changes when a few
    atoms around a defect are distorted or rattled; that keeps the default marker radius the same
    for every distortion of one defect.

    Args:
        atoms: The (defect) supercell.

    Returns:
        The bulk-like bond length.

    Raises:
        InputError: If no atom has a neighbour within 8 Å.
    """
    from ase.neighborlist import neighbor_list

    for cutoff in (3.5, 5.0, 8.0):
        first, distances = neighbor_list("id", atoms, cutoff, self_interaction=False)
        if len(first) == 0:
            continue
        nearest = np.full(len(atoms), np.inf)
        np.minimum.at(nearest, first, distances)
        # Keep widening until most atoms see a neighbour (an isolated interstitial may not).
        if np.isfinite(nearest).mean() >= 0.9:
            return float(np.median(nearest[np.isfinite(nearest)]))
    raise InputError(
        f"No atom of the {len(atoms)}-atom structure has a neighbour within 8 Å, so no bond length "
        "can be derived for the defect markers. Pass an explicit marker radius (Å)."
    )


def _site_array(site: Sequence[float] | np.ndarray) -> np.ndarray:
    try:
        array = np.asarray(site, dtype=float).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError(f"The defect site must be three Cartesian coordinates (Å), got {site!r}.") from exc
    if array.shape != (3,) or not np.isfinite(array).all():
        raise InputError(f"The defect site must be three finite Cartesian coordinates (Å), got {site!r}.")
    return array


def defect_markers(
    atoms: Atoms, site: Sequence[float] | np.ndarray, radius: float | None = None
) -> np.ndarray:
    """Return the defect markers ``m_i`` (1.0 near the defect site, 0.0 elsewhere).

    Args:
        atoms: The structure at the start of the relaxation.
        site: Cartesian position of the defect (Å): the vacancy position, the substituent or the
            interstitial (ShakeNBreak's ``defect_site``).
        radius: Marker radius in Å; ``None`` uses ``MARKER_RADIUS_FACTOR`` times the bulk-like bond
            length (:func:`bulk_bond_length`), i.e. the site atom plus the first neighbour shell.

    Returns:
        Float array of shape ``(len(atoms),)`` holding 1.0 for marked atoms and 0.0 otherwise.

    Raises:
        InputError: If the site or radius is invalid, or no atom lies within the radius.
    """
    from ase.geometry import get_distances

    centre = _site_array(site)
    if len(atoms) == 0:
        raise InputError("Cannot mark a defect site in a structure with no atoms.")
    if radius is None:
        radius = MARKER_RADIUS_FACTOR * bulk_bond_length(atoms)
    elif not np.isfinite(radius) or radius <= 0:
        raise InputError(f"The defect marker radius must be a positive length in Å, got {radius!r}.")
    _, distances = get_distances(centre, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    markers = (distances[0] <= radius).astype(float)
    if not markers.any():
        raise InputError(
            f"No atom lies within {radius:.2f} Å of the defect site {centre.round(3).tolist()}: is the site "
            "in Cartesian Å (not fractional) and in this structure's cell? Or pass a larger radius."
        )
    return markers


def _integer_charge(charge: float) -> int:
    # MACE silently truncates fractional charges and treats a missing one as 0; fail loudly instead.
    try:
        value = float(charge)
    except (TypeError, ValueError) as exc:
        raise InputError(f"The charge state must be an integer, got {charge!r}.") from exc
    if not np.isfinite(value) or value != round(value):
        raise InputError(f"The charge state must be an integer, got {charge!r}.")
    return int(round(value))


def annotate_atoms(
    atoms: Atoms,
    charge: int,
    site: Sequence[float] | np.ndarray | None = None,
    mode: str = DEFAULT_CHARGE_MODE,
    radius: float | None = None,
) -> Atoms:
    """Write the charge features a charge-aware MACE model of ``mode`` reads, in place.

    Always sets ``atoms.info["charge"]`` (int). ``site`` also sets ``atoms.info["defect_site"]`` and
    ``atoms.arrays["defect_charge"] = charge * defect_markers(atoms, site, radius)``; ``intensive``
    sets ``atoms.arrays["charge_per_atom"] = charge / len(atoms)``. Use it on training frames (with
    the site and radius of the defect's starting structure) and before each relaxation.

    Args:
        atoms: Structure to annotate (modified and returned).
        charge: Integer charge state of the supercell.
        site: Cartesian defect site (Å); required for charged structures in ``site`` mode.
        mode: One of ``CHARGE_MODES``.
        radius: Marker radius (Å) for ``site`` mode; ``None`` for the default.

    Returns:
        ``atoms``, annotated.

    Raises:
        InputError: For an unknown mode, a non-integer charge, or a missing/invalid site.
    """
    if mode not in CHARGE_MODES:
        raise InputError(f"Unknown charge mode {mode!r}; use one of {', '.join(CHARGE_MODES)}.")
    q = _integer_charge(charge)
    atoms.info[CHARGE_INFO_KEY] = q
    if mode == "site":
        if site is None and q == 0:  # q x markers is zero wherever the site is: none is needed
            atoms.arrays[SITE_KEY] = np.zeros(len(atoms))
            return atoms
        if site is None:
            raise InputError(
                "Charge mode 'site' needs the defect site (Cartesian Å) of a charged structure, e.g. "
                "ShakeNBreak's defect_site."
            )
        centre = _site_array(site)
        atoms.info[SITE_INFO_KEY] = [float(x) for x in centre]  # a list: MACE's cache check compares it
        atoms.arrays[SITE_KEY] = q * defect_markers(atoms, centre, radius)
    elif mode == "intensive":
        atoms.arrays[INTENSIVE_KEY] = np.full(len(atoms), q / max(len(atoms), 1), dtype=float)
    return atoms


def charge_embedding_specs(mode: str = DEFAULT_CHARGE_MODE, emb_dim: int = 8) -> dict[str, dict]:
    """Return MACE ``embedding_specs`` for a charge mode (continuous, bias-free).

    Bias-free is what makes the design work: the embedding of a zero feature is exactly zero, so
    uncharged structures (and, in ``site`` mode, atoms far from the defect) are untouched.

    Args:
        mode: One of ``CHARGE_MODES``.
        emb_dim: Width of the embedding MLP.

    Returns:
        The spec dict to pass as ``embedding_specs`` (also what ``mace_run_train --embedding_specs``
        takes, written with ``repr``).

    Raises:
        InputError: For an unknown mode or a non-positive ``emb_dim``.
    """
    if mode not in CHARGE_MODES:
        raise InputError(f"Unknown charge mode {mode!r}; use one of {', '.join(CHARGE_MODES)}.")
    if int(emb_dim) != emb_dim or emb_dim < 1:
        raise InputError(f"emb_dim must be a positive integer, got {emb_dim!r}.")
    spec = {"type": "continuous", "in_dim": 1, "emb_dim": int(emb_dim), "use_bias": False}
    if mode == "global":
        # key "charge": mace_run_train then reads atoms.info["charge"], as MACECalculator does.
        return {GLOBAL_KEY: {**spec, "per": "graph", "key": CHARGE_INFO_KEY}}
    name = SITE_KEY if mode == "site" else INTENSIVE_KEY
    return {name: {**spec, "per": "atom", "key": name}}


def detect_charge_mode(model: object) -> str | None:
    """Return the charge mode of a MACE model from its ``embedding_specs`` (``None``: charge-blind).

    Args:
        model: A MACE ``torch.nn.Module`` (anything with an optional ``embedding_specs`` dict).

    Returns:
        ``"site"``, ``"global"``, ``"intensive"`` or ``None``.
    """
    specs = getattr(model, "embedding_specs", None) or {}
    names = {name for name in specs} | {spec.get("key") for spec in specs.values() if isinstance(spec, dict)}
    if SITE_KEY in names:
        return "site"
    if INTENSIVE_KEY in names:
        return "intensive"
    if GLOBAL_KEY in names:
        return "global"
    return None
