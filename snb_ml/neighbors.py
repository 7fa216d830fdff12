"""Neighbour lists from pymatgen's C cell list, for ASE structures (periodic or not)."""

from __future__ import annotations

import numpy as np
from ase import Atoms

# Distance below which a site counts as itself (pymatgen's and CHGNet's numerical_tol).
SELF_TOLERANCE = 1e-8


def neighbor_list(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs closer than ``cutoff``: centre and neighbour indices, neighbour images and distances.

    Each pair appears in both directions; an atom is not its own neighbour (its periodic images are).
    About 0.1 ms for a 64-atom cell against ~2.5 ms for ASE's ``neighbor_list``. Cells without three
    lattice vectors are treated as non-periodic.

    Args:
        atoms: The structure.
        cutoff: Search radius in Å.
    """
    from pymatgen.optimization.neighbors import find_points_in_spheres

    cart = np.ascontiguousarray(atoms.positions, dtype=float)
    periodic = atoms.cell.rank == 3
    lattice = atoms.cell.array if periodic else np.eye(3) * (np.ptp(cart, axis=0).max() + 2 * cutoff + 1)
    centers, neighbors, images, distances = find_points_in_spheres(
        cart,
        cart,
        r=float(cutoff),
        pbc=np.ascontiguousarray(atoms.pbc if periodic else [0, 0, 0], dtype=np.int64),
        lattice=np.ascontiguousarray(lattice, dtype=float),
        tol=SELF_TOLERANCE,
    )
    keep = ~((centers == neighbors) & (distances <= SELF_TOLERANCE))
    return (
        centers[keep].astype(np.int64),
        neighbors[keep].astype(np.int64),
        images[keep].astype(np.int64),
        distances[keep],
    )
